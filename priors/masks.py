"""COCO mask helpers on top of pycocotools: any segmentation -> compressed RLE, areas, boxes, decoding.

Everything stays in the run-length domain until a dense mask is really needed, so that files with
100k instances can be validated and indexed without decoding every mask.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict[str, Any]  # {"size": [h, w], "counts": bytes}


class MaskFormatError(ValueError):
    """A segmentation that is neither a valid polygon list nor a valid RLE for the image size."""


def to_rle(segm: Any, height: int, width: int) -> RLE:
    """Convert a COCO segmentation (polygons, compressed or uncompressed RLE) to one compressed RLE."""
    if isinstance(segm, list):
        polygons = [p for p in segm if isinstance(p, list | tuple)]
        if not polygons or len(polygons) != len(segm):
            raise MaskFormatError(
                "polygon segmentation must be a non-empty list of [x1, y1, x2, y2, ...] lists")
        for poly in polygons:
            if len(poly) < 6 or len(poly) % 2:
                raise MaskFormatError(
                    f"polygon with {len(poly)} coordinates (need an even number, at least 6)")
        return mask_utils.merge(mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height,
                                                       width))
    if isinstance(segm, dict) and "counts" in segm and "size" in segm:
        size = list(segm["size"])
        if size != [height, width]:
            raise MaskFormatError(f"RLE size {size} does not match the image size [{height}, {width}]")
        counts = segm["counts"]
        if isinstance(counts, list):  # uncompressed RLE
            if sum(counts) != height * width:
                raise MaskFormatError(
                    f"uncompressed RLE counts sum to {sum(counts)}, expected {height * width}")
            return mask_utils.frPyObjects(segm, height, width)
        if isinstance(counts, str):
            counts = counts.encode("ascii")
        if not isinstance(counts, bytes):
            raise MaskFormatError(f"RLE counts of type {type(counts).__name__} (expected str, bytes or list)")
        return {"size": size, "counts": counts}
    raise MaskFormatError(
        f"unsupported segmentation of type {type(segm).__name__} (expected polygons or RLE)")


def encode(mask: np.ndarray) -> RLE:
    """Encode a dense HxW boolean mask as a compressed RLE."""
    return mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))


def decode(rle: RLE) -> np.ndarray:
    """Decode a compressed RLE to a dense HxW boolean mask."""
    return mask_utils.decode(rle).astype(bool)


def area(rle: RLE) -> int:
    """Number of foreground pixels."""
    return int(mask_utils.area(rle))


def bbox_xywh(rle: RLE) -> tuple[float, float, float, float]:
    """Tight box [x, y, w, h] of the foreground (all zeros for an empty mask)."""
    return tuple(float(v) for v in mask_utils.toBbox(rle))  # type: ignore[return-value]


def union(rles: Sequence[RLE], height: int, width: int) -> RLE:
    """Union of masks; an empty sequence gives the empty mask."""
    if not rles:
        return empty(height, width)
    return mask_utils.merge(list(rles), intersect=False)


def intersection(a: RLE, b: RLE) -> RLE:
    return mask_utils.merge([a, b], intersect=True)


def area_outside(rle: RLE, container: RLE) -> int:
    """Foreground pixels of `rle` outside `container` (e.g. visible pixels outside the amodal mask)."""
    return area(rle) - area(intersection(rle, container))


def empty(height: int, width: int) -> RLE:
    return encode(np.zeros((height, width), dtype=bool))


def box_rle(box_xyxy: Sequence[float], height: int, width: int) -> RLE:
    """The rectangle of a box as a mask (rasterized like a COCO polygon)."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    return mask_utils.frPyObjects([[x1, y1, x1, y2, x2, y2, x2, y1]], height, width)[0]


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes [N, 4] and [M, 4] in x1, y1, x2, y2 -> [N, M]."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(-1)
    denom = area_a[:, None] + area_b[None, :] - inter
    return np.where(denom > 0, inter / np.where(denom > 0, denom, 1), 0.0)


def rle_to_json(rle: RLE) -> dict[str, Any]:
    """A compressed RLE with str counts, as COCO JSON files store it."""
    counts = rle["counts"]
    return {"size": list(rle["size"]),
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def to_polygons(mask: np.ndarray) -> list[list[float]]:
    """A dense mask as COCO polygons (one per connected part, [x1, y1, x2, y2, ...]), as real KINS files store
    masks. The outline is traced on the mask upsampled 2x (OpenCV, which mmcv installs), so its vertices sit
    a quarter pixel inside the pixel edges, where pycocotools rasterizes them back to exactly `mask`. Holes
    are filled: COCO polygons cannot express them."""
    import cv2

    dense = np.ascontiguousarray(mask, dtype=np.uint8)
    h, w = dense.shape
    upsampled = cv2.resize(dense, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(upsampled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [(c.reshape(-1, 2) / 2.0).flatten().tolist() for c in contours if len(c) >= 3]
