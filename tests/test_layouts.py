"""`aisdiff demo-data --layout`: the synthetic benchmark in KINS / COCOA-cls / D2SA's official folder layouts,
file names, formats and declared categories, where the real-data configs read them."""
from __future__ import annotations

import json

import pytest
from mmengine.config import Config

from pipeline.cli import main
from priors.annotations import AmodalAnnotations
from priors.layouts import LAYOUTS

CONFIGS = {"kins": "aisdiff_r50_fpn_kins.py", "cocoa-cls": "aisdiff_r50_fpn_cocoa-cls.py",
           "d2sa": "aisdiff_r50_fpn_d2sa.py"}
DECLARED = {"kins": 8, "cocoa-cls": 80, "d2sa": 60}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_layout_is_where_its_config_reads_it(name, tmp_path, monkeypatch, capsys):
    from pathlib import Path

    layout = LAYOUTS[name]
    assert main(["demo-data", str(tmp_path), "--layout", name, "--train-images", "2",
                 "--val-images", "1"]) == 0
    assert f"{layout.folder}" in capsys.readouterr().out
    monkeypatch.setenv("AISDIFF_DATA", str(tmp_path))
    cfg = Config.fromfile(str(Path(__file__).resolve().parents[1] / "configs" / "aisdiff" / CONFIGS[name]))
    classes = cfg.train_dataloader.dataset.metainfo.classes
    for split, loader in (("train", cfg.train_dataloader), ("val", cfg.test_dataloader)):
        dataset = loader.dataset
        ann_file = Path(dataset.data_root) / dataset.ann_file
        images = Path(dataset.data_root) / dataset.data_prefix.img
        doc = json.loads(ann_file.read_text())
        # every official category declared, in the official ids; the config's classes are their names
        declared = [(c["id"], c["name"], c["supercategory"]) for c in doc["categories"]]
        assert declared == list(layout.categories)
        assert len(doc["categories"]) == DECLARED[name] == len(classes)
        assert [c["name"] for c in doc["categories"]] == list(classes)
        assert dataset.get("ann_format", layout.format) == layout.format
        # (every image file there, every record valid)
        ann = AmodalAnnotations(ann_file, format=dataset.get("ann_format"), images_dir=images)
        assert ann.format == layout.format and len(ann.images) == (2 if split == "train" else 1)
        used = {inst.category for inst in ann}
        assert used <= set(layout.stands_for.values())
        first = min(ann.images.values(), key=lambda i: i.id)
        assert first.file_name == layout.splits[split].file_name.format(index=0, image_id=first.id)
    heads = cfg.model.roi_head
    assert heads.bbox_head.num_classes == heads.mask_head.num_classes == len(classes)


def test_kins_declares_rider_without_instances(tmp_path):
    assert main(["demo-data", str(tmp_path), "--layout", "kins", "--train-images", "3",
                 "--val-images", "1"]) == 0
    doc = json.loads((tmp_path / "kins" / "annotations" / "update_train_2020.json").read_text())
    assert {"id": 3, "name": "rider", "supercategory": "Living Thing"} in doc["categories"]
    assert all(a["category_id"] != 3 for a in doc["annotations"]) and {"a_segm", "i_segm"} <= set(
        doc["annotations"][0])
    assert (tmp_path / "kins" / "training" / "image_2" / "000000.png").is_file()


def test_a_layout_is_reused_redone_with_overwrite_and_never_written_over_a_real_dataset(tmp_path, capsys):
    args = ["demo-data", str(tmp_path), "--layout", "d2sa", "--train-images", "1", "--val-images", "1"]
    assert main(args) == 0
    assert main(args) == 0 and "already holds this benchmark" in capsys.readouterr().out
    assert main([*args[:-1], "2"]) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*args[:-1], "2", "--overwrite"]) == 0
    real = tmp_path / "real"
    (real / "kins" / "training" / "image_2").mkdir(parents=True)
    (real / "kins" / "training" / "image_2" / "000000.png").write_bytes(b"a real KITTI image")
    assert main(["demo-data", str(real), "--layout", "kins", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "did not write" in err and "training/image_2/000000.png" in err
    assert (real / "kins" / "training" / "image_2" / "000000.png").read_bytes() == b"a real KITTI image"
    # a real image beside synthetic ones (D2SA's splits share one folder): refused, even with --overwrite
    (tmp_path / "d2sa" / "images" / "D2S_real.jpg").write_bytes(b"a real D2S image")
    assert main([*args[:-1], "3", "--overwrite"]) == 2 and "D2S_real.jpg" in capsys.readouterr().err
    assert (tmp_path / "d2sa" / "images" / "D2S_real.jpg").read_bytes() == b"a real D2S image"
    (tmp_path / "d2sa" / "images" / "D2S_real.jpg").unlink()
    # a run interrupted before the val split: redone as it is, without --overwrite
    val = tmp_path / "d2sa" / "annotations" / "D2S_amodal_validation.json"
    for image in json.loads(val.read_text())["images"]:
        (tmp_path / "d2sa" / "images" / image["file_name"]).unlink()
    val.unlink()
    assert main([*args[:-1], "2"]) == 0 and "wrote" in capsys.readouterr().out
    assert main(["demo-data", str(tmp_path), "--layout", "kins", "--format", "cocoa"]) == 2


def test_a_data_root_without_the_image_folder_is_one_clear_error(tmp_path, monkeypatch):
    from pathlib import Path

    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules

    import segmenter  # noqa: F401
    from priors.errors import AisdiffError

    register_all_modules()
    assert main(["demo-data", str(tmp_path), "--layout", "kins", "--train-images", "1",
                 "--val-images", "1"]) == 0
    (tmp_path / "kins" / "testing" / "image_2").rename(tmp_path / "kins" / "testing" / "images")
    monkeypatch.setenv("AISDIFF_DATA", str(tmp_path))
    config = Path(__file__).resolve().parents[1] / "configs" / "aisdiff" / CONFIGS["kins"]
    cfg = Config.fromfile(str(config))
    with pytest.raises(AisdiffError, match=r"update_test_2020.json: its image folder "
                                           r".*kins/testing/image_2/? does not exist\. .*\$AISDIFF_DATA"):
        DATASETS.build(cfg.test_dataloader.dataset)


def test_the_metric_scores_a_file_that_lacks_a_configured_class(tmp_path):
    """KINS 2020 declares `rider` without instances; a test file may not declare a configured class at all:
    detections of it are left out (no ground truth to match), the others are scored as usual."""
    import numpy as np

    from segmenter.metric import AmodalMetric

    assert main(["demo-data", str(tmp_path), "--layout", "kins", "--train-images", "0",
                 "--val-images", "2"]) == 0
    ann_file = tmp_path / "kins" / "annotations" / "update_test_2020.json"
    ann = AmodalAnnotations(ann_file)
    classes = [n for _, n, _ in LAYOUTS["kins"].categories]

    def results(extra: bool) -> list[dict]:
        out = []
        for image_id in ann.image_ids():
            insts = ann.by_image(image_id)
            labels = [classes.index(i.category) for i in insts] + ([2] if extra else [])  # 2: rider
            rles = [i.amodal_rle for i in insts] + ([insts[0].amodal_rle] if extra else [])
            out.append({"img_id": image_id, "labels": np.array(labels), "scores": np.ones(len(labels)),
                        "bboxes": np.array([i.amodal_box for i in insts] + ([insts[0].amodal_box] if extra
                                                                           else []), np.float32),
                        "masks": rles, "visible_masks": rles})
        return out

    doc = json.loads(ann_file.read_text())
    doc["categories"] = [c for c in doc["categories"] if c["name"] != "rider"]  # (declared nowhere)
    ann_file.write_text(json.dumps(doc))
    metric = AmodalMetric(str(ann_file))
    metric.dataset_meta = {"classes": tuple(classes)}
    with_rider, without = metric.compute_metrics(results(True)), metric.compute_metrics(results(False))
    assert with_rider == without and with_rider["amodal/AP"] == 1.0
