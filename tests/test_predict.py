"""`aisdiff predict`, mmdet's `init_detector` / `inference_detector` on plain images, the amodal visualizer
(CPU, a checkpoint trained for two iterations, DiffSP on the fly with the tiny model)."""
from __future__ import annotations

import copy
import json
import os
import uuid
from pathlib import Path

import mmcv
import numpy as np
import pytest
import torch
from helpers import aisdiff

from priors import masks, synthetic
from priors.identity import content_image_id

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "aisdiff" / "aisdiff_r18_fpn_synthetic.py"
# no train store here (the prior settings check is skipped); three detections per image keep DiffSP short
OPTIONS = ["model.roi_head.test_prior.store=None", "model.test_cfg.rcnn.max_per_img=3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(checkpoint after two iterations without priors, a folder of photos: two of one size, one other)."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    import segmenter  # noqa: F401

    root = tmp_path_factory.mktemp("predict-data")
    synthetic.generate(root / "synthetic", train_images=4, val_images=3, seed=3)
    os.environ["AISDIFF_DATA"] = str(root)
    cfg = Config.fromfile(str(CONFIG))
    cfg.work_dir, cfg.experiment_name = str(root / "work"), f"predict-{uuid.uuid4().hex[:8]}"
    cfg.model.roi_head.train_prior = dict(type="NoPriors")
    cfg.train_dataloader.dataset.pipeline = cfg.train_pipeline_without_priors
    cfg.train_cfg.max_iters = 2
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None  # (no validation: the checkpoint matters)
    cfg.default_hooks.checkpoint.interval = 2
    cfg.train_dataloader.num_workers, cfg.train_dataloader.persistent_workers = 0, False
    cfg.randomness = dict(seed=0)
    Runner.from_cfg(cfg).train()
    photos = root / "photos"
    (photos / "street").mkdir(parents=True)
    first = mmcv.imread(str(root / "synthetic" / "images" / "val_000000.png"))
    mmcv.imwrite(first, str(photos / "a.png"))
    mmcv.imwrite(first[:, ::-1].copy(), str(photos / "street" / "a.jpg"))  # same size, other content
    mmcv.imwrite(mmcv.imread(str(root / "synthetic" / "images" / "val_000001.png")), str(photos / "b.png"))
    return root / "work" / "iter_2.pth", photos


def predict(checkpoint: Path, *inputs, out: Path, extra=(), options=OPTIONS, config: Path = CONFIG):
    return aisdiff("predict", str(config), str(checkpoint), *map(str, inputs), "--out", str(out),
                   "--score-thr", "0", *extra, "--cfg-options", *options)


def test_predict_writes_pictures_and_coco_results_the_same_every_run(trained, tmp_path):
    from pycocotools.coco import COCO

    checkpoint, photos = trained
    proc = predict(checkpoint, photos, out=tmp_path / "one", extra=["--save-priors"])
    assert proc.returncode == 0, proc.stderr
    assert "images/s" in proc.stdout and "in DiffSP" in proc.stdout
    pictures = sorted(p.relative_to(tmp_path / "one" / "vis").as_posix()
                      for p in (tmp_path / "one" / "vis").rglob("*.png"))
    assert pictures == ["a.png", "b.png", "street/a.png"]
    records = json.loads((tmp_path / "one" / "predictions.json").read_text())
    files = [photos / "a.png", photos / "b.png", photos / "street" / "a.jpg"]
    assert [r["file_name"] for r in records] == sorted(str(f) for f in files for _ in range(3))
    ids = {str(f): content_image_id(mmcv.imread(str(f))) for f in files}  # the id is the pixels' hash
    assert all(r["image_id"] == ids[r["file_name"]] for r in records)
    # pycocotools reads the results against a COCO file of those images
    gt = COCO()
    gt.dataset = {"images": [{"id": ids[str(f)], "file_name": str(f), "height": mmcv.imread(str(f)).shape[0],
                              "width": mmcv.imread(str(f)).shape[1]} for f in files],
                  "categories": [{"id": i, "name": n} for i, n in synthetic.CATEGORIES],
                  "annotations": []}
    gt.createIndex()
    results = gt.loadRes(copy.deepcopy(records))  # (loadRes adds keys to the records it is given)
    assert len(results.anns) == 9
    for r in records:
        h, w = mmcv.imread(r["file_name"]).shape[:2]
        amodal, visible = (masks.decode(r[k]) for k in ("segmentation", "visible_segmentation"))
        assert amodal.shape == visible.shape == masks.decode(r["occluder_segmentation"]).shape == (h, w)
        assert r["category_name"] == dict(synthetic.CATEGORIES)[r["category_id"]]
    # a picture with priors has a second panel
    assert mmcv.imread(str(tmp_path / "one" / "vis" / "b.png")).shape[1] == 2 * mmcv.imread(files[1]).shape[1]
    # the same images again, two per batch (the two of one size share a batch): the same results
    proc = predict(checkpoint, photos, out=tmp_path / "two", extra=["--batch-size", "2"])
    assert proc.returncode == 0, proc.stderr
    again = json.loads((tmp_path / "two" / "predictions.json").read_text())
    assert again == records


def test_inference_detector_on_a_plain_image_gives_amodal_visible_and_occluder_masks(trained, tmp_path):
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import VISUALIZERS

    checkpoint, photos = trained
    model = init_detector(str(CONFIG), str(checkpoint), device="cpu",
                          cfg_options={"model.roi_head.test_prior.store": None,
                                       "model.test_cfg.rcnn.max_per_img": 3})
    result = inference_detector(model, str(photos / "b.png"))
    pred = result.pred_instances
    h, w = mmcv.imread(str(photos / "b.png")).shape[:2]
    for key in ("masks", "visible_masks", "occluder_masks"):
        assert tuple(pred[key].shape) == (3, h, w)
    assert result.metainfo["img_id"] == content_image_id(mmcv.imread(str(photos / "b.png")))
    # the same image through `aisdiff predict` gives the same masks
    proc = predict(checkpoint, photos / "b.png", out=tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    for record, amodal in zip(records, pred.masks, strict=True):
        np.testing.assert_array_equal(masks.decode(record["segmentation"]), amodal.numpy())
    # the config's visualizer (what tools/test.py --show-dir uses) is the amodal one
    visualizer = VISUALIZERS.build({**model.cfg.visualizer, "name": f"v-{uuid.uuid4().hex[:6]}"})
    assert type(visualizer).__name__ == "AmodalLocalVisualizer"


def test_amodal_visualizer_fills_visible_hatches_occluder_and_outlines_amodal():
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    from segmenter.visualization import AmodalLocalVisualizer, hatch

    image = np.full((60, 80, 3), 128, np.uint8)
    amodal = np.zeros((1, 60, 80), bool)
    amodal[0, 10:50, 10:70] = True
    visible, occluder = amodal.copy(), np.zeros_like(amodal)
    visible[0, :, 40:] = False
    occluder[0, 5:55, 40:75] = True
    sample = DetDataSample()
    sample.pred_instances = InstanceData(
        bboxes=torch.tensor([[5.0, 5.0, 75.0, 55.0]]), labels=torch.tensor([0]), scores=torch.tensor([0.9]),
        masks=torch.from_numpy(amodal), visible_masks=torch.from_numpy(visible),
        occluder_masks=torch.from_numpy(occluder), shape_priors=torch.ones(1, 28, 28))
    visualizer = AmodalLocalVisualizer(name=f"v-{uuid.uuid4().hex[:6]}", show_priors=True)
    visualizer.dataset_meta = {"classes": ("ball",)}
    visualizer.add_datasample("x", image, sample, draw_gt=False)
    drawn = visualizer.get_image()
    assert drawn.shape == (60, 160, 3)  # the picture and the priors panel
    picture = drawn[:, :80].astype(int)
    changed = np.abs(picture - 128).sum(-1) > 0
    assert changed[30, 25]  # the visible part is filled
    stripes = hatch((60, 80))
    hidden = np.zeros((60, 80), bool)
    hidden[26:45, 45:65] = True  # inside the occluder, away from outline, box and label (rows 5-22)
    assert changed[hidden & stripes].all() and not changed[hidden & ~stripes].any()  # hatched
    assert changed[30, 69] and changed[30, 10]  # the amodal outline runs through the hidden part too
    assert not changed[2, 2] and not changed[57, 2]  # outside every mask and box: untouched
    panel = drawn[:, 80:].astype(int)
    assert np.abs(panel[30, 40] - panel[2, 2]).sum() > 0  # the prior's box is coloured, the rest grey


@pytest.mark.parametrize("case", ["missing", "empty folder", "unreadable", "classes", "no on-the-fly prior",
                                  "taken"])
def test_predict_refuses_bad_input_and_leaves_nothing_half_written(trained, tmp_path, case):
    checkpoint, photos = trained
    inputs, options, config, expected = [photos / "b.png"], OPTIONS, CONFIG, None
    out = tmp_path / "out"
    if case == "missing":
        inputs, expected = [photos / "nope.png"], "nope.png: no such file or folder"
    elif case == "empty folder":
        (tmp_path / "empty").mkdir()
        inputs, expected = [tmp_path / "empty"], "holds no images"
    elif case == "unreadable":
        (tmp_path / "broken.png").write_bytes(b"not a png")
        inputs, expected = [photos / "b.png", tmp_path / "broken.png"], "broken.png could not be read"
    elif case == "classes":
        options = [*OPTIONS, "test_dataloader.dataset.metainfo.classes=a,b,c,d,e,f,g"]
        expected = "was trained on classes"
    elif case == "no on-the-fly prior":
        config = REPO / "configs" / "aisdiff" / "aisdiff_r18_fpn_oracle_synthetic.py"
        options, expected = OPTIONS[1:], "OraclePriors"
    else:
        (out / "vis").mkdir(parents=True)
        expected = "already holds predictions"
    proc = predict(checkpoint, *inputs, out=out, options=options, config=config)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()[-1]) > 0 and "Traceback" not in proc.stderr
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == (["vis"] if case == "taken" else []), left
