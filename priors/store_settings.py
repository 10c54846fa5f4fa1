"""What a prior store records about its dataset, and which settings every store must record.

A store's settings (its group attributes, `priors.store`) are the DiffSP settings (`DiffSP.attrs`) plus the
dataset settings `dataset_settings` builds: which annotation file and format, which proposal file, and whether
the rows are proposals only. The dataset settings tie a store to its inputs; they do not change how a prior
is computed, so an on-the-fly prior provider compares only the other settings with a store's
(`segmenter.prior_providers`).
"""
from __future__ import annotations

from pathlib import Path

from .annotations import AmodalAnnotations, sha256_file

# store settings that describe the dataset, not DiffSP
DATASET_SETTINGS = ("annotations", "annotation_format", "proposals", "row_sources")
# settings a store must have to be opened (those added later have defaults: `store.SETTINGS_ADDED_LATER`)
REQUIRED_SETTINGS = ("model", "steps", "tau", "self_res", "cross_res", "prompt", "seed", "context",
                     "annotations", "proposals")


def dataset_settings(annotations: AmodalAnnotations, proposals: str | Path | None,
                     proposals_only: bool = False) -> dict:
    """The DATASET_SETTINGS of a store of `annotations`' ROIs (and the proposals in the file `proposals`, if
    any): the files' sha256, the annotation format, and "row_sources" only for a store of proposals only."""
    return {"annotations": annotations.sha256(), "annotation_format": annotations.format,
            "proposals": sha256_file(proposals) if proposals else None,
            **({"row_sources": "proposals only"} if proposals_only else {})}
