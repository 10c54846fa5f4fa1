"""A synthetic amodal benchmark: textured shapes on textured backgrounds with a depth order.

Each category has its own shape (so a category-aware shape prior helps), objects are fully inside the
image (so the amodal mask is the whole shape), nearer objects hide farther ones, and every mask is exact:
the amodal mask is the rasterized shape polygon (as pycocotools rasterizes the polygon written to the
file), the visible mask is that minus the nearer objects. Output is byte-identical for the same seed,
and each image depends only on (seed, split, index), not on how many images are asked for.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import masks
from .annotations import FORMATS, AmodalAnnotations
from .layouts import DatasetLayout
from .occlusion import OCCLUSION_BUCKETS, occlusion_bucket
from .shapes import LOW_CATEGORIES, LOW_SHAPES, VARIATIONS, ShapeKind, Variation

# (id, name): names are plain words so that "a photo of a {name}" reads naturally. The default benchmark's;
# `--variation high` has its own (`priors.shapes.VARIATIONS`).
CATEGORIES: tuple[tuple[int, str], ...] = LOW_CATEGORIES
SHAPES: dict[str, ShapeKind] = LOW_SHAPES
SPLIT_CODES = {"train": 0, "val": 1}
IMAGE_SIZE_RANGE = (256, 384)
OBJECTS_PER_IMAGE = (3, 7)
OBJECT_SIZE_RANGE = (0.18, 0.36)  # object diameter as a fraction of the shorter image side
OVERLAP_PROBABILITY = 0.8  # chance that a new object is placed next to an existing one
MIN_VISIBLE_FRACTION = 0.3  # heavier occlusion is redrawn: the visible part must still say what the object is
MIN_VISIBLE_PIXELS = 80


@dataclass
class SceneObject:
    category_id: int
    polygon: list[float]  # x1, y1, x2, y2, ... rounded as written to the file
    amodal: np.ndarray  # HxW bool


@dataclass
class Scene:
    image: np.ndarray  # HxWx3 uint8
    objects: list[SceneObject]  # far to near
    visible: list[np.ndarray]  # per object, HxW bool


def _stretched(rng: np.random.Generator, pts: np.ndarray, affine: tuple[float, float]) -> np.ndarray:
    """`pts` stretched by a random aspect (up to affine[0]:1 either way) and sheared (up to affine[1]),
    rescaled so that its farthest point stays at distance 1."""
    aspect = float(np.exp(rng.uniform(-np.log(affine[0]), np.log(affine[0]))))
    shear = rng.uniform(-affine[1], affine[1])
    pts = pts @ np.array([[np.sqrt(aspect), 0.0], [0.0, 1 / np.sqrt(aspect)]]).T @ np.array([[1.0, shear],
                                                                                           [0.0, 1.0]]).T
    return pts / np.linalg.norm(pts, axis=1).max()


def _shape_polygon(rng: np.random.Generator, kind: ShapeKind, height: int, width: int,
                   near: tuple[float, float] | None, bench: Variation) -> list[float]:
    """A shape polygon fully inside the image; centred close to `near` (to make an occlusion) when given."""
    pts = kind.outline(rng)
    if bench.affine is not None:
        pts = _stretched(rng, pts, bench.affine)
    angle = np.deg2rad(rng.uniform(-kind.max_rotation, kind.max_rotation))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    diameter = rng.uniform(*OBJECT_SIZE_RANGE) * min(height, width)
    pts = pts @ rot.T * (diameter / 2)
    lo, hi = pts.min(0), pts.max(0)
    margin = 2.0
    cx_range = (margin - lo[0], width - margin - hi[0])
    cy_range = (margin - lo[1], height - margin - hi[1])
    if near is None:
        cx, cy = rng.uniform(*cx_range), rng.uniform(*cy_range)
    else:
        offset = rng.uniform(*bench.near_offset) * diameter
        direction = rng.uniform(0, 2 * np.pi)
        cx = float(np.clip(near[0] + offset * np.cos(direction), *cx_range))
        cy = float(np.clip(near[1] + offset * np.sin(direction), *cy_range))
    return [round(float(v), 2) for v in (pts + [cx, cy]).reshape(-1)]


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Bilinearly upsampled random grid in [0, 1]: cheap low-frequency texture."""
    grid = rng.random((cells + 1, cells + 1))
    ys = np.linspace(0, cells, height, endpoint=False)
    xs = np.linspace(0, cells, width, endpoint=False)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _texture(rng: np.random.Generator, height: int, width: int, muted: bool) -> np.ndarray:
    """A colored texture: stripes, checks or blotches over two random colors (HxWx3 float in [0, 1])."""
    sat = (0.15, 0.45) if muted else (0.45, 0.95)
    c1 = _hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(0.35, 0.9))
    c2 = _hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(0.35, 0.9))
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    kind = rng.integers(3)
    if kind == 0:  # stripes
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(6, 24)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
    elif kind == 1:  # checks
        period = rng.uniform(8, 28)
        t = (((xx // period) + (yy // period)) % 2) * 0.8 + 0.1
    else:  # blotches
        t = _smooth_noise(rng, height, width, int(rng.integers(4, 12)))
    t = t + 0.15 * (rng.random((height, width)) - 0.5)
    return np.clip(c1[None, None] * t[..., None] + c2[None, None] * (1 - t[..., None]), 0, 1)


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it (a one-pixel outline)."""
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def _visible_masks(amodal: list[np.ndarray]) -> list[np.ndarray]:
    """Visible part of each object (far to near): its amodal mask minus every nearer object's."""
    covered = np.zeros_like(amodal[0]) if amodal else None
    out: list[np.ndarray] = []
    for mask in reversed(amodal):
        out.append(mask & ~covered)
        covered = covered | mask
    return out[::-1]


def make_scene(seed: int, split: str, index: int, variation: str = "low") -> Scene:
    """One image with its objects, deterministic in (seed, split, index, variation)."""
    bench = VARIATIONS[variation]
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    height, width = (int(rng.integers(IMAGE_SIZE_RANGE[0] // 32, IMAGE_SIZE_RANGE[1] // 32 + 1)) * 32
                     for _ in "hw")
    count = int(rng.integers(OBJECTS_PER_IMAGE[0], OBJECTS_PER_IMAGE[1] + 1))
    objects: list[SceneObject] = []
    for _ in range(count):
        for _attempt in range(20):
            cat_id, name = bench.categories[int(rng.integers(len(bench.categories)))]
            near = None
            if objects and rng.random() < OVERLAP_PROBABILITY:
                ys, xs = np.nonzero(objects[int(rng.integers(len(objects)))].amodal)
                near = (float(xs.mean()), float(ys.mean()))
            polygon = _shape_polygon(rng, bench.shapes[name], height, width, near, bench)
            amodal = masks.decode(masks.to_rle([polygon], height, width))
            visible = _visible_masks([o.amodal for o in objects] + [amodal])
            if all(v.sum() >= max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * o.sum())
                   for v, o in zip(visible, [o.amodal for o in objects] + [amodal], strict=True)):
                objects.append(SceneObject(cat_id, polygon, amodal))
                break
    image = _texture(rng, height, width, muted=True) * 0.8 + 0.1
    for obj in objects:  # far to near: nearer objects are painted over farther ones
        tex = _texture(rng, height, width, muted=False)
        image[obj.amodal] = tex[obj.amodal]
        image[_edge(obj.amodal)] *= 0.45
    image = np.clip(image * 255 + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
    return Scene(image=image, objects=objects, visible=_visible_masks([o.amodal for o in objects]))


@dataclass
class SplitStats:
    images: int
    per_category: Counter
    occlusion: Counter

    @property
    def instances(self) -> int:
        return sum(self.per_category.values())


def split_stats(annotations: AmodalAnnotations) -> SplitStats:
    """Counts of a written split, read back from its annotation file."""
    stats = SplitStats(len(annotations.images), Counter(), Counter())
    for inst in annotations:
        stats.per_category[inst.category] += 1
        stats.occlusion[occlusion_bucket(inst.occlusion_rate)] += 1
    return stats


def split_paths(out: Path, split: str, layout: DatasetLayout | None = None) -> tuple[Path, Path]:
    """(annotation file, image folder) of a split: OUT/annotations/{split}.json and OUT/images/, or where the
    dataset `layout` keeps that split under the data root OUT."""
    if layout is None:
        return out / "annotations" / f"{split}.json", out / "images"
    files = layout.splits[split]
    return out / layout.folder / files.annotations, out / layout.folder / files.images


def write_split(out: Path, split: str, num_images: int, seed: int, fmt: str, first_image_id: int,
                first_ann_id: int, settings: dict | None = None,
                visible_masks: str | None = None, layout: DatasetLayout | None = None,
                variation: str = "low") -> SplitStats:
    """Render `num_images` scenes into OUT/images/ and write OUT/annotations/{split}.json in format `fmt`,
    visible masks encoded as `visible_masks` ("polygons" / "rle"; default: as the format's real files). With a
    dataset `layout`, into its folders and file names under the data root OUT, each shape written as the
    category it stands for and every category of the dataset declared."""
    spec = FORMATS[fmt]
    as_polygons = (visible_masks or spec.visible_encoding) == "polygons"
    path, image_dir = split_paths(out, split, layout)
    image_dir.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    categories = VARIATIONS[variation].categories
    names = dict(categories)
    category_id = {i: (layout.category_id(n) if layout else i) for i, n in categories}
    category_name = {i: (layout.stands_for[n] if layout else n) for i, n in categories}
    images, anns = [], []
    stats = SplitStats(num_images, Counter(), Counter())
    ann_id = first_ann_id
    for index in range(num_images):
        scene = make_scene(seed, split, index, variation=variation)
        image_id = first_image_id + index
        height, width = scene.image.shape[:2]
        file_name = (layout.splits[split].file_name.format(index=index, image_id=image_id) if layout
                     else f"{split}_{index:06d}.png")
        Image.fromarray(scene.image).save(image_dir / file_name, optimize=False, quality=95)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for obj, visible in zip(scene.objects, scene.visible, strict=True):
            amodal_rle, visible_rle = masks.encode(obj.amodal), masks.encode(visible)
            visible_segm = masks.to_polygons(visible) if as_polygons else masks.rle_to_json(visible_rle)
            if as_polygons and visible_segm:  # (area and box of the mask the polygons draw: holes filled)
                visible_rle = masks.to_rle(visible_segm, height, width)
            a_area, v_area = masks.area(amodal_rle), masks.area(visible_rle)
            # (as AmodalAnnotations counts it: polygons can draw a few visible pixels outside the amodal mask)
            rate = 1 - masks.area(masks.intersection(visible_rle, amodal_rle)) / a_area
            anns.append(spec.encode(ann_id, image_id, category_id[obj.category_id], [obj.polygon],
                                    visible_segm, masks.bbox_xywh(amodal_rle),
                                    masks.bbox_xywh(visible_rle), a_area, v_area, rate))
            stats.per_category[category_name[obj.category_id]] += 1
            stats.occlusion[occlusion_bucket(rate)] += 1
            ann_id += 1
    doc = {
        "info": {"description": f"AISDiff synthetic amodal benchmark ({split})", "settings": settings or {}},
        "images": images,
        "annotations": anns,
        "categories": (layout.category_json() if layout
                       else [{"id": i, "name": names[i], "supercategory": "shape"} for i, _ in categories]),
    }
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:  # written last and renamed: a killed run leaves no file
        json.dump(doc, fh, separators=(",", ":"))
    tmp.replace(path)
    return stats


VISIBLE_ENCODINGS = ("polygons", "rle")


def data_settings(fmt: str, seed: int, train_images: int, val_images: int,
                  visible_masks: str | None = None, layout: DatasetLayout | None = None,
                  variation: str = "low") -> dict:
    """What a written benchmark records in its files' `info` (a rerun with equal settings reuses it). The
    visible-mask encoding is recorded when polygons: files written before polygons existed hold RLE and
    record none, so they stay reusable as the RLE benchmark they are. A dataset layout is recorded by name;
    the variation when it is not the default (files written before variations existed are `low`)."""
    fmt = layout.format if layout else fmt
    settings = {"format": fmt, "seed": seed, "images": {"train": train_images, "val": val_images}}
    if (visible_masks or FORMATS[fmt].visible_encoding) == "polygons":
        settings["visible_masks"] = "polygons"
    if layout is not None:
        settings["layout"] = layout.name
    if variation != "low":
        settings["variation"] = variation
    return settings


def generate(out: str | Path, *, fmt: str = "kins2020", train_images: int = 40, val_images: int = 10,
             seed: int = 0, settings: dict | None = None, visible_masks: str | None = None,
             layout: DatasetLayout | None = None, variation: str = "low") -> dict[str, SplitStats]:
    """Write the benchmark (train and val) to `out`; image and annotation ids are unique across splits.

    Amodal masks are polygons (every format's real files store them so); visible masks as `visible_masks`
    says, by default as the format's real files do (`FormatSpec.visible_encoding`: polygons for KINS, RLE
    for COCOA-cls and D2SA). Polygons decode to the exact visible mask, holes filled (COCO polygons cannot
    hold a hole: 3 of 150 masks in a sample, 1-2 pixels each).
    `settings` is recorded in each file's `info` so that a rerun can tell whether the data is already there.
    With a dataset `layout` (`priors.layouts`), `out` is the data root and the splits go where that dataset
    keeps its train and test splits, in its format (`fmt` is the layout's). `variation` picks the categories
    and how their shapes vary (`priors.shapes.VARIATIONS`); layouts write the `low` shapes.
    """
    if layout is not None:
        fmt = layout.format
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if visible_masks not in (None, *VISIBLE_ENCODINGS):
        raise ValueError(f"visible_masks must be one of {VISIBLE_ENCODINGS}, not {visible_masks!r}")
    if train_images < 0 or val_images < 0:
        raise ValueError("image counts must be >= 0")
    if variation not in VARIATIONS:
        raise ValueError(f"unknown variation {variation!r}; choose one of {', '.join(VARIATIONS)}")
    if layout is not None and variation != "low":
        raise ValueError(f"the {layout.name} layout writes the default shapes as its categories; a layout "
                         f"with variation {variation!r} is not defined")
    out = Path(out)
    settings = settings or data_settings(fmt, seed, train_images, val_images, visible_masks, layout,
                                         variation)
    train = write_split(out, "train", train_images, seed, fmt, 1, 1, settings, visible_masks, layout,
                        variation)
    val = write_split(out, "val", val_images, seed, fmt, train_images + 1, train.instances + 1, settings,
                      visible_masks, layout, variation)
    return {"train": train, "val": val}


def summary(stats: dict[str, SplitStats], layout: DatasetLayout | None = None, variation: str = "low") -> str:
    """One-paragraph summary: images, instances per category (the categories a `layout` writes the shapes as),
    occlusion-rate histogram; led by what varies within each category, for a variation other than `low`."""
    bench = VARIATIONS[variation]
    names = [layout.stands_for[n] if layout else n for _, n in bench.categories]
    lines = [bench.describe()] if variation != "low" else []
    for split, s in stats.items():
        cats = ", ".join(f"{name} {s.per_category.get(name, 0)}" for name in names)
        total = max(s.instances, 1)
        occ = " | ".join(f"{b.name} {s.occlusion.get(b.name, 0)} ({s.occlusion.get(b.name, 0) / total:.0%})"
                         for b in OCCLUSION_BUCKETS)
        lines.append(f"{split}: {s.images} images, {s.instances} instances ({cats}); occlusion: {occ}")
    return "\n".join(lines)
