"""`aisdiff check-data`: an annotation file's report, and its agreement with a config and a checkpoint."""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from helpers import aisdiff

from priors import synthetic
from priors.annotations import AmodalAnnotations
from priors.errors import AisdiffError

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "aisdiff" / "aisdiff_r18_fpn_synthetic.py"
CLASSES = tuple(name for _, name in synthetic.CATEGORIES)


@pytest.fixture
def data(make_benchmark) -> tuple[Path, Path]:
    """(the synthetic train file in the aistron format, its image folder)."""
    root = make_benchmark("aistron", 2, 1)
    return root / "annotations" / "train.json", root / "images"


def _edited(source: Path, out: Path, edit) -> Path:
    """A copy of an annotation file with `edit(doc)` applied."""
    doc = json.loads(source.read_text())
    edit(doc)
    out.write_text(json.dumps(doc))
    return out


def _checkpoint(path: Path, category_ids=tuple(range(1, 8)), rows: int = 8) -> Path:
    """A checkpoint in mmengine's layout trained on the synthetic classes: meta.dataset_meta and the box
    classifier's weight."""
    torch.save({"meta": {"dataset_meta": {"classes": CLASSES, "category_ids": tuple(category_ids)}},
                "state_dict": {"roi_head.bbox_head.fc_cls.weight": torch.zeros(rows, 16)}}, path)
    return path


class Payload:
    """Unpickling this creates `marker`: a stand-in for code a malicious checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _run(*argv: str) -> int:
    """The command in this process (its parser, as `aisdiff` builds it)."""
    from segmenter.check_data import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["check-data", *argv])
    return args.func(args)


def test_a_consistent_file_and_config_pass_with_the_counts(data):
    ann_file, images = data
    proc = aisdiff("check-data", str(ann_file), "--images", str(images), "--config", str(CONFIG))
    assert proc.returncode == 0, proc.stderr
    counts = Counter(i.category for i in AmodalAnnotations(ann_file))
    assert "format aistron, 2 images" in proc.stdout
    for cid, name in synthetic.CATEGORIES:
        assert re.search(rf"^\s+{cid}\s+{name}\s+{counts[name]}$", proc.stdout, re.M), name
    assert re.search(rf"^\s+total\s+{sum(counts.values())}$", proc.stdout, re.M)
    assert re.search(r"^\s+occlusion rate\s+none\s+0-10%\s+10-30%\s+30-50%\s+>50%$", proc.stdout, re.M)
    assert f"consistent: file {ann_file}, config {CONFIG}" in proc.stdout


def test_a_class_count_other_than_the_heads_is_refused(data, capsys):
    ann_file, _ = data
    with pytest.raises(AisdiffError) as err:
        _run(str(ann_file), "--config", str(CONFIG),
             "--cfg-options", "model.roi_head.bbox_head.num_classes=6")
    message = str(err.value)
    assert f"config {CONFIG} sets model.roi_head.bbox_head.num_classes=6 but declares 7 classes" in message
    assert "mask_head" not in message.split("but declares")[0]
    assert f"file {ann_file}: 7 categories ball (1), box (2)" in message and "set num_classes=7" in message
    assert "ball" in capsys.readouterr().out  # the report comes first


def test_a_file_category_the_config_lacks_is_refused_a_class_the_file_lacks_is_a_warning(data, tmp_path,
                                                                                         capsys):
    ann_file, _ = data
    renamed = _edited(ann_file, tmp_path / "renamed.json",
                      lambda doc: doc["categories"][6].update(name="crescent"))
    with pytest.raises(AisdiffError) as err:
        _run(str(renamed), "--config", str(CONFIG))
    assert f"file {renamed} has categories crescent (7) that config {CONFIG} does not" in str(err.value)
    assert "'moon'" in str(err.value) and "add them to the config's classes" in str(err.value)
    assert f"warning: class 'moon' declared by config {CONFIG} has no category in file {renamed}" in \
        capsys.readouterr().out


def test_wrong_category_ids_against_the_checkpoint_are_refused(data, tmp_path):
    ann_file, images = data
    ckpt = _checkpoint(tmp_path / "iter_300.pth")
    assert _run(str(ann_file), "--config", str(CONFIG), "--checkpoint", str(ckpt)) == 0

    def swap_ball_and_box(doc: dict) -> None:
        swap = {1: 2, 2: 1}
        for entry in doc["categories"]:
            entry["id"] = swap.get(entry["id"], entry["id"])
        for entry in doc["annotations"]:
            entry["category_id"] = swap.get(entry["category_id"], entry["category_id"])

    swapped = _edited(ann_file, tmp_path / "swapped.json", swap_ball_and_box)
    proc = aisdiff("check-data", str(swapped), "--config", str(CONFIG), "--checkpoint", str(ckpt))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert (f"wrong category ids: checkpoint {ckpt} was trained with ball = 1, box = 2 "
            f"(meta.dataset_meta.category_ids), but file {swapped} numbers ball = 2, box = 1") in proc.stderr
    with pytest.raises(AisdiffError, match="wrong category ids"):  # also without a config
        _run(str(swapped), "--checkpoint", str(ckpt))


def test_a_checkpoint_of_other_classes_or_classifier_size_is_refused(data, tmp_path):
    ann_file, _ = data
    small = _checkpoint(tmp_path / "a.pth", rows=6)
    with pytest.raises(AisdiffError, match=r"classifier roi_head.bbox_head.fc_cls.weight has 6 rows "
                                           r"\(5 classes \+ background\), but there are 7 classes"):
        _run(str(ann_file), "--config", str(CONFIG), "--checkpoint", str(small))
    classes = "(ball,box,triangle,star,cross,heart,crescent)"
    with pytest.raises(AisdiffError, match=r"trained on classes \[.*'moon'\] .*declares \[.*'crescent'\]"):
        _run(str(ann_file), "--config", str(CONFIG), "--checkpoint", str(_checkpoint(tmp_path / "b.pth")),
             "--cfg-options", f"train_dataloader.dataset.metainfo.classes={classes}")


def test_a_checkpoint_holding_more_than_weights_is_not_unpickled(data, tmp_path):
    ann_file, _ = data
    path, marker = tmp_path / "odd.pth", tmp_path / "code-ran"
    torch.save({"meta": {}, "state_dict": {}, "extra": Payload(marker)}, path)
    with pytest.raises(AisdiffError, match=r"holds more than weights .*\(the type pathlib"):
        _run(str(ann_file), "--checkpoint", str(path))
    assert not marker.exists()


def test_invalid_records_are_listed_with_their_reason_and_exit_1(data, tmp_path, capsys):
    ann_file, _ = data
    broken = _edited(ann_file, tmp_path / "broken.json",
                     lambda doc: doc["annotations"][0].update(amodal_bbox=[5, 5, 0, 0]))
    assert _run(str(broken)) == 1
    out = capsys.readouterr().out
    first = json.loads(ann_file.read_text())["annotations"][0]
    assert "1 invalid" in out and "invalid records (degenerate_box 1):" in out
    assert (f"[degenerate_box] {broken}: image {first['image_id']}, annotation {first['id']}: "
            "box 'amodal_bbox' [5.0, 5.0, 0.0, 0.0] has zero or negative area") in out
