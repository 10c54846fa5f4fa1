"""`aisdiff predict`, mmdet's `init_detector` / `inference_detector` on plain images, the amodal visualizer
(CPU, a checkpoint trained for two iterations, DiffSP on the fly with the tiny model)."""
from __future__ import annotations

import copy
import json
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
    with pytest.MonkeyPatch.context() as env:
        root = tmp_path_factory.mktemp("predict-data")
        synthetic.generate(root / "synthetic", train_images=4, val_images=3, seed=3)
        env.setenv("AISDIFF_DATA", str(root))
        yield train_two_iterations(root), photos_of(root)


def train_two_iterations(root: Path) -> Path:
    from mmengine.config import Config
    from mmengine.runner import Runner

    import segmenter  # noqa: F401

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
    return root / "work" / "iter_2.pth"


def photos_of(root: Path) -> Path:
    photos = root / "photos"
    (photos / "street").mkdir(parents=True)
    first = mmcv.imread(str(root / "synthetic" / "images" / "val_000000.png"))
    mmcv.imwrite(first, str(photos / "a.png"))
    mmcv.imwrite(first[:, ::-1].copy(), str(photos / "street" / "a.jpg"))  # same size, other content
    mmcv.imwrite(mmcv.imread(str(root / "synthetic" / "images" / "val_000001.png")), str(photos / "b.png"))
    return photos


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
    right_edge = (slice(26, 45), 69)  # the amodal mask's right edge, in the hidden part
    assert changed[right_edge].all() and not stripes[right_edge].all()  # outlined where no stripe is too
    assert not changed[2, 2] and not changed[57, 2]  # outside every mask and box: untouched
    panel = drawn[:, 80:].astype(int)
    assert np.abs(panel[30, 40] - panel[2, 2]).sum() > 0  # the prior's box is coloured, the rest grey


@pytest.mark.parametrize("case", ["missing", "empty folder", "unreadable", "classes", "no on-the-fly prior",
                                  "taken", "out is a file", "device", "corrupt checkpoint",
                                  "other architecture"])
def test_predict_refuses_bad_input_and_leaves_nothing_half_written(trained, tmp_path, case):
    checkpoint, photos = trained
    inputs, options, config, expected, extra = [photos / "b.png"], OPTIONS, CONFIG, None, []
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
    elif case == "taken":
        (out / "vis").mkdir(parents=True)
        expected = "already holds predictions"
    elif case == "out is a file":
        out = tmp_path / "out.txt"
        out.write_text("notes")
        expected = "is a file"
    elif case == "device":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        extra, expected = ["--device", "cuda"], "sees no CUDA device"
    elif case == "corrupt checkpoint":
        checkpoint = copied(checkpoint, tmp_path, lambda data: data[:len(data) // 2])
        expected = "could not be read"
    else:  # a checkpoint without the occluder branch's weights, as another architecture's would be
        import segmenter  # noqa: F401  (mmengine's checkpoint types for weights-only loading)

        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = {k: v for k, v in saved["state_dict"].items() if ".occluder" not in k}
        checkpoint = tmp_path / "other.pth"
        torch.save({"state_dict": state, "meta": saved["meta"]}, checkpoint)
        expected = "missing weights"
    proc = predict(checkpoint, *inputs, out=out, options=options, config=config, extra=extra)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()[-1]) > 0 and "Traceback" not in proc.stderr
    if case == "out is a file":
        assert out.read_text() == "notes"
        return
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == (["vis"] if case == "taken" else []), left


def copied(path: Path, folder: Path, edit) -> Path:
    """A copy of `path` in `folder` with its bytes passed through `edit`."""
    out = folder / f"edited-{path.name}"
    out.write_bytes(edit(path.read_bytes()))
    return out


def test_category_ids_come_from_the_training_file_with_label_plus_one_as_fallback(tmp_path):
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules

    import segmenter  # noqa: F401
    from segmenter.predict import category_ids

    register_all_modules()
    synthetic.generate(tmp_path, train_images=1, val_images=0, seed=1)
    ann = tmp_path / "annotations" / "train.json"
    doc = json.loads(ann.read_text())  # ids with gaps, as COCOA-cls has
    for record in doc["categories"] + doc["annotations"]:
        key = "id" if "name" in record else "category_id"
        record[key] = 10 * record[key]
    ann.write_text(json.dumps(doc))
    dataset = DATASETS.build(dict(type="AmodalDataset", ann_file=str(ann), pipeline=[],
                                  data_prefix=dict(img=str(tmp_path / "images"))))
    ids = tuple(10 * i for i, _ in synthetic.CATEGORIES)
    assert dataset.metainfo["category_ids"] == ids
    classes = dataset.metainfo["classes"]
    assert category_ids({"dataset_meta": dataset.metainfo}, classes) == ids
    assert category_ids({}, classes) == tuple(range(1, len(classes) + 1))  # a checkpoint without them
    # a configured class the file lacked takes an id no other class has
    assert category_ids({"dataset_meta": {"category_ids": (2, None, 1)}}, ("a", "b", "c")) == (2, 3, 1)


def test_same_size_batches_flush_the_oldest_group_when_too_many_wait():
    from segmenter.predict import same_size_batches

    def item(name: str, width: int):
        return name, {"inputs": torch.zeros(3, 8, width)}

    stream = [item("a1", 4), item("a2", 4), item("b1", 5), item("c1", 6), item("d1", 7), item("b2", 5)]
    # a1 a2 fill a batch; b1 c1 d1 are three waiting: b1 goes alone; b2 makes three again: c1 goes; the rest
    assert [[n for n, _ in b] for b in same_size_batches(iter(stream), 2, max_waiting=2)] == [
        ["a1", "a2"], ["b1"], ["c1"], ["d1"], ["b2"]]
    # with room to wait (the default, 4 batches), b2 finds b1
    assert [[n for n, _ in b] for b in same_size_batches(iter(stream), 2)] == [
        ["a1", "a2"], ["b1", "b2"], ["c1"], ["d1"]]


def test_det_inferencer_draws_what_predict_draws(trained, tmp_path):
    from mmdet.apis import DetInferencer

    checkpoint, photos = trained
    config = tmp_path / "no_store.py"  # (DetInferencer takes no --cfg-options)
    config.write_text(f"_base_ = [{str(CONFIG)!r}]\n"
                      "model = dict(roi_head=dict(test_prior=dict(store=None)), "
                      "test_cfg=dict(rcnn=dict(max_per_img=3)))\n")
    inferencer = DetInferencer(model=str(config), weights=str(checkpoint), device="cpu", show_progress=False)
    assert type(inferencer.visualizer).__name__ == "AmodalLocalVisualizer"
    inferencer(str(photos / "b.png"), out_dir=str(tmp_path / "inferencer"), pred_score_thr=0.0)
    proc = predict(checkpoint, photos / "b.png", out=tmp_path / "predict")
    assert proc.returncode == 0, proc.stderr
    drawn = mmcv.imread(str(tmp_path / "inferencer" / "vis" / "b.png"))
    np.testing.assert_array_equal(drawn, mmcv.imread(str(tmp_path / "predict" / "vis" / "b.png")))
