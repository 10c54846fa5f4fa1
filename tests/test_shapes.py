"""The synthetic benchmark's shape families (`priors.shapes`): simple polygons whatever their parameters,
the articulated cross exactly the union of its two bars, and within-category variation where `high`
promises it."""
from __future__ import annotations

import numpy as np
import pytest

from priors import masks, synthetic
from priors.shapes import HIGH_SHAPES, LOW_SHAPES, VARIATIONS, _bars_crossing

SIDE = 240  # pixels the unit outline is drawn at


def _raster(pts: np.ndarray) -> np.ndarray:
    """The polygon `pts` (about [-1, 1]^2) drawn at SIDE pixels, as pycocotools draws the files' polygons."""
    return masks.decode(masks.to_rle([list((pts * SIDE / 2.2 + SIDE / 2).reshape(-1))], SIDE, SIDE))


def _shoelace(pts: np.ndarray) -> float:
    x, y = (pts * SIDE / 2.2).T
    return abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2


@pytest.mark.parametrize("name", sorted({*HIGH_SHAPES, *(f"low:{n}" for n in LOW_SHAPES)}))
def test_every_outline_is_a_simple_polygon(name):
    """A self-crossing outline draws fewer pixels than its signed area says: drawn area = shoelace area."""
    kinds = {**HIGH_SHAPES, **{f"low:{n}": k for n, k in LOW_SHAPES.items()}}
    rng = np.random.default_rng(5)
    for _ in range(40):
        pts = synthetic._stretched(rng, kinds[name].outline(rng), (1.5, 0.3))
        assert np.abs(pts).max() <= 1 + 1e-9
        drawn, area = _raster(pts).sum(), _shoelace(pts)
        assert abs(drawn - area) <= 0.02 * area + 2 * SIDE, (name, drawn, area)


@pytest.mark.parametrize("degrees", [45, 60, 75, 90])
def test_the_cross_is_the_union_of_its_two_bars(degrees):
    angle, t = np.deg2rad(degrees), 0.25
    bar = np.array([[-1, -t], [1, -t], [1, t], [-1, t]])
    turned = bar @ np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]).T
    union = _raster(bar) | _raster(turned)
    cross = _raster(_bars_crossing(angle, t))
    assert (union ^ cross).sum() <= 0.01 * union.sum()


def _fill_spread(variation: str, images: int = 60) -> dict[int, float]:
    """Per category: the spread (standard deviation) of how much of its box an object fills."""
    fills: dict[int, list[float]] = {}
    for index in range(images):
        for obj in synthetic.make_scene(0, "train", index, variation=variation).objects:
            ys, xs = np.nonzero(obj.amodal)
            box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
            fills.setdefault(obj.category_id, []).append(obj.amodal.sum() / box)
    return {c: float(np.std(v)) for c, v in fills.items()}


def test_high_variation_varies_within_every_category_more_than_low():
    low, high = _fill_spread("low"), _fill_spread("high")
    assert len(high) == len(VARIATIONS["high"].categories) == 7
    # (low: 0.006 to 0.04 but for the box, which rotates freely; high: 0.037 (cross) to 0.088)
    assert min(high.values()) > 0.035 and np.median(list(high.values())) > 4 * np.median(list(low.values()))
