"""Data pipeline for amodal instances: three mask sets and cached priors kept consistent under geometry.

Per instance the pipeline carries the amodal mask (`gt_masks`, the detection target, as in mmdet), the
visible mask (`gt_visible_masks`), the occluder mask (`gt_occluder_masks`), the annotation id
(`gt_ann_ids`) and, with `LoadCachedPriors`, the cached shape prior (`gt_shape_priors`, [N, S, S]) together
with the box it covers (`gt_shape_prior_boxes`, [N, 4], transformed like the image but never clipped). The
Amodal* geometric transforms extend mmdet's to all of them: a prior covers its box, so a resize only rescales
the box, a flip flips box and prior, a crop shifts the box (and drops the instances mmdet drops).
"""
from __future__ import annotations

from collections.abc import Callable

import mmdet
import numpy as np
from mmcv.transforms import BaseTransform
from mmdet.datasets.transforms import LoadAnnotations, PackDetInputs, Pad, RandomCrop, RandomFlip, Resize
from mmdet.registry import TRANSFORMS
from mmdet.structures.mask import BitmapMasks

from priors import masks as mask_utils
from priors.errors import AisdiffError
from priors.identity import content_image_id
from priors.prior_quality import MATCH_IOU, match_ground_truths
from priors.store import SOURCE_PROPOSAL, PriorStore

MMDET_WRITTEN_FOR = "3.3"  # the mmdet minor version whose private transform methods the Amodal* ones override
EXTRA_MASKS = ("gt_visible_masks", "gt_occluder_masks")
INSTANCE_ARRAYS = ("gt_ann_ids", "gt_shape_priors", "gt_shape_prior_boxes")
PRIOR_SOURCES = ("ground_truth", "detections")  # LoadCachedPriors: which rows give an instance its prior


def _each_mask_set(results: dict, fn: Callable[[dict], None]) -> None:
    """Apply an mmdet mask method (which reads and writes `gt_masks`) to every mask set."""
    if results.get("gt_masks") is None:
        return
    amodal = results["gt_masks"]
    for key in EXTRA_MASKS:
        if results.get(key) is not None:
            results["gt_masks"] = results[key]
            fn(results)
            results[key] = results["gt_masks"]
    results["gt_masks"] = amodal
    fn(results)


def check_mmdet_version(transform: str, overrides: tuple[str, ...], version: str = mmdet.__version__) -> None:
    """Refuse an mmdet whose private transform methods may differ from those `transform` overrides."""
    if version.split(".")[:2] != MMDET_WRITTEN_FOR.split("."):
        raise AisdiffError(
            f"{transform} overrides private methods of mmdet {MMDET_WRITTEN_FOR}.x ({', '.join(overrides)}), "
            f"and mmdet {version} is installed, where they may differ. Install mmdet {MMDET_WRITTEN_FOR}.x "
            "(this project pins mmdet==3.3.0), or check those methods against your mmdet and update "
            "MMDET_WRITTEN_FOR in segmenter/transforms.py.")


class OverridesMmdetPrivates:
    """A transform that overrides mmdet's private methods `overrides`: checks the mmdet version when built."""

    overrides: tuple[str, ...] = ()

    def __init__(self, *args, **kwargs) -> None:
        check_mmdet_version(type(self).__name__, self.overrides)
        super().__init__(*args, **kwargs)


def _bitmaps(segms: list, height: int, width: int) -> BitmapMasks:
    dense = [mask_utils.decode(mask_utils.to_rle(s, height, width)) for s in segms]
    array = np.stack(dense).astype(np.uint8) if dense else np.zeros((0, height, width), np.uint8)
    return BitmapMasks(array, height, width)


@TRANSFORMS.register_module()
class LoadAmodalAnnotations(LoadAnnotations):
    """Load amodal boxes and labels (as mmdet does), the amodal, visible and occluder masks as bitmaps, and
    the annotation ids. Instances come from `AmodalDataset` with keys mask / visible_mask / occluder_mask."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("with_bbox", True)
        kwargs.setdefault("with_mask", True)
        super().__init__(**kwargs)

    def _load_masks(self, results: dict) -> None:
        h, w = results["ori_shape"]
        instances = results.get("instances", [])
        results["gt_masks"] = _bitmaps([i["mask"] for i in instances], h, w)
        results["gt_visible_masks"] = _bitmaps([i["visible_mask"] for i in instances], h, w)
        results["gt_occluder_masks"] = _bitmaps([i["occluder_mask"] for i in instances], h, w)

    def transform(self, results: dict) -> dict:
        results = super().transform(results)
        results["gt_ann_ids"] = np.array([i["ann_id"] for i in results.get("instances", [])], dtype=np.int64)
        return results


@TRANSFORMS.register_module()
class ContentImageId(BaseTransform):
    """Give an image that comes without a dataset record (mmdet's `inference_detector` / `DetInferencer`,
    `aisdiff predict`: no `instances` key) an id derived from its pixels; dataset images keep theirs.

    DiffSP's per-ROI noise is seeded by the image id, so a new image needs a stable one: the same image then
    gives the same priors and masks on every run and in every batch. Place it right after the image loader.
    """

    def transform(self, results: dict) -> dict:
        if "instances" not in results:
            if results.get("img") is None:
                raise AisdiffError("ContentImageId needs the decoded image: place it after LoadImageFromFile "
                                   "in the test pipeline")
            results["img_id"] = content_image_id(results["img"])
        return results


@TRANSFORMS.register_module()
class LoadCachedPriors(BaseTransform):
    """Read each ground-truth instance's prior from a prior store (made by `aisdiff precompute`).

    The store is `store`, or else the dataset's `prior_store`. `on_missing="error"` stops on an instance
    without a done row (naming image and annotation); `"compute"` marks it (NaN prior) for the model to
    compute on the fly (`CachedPriors(diffsp=...)`).
    `source="detections"` trains as the model is tested: each instance takes, instead of its ground-truth
    row, the prior of the proposal row (a model's own detection, `aisdiff test --dump-proposals` then
    `precompute --proposals`) of its class whose box overlaps its amodal box most, at least `min_iou`,
    with that detection's box as the box the prior covers; instances no detection found keep their
    ground-truth row's. The proposal rows are read from `detections` (a store made with
    `precompute --proposals-only`), else from the prior store itself.
    """

    def __init__(self, store: str | None = None, on_missing: str = "error", source: str = "ground_truth",
                 detections: str | None = None, min_iou: float = MATCH_IOU) -> None:
        if on_missing not in ("error", "compute"):
            raise ValueError(f"on_missing must be 'error' or 'compute', not {on_missing!r}")
        if source not in PRIOR_SOURCES:
            raise ValueError(f"source must be one of {PRIOR_SOURCES}, not {source!r}")
        if detections and source != "detections":
            raise ValueError(f"detections={detections!r} is read with source='detections', not {source!r}")
        self.store_path, self.on_missing, self.source, self.min_iou = store, on_missing, source, min_iou
        self.detections_path = detections
        self._stores: dict[str, PriorStore] = {}  # opened lazily: once per DataLoader worker

    def _open(self, path: str) -> PriorStore:
        if path not in self._stores:
            self._stores[path] = PriorStore.open(path)
        return self._stores[path]

    def _store(self, results: dict) -> tuple[str, PriorStore]:
        path = self.store_path or results.get("prior_store")
        if not path:
            raise AisdiffError("LoadCachedPriors needs a prior store: set the dataset's prior_store "
                               "(the config's `prior_store`) or LoadCachedPriors(store=...)")
        return path, self._open(path)

    def transform(self, results: dict) -> dict:
        path, store = self._store(results)
        image_id, ann_ids = int(results["img_id"]), results["gt_ann_ids"]
        priors = np.full((len(ann_ids), store.prior_size, store.prior_size), np.nan, dtype=np.float32)
        rows = [store.row_of(image_id, int(a)) for a in ann_ids]
        found = [i for i, r in enumerate(rows) if r is not None]
        if found:
            done = store.done([rows[i] for i in found])
            found = [i for i, d in zip(found, done, strict=True) if d]
            if found:
                priors[found] = store.priors([rows[i] for i in found])
        missing = sorted(set(range(len(ann_ids))) - set(found))
        if missing and self.on_missing == "error":
            raise AisdiffError(
                f"{path}: no computed prior for image {image_id}, annotation(s) "
                f"{', '.join(str(int(ann_ids[i])) for i in missing)}. Run `aisdiff precompute` on this "
                "annotation file with this store (it resumes), or set on_missing='compute' to compute "
                "missing priors on the fly.")
        boxes = results["gt_bboxes"].numpy().astype(np.float32).copy()
        if self.source == "detections":
            detections = self._open(self.detections_path) if self.detections_path else store
            self._take_detections(detections, image_id, categories(store, rows), boxes, priors)
        results["gt_shape_priors"] = priors
        results["gt_shape_prior_boxes"] = boxes
        return results

    def _take_detections(self, store: PriorStore, image_id: int, classes: np.ndarray, boxes: np.ndarray,
                         priors: np.ndarray) -> None:
        """Replace, in place, the priors and boxes of the instances (of category ids `classes`, -1 where
        unknown) a done proposal row of the image in `store` found."""
        candidates = store.rows_of_image(image_id)
        if not len(candidates):
            return
        meta = store.rows(candidates)
        keep = (meta.source == SOURCE_PROPOSAL) & store.done(candidates)
        rows = candidates[keep]
        found = match_ground_truths(boxes, classes, meta.box[keep], meta.category_id[keep],
                                    min_iou=self.min_iou)
        hit = np.flatnonzero(found >= 0)
        if len(hit):  # (one read for the image's matched rows)
            priors[hit] = store.priors(rows[found[hit]])
            boxes[hit] = meta.box[keep][found[hit]]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(store={self.store_path!r}, on_missing={self.on_missing!r}, "
                f"source={self.source!r}, detections={self.detections_path!r}, min_iou={self.min_iou})")


def categories(store: PriorStore, rows: list[int | None]) -> np.ndarray:
    """The category ids of ground-truth rows (-1 where an instance has no row)."""
    known = [r for r in rows if r is not None]
    ids = store.rows(np.asarray(known, dtype=np.int64)).category_id if known else np.zeros(0, np.int64)
    out = np.full(len(rows), -1, dtype=np.int64)
    out[[i for i, r in enumerate(rows) if r is not None]] = ids
    return out


@TRANSFORMS.register_module()
class AmodalResize(OverridesMmdetPrivates, Resize):
    """mmdet's Resize, applied to all three mask sets; prior boxes are rescaled (priors need nothing)."""

    overrides = ("_resize_masks", "_resize_bboxes")

    def _resize_masks(self, results: dict) -> None:
        _each_mask_set(results, super()._resize_masks)

    def _resize_bboxes(self, results: dict) -> None:
        super()._resize_bboxes(results)
        if results.get("gt_shape_prior_boxes") is not None:
            sx, sy = results["scale_factor"]
            results["gt_shape_prior_boxes"] = (results["gt_shape_prior_boxes"]
                                               * np.array([sx, sy, sx, sy], np.float32))


def flip_boxes(boxes: np.ndarray, img_shape: tuple[int, int], direction: str) -> np.ndarray:
    """Flip x1, y1, x2, y2 boxes in an image of `img_shape` (h, w), without clipping."""
    h, w = img_shape
    out = boxes.copy()
    if direction in ("horizontal", "diagonal"):
        out[:, 0], out[:, 2] = w - boxes[:, 2], w - boxes[:, 0]
    if direction in ("vertical", "diagonal"):
        out[:, 1], out[:, 3] = h - boxes[:, 3], h - boxes[:, 1]
    return out


def flip_priors(priors: np.ndarray, direction: str) -> np.ndarray:
    """Flip priors [N, S, S] like their boxes: horizontal mirrors columns, vertical rows."""
    axes = {"horizontal": (2,), "vertical": (1,), "diagonal": (1, 2)}[direction]
    return np.ascontiguousarray(np.flip(priors, axis=axes))


@TRANSFORMS.register_module()
class AmodalRandomFlip(OverridesMmdetPrivates, RandomFlip):
    """mmdet's RandomFlip, applied to all three mask sets and to cached priors with their boxes."""

    overrides = ("_flip",)

    def _flip(self, results: dict) -> None:
        super()._flip(results)
        direction, img_shape = results["flip_direction"], results["img"].shape[:2]
        for key in EXTRA_MASKS:
            if results.get(key) is not None:
                results[key] = results[key].flip(direction)
        if results.get("gt_shape_priors") is not None:
            results["gt_shape_priors"] = flip_priors(results["gt_shape_priors"], direction)
            results["gt_shape_prior_boxes"] = flip_boxes(results["gt_shape_prior_boxes"], img_shape,
                                                         direction)


@TRANSFORMS.register_module()
class AmodalRandomCrop(OverridesMmdetPrivates, RandomCrop):
    """mmdet's RandomCrop, applied to all three mask sets, annotation ids and cached priors: the instances
    mmdet drops are dropped everywhere, prior boxes are shifted (not clipped)."""

    overrides = ("_crop_data",)

    def _crop_data(self, results: dict, crop_size, allow_negative_crop: bool):
        n = len(results["gt_bboxes"]) if results.get("gt_bboxes") is not None else 0
        before = results.get("homography_matrix")
        before = np.eye(3, dtype=np.float32) if before is None else before
        # mmdet filters this key: use it to learn what is kept
        own_ids = results.pop("gt_instances_ids", None)
        results["gt_instances_ids"] = np.arange(n)
        results = super()._crop_data(results, crop_size, allow_negative_crop)
        if results is None:
            return None
        keep = results.pop("gt_instances_ids")
        if own_ids is not None:
            results["gt_instances_ids"] = own_ids[keep]
        crop = results["homography_matrix"] @ np.linalg.inv(before)
        dx, dy = int(round(-crop[0, 2])), int(round(-crop[1, 2]))  # the crop's top-left corner (whole pixels)
        h, w = results["img_shape"]
        for key in EXTRA_MASKS:
            if results.get(key) is not None:
                results[key] = results[key][keep].crop(np.array([dx, dy, dx + w, dy + h]))
        for key in INSTANCE_ARRAYS:
            if results.get(key) is not None:
                results[key] = results[key][keep]
        if results.get("gt_shape_prior_boxes") is not None:
            results["gt_shape_prior_boxes"] = (results["gt_shape_prior_boxes"]
                                               - np.array([dx, dy, dx, dy], np.float32))
        return results


@TRANSFORMS.register_module()
class AmodalPad(OverridesMmdetPrivates, Pad):
    """mmdet's Pad, applied to all three mask sets."""

    overrides = ("_pad_masks",)

    def _pad_masks(self, results: dict) -> None:
        _each_mask_set(results, super()._pad_masks)


@TRANSFORMS.register_module()
class PackAmodalInputs(PackDetInputs):
    """PackDetInputs plus, in `gt_instances`: visible_masks, occluder_masks, ann_ids and, when loaded,
    shape_priors [N, S, S] and shape_prior_boxes [N, 4]."""

    mapping_table = {**PackDetInputs.mapping_table, "gt_ann_ids": "ann_ids",
                     "gt_shape_priors": "shape_priors", "gt_shape_prior_boxes": "shape_prior_boxes"}

    def transform(self, results: dict) -> dict:
        packed = super().transform(results)
        keep = np.where(results["gt_ignore_flags"] == 0)[0] if "gt_ignore_flags" in results else None
        for key in EXTRA_MASKS:
            if key in results:
                value = results[key] if keep is None else results[key][keep]
                packed["data_samples"].gt_instances[key[3:]] = value
        if "img_id" in results and "img_id" not in packed["data_samples"].metainfo:
            # (DetInferencer drops 'img_id' from meta_keys; DiffSP's noise seed needs it)
            packed["data_samples"].set_metainfo({"img_id": results["img_id"]})
        return packed
