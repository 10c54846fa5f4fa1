"""The synthetic benchmark's categories and how their shapes vary within a category (`VARIATIONS`).

`low` (the default benchmark, the demo's and the shipped `tiny` model's): seven rigid outlines that barely
rotate, so the category nearly fixes the shape and a class template (the category's mean mask) stands in
for a shape prior. `high`: seven parametric families whose shape varies within the category in ways the
visible part reveals and the category constrains: any rotation, stretch and shear, articulated parts at
random joint angles that a symmetry ties together (the crossing angle of a cross's bars, the opening of a
chevron's arms, a bolt's slant), and a family parameter per category (a star's number of points, an arc's
span, a crescent's thickness, an arrow's head). The families are sparse in their box: a filled convex
family fills its box much as the category's mean does. Objects are placed closer together than in `low`,
so that the occlusion statistics match despite the sparser shapes.

Each outline is a simple polygon about [-1, 1]^2, drawn from a random generator; `synthetic.make_scene`
stretches, rotates, scales and places it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ShapeKind:
    outline: Callable[[np.random.Generator], np.ndarray]  # unit-size polygon, about [-1, 1]^2
    max_rotation: float  # degrees; upright shapes rotate little so the category keeps its look
    varies: str = "fixed outline"  # what varies within the category, for the benchmark's summary


@dataclass(frozen=True)
class Variation:
    """A benchmark's categories (id, name) and their shapes; `affine` = (largest aspect, largest shear) of
    the random stretch and shear every object gets before its rotation, None for none; `near_offset`: how
    far (in object diameters) an object placed to occlude another is put from that one's centre."""

    name: str
    categories: tuple[tuple[int, str], ...]
    shapes: dict[str, ShapeKind]
    affine: tuple[float, float] | None = None
    near_offset: tuple[float, float] = (0.45, 0.95)

    def describe(self) -> str:
        """One line: the variation, then what varies in each category."""
        stretch = (f"; every shape stretched up to {self.affine[0]:g}:1 and sheared up to {self.affine[1]:g}"
                   if self.affine else "")
        kinds = "; ".join(f"{name}: {self.shapes[name].varies}, rotation "
                          + ("any" if self.shapes[name].max_rotation >= 180
                             else f"+-{self.shapes[name].max_rotation:g} deg")
                          for _, name in self.categories)
        return f"variation {self.name}: {kinds}{stretch}"


def _circle(n: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], 1)


def _box(rng: np.random.Generator) -> np.ndarray:
    aspect = rng.uniform(0.55, 0.95)
    return np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]], dtype=float)


def _triangle(rng: np.random.Generator) -> np.ndarray:
    return np.array([[0.0, -1.0], [0.95, 0.8], [-0.95, 0.8]])


def _star_outline(points: int, inner: float) -> np.ndarray:
    t = np.linspace(-np.pi / 2, 1.5 * np.pi, 2 * points, endpoint=False)
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _star(rng: np.random.Generator) -> np.ndarray:
    return _star_outline(5, 0.45)


def _cross(rng: np.random.Generator) -> np.ndarray:
    a = 0.34
    return np.array([[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a],
                     [-1, -a], [-a, -a]], dtype=float)


def _heart(rng: np.random.Generator) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y], 1)
    return pts / np.abs(pts).max()


def _crescent(d: float, outer: int = 40, inner: int = 28) -> np.ndarray:
    """The unit disk minus a unit disk shifted right by `d` (0 < d < 2), centred."""
    phi = np.arctan2(np.sqrt(1 - d * d / 4), d / 2)
    arc = np.linspace(phi, 2 * np.pi - phi, outer)
    cut = np.linspace(np.pi + phi, np.pi - phi, inner)[1:-1]
    pts = np.concatenate([np.stack([np.cos(arc), np.sin(arc)], 1),
                          np.stack([d + np.cos(cut), np.sin(cut)], 1)])
    return pts - pts.mean(0)


def _moon(rng: np.random.Generator) -> np.ndarray:
    return _crescent(0.55)


LOW_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "ball"), (2, "box"), (3, "triangle"), (4, "star"), (5, "cross"), (6, "heart"), (7, "moon"),
)
LOW_SHAPES: dict[str, ShapeKind] = {
    "ball": ShapeKind(lambda rng: _circle() * [1.0, rng.uniform(0.85, 1.0)], 180, "axis ratio 0.85-1"),
    "box": ShapeKind(_box, 180, "aspect 0.55-0.95"),
    "triangle": ShapeKind(_triangle, 25),
    "star": ShapeKind(_star, 36),
    "cross": ShapeKind(_cross, 45),
    "heart": ShapeKind(_heart, 20),
    "moon": ShapeKind(_moon, 40),
}


# -- high variation: a parametric family per category, sparse in its box (a filled convex family, an ellipse
# say, fills its box much as the category's mean does, and so lets a template stand in for the instance) --
def _many_pointed_star(rng: np.random.Generator) -> np.ndarray:
    return _star_outline(int(rng.integers(4, 8)), rng.uniform(0.4, 0.6))


def _thick_polyline(vertices: np.ndarray, width: float) -> np.ndarray:
    """The outline of a polyline drawn `width` wide with mitred joins (turns below about 120 degrees)."""
    d = np.diff(vertices, axis=0)
    normals = np.stack([-d[:, 1], d[:, 0]], 1) / np.linalg.norm(d, axis=1, keepdims=True)
    offsets = [normals[0]]
    for a, b in zip(normals[:-1], normals[1:], strict=True):
        mitre = a + b
        offsets.append(mitre / np.dot(mitre, a))
    offsets.append(normals[-1])
    offsets = np.array(offsets) * width / 2
    return np.concatenate([vertices + offsets, (vertices - offsets)[::-1]])


def _arc(rng: np.random.Generator) -> np.ndarray:
    """A thick circular arc: its span (150-300 degrees) and thickness vary."""
    span, width = np.deg2rad(rng.uniform(150, 300)), rng.uniform(0.35, 0.55)
    t = np.linspace(-span / 2, span / 2, 40)
    ring = np.stack([np.cos(t), np.sin(t)], 1)
    pts = np.concatenate([ring, ring[::-1] * (1 - width)])
    return pts - (pts.min(0) + pts.max(0)) / 2


def _bolt(rng: np.random.Generator) -> np.ndarray:
    """A Z: two parallel end strokes joined by a slanted middle one, point-symmetric (one half tells the
    other); the slant, the strokes' lengths and the width vary."""
    slant, middle, end = np.deg2rad(rng.uniform(35, 70)), rng.uniform(0.45, 0.8), rng.uniform(0.5, 1.0)
    m = middle * np.array([np.cos(slant), np.sin(slant)])
    pts = _thick_polyline(np.array([-m - [end, 0.0], -m, m, m + [end, 0.0]]), rng.uniform(0.3, 0.45))
    return pts - (pts.min(0) + pts.max(0)) / 2


def _arrow(rng: np.random.Generator) -> np.ndarray:
    """A shaft and a triangular head, mirror-symmetric about its axis: head length and width, shaft width
    vary."""
    head, half_head, half_shaft = rng.uniform(0.3, 0.6), rng.uniform(0.35, 0.65), rng.uniform(0.14, 0.26)
    x = 1 - 2 * head
    pts = np.array([[-1, -half_shaft], [x, -half_shaft], [x, -half_head], [1, 0], [x, half_head],
                    [x, half_shaft], [-1, half_shaft]], dtype=float)
    return pts - (pts.min(0) + pts.max(0)) / 2


def _bars_crossing(angle: float, half_width: float) -> np.ndarray:
    """Two bars of length 2 and width 2 * half_width crossing at their centres, the second turned by
    `angle` (radians, 0 < angle <= pi/2) from the first: the outline of their union, 12 vertices."""
    u, n = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    t, s, c = half_width, np.sin(angle), np.cos(angle)
    # where the first bar's upper edge (y = t) meets the second bar's edges (n . p = -t and n . p = t)
    inner_a = np.array([t * (1 + c) / s, t])
    inner_b = np.array([-t * (1 - c) / s, t])
    half = [np.array([1.0, -t]), np.array([1.0, t]), inner_a, u - n * t, u + n * t, inner_b]
    return np.array(half + [-p for p in half])


def _articulated_cross(rng: np.random.Generator) -> np.ndarray:
    return _bars_crossing(np.deg2rad(rng.uniform(45, 90)), rng.uniform(0.2, 0.34))


def _chevron_outline(opening: float, width: float) -> np.ndarray:
    """A V of two arms of length 1 and `width` from an apex at the top, `opening` (radians) between them,
    mirror-symmetric about the vertical (y points down), centred on its box."""
    s, c = np.sin(opening / 2), np.cos(opening / 2)
    left, right = np.array([-s, c]), np.array([s, c])
    out_left, out_right = np.array([-c, -s]) * width / 2, np.array([c, -s]) * width / 2
    pts = np.array([[0.0, -width / (2 * s)], right + out_right, right - out_right, [0.0, width / (2 * s)],
                    left - out_left, left + out_left])
    return pts - (pts.min(0) + pts.max(0)) / 2


def _chevron(rng: np.random.Generator) -> np.ndarray:
    return _chevron_outline(np.deg2rad(rng.uniform(50, 130)), rng.uniform(0.35, 0.6))


def _thick_or_thin_crescent(rng: np.random.Generator) -> np.ndarray:
    return _crescent(rng.uniform(0.5, 1.2))


HIGH_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "arc"), (2, "star"), (3, "cross"), (4, "chevron"), (5, "crescent"), (6, "bolt"), (7, "arrow"),
)
HIGH_SHAPES: dict[str, ShapeKind] = {
    "arc": ShapeKind(_arc, 180, "span 150-300 deg, thickness 0.35-0.55"),
    "star": ShapeKind(_many_pointed_star, 180, "4-7 points, inner radius 0.4-0.6"),
    "cross": ShapeKind(_articulated_cross, 180, "bars crossing at 45-90 deg, width 0.4-0.68"),
    "chevron": ShapeKind(_chevron, 20, "arms opening 50-130 deg, width 0.35-0.6"),
    "crescent": ShapeKind(_thick_or_thin_crescent, 180, "cut offset 0.5-1.2"),
    "bolt": ShapeKind(_bolt, 180, "slant 35-70 deg, strokes and width"),
    "arrow": ShapeKind(_arrow, 180, "head length and width, shaft width"),
}

VARIATIONS: dict[str, Variation] = {
    "low": Variation("low", LOW_CATEGORIES, LOW_SHAPES),
    "high": Variation("high", HIGH_CATEGORIES, HIGH_SHAPES, affine=(1.5, 0.3), near_offset=(0.2, 0.6)),
}
