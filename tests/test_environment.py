"""The pinned environment works as the project needs it: mmcv CPU ops, mmengine configs, Mask R-CNN
training and resuming on CPU through mmengine's Runner (the torch >= 2.6 checkpoint wrinkle handled)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import segmenter  # noqa: F401  (allow-lists mmengine's checkpoint types for weights-only loading)


def test_mmcv_ops_run_on_cpu():
    from mmcv.ops import RoIAlign, nms

    feat = torch.arange(16.0).reshape(1, 1, 4, 4)
    rois = torch.tensor([[0.0, 0.0, 0.0, 4.0, 4.0]])
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=1, aligned=False)(feat, rois)
    assert out.shape == (1, 1, 2, 2)
    torch.testing.assert_close(out.flatten(), torch.tensor([5.0, 7.0, 13.0, 15.0]))
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    _, keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]


def _maskrcnn_config(data_root, work_dir, max_iters):
    from mmengine.config import Config

    # Inherit mmdet's shipped config through mmengine's package-relative `mmdet::` scheme.
    path = work_dir / "maskrcnn_r18.py"
    path.write_text("_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']\n")
    cfg = Config.fromfile(str(path))
    cfg.model.backbone.update(depth=18, init_cfg=None)
    cfg.model.neck.in_channels = [64, 128, 256, 512]
    cfg.model.roi_head.bbox_head.num_classes = 7
    cfg.model.roi_head.mask_head.num_classes = 7
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
        dict(type="Resize", scale=(256, 256), keep_ratio=True),
        dict(type="PackDetInputs"),
    ]
    classes = ("ball", "box", "triangle", "star", "cross", "heart", "moon")
    cfg.train_dataloader.update(batch_size=2, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.dataset.update(
        data_root=str(data_root), ann_file="annotations/train.json", data_prefix=dict(img="images/"),
        metainfo=dict(classes=classes), pipeline=pipeline)
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters)
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=2, by_epoch=False)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=1)
    cfg.val_dataloader = cfg.val_evaluator = cfg.val_cfg = None
    cfg.test_dataloader = cfg.test_evaluator = cfg.test_cfg = None
    cfg.work_dir = str(work_dir)
    cfg.randomness = dict(seed=0)
    return cfg


@pytest.mark.slow
def test_mask_rcnn_trains_saves_and_resumes_on_cpu(make_benchmark, tmp_path):
    from mmengine.runner import Runner

    # COCOA-cls files are plain COCO to mmdet: `segmentation`/`bbox` hold the amodal mask and box.
    data_root = make_benchmark("cocoa", train_images=4, val_images=1)
    runner = Runner.from_cfg(_maskrcnn_config(data_root, tmp_path, max_iters=2))
    runner.train()
    ckpt = tmp_path / "iter_2.pth"
    assert ckpt.is_file()
    # The wrinkle this guards: torch's default weights-only unpickling refuses mmengine's own checkpoints
    # (a fresh interpreter without the plugin); with the plugin's allow-list they load weights-only.
    plain = subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(ckpt)!r})"],
                           capture_output=True, text=True)
    assert plain.returncode != 0 and "Unsupported global" in plain.stderr
    assert torch.load(ckpt, weights_only=True)["meta"]["iter"] == 2

    cfg = _maskrcnn_config(data_root, tmp_path, max_iters=3)
    cfg.resume = True
    cfg.load_from = str(ckpt)
    resumed = Runner.from_cfg(cfg)
    resumed.train()
    assert resumed.iter == 3
    losses = resumed.message_hub.log_scalars
    for name in ("train/loss_rpn_cls", "train/loss_bbox", "train/loss_mask", "train/loss"):
        assert torch.isfinite(torch.tensor(losses[name].current())), name
