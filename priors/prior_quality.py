"""How good shape priors are: IoU with the amodal ground truth, overall and by occlusion bucket (a prior
store's ground-truth rows: `gt_ious`), and the matching of detections to ground truths it needs (one
definition for `aisdiff inspect`, the segmenter's metric and training on detections' priors; the metric
ranks a ground truth's candidates by score, the others, which have no scores, by box IoU)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from priors import geometry, masks
from priors.annotations import AmodalAnnotations, Instance
from priors.errors import AisdiffError
from priors.occlusion import OCCLUDED, OCCLUSION_BUCKETS
from priors.store import SOURCE_GT, PriorStore

MATCH_IOU = 0.5  # box IoU at which a detection counts as finding a ground truth (COCO's AP50 criterion)
DEFAULT_THRESHOLD = 0.5  # prior threshold for models that ship no threshold of their own


def model_threshold(model: str) -> float:
    """The prior threshold tuned with `model` (its folder's `diffsp_config.json`), else DEFAULT_THRESHOLD."""
    from priors.models import THRESHOLD_KEY, model_defaults

    return float(model_defaults(model).get(THRESHOLD_KEY, DEFAULT_THRESHOLD))


def match_ground_truths(gt_boxes: Sequence, gt_labels: Sequence[int], boxes: Sequence, labels: Sequence[int],
                        ranks: Sequence[float] | None = None, min_iou: float = MATCH_IOU) -> np.ndarray:
    """For each ground truth, the index of the detection of its class whose box overlaps its amodal box by
    `min_iou` or more with the highest rank (the score; the box IoU when `ranks` is None), or -1."""
    out = np.full(len(gt_boxes), -1, dtype=np.int64)
    if not len(gt_boxes) or not len(boxes):
        return out
    overlap = masks.box_iou_xyxy(np.asarray(gt_boxes, np.float64), np.asarray(boxes, np.float64))
    same = np.asarray(gt_labels)[:, None] == np.asarray(labels)[None, :]
    found = same & (overlap >= min_iou)
    rank = overlap if ranks is None else np.broadcast_to(np.asarray(ranks, np.float64), overlap.shape)
    for g in np.nonzero(found.any(1))[0]:
        out[g] = int(np.argmax(np.where(found[g], rank[g], -np.inf)))
    return out


def iou_table(records: list[dict], keys: Sequence[str] = ("prior_iou", "visible_iou")) -> dict:
    """Mean of each IoU in `keys` over `records` (dicts with an "occlusion" rate): overall, for occluded
    instances (> OCCLUDED) and by occlusion bucket; None where a group is empty."""
    def mean(recs):
        return {"instances": len(recs), **{k: float(np.mean([r[k] for r in recs])) if recs else None
                                           for k in keys}}

    table = {"all": mean(records),
             f"occluded > {OCCLUDED:.0%}": mean([r for r in records if r["occlusion"] > OCCLUDED])}
    for bucket in OCCLUSION_BUCKETS:
        table[bucket.name] = mean([r for r in records if bucket.contains(r["occlusion"])])
    return table


def gt_ious(store: PriorStore, ann: AmodalAnnotations, threshold: float) -> list[dict]:
    """For every done ground-truth row: occlusion rate, IoU(prior > t, amodal), IoU(visible, amodal)."""
    rows, done = store.rows(), store.done()
    out = []
    for chunk in range(store.num_chunks):
        sl = store.chunk_slice(chunk)
        idx = [r for r in range(sl.start, sl.stop) if done[r] and rows.source[r] == SOURCE_GT]
        if not idx:
            continue
        priors = torch.from_numpy(store.priors(idx))
        for prior, r in zip(priors, idx, strict=True):
            inst = _instance(ann, int(rows.ann_id[r]), store)
            amodal, visible = geometry.masks_in_box(np.stack([inst.amodal_mask(), inst.visible_mask()]),
                                                    rows.box[r], store.prior_size)
            out.append({"row": r, "ann_id": inst.ann_id, "category": inst.category,
                        "occlusion": inst.occlusion_rate,
                        "prior_iou": geometry.mask_iou(prior > threshold, amodal),
                        "visible_iou": geometry.mask_iou(visible, amodal)})
    return out


def _instance(ann: AmodalAnnotations, ann_id: int, store: PriorStore) -> Instance:
    try:
        return ann.instance(ann_id)
    except KeyError:
        raise AisdiffError(f"{store.path}: ground-truth row for annotation {ann_id}, which {ann.path} does "
                           "not have (valid): is this the annotation file the store was made from?") from None
