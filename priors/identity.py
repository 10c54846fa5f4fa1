"""The identity of a ROI and the DiffSP noise seed derived from it: one definition for every caller.

A ground-truth ROI is (source 0, image id, annotation id); a proposal or an on-the-fly detection is
(source 1, image id, its box in tenths of a pixel of the original image), so that a detection computed on the
fly and its cached proposal row share their noise. The seeds are recorded in no store but decide every
prior in one: changing them changes every store, so the tests pin exact values.
"""
from __future__ import annotations

import hashlib

from .store import SOURCE_GT, SOURCE_PROPOSAL


def roi_seed(job_seed: int, *key: int) -> int:
    """A 63-bit seed from the job seed and a ROI key (sha256 of their repr: stable across runs and hosts)."""
    digest = hashlib.sha256(repr((job_seed, *key)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def box_key(box) -> tuple[int, ...]:
    """A box (x1, y1, x2, y2 in original image pixels) in integer tenths of a pixel (round half to even)."""
    key = tuple(int(round(float(v) * 10)) for v in box)
    if len(key) != 4:
        raise ValueError(f"a ROI box is (x1, y1, x2, y2) in image pixels, got {len(key)} values: {box!r}")
    return key


def gt_roi_seed(job_seed: int, image_id: int, ann_id: int) -> int:
    """The noise seed of a ground-truth ROI: from (source 0, image id, annotation id)."""
    return roi_seed(int(job_seed), SOURCE_GT, int(image_id), int(ann_id))


def proposal_roi_seed(job_seed: int, image_id: int, box) -> int:
    """The noise seed of a proposal or detection: from (source 1, image id, box in tenths of a pixel)."""
    return roi_seed(int(job_seed), SOURCE_PROPOSAL, int(image_id), *box_key(box))


CONTENT_ID_BITS = 48  # exact in every JSON reader (< 2**53), unlikely to collide (~2e-7 for 10**4 images)


def content_image_id(pixels) -> int:
    """The id of an image that has none (a new photo, not a dataset record): from its decoded pixels (sha256
    of shape, dtype and bytes): the same image gets the same id, hence the same DiffSP noise, every time."""
    import numpy as np

    array = np.ascontiguousarray(pixels)
    digest = hashlib.sha256(repr((array.shape, array.dtype.str)).encode() + array.tobytes()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << CONTENT_ID_BITS) - 1)
