"""The mmdet plugin on the synthetic benchmark: transforms, training with cached priors, prediction with
on-the-fly and proposal-cache priors, the metric, and the CLI / mmdet tools entry points (CPU, tiny model)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import synthetic_data_root

from priors import geometry, masks, synthetic
from priors.errors import AisdiffError
from priors.store import SOURCE_PROPOSAL, PriorStore

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = REPO / "configs" / "aisdiff" / "aisdiff_r18_fpn_synthetic.py"
LOSSES = ("loss_rpn_cls", "loss_rpn_bbox", "loss_det_cls", "loss_bbox", "loss_cls", "loss_mask_visible",
          "loss_mask_occluder", "loss_mask_amodal")
STORE_TOLERANCE = 1e-4 + 2**-10  # DiffSP batch tolerance plus one float16 step at 1.0


def config_diffsp_flags() -> list[str]:
    """CONFIG's on-the-fly DiffSP settings as `aisdiff precompute` flags: its train store must match them."""
    from mmengine.config import Config

    prior = Config.fromfile(str(CONFIG)).model.roi_head.test_prior
    return [f"--{key.replace('_', '-')}={prior[key]}" for key in ("tau", "self_res", "cross_res")
            if key in prior]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """$AISDIFF_DATA with synthetic/ (6 train, 2 val images) and its train prior store."""
    return synthetic_data_root(tmp_path_factory.mktemp("aisdiff-data"), 2, 5, *config_diffsp_flags())


def load_cfg(data_root: Path, work_dir: Path, config: Path = CONFIG, iters: int = 2):
    from mmengine.config import Config

    os.environ["AISDIFF_DATA"] = str(data_root)
    cfg = Config.fromfile(str(config))
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = f"test-{uuid.uuid4().hex[:8]}"
    cfg.train_cfg.max_iters, cfg.train_cfg.val_interval = iters, 10_000
    cfg.default_hooks.checkpoint.interval = 2
    cfg.default_hooks.logger.interval = 1
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].num_workers, cfg[loader].persistent_workers = 0, False
    return cfg  # (seed 0: every config's, from configs/_base_/iter_runtime.py)


def build_dataset(cfg, transforms):
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules

    import segmenter  # noqa: F401

    register_all_modules()  # mmdet's default scope, as the Runner sets it
    dataset_cfg = copy.deepcopy(cfg.train_dataloader.dataset)
    dataset_cfg.pipeline = transforms
    return DATASETS.build(dataset_cfg)


# -- transforms ------------------------------------------------------------------------------------
def _prepared(cfg, extra):
    base = [dict(type="LoadImageFromFile"), dict(type="LoadAmodalAnnotations"), dict(type="LoadCachedPriors")]
    return build_dataset(cfg, base + extra + [dict(type="PackAmodalInputs")])[0]["data_samples"]


def _pasted(sample) -> torch.Tensor:
    gt = sample.gt_instances
    h, w = sample.metainfo["img_shape"]
    return geometry.paste_priors(gt.shape_priors, gt.shape_prior_boxes, h, w)


def test_flip_crop_resize_keep_masks_and_priors_consistent(data, tmp_path):
    cfg = load_cfg(data, tmp_path)
    plain = _prepared(cfg, [])
    flipped = _prepared(cfg, [dict(type="AmodalRandomFlip", prob=1.0, direction="horizontal")])
    gt, gtf = plain.gt_instances, flipped.gt_instances
    for key in ("masks", "visible_masks", "occluder_masks"):
        np.testing.assert_array_equal(gtf[key].masks, gt[key].masks[:, :, ::-1])
    torch.testing.assert_close(gtf.shape_priors, gt.shape_priors.flip(-1))
    # a prior covers its box: pasted into the image, the flipped prior is the mirrored pasted prior
    torch.testing.assert_close(_pasted(flipped), _pasted(plain).flip(-1), atol=1e-5, rtol=0)

    resized = _prepared(cfg, [dict(type="AmodalResize", scale_factor=2.0, keep_ratio=True)])
    torch.testing.assert_close(resized.gt_instances.shape_priors, gt.shape_priors)  # a resize needs nothing
    torch.testing.assert_close(resized.gt_instances.shape_prior_boxes, gt.shape_prior_boxes * 2)
    np.testing.assert_array_equal(resized.gt_instances.visible_masks.masks[:, ::2, ::2],
                                  gt.visible_masks.masks)

    h, w = plain.metainfo["img_shape"]
    cropped = _prepared(cfg,
                        [dict(type="AmodalRandomCrop", crop_size=(h - 40, w - 40), allow_negative_crop=True)])
    gc = cropped.gt_instances
    keep = [int(np.flatnonzero(gt.ann_ids.numpy() == a)[0]) for a in gc.ann_ids.numpy()]
    dx, dy = (gt.shape_prior_boxes[keep] - gc.shape_prior_boxes)[0, :2].tolist()
    ch, cw = cropped.metainfo["img_shape"]
    for key in ("masks", "visible_masks", "occluder_masks"):
        np.testing.assert_array_equal(gc[key].masks,
                                      gt[key].masks[keep][:, int(dy):int(dy) + ch, int(dx):int(dx) + cw])
    torch.testing.assert_close(gc.shape_priors, gt.shape_priors[keep])
    torch.testing.assert_close(_pasted(cropped),
                               _pasted(plain)[keep][:, int(dy):int(dy) + ch, int(dx):int(dx) + cw],
                               atol=1e-5, rtol=0)

    padded = _prepared(cfg, [dict(type="AmodalPad", size=(w + 8, h + 8))])  # mmdet: (w, h)
    for key in ("masks", "visible_masks", "occluder_masks"):
        assert padded.gt_instances[key].masks.shape[1:] == (h + 8, w + 8)
        np.testing.assert_array_equal(padded.gt_instances[key].masks[:, :h, :w], gt[key].masks)


def test_missing_cached_prior_names_image_and_annotation(data, tmp_path):
    from priors.store import PriorStore as Store

    store = Store.open(data / "synthetic" / "priors_train.zarr")
    partial = tmp_path / "partial.zarr"
    Store.create(partial, store.settings, store.rows(), store.prior_size, store.chunk_rows)  # nothing done
    cfg = load_cfg(data, tmp_path)
    cfg.train_dataloader.dataset.prior_store = str(partial)
    from priors.errors import AisdiffError

    with pytest.raises(AisdiffError, match=r"no computed prior for image 1, annotation\(s\) 1, 2"):
        _prepared(cfg, [])


def test_a_store_made_from_another_annotation_file_is_refused(data, tmp_path):
    from priors.errors import AisdiffError

    cfg = load_cfg(data, tmp_path)
    cfg.train_dataloader.dataset.ann_file = "annotations/val.json"  # (the train split's store)
    with pytest.raises(AisdiffError, match=r"priors_train.zarr was made from another annotation file than .*"
                                           r"val.json \(sha256 [0-9a-f]{12}, this file [0-9a-f]{12}\)"):
        _prepared(cfg, [])


# -- training, prediction --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """Two training iterations with cached priors, a checkpoint, and a resumed third iteration."""
    from mmengine.runner import Runner

    import segmenter  # noqa: F401

    work = tmp_path_factory.mktemp("work")
    runner = Runner.from_cfg(load_cfg(data, work, iters=2))
    runner.train()
    first_losses = {k: runner.message_hub.get_scalar(f"train/{k}").current() for k in LOSSES}
    cfg = load_cfg(data, work, iters=3)
    cfg.resume, cfg.load_from = True, str(work / "iter_2.pth")
    resumed = Runner.from_cfg(cfg)
    resumed.train()
    return work, first_losses, resumed


def test_training_with_cached_priors_has_every_loss_and_resumes(trained):
    work, losses, resumed = trained
    assert set(losses) == set(LOSSES)
    assert all(np.isfinite(v) for v in losses.values()), losses
    assert (work / "iter_2.pth").is_file() and resumed.iter == 3
    for k in LOSSES:
        assert np.isfinite(resumed.message_hub.get_scalar(f"train/{k}").current())


def test_the_config_seeds_training_so_that_a_rerun_trains_the_same_model(data, trained, tmp_path):
    """configs/_base_/iter_runtime.py seeds the Runner (seed 0): a second training of the same iterations
    gives the same losses and weights as the `trained` fixture's first two."""
    from mmengine.runner import Runner

    cfg = load_cfg(data, tmp_path, iters=2)
    assert cfg.randomness == {"seed": 0}
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.seed == 0
    work, losses, _ = trained
    assert {k: runner.message_hub.get_scalar(f"train/{k}").current() for k in LOSSES} == losses
    first = torch.load(work / "iter_2.pth", map_location="cpu", weights_only=True)["state_dict"]
    again = runner.model.state_dict()
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_cfg_options_reseed_aisdiff_train(tmp_path):
    """`aisdiff train ... --cfg-options randomness.seed=N` (as benchmarks/fidelity.py passes it) trains from
    N; without it, from the config's seed 0."""
    from pipeline.cli import build_parser
    from segmenter.cli import load_config

    parser = build_parser()
    plain = load_config(parser.parse_args(["train", str(CONFIG), "--work-dir", str(tmp_path)]))
    assert plain.randomness == {"seed": 0}
    seeded = load_config(parser.parse_args(["train", str(CONFIG), "--work-dir", str(tmp_path),
                                            "--cfg-options", "randomness.seed=3"]))
    assert seeded.randomness == {"seed": 3}


def _predict(cfg, checkpoint: Path):
    """Predictions of the model on the first val image (original image size)."""
    from mmengine.runner import Runner, load_checkpoint

    runner = Runner.from_cfg(cfg)
    load_checkpoint(runner.model, str(checkpoint), map_location="cpu")
    runner.model.eval()
    batch = next(iter(runner.test_dataloader))
    with torch.no_grad():
        return runner.model.test_step(batch)[0]


def test_prediction_with_on_the_fly_priors(data, trained, tmp_path):
    work, _, _ = trained
    sample = _predict(load_cfg(data, tmp_path), work / "iter_3.pth")
    pred = sample.pred_instances
    h, w = sample.metainfo["ori_shape"]
    n = len(pred)
    assert n > 0
    for key in ("masks", "visible_masks", "occluder_masks"):
        assert pred[key].shape == (n, h, w) and pred[key].dtype == torch.bool
    assert (pred.shape_priors.shape == (n, 28, 28) and 0 <= pred.shape_priors.min()
            and pred.shape_priors.max() <= 1)
    assert pred.bboxes.shape == (n, 4) and pred.mask_labels.shape == (n,)


@pytest.mark.parametrize(("source", "field"), [("head", "mask_labels"), ("detector", "labels")])
def test_test_priors_are_computed_for_the_chosen_labels(data, trained, tmp_path, source, field):
    """`prior_labels`: the oracle's priors (ground truth of the given class) follow the mask head's category
    or the box head's label, as chosen."""
    from segmenter.prior_context import PriorContext
    from segmenter.prior_providers import OraclePriors

    work, _, _ = trained
    val = str(data / "synthetic" / "annotations" / "val.json")
    cfg = load_cfg(data, tmp_path)
    cfg.model.roi_head.prior_labels = source
    cfg.model.roi_head.test_prior = dict(type="OraclePriors", ann_file=val)
    sample = _predict(cfg, work / "iter_3.pth")
    pred, meta = sample.pred_instances, sample.metainfo
    boxes = pred.bboxes * pred.bboxes.new_tensor(meta["scale_factor"]).repeat(2)  # back to the network input
    context = PriorContext(None, (meta["img_shape"],), (meta["img_id"],))
    expected = OraclePriors(ann_file=val).test_priors(0, boxes, None, None, pred[field], meta, context)
    torch.testing.assert_close(pred.shape_priors, expected)
    assert torch.equal(pred.prior_labels, pred[field])
    assert (pred.labels != pred.mask_labels).any() and expected.amax((1, 2)).sum() > 0  # (a case that tells)


def test_prior_mask_thr_binarizes_the_masks_fed_to_the_test_priors_only(data, trained, tmp_path):
    """`test_cfg.rcnn.prior_mask_thr`: the predicted visible and occluder masks handed to the test prior
    provider are binarized there (default `mask_thr_binary`); the returned masks keep `mask_thr_binary`."""
    from mmdet.registry import TASK_UTILS

    from segmenter.prior_providers import NoPriors

    if "MaskRecordingPriors" not in TASK_UTILS.module_dict:
        @TASK_UTILS.register_module()
        class MaskRecordingPriors(NoPriors):
            needs_masks = True
            fed: list = []

            def test_priors(self, index, boxes, visible, occluder, labels, img_meta, context):
                self.fed.append((visible.clone(), occluder.clone()))
                return super().test_priors(index, boxes, visible, occluder, labels, img_meta, context)
    recording = TASK_UTILS.get("MaskRecordingPriors")
    work, _, _ = trained
    runs = {}
    for binary, thr in ((0.5, None), (0.5, 0.2), (0.2, None)):
        cfg = load_cfg(data, tmp_path)
        cfg.model.roi_head.test_prior = dict(type="MaskRecordingPriors")
        cfg.model.test_cfg.rcnn.mask_thr_binary = binary
        if thr is not None:
            cfg.model.test_cfg.rcnn.prior_mask_thr = thr
        recording.fed.clear()
        runs[binary, thr] = (_predict(cfg, work / "iter_3.pth").pred_instances, recording.fed[0])
    (default, (vis, occ)), (low, (vis2, occ2)) = runs[0.5, None], runs[0.5, 0.2]
    _, (vis_b, occ_b) = runs[0.2, None]  # unset: mask_thr_binary's
    assert vis.dtype == torch.bool and torch.equal(vis2, vis_b) and torch.equal(occ2, occ_b)
    assert (vis2 >= vis).all() and (occ2 >= occ).all()  # a lower threshold keeps more pixels ...
    assert vis2.sum() > vis.sum()
    for key in ("masks", "visible_masks", "occluder_masks"):  # ... of the provider's input only
        assert torch.equal(low[key], default[key])


def test_prior_labels_must_name_a_source(data, tmp_path):
    from mmdet.registry import MODELS

    from priors.errors import AisdiffError

    cfg = load_cfg(data, tmp_path)
    cfg.model.roi_head.prior_labels = "gt"
    with pytest.raises(AisdiffError, match="prior_labels='gt'; use 'head' or 'detector'"):
        MODELS.build(cfg.model)


DETECTOR = ("backbone", "neck", "rpn_head", "roi_head.bbox_head")


def test_freeze_modules_hook_trains_only_the_mask_head(data, trained, tmp_path):
    """FreezeModulesHook (the fidelity benchmark's fixed detector): the named modules keep the loaded weights
    exactly and run in eval mode; every mask-head parameter trains."""
    from mmengine.hooks import Hook
    from mmengine.runner import Runner

    class RecordModes(Hook):
        def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
            modes.append((runner.model.backbone.training, runner.model.roi_head.mask_head.training))

    work, _, _ = trained
    cfg = load_cfg(data, tmp_path, iters=2)
    cfg.load_from = str(work / "iter_3.pth")
    cfg.custom_hooks = [dict(type="FreezeModulesHook", modules=list(DETECTOR))]
    runner, modes = Runner.from_cfg(cfg), []
    runner.register_hook(RecordModes())
    runner.train()
    start = torch.load(work / "iter_3.pth", map_location="cpu", weights_only=True)["state_dict"]
    after = runner.model.state_dict()
    frozen = [k for k in after if k.startswith(tuple(f"{name}." for name in DETECTOR))]
    head = [name for name, p in runner.model.named_parameters() if name.startswith("roi_head.mask_head.")]
    assert frozen and all(torch.equal(after[k], start[k]) for k in frozen)
    assert head and [k for k in head if torch.equal(after[k], start[k])] == []
    assert modes == [(False, True), (False, True)]


@pytest.mark.parametrize(("modules", "message"), [
    (["backbone", "roi_head.mask_heads"], "has no submodule roi_head.mask_heads .*top-level modules: "
                                          "data_preprocessor, backbone, neck, rpn_head, roi_head"),
    ("backbone", "give a list of submodule names")])
def test_freeze_modules_hook_names_a_bad_module(data, tmp_path, modules, message):
    from mmengine.runner import Runner

    from priors.errors import AisdiffError

    cfg = load_cfg(data, tmp_path, iters=1)
    cfg.custom_hooks = [dict(type="FreezeModulesHook", modules=modules)]
    with pytest.raises(AisdiffError, match=message):
        Runner.from_cfg(cfg).train()


def test_proposal_cache_gives_the_on_the_fly_priors(data, trained, tmp_path):
    """Dump the model's detections as proposals, precompute them, and read them back at test time."""
    from mmengine.runner import Runner

    work, _, _ = trained
    syn = data / "synthetic"
    identity = [dict(type="LoadImageFromFile"), dict(type="AmodalResize", scale_factor=1.0, keep_ratio=True),
                dict(type="PackAmodalInputs",
                     meta_keys=("img_id", "img_path", "ori_shape", "img_shape", "scale_factor"))]

    def cfg_for(provider=None):
        cfg = load_cfg(data, tmp_path)
        cfg.test_dataloader.dataset.pipeline = identity
        cfg.load_from = str(work / "iter_3.pth")
        if provider:
            cfg.model.roi_head.test_prior = provider
        return cfg

    cfg = cfg_for()
    cfg.test_evaluator.proposals_file = str(tmp_path / "proposals.json")
    Runner.from_cfg(cfg).test()
    records = json.loads((tmp_path / "proposals.json").read_text())
    assert records and set(records[0]) == {"image_id", "bbox", "category_id", "score", "segmentation",
                                           "occluder_segmentation"}
    proc = subprocess.run([str(BIN / "aisdiff"), "precompute", "--ann", str(syn / "annotations" / "val.json"),
                           "--images", str(syn / "images"), "--proposals", str(tmp_path / "proposals.json"),
                           "--out", str(tmp_path / "proposals.zarr"), *config_diffsp_flags()],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    store = PriorStore.open(tmp_path / "proposals.zarr")
    assert (store.rows().source == SOURCE_PROPOSAL).sum() == len(records)

    on_the_fly = _predict(cfg_for(), work / "iter_3.pth").pred_instances
    cached = _predict(cfg_for(dict(type="ProposalCachePriors", store=str(tmp_path / "proposals.zarr"),
                                   on_missing="none")), work / "iter_3.pth").pred_instances
    torch.testing.assert_close(cached.bboxes, on_the_fly.bboxes)
    dumped = on_the_fly.visible_masks.flatten(1).any(1)  # the dump leaves out empty visible masks
    assert dumped.sum() > 0
    assert (cached.shape_priors[dumped] - on_the_fly.shape_priors[dumped]).abs().max() <= STORE_TOLERANCE
    assert (cached.shape_priors[~dumped] == 1).all()


# -- the cache provider's warp ---------------------------------------------------------------------
def test_cache_provider_warp_matches_the_store_warp_on_exact_cases():
    from mmengine.structures import InstanceData

    from segmenter.prior_context import PriorContext
    from segmenter.prior_providers import CachedPriors

    priors = torch.rand(2, 28, 28)
    gt_boxes = torch.tensor([[10.0, 20.0, 66.0, 76.0], [0.0, 0.0, 28.0, 56.0]])
    gt = InstanceData(shape_priors=priors, shape_prior_boxes=gt_boxes, bboxes=gt_boxes,
                      labels=torch.tensor([0, 1]))
    # same boxes; 3 cells right
    proposals = torch.cat([gt_boxes, gt_boxes[:1] + torch.tensor([6.0, 0.0, 6.0, 0.0])])
    sampling = InstanceData(pos_assigned_gt_inds=torch.tensor([0, 1, 0]), pos_priors=proposals)
    out = CachedPriors().training_priors([sampling], [gt], PriorContext(None, ((100, 100),), (1,)))
    torch.testing.assert_close(out, geometry.warp_priors(priors[[0, 1, 0]], gt_boxes[[0, 1, 0]], proposals))
    torch.testing.assert_close(out[:2], priors, atol=1e-6, rtol=0)  # identity
    torch.testing.assert_close(out[2, :, :25], priors[0, :, 3:], atol=1e-6, rtol=0)  # exact shift
    assert (out[2, :, 25:] == 0).all()


def test_oracle_priors_are_the_ground_truth_amodal_masks(data):
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    from priors.annotations import AmodalAnnotations
    from segmenter.prior_context import PriorContext
    from segmenter.prior_providers import OraclePriors

    full = np.zeros((2, 64, 64), np.uint8)
    full[0, 10:40, 20:50] = 1
    full[1, 0:32, 0:16] = 1
    gt = InstanceData(masks=BitmapMasks(full, 64, 64))
    boxes = torch.tensor([[20.0, 10.0, 50.0, 40.0], [0.0, 0.0, 16.0, 32.0], [20.0, 10.0, 80.0, 40.0]])
    sampling = InstanceData(pos_assigned_gt_inds=torch.tensor([0, 1, 0]), pos_priors=boxes)
    out = OraclePriors().training_priors([sampling], [gt], PriorContext(None, ((64, 64),), (None,)))
    assert out.shape == (3, 28, 28) and (out[:2] == 1).all()  # a box that is the mask's box: all mask
    assert out[2, :, :12].min() == 1 and out[2, :, 16:].max() == 0  # twice as wide: the left half

    val = data / "synthetic" / "annotations" / "val.json"
    ann = AmodalAnnotations(val)
    inst = next(iter(ann))
    label = sorted(ann.categories).index(inst.category_id)
    oracle = OraclePriors(ann_file=str(val))
    meta = {"img_id": inst.image_id, "scale_factor": (2.0, 2.0)}  # detections in a 2x network input
    box = torch.tensor([inst.amodal_box]) * 2
    far = torch.tensor([[5000.0, 5000.0, 5010.0, 5010.0]])  # outside the image: overlaps no ground truth
    absent = next(i for i, c in enumerate(sorted(ann.categories))
                  if c not in {g.category_id for g in ann.by_image(inst.image_id)})
    context = PriorContext(None, ((1000, 1000),), (inst.image_id,))
    priors = oracle.test_priors(0, torch.cat([box, box, far]), None, None,
                                torch.tensor([label, absent, label]), meta, context)
    expected = geometry.roi_resample(torch.from_numpy(inst.amodal_mask().astype(np.float32))[None, None],
                                     torch.tensor([inst.amodal_box]), 28)[0, 0]
    torch.testing.assert_close(priors[0], expected)
    assert priors[1].max() == 0  # a class with no ground truth in the image
    assert priors[2].max() == 0  # overlaps no ground truth


# -- metric ----------------------------------------------------------------------------------------
def test_metric_equals_a_direct_cocoeval_on_the_json_results(data, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from priors.annotations import load_annotations
    from segmenter.metric import AmodalMetric

    ann_file = data / "synthetic" / "annotations" / "val.json"
    ann = load_annotations(ann_file)
    rng = np.random.default_rng(0)
    metric = AmodalMetric(ann_file=str(ann_file), outfile_prefix=str(tmp_path / "res"))
    metric.dataset_meta = {"classes": tuple(n for _, n in synthetic.CATEGORIES)}
    for image_id in ann.image_ids():
        insts = ann.by_image(image_id)
        amodal = np.stack([i.amodal_mask() for i in insts])
        visible = np.stack([i.visible_mask() for i in insts])
        amodal[0] = np.roll(amodal[0], 6, axis=1)  # an imperfect detection, and a false positive
        fake = np.zeros_like(amodal[:1])
        fake[0, :20, :20] = True
        sample = {"img_id": image_id, "pred_instances": {
            "bboxes": torch.zeros(len(insts) + 1, 4), "scores": torch.from_numpy(rng.random(len(insts) + 1)),
            "labels": torch.tensor([i.category_id - 1 for i in insts] + [0]),
            "masks": torch.from_numpy(np.concatenate([amodal, fake])),
            "visible_masks": torch.from_numpy(np.concatenate([visible, fake])),
            "occluder_masks": torch.from_numpy(np.concatenate([visible, fake]))}}
        metric.process({}, [sample])
    ours = metric.compute_metrics(metric.results)
    for kind, use_cats, names in (("amodal", 1, ("AP", "AP50", "AP75", "AR")),
                                  ("visible", 1, ("AP", "AP50", "AP75", "AR")),
                                  ("amodal", 0, ("AP_agnostic", "AP50_agnostic", "AP75_agnostic"))):
        gt = COCO(str(tmp_path / f"res.{kind}.gt.json"))
        evaluator = COCOeval(gt, gt.loadRes(str(tmp_path / f"res.{kind}.segm.json")), "segm")
        evaluator.params.useCats = use_cats
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        stats = evaluator.stats
        expected = [round(float(stats[i]), 4) for i in (0, 1, 2, 8)]
        assert [ours[f"{kind}/{k}"] for k in names] == expected[:len(names)]
    assert 0 < ours["amodal/AP"] < 1 and ours["visible/AP"] > ours["amodal/AP"]
    assert [k for k in ours if "_occ_" in k] == ["amodal/AP_occ_none", "amodal/AP_occ_0-10%",
                                                 "amodal/AP_occ_10-30%", "amodal/AP_occ_30-50%",
                                                 "amodal/AP_occ_>50%"]


def test_class_agnostic_amodal_ap_counts_masks_of_the_wrong_class(data):
    """Every ground-truth mask detected under the next category: class-aware AP 0, class-agnostic AP 1."""
    from priors.annotations import load_annotations
    from segmenter.metric import AmodalMetric

    ann_file = data / "synthetic" / "annotations" / "val.json"
    ann = load_annotations(ann_file)
    metric = AmodalMetric(ann_file=str(ann_file))
    metric.dataset_meta = {"classes": tuple(n for _, n in synthetic.CATEGORIES)}
    n = len(synthetic.CATEGORIES)
    wrong = [{"img_id": image_id, "labels": np.array([i.category_id % n for i in insts]),  # (label id - 1)
              "scores": np.ones(len(insts)), "bboxes": np.array([i.amodal_box for i in insts], np.float32),
              "masks": [i.amodal_rle for i in insts], "visible_masks": [i.visible_rle for i in insts]}
             for image_id in ann.image_ids() for insts in [ann.by_image(image_id)]]
    ours = metric.compute_metrics(wrong)
    assert ours["amodal/AP"] == 0.0 and ours["visible/AP"] == 0.0
    assert [ours[f"amodal/{k}_agnostic"] for k in ("AP", "AP50", "AP75")] == [1.0, 1.0, 1.0]


# -- entry points ----------------------------------------------------------------------------------
def _env(data: Path) -> dict:
    return {**os.environ, "AISDIFF_DATA": str(data), "PYTHONWARNINGS": "ignore"}


FAST = ["train_cfg.max_iters=2", "default_hooks.checkpoint.interval=2", "default_hooks.logger.interval=1",
        "train_dataloader.num_workers=0", "train_dataloader.persistent_workers=False",
        "test_dataloader.num_workers=0",
        "test_dataloader.persistent_workers=False", "val_dataloader.num_workers=0",
        "val_dataloader.persistent_workers=False", "train_cfg.val_interval=1000"]


def test_aisdiff_train_and_test_commands(data, tmp_path):
    work = tmp_path / "w"
    proc = subprocess.run([str(BIN / "aisdiff"), "train", str(CONFIG), "--work-dir", str(work),
                           "--cfg-options", *FAST], capture_output=True, text=True, env=_env(data), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "iter_2.pth").is_file()
    proc = subprocess.run([str(BIN / "aisdiff"), "test", str(CONFIG), str(work / "iter_2.pth"), "--work-dir",
                           str(work), "--dump-proposals", str(tmp_path / "props.json"),
                           "--show-dir", str(tmp_path / "show"), "--cfg-options", *FAST],
                          capture_output=True, text=True, env=_env(data), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(f"| {row} |" in proc.stdout for row in ("amodal", "visible", "amodal, any class"))
    cost = next(line for line in proc.stdout.splitlines() if line.startswith("test cost: "))
    assert cost.startswith("test cost: 2 images in ") and "s per image" in cost and "in DiffSP" in cost
    assert not cost.endswith(" 0% of it in DiffSP")  # (on-the-fly priors: DiffSP ran for each detection)
    # --show-dir (mmdet's visualization hook, the config's visualizer): one picture per val image
    import mmcv

    import segmenter  # noqa: F401  (mmengine's checkpoint types for weights-only loading)

    shown = sorted(p.name for p in (tmp_path / "show").iterdir())
    assert shown == ["val_000000.png", "val_000001.png"]
    for name in shown:
        image = mmcv.imread(str(data / "synthetic" / "images" / name))
        h, w = image.shape[:2]  # the ground-truth panel beside the prediction's, as mmdet draws them
        assert mmcv.imread(str(tmp_path / "show" / name)).shape == (h, 2 * w, 3)
    # the checkpoint records each label's category id (what `aisdiff predict` writes as category_id)
    meta = torch.load(work / "iter_2.pth", map_location="cpu", weights_only=True)["meta"]
    assert meta["dataset_meta"]["category_ids"] == tuple(i for i, _ in synthetic.CATEGORIES)
    metrics = json.loads((work / "metrics.json").read_text())
    assert {"amodal/AP", "amodal/AP50", "amodal/AP75", "amodal/AR", "visible/AP"} <= set(metrics)
    records = json.loads((tmp_path / "props.json").read_text())
    # (after 2 iterations every visible mask may still be empty: none dumped)
    assert isinstance(records, list)
    for record in records:
        rle = record["segmentation"]
        assert masks.area(masks.to_rle(rle, *rle["size"])) > 0


@pytest.mark.slow
def test_mmdet_tools_train_runs_the_config(data, tmp_path):
    import mmdet

    tool = Path(mmdet.__file__).parent / ".mim" / "tools" / "train.py"
    proc = subprocess.run([sys.executable, str(tool), str(CONFIG), "--work-dir", str(tmp_path / "w"),
                           "--cfg-options", *FAST], capture_output=True, text=True, env=_env(data), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "w" / "iter_2.pth").is_file()
    assert "loss_mask_amodal" in proc.stdout + proc.stderr


CONFIGS = {"aisdiff_r50_fpn_kins.py": 8, "aisdiff_r101_fpn_kins.py": 8,
           "aisdiff_regnetx-3.2gf_fpn_kins.py": 8, "aisdiff_r50_fpn_cocoa-cls.py": 80,
           "aisdiff_r50_fpn_d2sa.py": 60, "aisdiff_r18_fpn_synthetic.py": 7,
           "aisdiff_r18_fpn_noprior_synthetic.py": 7, "aisdiff_r18_fpn_oracle_synthetic.py": 7,
           "aisdiff_r18_fpn_oracle-shape_synthetic.py": 7, "aisdiff_r18_fpn_oracle-input_synthetic.py": 7,
           "aisdiff_r18_fpn_template_synthetic.py": 7, "aisdiff_r18_fpn_residual_synthetic.py": 7,
           "maskrcnn_r18_fpn_amodal_synthetic.py": 7, "aisdiff_r50_fpn_custom.py": 3}
# the test prior of each config, by a word of its name (first match; otherwise OnTheFlyPriors)
TEST_PRIORS = {"noprior": "NoPriors", "oracle-input": "OracleInputPriors", "oracle": "OraclePriors",
               "template": "ClassTemplatePriors"}


def test_recommended_config_is_the_measured_head_under_residual_fusion():
    """The recommended config is the synthetic config with exactly the options of the committed fidelity
    records it is recommended by (the pinned detector's tag 4142a0fa), as `aisdiff train --cfg-options`
    applies them, and builds that head."""
    import argparse

    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import segmenter  # noqa: F401
    from segmenter.cli import add_train_parser, load_config

    register_all_modules()
    record = (REPO / "benchmarks" / "results" / "fidelity" / "detector-baef3b6a"
              / "fidelity_opts-4142a0fa_d_seed0.json")
    options = json.loads(record.read_text())["settings"]["cfg_options"]
    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers())
    measured = load_config(parser.parse_args(["train", str(CONFIG), "--cfg-options", *options]))
    recommended = Config.fromfile(str(REPO / "configs" / "aisdiff" / "aisdiff_r18_fpn_residual_synthetic.py"))
    assert recommended.model.to_dict() == measured.model.to_dict()
    assert recommended.model.roi_head.mask_head != Config.fromfile(str(CONFIG)).model.roi_head.mask_head
    head = MODELS.build(recommended.model.roi_head.mask_head)
    assert head.prior_fusion == "residual" and head.attention is None
    assert len(head.amodal_features) == 4 and head.amodal_features[-1][0].out_channels == 256
    assert head.amodal_predictor[-1].out_channels == 7  # one mask per category


def test_the_config_list_covers_every_config_file():
    """A config added to configs/aisdiff/ is built by the test below once it is listed in CONFIGS."""
    assert sorted(CONFIGS) == sorted(p.name for p in (REPO / "configs" / "aisdiff").glob("*.py"))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_config_builds_its_model_and_reads_data_roots_from_the_environment(name, monkeypatch):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import segmenter  # noqa: F401

    register_all_modules()
    monkeypatch.setenv("AISDIFF_DATA", "/datasets")
    cfg = Config.fromfile(str(REPO / "configs" / "aisdiff" / name))
    assert cfg.custom_imports.imports == ["segmenter"]
    assert cfg.randomness == {"seed": 0}  # (configs/_base_/iter_runtime.py): a rerun trains the same model
    assert cfg.train_dataloader.dataset.data_root.startswith("/datasets/")
    assert cfg.val_evaluator.type == "AmodalMetric" and cfg.val_evaluator.ann_file.startswith("/datasets/")
    head = cfg.model.roi_head
    assert head.bbox_head.num_classes == head.mask_head.num_classes == CONFIGS[name]
    if name.startswith("aisdiff"):
        assert cfg.model.type == "AISDiff" and head.mask_head.type == "AISDiffMaskHead"
        expected = next((prior for word, prior in TEST_PRIORS.items() if word in name), "OnTheFlyPriors")
        assert head.test_prior.type == expected
        assert head.test_prior.get("ann_file", "/datasets/").startswith("/datasets/")
        assert head.test_prior.get("frame", "image") == ("box" if "oracle-shape" in name else "image")
        assert cfg.train_dataloader.dataset.prior_store.startswith("/datasets/")
    if name.endswith("synthetic.py"):  # small enough to build here (the others load ImageNet weights)
        model = MODELS.build(cfg.model)
        assert sum(p.numel() for p in model.parameters()) > 1_000_000
        model.train()  # (where mmdet's ResNet freezes its frozen stages and puts BN in eval mode)
        # from scratch: no stage frozen at its random weights, no BN normalizing with its initial statistics
        assert all(p.requires_grad for p in model.backbone.parameters())
        assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.backbone.modules())


def test_mask_head_starts_from_mmdet_initialization():
    """Convolutions Kaiming-normal (fan_out, ReLU gain) with zero bias as mmdet's mask heads, non-local blocks
    the identity, the spatial gate 1/2 everywhere, mask logits N(0, 0.001) and the category classifier
    N(0, 0.01). With PyTorch's default the amodal path stayed at chance (BCE ln 2) through the fidelity
    benchmark's schedule; with Kaiming mask logits (std 4 to 12 at the start) the first gradients saturated
    the gate and the amodal path died."""
    from segmenter.mask_head import AISDiffMaskHead, NonLocalBlock

    torch.manual_seed(0)
    head = AISDiffMaskHead(num_classes=7, in_channels=256, conv_channels=128)
    blocks = [m for m in head.modules() if isinstance(m, NonLocalBlock)]
    assert len(blocks) == 2 and all(not b.out.weight.any() and not b.out.bias.any() for b in blocks)
    own = {id(c) for b in blocks for c in b.children()}  # (query/key/value keep PyTorch's default)
    gate = head.attention[-1]
    assert not gate.weight.any() and not gate.bias.any()
    own.add(id(gate))
    for branch in (head.occluder.predictor, head.visible.predictor, head.amodal_predictor):
        logits = branch[-1]  # near-zero logits at the start (Detectron2's mask predictor)
        assert not logits.bias.any() and abs(logits.weight.std().item() / 0.001 - 1) < 0.25
        own.add(id(logits))
    convs = [m for m in head.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
             and id(m) not in own]
    assert len(convs) == 11
    for conv in convs:
        w = conv.weight
        expected = (2.0 / (w.shape[0] * w[0, 0].numel())) ** 0.5  # torch's fan_out: dim 0 times the kernel
        assert not conv.bias.any() and abs(w.std().item() / expected - 1) < 4 / (2 * w.numel()) ** 0.5, conv
    classifier = head.cls_fc[-1]
    assert not classifier.bias.any() and abs(classifier.weight.std().item() / 0.01 - 1) < 0.1


def test_init_cfg_gives_the_amodal_predictor_mmdet_kaiming_logits():
    """The fidelity screens' `init_cfg` override (Kaiming logits) re-initializes the whole amodal
    predictor as mmdet's FCNMaskHead does (Kaiming-normal, fan_out, zero bias: logits of std sqrt(2 / 7) for 7
    per-category channels instead of 0.001) and nothing else: the other logits and the gate keep theirs."""
    from segmenter.mask_head import AISDiffMaskHead

    torch.manual_seed(0)
    init_cfg = dict(type="Kaiming", override=dict(name="amodal_predictor", type="Kaiming"))
    head = AISDiffMaskHead(num_classes=7, in_channels=256, conv_channels=128, class_agnostic_amodal=False,
                           init_cfg=init_cfg)
    head.init_weights()
    logits = head.amodal_predictor[-1].weight
    assert logits.shape[:2] == (7, 128) and not head.amodal_predictor[-1].bias.any()
    assert abs(logits.std().item() / (2.0 / 7) ** 0.5 - 1) < 4 / (2 * logits.numel()) ** 0.5
    for branch in (head.occluder.predictor, head.visible.predictor):
        assert abs(branch[-1].weight.std().item() / 0.001 - 1) < 0.25
    assert not head.attention[-1].weight.any()


def test_logits_init_kaiming_gives_every_mask_predictor_mmdet_logits():
    """`logits_init='kaiming'`: the occluder, visible and amodal logits start as mmdet's FCNMaskHead's (std
    sqrt(2 / channels out)); the default is the same head with N(0, 0.001) logits; other values are
    refused."""
    from segmenter.mask_head import AISDiffMaskHead

    torch.manual_seed(0)
    default = AISDiffMaskHead(num_classes=7, in_channels=256, conv_channels=128)
    torch.manual_seed(0)
    head = AISDiffMaskHead(num_classes=7, in_channels=256, conv_channels=128, logits_init="kaiming")
    assert head.state_dict().keys() == default.state_dict().keys()
    for branch in (head.occluder.predictor, head.visible.predictor, head.amodal_predictor):
        logits = branch[-1].weight
        assert not branch[-1].bias.any() and abs(logits.std().item() / 2.0 ** 0.5 - 1) < 0.25
    torch.manual_seed(0)
    explicit = AISDiffMaskHead(num_classes=7, in_channels=256, conv_channels=128, logits_init="normal")
    pairs = zip(explicit.state_dict().values(), default.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)
    with pytest.raises(AisdiffError, match="logits_init='xavier'"):
        AISDiffMaskHead(num_classes=7, logits_init="xavier")


def test_per_category_amodal_masks_are_the_channel_of_the_prior_class():
    """class_agnostic_amodal=False: one amodal channel per category and each RoI's mask is the channel of the
    class its prior is for (as mmdet's FCNMaskHead takes the label's channel); only those channels learn.
    A class-agnostic head has one channel, whatever the labels."""
    from segmenter.mask_head import AISDiffMaskHead

    torch.manual_seed(0)
    feats, priors = torch.randn(5, 16, 14, 14), torch.rand(5, 28, 28)
    labels = torch.tensor([3, 0, 3, 6, 1])
    head = AISDiffMaskHead(num_classes=7, in_channels=16, conv_channels=8, class_agnostic_amodal=False)
    logits = head.amodal_predictor[-1]
    assert logits.out_channels == 7
    torch.nn.init.normal_(logits.weight)  # (channels that differ clearly)
    out = head.forward_amodal(feats, priors, labels)
    assert out.shape == (5, 1, 28, 28)
    for c in range(7):
        each = head.forward_amodal(feats, priors, torch.full((5,), c))
        torch.testing.assert_close(out[labels == c], each[labels == c])
        assert not torch.allclose(out[labels != c], each[labels != c])
    out.sum().backward()
    learned = logits.weight.grad.flatten(1).abs().sum(1) > 0
    assert learned.tolist() == [c in (0, 1, 3, 6) for c in range(7)]

    agnostic = AISDiffMaskHead(num_classes=7, in_channels=16, conv_channels=8)
    assert agnostic.amodal_predictor[-1].out_channels == 1
    torch.testing.assert_close(agnostic.forward_amodal(feats, priors, labels),
                               agnostic.forward_amodal(feats, priors, torch.zeros(5, dtype=torch.long)))


def test_without_gate_convs_the_prior_alone_weighs_the_amodal_features():
    """num_attention_convs=0 (an ablation of the paper's attention learning): no gate, the amodal logits are
    the predictor on the amodal features times the prior resized to them; bad depths fail naming the
    options."""
    import torch.nn.functional as F

    from priors.errors import AisdiffError
    from segmenter.mask_head import AISDiffMaskHead

    torch.manual_seed(0)
    feats, priors = torch.randn(3, 16, 14, 14), torch.rand(3, 28, 28)
    head = AISDiffMaskHead(num_classes=7, in_channels=16, conv_channels=8, num_attention_convs=0)
    assert head.attention is None
    torch.nn.init.normal_(head.amodal_predictor[-1].weight)
    amodal = head.amodal_features(feats)
    prior = F.interpolate(priors[:, None], size=(14, 14), mode="bilinear", align_corners=False)
    expected = head.amodal_predictor(amodal * prior)
    torch.testing.assert_close(head.forward_amodal(feats, priors, torch.zeros(3, dtype=torch.long)), expected)
    gated = AISDiffMaskHead(num_classes=7, in_channels=16, conv_channels=8, num_attention_convs=3)
    assert len(gated.attention) == 3
    for bad in (dict(num_attention_convs=-1), dict(num_amodal_convs=0)):
        with pytest.raises(AisdiffError, match="num_amodal_convs=.*num_attention_convs="):
            AISDiffMaskHead(num_classes=7, in_channels=16, conv_channels=8, **bad)
