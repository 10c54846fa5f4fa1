"""The synthetic amodal benchmark: determinism, exact masks, categories, sizes and occlusion statistics."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from priors import synthetic
from priors.annotations import load_annotations


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_output(tmp_path):
    synthetic.generate(tmp_path / "a", train_images=3, val_images=1, seed=7)
    synthetic.generate(tmp_path / "b", train_images=3, val_images=1, seed=7)
    synthetic.generate(tmp_path / "c", train_images=3, val_images=1, seed=8)
    a, b, c = (_digest(tmp_path / n) for n in "abc")
    assert len(a) == 4 + 2 and a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.endswith(".png"))


def test_an_image_does_not_depend_on_how_many_are_asked_for():
    small = synthetic.make_scene(3, "train", 2)
    again = synthetic.make_scene(3, "train", 2)
    np.testing.assert_array_equal(small.image, again.image)
    assert not np.array_equal(synthetic.make_scene(3, "val", 2).image, small.image)


def test_masks_are_exact_and_layered():
    for index in range(8):
        scene = synthetic.make_scene(0, "train", index)
        amodal = [o.amodal for o in scene.objects]
        h, w = scene.image.shape[:2]
        assert 256 <= h <= 384 and 256 <= w <= 384
        covered = np.zeros((h, w), bool)
        for a, v in zip(amodal[::-1], scene.visible[::-1], strict=True):  # near to far
            np.testing.assert_array_equal(v, a & ~covered)
            covered |= a
        # visible masks partition the union of the shapes; no object touches the image border
        assert (np.sum(scene.visible, axis=0) <= 1).all()
        np.testing.assert_array_equal(np.any(scene.visible, axis=0), np.any(amodal, axis=0))
        for a in amodal:
            assert not (a[0].any() or a[-1].any() or a[:, 0].any() or a[:, -1].any())


def test_categories_shapes_and_occlusion_statistics(make_benchmark):
    root = make_benchmark("kins2020", train_images=60, val_images=0)
    ann = load_annotations(root / "annotations" / "train.json", images_dir=root / "images")
    assert len(ann.categories) >= 6
    by_cat = {c: [r for r in ann if r.category_id == c] for c in ann.categories}
    assert all(len(v) >= 10 for v in by_cat.values())
    rates = np.array([r.occlusion_rate for r in ann])
    assert 1 / 3 <= (rates > 0.1).mean() <= 2 / 3
    assert (rates == 0).mean() > 0.2
    # shapes differ by category: mean amodal fill of the box (area / box area) separates them
    fill = {c: np.mean([r.amodal_area
                        / ((r.amodal_box[2] - r.amodal_box[0]) * (r.amodal_box[3] - r.amodal_box[1]))
                        for r in v]) for c, v in by_cat.items()}
    assert max(fill.values()) - min(fill.values()) > 0.25
    stats = synthetic.split_stats(ann)
    assert stats.instances == len(ann) and stats.images == 60


def test_summary_lists_images_categories_and_occlusion(make_benchmark):
    root = make_benchmark("kins2020")
    stats = {s: synthetic.split_stats(load_annotations(root / "annotations" / f"{s}.json"))
             for s in ("train", "val")}
    assert synthetic.summary(stats).splitlines() == [  # recorded before the buckets moved to priors.occlusion
        "train: 6 images, 28 instances (ball 3, box 6, triangle 8, star 2, cross 3, heart 3, moon 3); "
        "occlusion: none 11 (39%) | 0-10% 4 (14%) | 10-30% 8 (29%) | 30-50% 4 (14%) | >50% 1 (4%)",
        "val: 2 images, 14 instances (ball 0, box 4, triangle 0, star 2, cross 2, heart 4, moon 2); "
        "occlusion: none 5 (36%) | 0-10% 2 (14%) | 10-30% 2 (14%) | 30-50% 1 (7%) | >50% 4 (29%)"]
