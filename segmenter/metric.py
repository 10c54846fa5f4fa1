"""Amodal instance segmentation metric: stock pycocotools COCOeval on amodal and on visible masks.

Reports `amodal/AP`, `amodal/AP50`, `amodal/AP75`, `amodal/AR` (the headline) and `visible/AP`, ...;
class-agnostic amodal AP (`amodal/AP_agnostic`, `amodal/AP50_agnostic`, `amodal/AP75_agnostic`: every
category one, so a mask of the wrong class still counts; the gap to `amodal/AP` is what classification costs),
plus amodal AP per occlusion-rate bucket (`amodal/AP_occ_none`, `amodal/AP_occ_10-30%`, ...; the buckets of
`priors.occlusion`): ground truths outside the bucket are marked crowd, so detections matching them are
neither true nor false positives. Results can be written as COCO results JSON (`outfile_prefix`) and as a
proposals file (`proposals_file`, docs/precompute.md, 'Proposals').
For a model whose results carry `shape_priors` (the AISDiff head), also what the amodal path was given:
for each ground truth found by a detection of its class (box IoU >= 0.5, the highest-scoring one), the IoU
with its amodal mask, in the detection's box, of the thresholded test prior (`prior/IoU`), of the predicted
visible mask (`prior/visible_IoU`) and of the predicted amodal mask (`prior/amodal_IoU`), each overall,
for occluded instances (`..._occluded`) and by bucket (`..._occ_none`, ...), and the share of ground
truths found (`prior/found`).
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from mmdet.registry import METRICS
from mmengine.evaluator import BaseMetric
from mmengine.logging import MMLogger
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from priors import geometry, masks
from priors.annotations import AmodalAnnotations
from priors.occlusion import OCCLUSION_BUCKETS
from priors.prior_quality import iou_table, match_ground_truths
from priors.proposals import proposal_record

KINDS = ("amodal", "visible")
PRIOR_IOUS = {"prior_iou": "IoU", "visible_iou": "visible_IoU", "amodal_iou": "amodal_IoU"}  # -> metric names


def coco_eval(gt: dict, detections: list[dict], use_cats: bool = True) -> np.ndarray:
    """COCOeval('segm') stats of detections against a COCO ground-truth dict (12 numbers, -1 = undefined);
    `use_cats=False` matches detections to ground truths of any category (pycocotools' `useCats=0`)."""
    if not detections:
        return np.zeros(12)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        # loadRes edits them
        evaluator = COCOeval(coco_gt, coco_gt.loadRes([dict(d) for d in detections]), "segm")
        evaluator.params.useCats = int(use_cats)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats)


def ground_truth(ann: AmodalAnnotations, kind: str, crowd: set[int] = frozenset()) -> dict:
    """A COCO ground-truth dict of the amodal or visible masks (`crowd`: annotation ids marked iscrowd)."""
    annotations = []
    for inst in ann:
        rle = inst.amodal_rle if kind == "amodal" else inst.visible_rle
        x, y, w, h = masks.bbox_xywh(rle)
        annotations.append({"id": inst.ann_id, "image_id": inst.image_id, "category_id": inst.category_id,
                            "segmentation": masks.rle_to_json(rle), "area": float(masks.area(rle)),
                            "bbox": [x, y, w, h], "iscrowd": int(inst.ann_id in crowd)})
    return {"images": [{"id": i.id, "width": i.width, "height": i.height, "file_name": i.file_name}
                       for i in ann.images.values()],
            "categories": [{"id": c, "name": n} for c, n in sorted(ann.categories.items())],
            "annotations": annotations}


@METRICS.register_module()
class AmodalMetric(BaseMetric):
    """Amodal and visible mask AP/AR with pycocotools, by occlusion bucket too (see the module docstring)."""

    default_prefix = None

    def __init__(self, ann_file: str, ann_format: str | None = None, skip_invalid: bool = False,
                 outfile_prefix: str | None = None, proposals_file: str | None = None,
                 prior_threshold: float = 0.5, collect_device: str = "cpu",
                 prefix: str | None = None) -> None:
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.ann_file, self.ann_format, self.skip_invalid = ann_file, ann_format, skip_invalid
        self.prior_threshold = prior_threshold  # a test prior above it is "in the object" for prior/IoU
        self.outfile_prefix, self.proposals_file = outfile_prefix, proposals_file

    def process(self, data_batch, data_samples) -> None:
        for sample in data_samples:
            pred = sample["pred_instances"]
            encode = {key: [masks.encode(m) for m in pred[key].cpu().numpy()]
                      for key in ("masks", "visible_masks", "occluder_masks") if key in pred}
            labels = pred["labels"].cpu().numpy()
            self.results.append({
                "img_id": int(sample["img_id"]), "bboxes": pred["bboxes"].cpu().numpy(),
                "scores": pred["scores"].cpu().numpy(), "labels": labels, **encode,
                # the class the AISDiff head conditioned DiffSP on (`prior_labels`: its own or the box head's)
                "prior_labels": pred["prior_labels"].cpu().numpy() if "prior_labels" in pred else labels,
                **({"shape_priors": pred["shape_priors"].cpu().numpy().astype(np.float16)}
                   if "shape_priors" in pred else {})})

    def _detections(self, results: list[dict], label2cat: dict[int, int], kind: str) -> list[dict]:
        key = "masks" if kind == "amodal" else "visible_masks"
        return [{"image_id": r["img_id"], "category_id": label2cat[int(label)], "score": float(score),
                 "segmentation": masks.rle_to_json(rle)}
                for r in results if key in r
                for label, score, rle in zip(r["labels"], r["scores"], r[key], strict=True)
                if int(label) in label2cat]

    def compute_metrics(self, results: list[dict]) -> dict[str, float]:
        logger = MMLogger.get_current_instance()
        ann = AmodalAnnotations(self.ann_file, format=self.ann_format, skip_invalid=self.skip_invalid)
        names = list(self.dataset_meta["classes"] if self.dataset_meta else ann.classes)
        by_name = {n: c for c, n in ann.categories.items()}
        # (a configured class the file does not declare has no ground truth: its detections are left out)
        label2cat = {i: by_name[n] for i, n in enumerate(names) if n in by_name}
        metrics: dict[str, float] = {}
        for kind in KINDS:
            if kind == "visible" and not any("visible_masks" in r for r in results):
                continue  # a plain Mask R-CNN predicts amodal masks only
            gt, dets = ground_truth(ann, kind), self._detections(results, label2cat, kind)
            stats = coco_eval(gt, dets)
            metrics.update({f"{kind}/AP": stats[0], f"{kind}/AP50": stats[1], f"{kind}/AP75": stats[2],
                            f"{kind}/AR": stats[8]})
            if self.outfile_prefix:
                self._dump(f"{self.outfile_prefix}.{kind}.gt.json", gt)
                self._dump(f"{self.outfile_prefix}.{kind}.segm.json", dets)
        amodal_dets = self._detections(results, label2cat, "amodal")
        agnostic = coco_eval(ground_truth(ann, "amodal"), amodal_dets, use_cats=False)
        metrics.update({"amodal/AP_agnostic": agnostic[0], "amodal/AP50_agnostic": agnostic[1],
                        "amodal/AP75_agnostic": agnostic[2]})
        for bucket in OCCLUSION_BUCKETS:
            outside = {i.ann_id for i in ann if not bucket.contains(i.occlusion_rate)}
            metrics[f"amodal/AP_occ_{bucket.name}"] = coco_eval(ground_truth(ann, "amodal", outside),
                                                                amodal_dets)[0]
        if any("shape_priors" in r for r in results):
            metrics.update(self._prior_quality(results, ann, label2cat))
        if self.proposals_file:
            self._dump(self.proposals_file, self._proposals(results, label2cat))
            logger.info(f"wrote proposals to {self.proposals_file}")
        metrics = {k: round(float(v), 4) for k, v in metrics.items()}
        logger.info("amodal / visible: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        return metrics

    def _prior_quality(self, results: list[dict], ann: AmodalAnnotations,
                       label2cat: dict[int, int]) -> dict[str, float]:
        """prior/IoU, prior/visible_IoU, prior/amodal_IoU (see the module docstring) and prior/found."""
        records, total = [], 0
        for r in results:
            gts = ann.by_image(r["img_id"])
            total += len(gts)
            cats = [label2cat.get(int(label), -1) for label in r["labels"]]  # (-1: a class the file lacks)
            found = match_ground_truths([g.amodal_box for g in gts], [g.category_id for g in gts],
                                        r["bboxes"], cats, r["scores"])
            for gt, d in zip(gts, found.tolist(), strict=True):
                if d < 0:
                    continue
                prior = r["shape_priors"][d]
                images = [gt.amodal_mask(), masks.decode(r["visible_masks"][d]), masks.decode(r["masks"][d])]
                amodal, visible, predicted = geometry.masks_in_box(np.stack(images), r["bboxes"][d],
                                                                   prior.shape[-1])
                thresholded = torch.from_numpy(prior.astype(np.float32) > self.prior_threshold)
                records.append({"occlusion": gt.occlusion_rate,
                                "prior_iou": geometry.mask_iou(thresholded, amodal),
                                "visible_iou": geometry.mask_iou(visible, amodal),
                                "amodal_iou": geometry.mask_iou(predicted, amodal)})
        out = {"prior/found": len(records) / max(total, 1)}
        for group, means in iou_table(records, tuple(PRIOR_IOUS)).items():
            suffix = ("" if group == "all" else "_occluded" if group.startswith("occluded")
                      else f"_occ_{group}")
            out.update({f"prior/{name}{suffix}": means[key] for key, name in PRIOR_IOUS.items()
                        if means[key] is not None})
        return out

    def _proposals(self, results: list[dict], label2cat: dict[int, int]) -> list[dict]:
        """Detections as proposal records, with the class DiffSP is conditioned on (the head's visible-branch
        classifier) as category; those with an empty visible mask (nothing to condition a prior on) are left
        out and counted in the log."""
        records, empty = [], 0
        for r in results:
            for box, label, score, vis, occ in zip(r["bboxes"], r["prior_labels"], r["scores"],
                                                   r["visible_masks"], r["occluder_masks"], strict=True):
                if masks.area(vis) == 0:
                    empty += 1
                    continue
                if int(label) not in label2cat:  # (a class the file does not declare)
                    continue
                records.append(proposal_record(r["img_id"], box, label2cat[int(label)], score, vis, occ))
        if empty:
            MMLogger.get_current_instance().info(f"proposals: left out {empty} detections with an empty "
                                                 "visible mask")
        return records

    @staticmethod
    def _dump(path: str, obj) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(obj, fh)
