"""Train as you test: `LoadCachedPriors(source='detections')` gives each ground truth the prior of the
model's own detection of it (a proposal row of the store), with the detection's box."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import STORE_SETTINGS

from priors.store import SOURCE_GT, SOURCE_PROPOSAL, PriorStore, Rows

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "aisdiff" / "aisdiff_r18_fpn_synthetic.py"
GT_VALUE = 0.25


@pytest.fixture(scope="module")
def setup(make_benchmark, tmp_path_factory):
    """The synthetic train split and a store: ground-truth rows of value 0.25, and for the first image's
    first instance a detection of its class on a box shifted by 2 px (value 0.6), one of another class on
    its box (0.7) and one of its class far away (0.8)."""
    from priors.annotations import load_annotations, sha256_file

    root = make_benchmark("kins2020", 3, 1, 14)
    ann = load_annotations(root / "annotations" / "train.json")
    insts = list(ann)
    first = ann.by_image(ann.image_ids()[0])[0]
    x1, y1, x2, y2 = first.amodal_box
    other = next(c for c in ann.categories if c != first.category_id)
    detections = [((x1 + 2, y1, x2 + 2, y2), first.category_id, 0.6), (first.amodal_box, other, 0.7),
                  ((x1 + 500, y1, x2 + 500, y2), first.category_id, 0.8)]
    rows = Rows(box=np.array([i.amodal_box for i in insts] + [d[0] for d in detections], np.float32),
                image_id=[i.image_id for i in insts] + [first.image_id] * 3,
                ann_id=[i.ann_id for i in insts] + [-1] * 3,
                category_id=[i.category_id for i in insts] + [d[1] for d in detections],
                source=[SOURCE_GT] * len(insts) + [SOURCE_PROPOSAL] * 3)
    settings = {**STORE_SETTINGS, "annotations": sha256_file(root / "annotations" / "train.json")}
    store = PriorStore.create(tmp_path_factory.mktemp("det") / "s.zarr", settings, rows, prior_size=28,
                              chunk_rows=len(rows))
    values = [GT_VALUE] * len(insts) + [d[2] for d in detections]
    store.write_chunk(0, np.stack([np.full((28, 28), v, np.float32) for v in values]))
    return root, store.path, first


def _loaded(root, store, first, **options):
    """The first image's instances after LoadCachedPriors(**options): (ann ids, priors, boxes, gt boxes)."""
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import segmenter  # noqa: F401

    register_all_modules()
    cfg = Config.fromfile(str(CONFIG))
    dataset = cfg.train_dataloader.dataset
    dataset.update(data_root=str(root), prior_store=str(store), filter_cfg=None,
                   pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAmodalAnnotations"),
                             dict(type="LoadCachedPriors", **options)])
    built = DATASETS.build(dataset)
    results = next(built[i] for i in range(len(built)) if built[i]["img_id"] == first.image_id)
    return (results["gt_ann_ids"], results["gt_shape_priors"], results["gt_shape_prior_boxes"],
            results["gt_bboxes"].numpy())


def test_ground_truth_source_reads_the_ground_truth_rows(setup):
    ann_ids, priors, boxes, gt_boxes = _loaded(*setup)
    assert (priors == GT_VALUE).all()
    np.testing.assert_array_equal(boxes, gt_boxes)


def test_detections_source_takes_the_detection_of_each_instance(setup):
    root, store, first = setup
    ann_ids, priors, boxes, gt_boxes = _loaded(*setup, source="detections")
    i = int(np.flatnonzero(ann_ids == first.ann_id)[0])
    assert np.allclose(priors[i], 0.6, atol=1e-3)  # (float16 in the store)
    np.testing.assert_array_equal(boxes[i], gt_boxes[i] + np.array([2, 0, 2, 0], np.float32))
    others = np.arange(len(ann_ids)) != i  # of another class, or too far: the ground-truth rows
    assert (priors[others] == GT_VALUE).all()
    np.testing.assert_array_equal(boxes[others], gt_boxes[others])
    # a stricter match leaves every instance its ground-truth row
    _, strict, strict_boxes, _ = _loaded(*setup, source="detections", min_iou=0.99)
    assert (strict == GT_VALUE).all() and np.array_equal(strict_boxes, gt_boxes)


def test_detection_priors_flip_and_resize_with_their_boxes(setup):
    """The packed sample carries the detection's prior on the detection's box, through resize and flip,
    so that CachedPriors warps it to each positive proposal as it warps ground-truth rows."""
    from mmdet.registry import DATASETS
    from mmengine.config import Config

    root, store, first = setup
    cfg = Config.fromfile(str(CONFIG))
    dataset = cfg.train_dataloader.dataset
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAmodalAnnotations"),
                dict(type="LoadCachedPriors", source="detections"),
                dict(type="AmodalResize", scale_factor=2.0, keep_ratio=True),
                dict(type="AmodalRandomFlip", prob=1.0, direction="horizontal"),
                dict(type="PackAmodalInputs")]
    dataset.update(data_root=str(root), prior_store=str(store), filter_cfg=None, pipeline=pipeline)
    built = DATASETS.build(dataset)
    sample = next(s for s in (built[i]["data_samples"] for i in range(len(built)))
                  if s.metainfo["img_id"] == first.image_id)
    gt = sample.gt_instances
    i = int(np.flatnonzero(gt.ann_ids.numpy() == first.ann_id)[0])
    w = sample.metainfo["img_shape"][1]
    x1, y1, x2, y2 = (2 * v for v in first.amodal_box)
    expected = torch.tensor([w - (x2 + 4), y1, w - (x1 + 4), y2])
    torch.testing.assert_close(gt.shape_prior_boxes[i], expected)
    assert torch.allclose(gt.shape_priors[i], torch.tensor(0.6), atol=1e-3)


def test_bad_source_is_refused():
    from segmenter.transforms import LoadCachedPriors

    with pytest.raises(ValueError, match="source must be one of"):
        LoadCachedPriors(source="proposals")


def test_detections_can_come_from_a_proposals_only_store(setup, tmp_path):
    """`detections=STORE`: a second store holding only the detections' rows (`precompute
    --proposals-only`) gives the same priors as proposal rows in the prior store itself."""
    root, store, first = setup
    full = PriorStore.open(store)
    rows = full.rows()
    proposal = np.flatnonzero(rows.source == SOURCE_PROPOSAL)
    only = PriorStore.create(tmp_path / "d.zarr", {**full.settings, "row_sources": "proposals only"},
                             full.rows(proposal), prior_size=28, chunk_rows=len(proposal))
    only.write_chunk(0, full.priors(proposal))
    gt = np.flatnonzero(rows.source == SOURCE_GT)
    gt_only = PriorStore.create(tmp_path / "g.zarr", full.settings, full.rows(gt), prior_size=28,
                                chunk_rows=len(gt))
    gt_only.write_chunk(0, full.priors(gt))
    expected = _loaded(*setup, source="detections")
    got = _loaded(root, gt_only.path, first, source="detections", detections=str(only.path))
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="is read with source='detections'"):
        from segmenter.transforms import LoadCachedPriors

        LoadCachedPriors(detections=str(only.path))
