"""Reading the amodal annotation formats into normalized records, the occluder rule, and validation."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from priors import masks, synthetic
from priors.annotations import FORMAT_NAMES, FORMATS, AnnotationError, load_annotations, occluder_rles


def _scene_truth(seed: int, split: str, count: int):
    """Ground truth straight from the generator: per image, the objects' amodal and visible masks."""
    return [synthetic.make_scene(seed, split, i) for i in range(count)]


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_every_format_reads_back_to_the_generated_instances(make_benchmark, fmt):
    root = make_benchmark(fmt)
    ann = load_annotations(root / "annotations" / "train.json", images_dir=root / "images")
    assert ann.format == ("cocoa" if fmt == "d2sa" else fmt)  # COCOA-cls and D2SA share their keys
    scenes = _scene_truth(0, "train", 6)
    assert len(ann) == sum(len(s.objects) for s in scenes)
    for image_id, scene in enumerate(scenes, start=1):
        records = ann.by_image(image_id)
        assert [r.category_id for r in records] == [o.category_id for o in scene.objects]
        for rec, obj, vis in zip(records, scene.objects, scene.visible, strict=True):
            np.testing.assert_array_equal(rec.amodal_mask(), obj.amodal)
            np.testing.assert_array_equal(rec.visible_mask(), vis)
            ys, xs = np.nonzero(obj.amodal)
            assert rec.amodal_box == (xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0)
            ys, xs = np.nonzero(vis)
            assert rec.visible_box == (xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0)
            assert rec.occlusion_rate == pytest.approx(1 - vis.sum() / obj.amodal.sum())
            assert rec.category == dict(synthetic.CATEGORIES)[obj.category_id]


def test_all_formats_give_identical_records(make_benchmark):
    keys = {}
    for fmt in FORMAT_NAMES:
        root = make_benchmark(fmt)
        keys[fmt] = [r.key() for r in load_annotations(root / "annotations" / "val.json")]
    reference = keys["kins2020"]
    assert reference
    for fmt, k in keys.items():
        assert k == reference, fmt


def test_format_is_detected_from_keys_or_named(make_benchmark, tmp_path):
    root = make_benchmark("kins")
    path = root / "annotations" / "val.json"
    assert load_annotations(path).format == "kins"
    assert load_annotations(path, format="kins").format == "kins"
    with pytest.raises(AnnotationError, match="missing key"):
        load_annotations(path, format="kins2020")
    with pytest.raises(AnnotationError, match="unknown format 'nope'"):
        load_annotations(path, format="nope")


def test_polygons_compressed_and_uncompressed_rle_decode_to_the_same_mask():
    h, w = 20, 30
    poly = [[2.0, 3.0, 25.0, 3.0, 25.0, 15.0, 2.0, 15.0]]
    dense = masks.decode(masks.to_rle(poly, h, w))
    compressed = masks.rle_to_json(masks.encode(dense))
    flat = dense.flatten(order="F").astype(np.int8)  # uncompressed RLE: column-major runs, zeros first
    counts = np.diff(np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])).tolist()
    uncompressed = {"size": [h, w], "counts": ([0] if flat[0] else []) + counts}
    for segm in (poly, compressed, uncompressed):
        np.testing.assert_array_equal(masks.decode(masks.to_rle(segm, h, w)), dense)
    assert dense.sum() == 23 * 12


# -- occluder rule ---------------------------------------------------------------------------------
def _doc(anns, images=None, categories=None, fmt="kins2020"):
    return {
        "images": (images if images is not None
                   else [{"id": 1, "file_name": "a.png", "width": 40, "height": 30}]),
        "categories": categories if categories is not None else [{"id": 1, "name": "box"}],
        "annotations": anns,
    }


def _rect(x1, y1, x2, y2):
    return [[x1, y1, x2, y1, x2, y2, x1, y2]]


def _kins2020(ann_id, amodal, visible, image_id=1, category_id=1):
    """A KINS-2020 annotation from amodal/visible rectangles given as x1, y1, x2, y2."""
    return FORMATS["kins2020"].encode(ann_id, image_id, category_id, _rect(*amodal), _rect(*visible),
                                      [amodal[0], amodal[1], amodal[2] - amodal[0], amodal[3] - amodal[1]],
                                      [visible[0], visible[1], visible[2] - visible[0],
                                       visible[3] - visible[1]],
                                      0, 0, 0.0)


def _write(tmp_path: Path, doc, name="ann.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_occluder_rule_on_two_objects(tmp_path):
    # A (far) is the rectangle [4, 4, 24, 20); B (near) is [16, 8, 34, 26) and hides A's right part.
    a = _kins2020(1, (4, 4, 24, 20), (4, 4, 16, 20))
    b = _kins2020(2, (16, 8, 34, 26), (16, 8, 34, 26))
    # C is far away from both: its visible box overlaps neither amodal box.
    c = _kins2020(3, (0, 24, 6, 30), (0, 24, 6, 30))
    ann = load_annotations(_write(tmp_path, _doc([a, b, c])))
    occ = {k: masks.decode(v) for k, v in ann.occluder_rles(1).items()}
    expected_a = np.zeros((30, 40), bool)
    expected_a[8:20, 16:24] = True  # B's visible mask cut to A's amodal box
    np.testing.assert_array_equal(occ[1], expected_a)
    assert not occ[2].any()  # A's visible box [4, 16) does not overlap B's amodal box [16, 34)
    assert not occ[3].any()
    # B's visible box has IoU 96 / (320 + 324 - 96) = 0.175 with A's amodal box: a threshold above it drops B.
    assert not masks.decode(occluder_rles(ann.by_image(1), iou_threshold=0.2)[1]).any()
    np.testing.assert_array_equal(ann.occluder_mask(ann.instance(1)), expected_a)


# -- validation ------------------------------------------------------------------------------------
GOOD = _kins2020(1, (4, 4, 24, 20), (4, 4, 16, 20))


def _bad(mutate):
    ann = copy.deepcopy(GOOD)
    mutate(ann)
    return _doc([ann, _kins2020(2, (20, 10, 30, 20), (20, 10, 30, 20))])


BAD_CASES = {
    "missing_key": (lambda a: a.pop("i_segm"), "missing key\\(s\\) i_segm"),
    "degenerate_box": (lambda a: a.update(a_bbox=[4, 4, 0, 16]), "zero or negative area"),
    "box_outside_image": (lambda a: a.update(a_bbox=[100, 4, 10, 10]), "outside the 40x30 image"),
    "empty_amodal_mask": (lambda a: a.update(a_segm=masks.rle_to_json(masks.empty(30, 40))),
                          "amodal mask is empty"),
    "empty_visible_mask": (lambda a: a.update(i_segm=masks.rle_to_json(masks.empty(30, 40))),
                           "visible mask is empty"),
    "visible_outside_amodal": (lambda a: a.update(i_segm=_rect(26, 4, 38, 20)),
                               "lie outside the amodal mask"),
    "unknown_category": (lambda a: a.update(category_id=9), "unknown category id 9"),
    "unknown_image": (lambda a: a.update(image_id=5), "not in 'images'"),
    "bad_mask": (lambda a: a.update(a_segm=[[1, 2, 3, 4]]), "polygon with 4 coordinates"),
}


@pytest.mark.parametrize("reason", sorted(BAD_CASES))
def test_each_invalid_record_is_reported_or_skipped_and_counted(tmp_path, reason):
    mutate, message = BAD_CASES[reason]
    path = _write(tmp_path, _bad(mutate))
    with pytest.raises(AnnotationError, match=message) as err:
        load_annotations(path)
    text = str(err.value)
    assert str(path) in text and "annotation 1" in text and "--skip-invalid" in text
    assert "image " in text
    ann = load_annotations(path, skip_invalid=True)
    assert [r.ann_id for r in ann] == [2]
    assert ann.invalid_counts() == {reason: 1}
    assert ann.invalid[0].ann_id == 1 and str(path) in ann.invalid[0].message


def test_duplicate_annotation_ids(tmp_path):
    path = _write(tmp_path, _doc([GOOD, copy.deepcopy(GOOD)]))
    with pytest.raises(AnnotationError, match="annotation id used more than once"):
        load_annotations(path)
    assert load_annotations(path, skip_invalid=True).invalid_counts() == {"duplicate_id": 1}


def test_missing_image_file(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    path = _write(tmp_path, _doc([GOOD]))
    with pytest.raises(AnnotationError, match=r"image file .*a\.png does not exist") as err:
        load_annotations(path, images_dir=images)
    assert "image 1, annotation 1" in str(err.value)
    assert load_annotations(path, images_dir=images,
                            skip_invalid=True).invalid_counts() == {"missing_image_file": 1}
    (images / "a.png").write_bytes(b"")
    assert len(load_annotations(path, images_dir=images)) == 1


def test_malformed_json_names_the_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"images": [1, 2,')
    with pytest.raises(AnnotationError, match=r"broken\.json: malformed JSON at line 1, column \d+"):
        load_annotations(path)


def test_unknown_format_and_missing_sections(tmp_path):
    weird = _doc([{"id": 1, "image_id": 1, "category_id": 1, "mask": [], "box": [0, 0, 1, 1]}])
    with pytest.raises(AnnotationError, match=r"unknown annotation format.*keys found: box, category_id"):
        load_annotations(_write(tmp_path, weird))
    with pytest.raises(AnnotationError, match="needs top-level 'images', 'annotations' and 'categories'"):
        load_annotations(_write(tmp_path, [{"image_id": 1, "bbox": [0, 0, 1, 1]}], "results.json"))
    with pytest.raises(AnnotationError, match="file not found"):
        load_annotations(tmp_path / "nope.json")


def test_masks_are_decoded_lazily(make_benchmark):
    root = make_benchmark("kins2020")
    ann = load_annotations(root / "annotations" / "train.json", check_masks=False)
    assert len(ann) > 0
    assert not any("amodal_rle" in r.__dict__ or "visible_rle" in r.__dict__ for r in ann)
    first = ann.instances[0]
    assert first.amodal_area > 0 and "amodal_rle" in first.__dict__
    assert "amodal_rle" not in ann.instances[1].__dict__


def test_instances_are_sorted_by_image_then_annotation(tmp_path):
    anns = [_kins2020(7, (4, 4, 24, 20), (4, 4, 24, 20), image_id=2),
            _kins2020(3, (4, 4, 24, 20), (4, 4, 24, 20)),
            _kins2020(5, (4, 4, 24, 20), (4, 4, 24, 20), image_id=2)]
    images = [{"id": 2, "file_name": "b.png", "width": 40, "height": 30},
              {"id": 1, "file_name": "a.png", "width": 40, "height": 30}]
    ann = load_annotations(_write(tmp_path, _doc(anns, images=images)))
    assert [(r.image_id, r.ann_id) for r in ann] == [(1, 3), (2, 5), (2, 7)]
    assert ann.image_ids() == [1, 2]
