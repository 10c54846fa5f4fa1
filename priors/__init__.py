"""AISDiff core library: amodal annotation formats, ROI geometry, DiffSP and the Zarr prior store."""
