"""What the amodal path is given: detections matched to ground truths, and the metric's prior/... IoUs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from priors import geometry
from priors.prior_quality import iou_table, match_ground_truths


def test_each_ground_truth_takes_the_best_detection_of_its_class():
    gts = [[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]
    boxes = [[0, 0, 10, 10], [1, 0, 10, 10], [20, 20, 30, 30], [40, 40, 60, 60], [0, 0, 10, 9]]
    labels = [1, 1, 2, 3, 2]
    # ground truth 0: detections 0 and 1 (class 1); the higher score wins, or the higher IoU without scores
    assert match_ground_truths(gts, [1, 1, 3], boxes, labels, [0.2, 0.9, 1, 1, 1]).tolist() == [1, -1, -1]
    assert match_ground_truths(gts, [1, 1, 3], boxes, labels).tolist() == [0, -1, -1]
    # class 2 matches ground truth 1 exactly; box 3 overlaps ground truth 2 by 0.25 < 0.5
    assert match_ground_truths(gts, [2, 2, 3], boxes, labels).tolist() == [4, 2, -1]
    assert match_ground_truths(gts, [2, 2, 3], boxes, labels, min_iou=0.25).tolist() == [4, 2, 3]
    assert match_ground_truths([], [], boxes, labels).tolist() == []
    assert match_ground_truths(gts, [1, 2, 3], [], []).tolist() == [-1, -1, -1]


def test_iou_table_groups_by_occlusion():
    records = [{"occlusion": 0.0, "a": 1.0}, {"occlusion": 0.2, "a": 0.5}, {"occlusion": 0.6, "a": 0.0}]
    table = iou_table(records, ("a",))
    assert table["all"] == {"instances": 3, "a": 0.5}
    assert table["occluded > 10%"] == {"instances": 2, "a": 0.25}
    assert table["none"]["a"] == 1.0 and table["10-30%"]["a"] == 0.5 and table[">50%"]["a"] == 0.0
    assert table["0-10%"] == {"instances": 0, "a": None}


@pytest.fixture(scope="module")
def val(make_benchmark):
    from priors.annotations import load_annotations

    path = make_benchmark("kins2020", 2, 3, 5) / "annotations" / "val.json"
    return path, load_annotations(path)


def _metric(path):
    from priors.synthetic import CATEGORIES
    from segmenter.metric import AmodalMetric

    metric = AmodalMetric(ann_file=str(path), prior_threshold=0.5)
    metric.dataset_meta = {"classes": tuple(n for _, n in CATEGORIES)}
    return metric


def test_metric_scores_the_test_priors_of_found_ground_truths(val):
    """Detections on the ground-truth boxes with the amodal masks as priors and outputs: prior and amodal IoU
    1, visible IoU that of the visible mask with the amodal one in the box; a ground truth whose only
    detection is moved off its box is not found and not scored."""
    path, ann = val
    metric = _metric(path)
    expected, total, missed = [], 0, 0
    for image_id in ann.image_ids():
        insts = ann.by_image(image_id)
        total += len(insts)
        boxes = np.array([i.amodal_box for i in insts], dtype=np.float32)
        amodal = np.stack([i.amodal_mask() for i in insts])
        visible = np.stack([i.visible_mask() for i in insts])
        priors = torch.stack([geometry.masks_in_box(amodal[k:k + 1], boxes[k], 28)[0].float()
                              for k in range(len(insts))])
        boxes[0, [0, 2]] += 1000  # the first detection moves off its box: its ground truth is not found
        missed += 1
        for k, inst in enumerate(insts[1:], 1):
            a, v = geometry.masks_in_box(np.stack([amodal[k], visible[k]]), boxes[k], 28)
            expected.append((inst.occlusion_rate, geometry.mask_iou(v, a)))
        metric.process({}, [{"img_id": image_id, "pred_instances": {
            "bboxes": torch.from_numpy(boxes), "scores": torch.ones(len(insts)),
            "labels": torch.tensor([i.category_id - 1 for i in insts]), "masks": torch.from_numpy(amodal),
            "visible_masks": torch.from_numpy(visible), "occluder_masks": torch.from_numpy(visible),
            "shape_priors": priors}}])
    out = metric.compute_metrics(metric.results)
    assert out["prior/found"] == round((total - missed) / total, 4)
    assert out["prior/IoU"] == out["prior/amodal_IoU"] == 1.0
    assert out["prior/visible_IoU"] == round(float(np.mean([v for _, v in expected])), 4)
    occluded = [v for rate, v in expected if rate > 0.1]
    assert out["prior/visible_IoU_occluded"] == round(float(np.mean(occluded)), 4)
    assert {k for k in out if k.startswith("prior/IoU_occ_")} <= {
        f"prior/IoU_occ_{b}" for b in ("none", "0-10%", "10-30%", "30-50%", ">50%")}


def test_metric_without_shape_priors_reports_no_prior_ious(val):
    path, ann = val
    metric = _metric(path)
    for image_id in ann.image_ids():
        insts = ann.by_image(image_id)
        amodal = torch.from_numpy(np.stack([i.amodal_mask() for i in insts]))
        metric.process({}, [{"img_id": image_id, "pred_instances": {
            "bboxes": torch.tensor([i.amodal_box for i in insts]), "scores": torch.ones(len(insts)),
            "labels": torch.tensor([i.category_id - 1 for i in insts]), "masks": amodal}}])
    assert not any(k.startswith("prior/") for k in metric.compute_metrics(metric.results))
