"""`aisdiff convert-coco-amodal`: an amodal COCO file + a visible COCO file -> the aistron format."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import aisdiff, coco_pair_files

from priors.annotations import AmodalAnnotations
from priors.convert import merge_amodal_visible
from priors.errors import AnnotationError


def _write(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


def _convert(amodal: Path, visible: Path, out: Path) -> subprocess.CompletedProcess:
    """The installed command on a pair of files."""
    return aisdiff("convert-coco-amodal", "--amodal", str(amodal), "--visible", str(visible),
                   "--out", str(out))


@pytest.fixture
def coco_pair(make_benchmark, tmp_path) -> tuple[Path, Path, Path]:
    """(the original aistron file, its amodal COCO file, its visible COCO file)."""
    source = make_benchmark("aistron", 2, 1) / "annotations" / "train.json"
    return (source, *coco_pair_files(source, tmp_path))


def test_converted_file_reads_back_to_the_original_instances(coco_pair, tmp_path):
    source, amodal, visible = coco_pair
    out = tmp_path / "out" / "train.json"
    proc = _convert(amodal, visible, out)
    assert proc.returncode == 0, proc.stderr
    assert "format aistron" in proc.stdout and "2 images" in proc.stdout
    converted = AmodalAnnotations(out)
    original = AmodalAnnotations(source)
    assert converted.format == "aistron" and converted.categories == original.categories
    assert len(converted) == len(original) > 0
    assert [i.key() for i in converted] == [i.key() for i in original]
    assert [p.name for p in out.parent.iterdir()] == ["train.json"]  # (no temporary file left)

    again = _convert(amodal, visible, out)
    assert again.returncode == 2 and "already exists" in again.stderr and "--overwrite" in again.stderr


def _refused(amodal: Path, visible: Path, out: Path, match: str) -> None:
    """Both the library and the command refuse the pair, and the command writes nothing."""
    with pytest.raises(AnnotationError, match=match):
        merge_amodal_visible(amodal, visible)
    proc = _convert(amodal, visible, out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # one paragraph
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def test_annotation_ids_missing_from_one_file_are_refused(coco_pair, tmp_path):
    _, amodal, visible = coco_pair
    doc = json.loads(visible.read_text())
    dropped = doc["annotations"].pop(1)["id"]
    _write(visible, doc)
    _refused(amodal, visible, tmp_path / "out.json", rf"ids {dropped} only in .*amodal\.json.*add the")


def test_differing_images_or_categories_are_refused(coco_pair, tmp_path):
    _, amodal, visible = coco_pair
    original = visible.read_text()
    doc = json.loads(original)
    doc["images"][0]["width"] += 1
    _write(visible, doc)
    _refused(amodal, visible, tmp_path / "out.json", r"list different images: ids 1 described differently")
    doc = json.loads(original)
    doc["categories"][2]["name"] = "pyramid"
    _write(visible, doc)
    _refused(amodal, visible, tmp_path / "out.json", r"list different categories: ids 3 described")


def test_ids_pairing_other_objects_are_refused(coco_pair, tmp_path):
    _, amodal, visible = coco_pair
    doc = json.loads(visible.read_text())
    doc["annotations"][0]["image_id"] = 2
    _write(visible, doc)
    _refused(amodal, visible, tmp_path / "out.json", r"lie on another image or category")


def test_visible_masks_outside_the_amodal_ones_are_refused(coco_pair, tmp_path):
    """Swapped files: the amodal masks (in --visible) stick out of the visible ones where occluded."""
    source, amodal, visible = coco_pair
    occluded = [i.ann_id for i in AmodalAnnotations(source) if i.occlusion_rate > 0.1]
    assert occluded
    _refused(visible, amodal, tmp_path / "out.json",
             rf"annotations {occluded[0]}, .*lies outside the amodal mask .*beyond the 5% tolerance.*swapped")


def test_a_file_that_is_not_coco_is_refused(coco_pair, tmp_path):
    _, amodal, _ = coco_pair
    other = _write(tmp_path / "results.json", {"annotations": []})
    _refused(amodal, other, tmp_path / "out.json", r"results\.json: not a COCO file")
