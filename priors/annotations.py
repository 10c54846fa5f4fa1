"""Amodal annotation files (KINS 2020, old KINS, COCOA-cls, D2SA, aistron) -> one normalized record per
instance.

All formats are COCO-style JSON that differ only in the annotation keys for the amodal/visible masks and
boxes (docs/datasets.md, 'Annotation formats'). Records keep the raw segmentations and decode them lazily,
so a 100k-instance file loads without decoding every mask; validation runs in the run-length domain.

Occluder masks follow the BCNet/AISFormer rule: the union of the visible masks of the other instances of
the image whose visible box has IoU > 0.05 with this instance's amodal box, cut to that amodal box.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import masks
from .errors import AnnotationError
from .masks import RLE, MaskFormatError

OCCLUDER_IOU_THRESHOLD = 0.05
# fraction of a visible mask that may lie outside its amodal mask (polygon rasterization, annotators' slack)
VISIBLE_TOLERANCE = 0.05


@dataclass(frozen=True)
class FormatSpec:
    """Which annotation keys hold the amodal/visible masks and boxes in one dataset format."""

    name: str
    amodal_mask: tuple[str, ...]  # candidate keys, first present wins
    visible_mask: str
    amodal_box: tuple[str, ...]
    visible_box: str | None  # None: derived from the visible mask (the format's box is the amodal one)
    extra: tuple[str, ...] = ()  # further keys the writer emits, as the real dataset files have them
    visible_encoding: str = "rle"  # how the real files store the visible mask: "rle" or "polygons"

    def encode(self, ann_id: int, image_id: int, category_id: int, amodal_segm: Any, visible_segm: Any,
               amodal_box_xywh: Sequence[float], visible_box_xywh: Sequence[float],
               amodal_area: int, visible_area: int, occlusion_rate: float) -> dict[str, Any]:
        """One annotation dict with exactly this format's keys (used by the synthetic benchmark)."""
        ann: dict[str, Any] = {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0}
        ann[self.amodal_mask[0]] = amodal_segm
        ann[self.visible_mask] = visible_segm
        ann[self.amodal_box[0]] = [float(v) for v in amodal_box_xywh]
        if self.visible_box is not None:
            ann[self.visible_box] = [float(v) for v in visible_box_xywh]
        areas = {"area": amodal_area, "a_area": amodal_area, "i_area": visible_area,
                 "amodal_area": amodal_area, "inmodal_area": visible_area,
                 "occlude_rate": occlusion_rate}
        for key in self.extra:
            ann[key] = areas[key]
        return ann


FORMATS: dict[str, FormatSpec] = {
    "kins2020": FormatSpec("kins2020", ("a_segm",), "i_segm", ("a_bbox",), "i_bbox",
                           ("area", "a_area", "i_area"), visible_encoding="polygons"),
    "kins": FormatSpec("kins", ("segmentation",), "inmodal_seg", ("bbox",), "inmodal_bbox",
                       ("area", "inmodal_area"), visible_encoding="polygons"),
    "cocoa": FormatSpec("cocoa", ("segmentation",), "visible_mask", ("bbox",), None,
                        ("area", "occlude_rate")),
    "d2sa": FormatSpec("d2sa", ("segmentation",), "visible_mask", ("bbox",), None, ("area",)),
    "aistron": FormatSpec("aistron", ("amodal_segm", "segmentation"), "visible_segm", ("amodal_bbox", "bbox"),
                          "visible_bbox", ("amodal_area",)),
}
FORMAT_NAMES = tuple(FORMATS)

# Keys that tell the formats apart, checked in this order (COCOA-cls and D2SA share their keys).
_SIGNATURES: tuple[tuple[str, str], ...] = (
    ("a_segm", "kins2020"), ("i_segm", "kins2020"), ("inmodal_seg", "kins"),
    ("visible_segm", "aistron"), ("amodal_segm", "aistron"), ("visible_mask", "cocoa"),
)

InvalidReason = Literal[
    "missing_key", "duplicate_id", "unknown_image", "unknown_category", "degenerate_box", "box_outside_image",
    "bad_mask", "empty_amodal_mask", "empty_visible_mask", "visible_outside_amodal", "missing_image_file",
]


@dataclass(frozen=True)
class InvalidRecord:
    """One annotation that cannot be used, with the reason code the summaries count."""

    reason: InvalidReason
    file: str
    image_id: int | None
    ann_id: int | None
    message: str

    def __str__(self) -> str:
        return self.message


class InvalidField(ValueError):
    """One field of a record that cannot be used: reason code, what is wrong, and the fix."""

    def __init__(self, reason: InvalidReason, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.reason, self.problem, self.fix = reason, problem, fix


@dataclass(frozen=True)
class ImageInfo:
    id: int
    file_name: str
    width: int
    height: int


@dataclass(frozen=True, eq=False)
class Instance:
    """One normalized amodal instance. Boxes are x1, y1, x2, y2 in image pixels; masks decode lazily."""

    ann_id: int
    image_id: int
    category_id: int
    category: str
    amodal_box: tuple[float, float, float, float]
    image: ImageInfo
    amodal_segm: Any = field(repr=False)
    visible_segm: Any = field(repr=False)
    visible_box_xywh: tuple[float, float, float, float] | None = field(default=None, repr=False)

    @cached_property
    def amodal_rle(self) -> RLE:
        return masks.to_rle(self.amodal_segm, self.image.height, self.image.width)

    @cached_property
    def visible_rle(self) -> RLE:
        return masks.to_rle(self.visible_segm, self.image.height, self.image.width)

    @cached_property
    def visible_box(self) -> tuple[float, float, float, float]:
        """Visible box x1, y1, x2, y2: from the file where the format has one, else the visible mask's box."""
        x, y, w, h = (self.visible_box_xywh if self.visible_box_xywh is not None
                      else masks.bbox_xywh(self.visible_rle))
        return (x, y, x + w, y + h)

    @cached_property
    def amodal_area(self) -> int:
        return masks.area(self.amodal_rle)

    @cached_property
    def visible_area(self) -> int:
        return masks.area(self.visible_rle)

    @cached_property
    def occlusion_rate(self) -> float:
        """Fraction of the amodal mask that is not visible."""
        if self.amodal_area == 0:
            return 0.0
        inside = masks.area(masks.intersection(self.visible_rle, self.amodal_rle))
        return 1.0 - inside / self.amodal_area

    def amodal_mask(self) -> np.ndarray:
        """Dense HxW boolean amodal mask (decoded on each call; not cached, to bound memory)."""
        return masks.decode(self.amodal_rle)

    def visible_mask(self) -> np.ndarray:
        return masks.decode(self.visible_rle)

    def key(self) -> tuple:
        """Everything that defines the instance, for comparing records read from different formats."""
        return (self.ann_id, self.image_id, self.category_id, self.category, self.amodal_box,
                self.visible_box,
                self.amodal_rle["counts"], self.visible_rle["counts"], tuple(self.amodal_rle["size"]))


def parse_box(raw: Any, image: ImageInfo, key: str) -> tuple[float, float, float, float]:
    """A COCO [x, y, w, h] box as x1, y1, x2, y2; raises `InvalidField` if it is not four finite numbers,
    has no area, or lies entirely outside the image (partly outside is fine: amodal boxes may be)."""
    try:
        x, y, w, h = (float(v) for v in raw)
    except (TypeError, ValueError):
        raise InvalidField("degenerate_box", f"'{key}' is {raw!r}, not four numbers [x, y, w, h]",
                           "Fix the box.") from None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise InvalidField("degenerate_box", f"box '{key}' {[x, y, w, h]} has zero or negative area",
                           "Fix the box, or drop the record.")
    if min(x + w, image.width) - max(x, 0.0) <= 0 or min(y + h, image.height) - max(y, 0.0) <= 0:
        raise InvalidField("box_outside_image", f"box '{key}' {[x, y, w, h]} lies outside the "
                           f"{image.width}x{image.height} image",
                           "Fix the box or the image size in 'images'.")
    return (x, y, x + w, y + h)


def detect_format(annotations: Sequence[dict[str, Any]], path: str = "<annotations>") -> str:
    """Name the format from the keys of the first annotations; raise if no known signature is present."""
    seen: set[str] = set()
    for ann in annotations[:100]:
        seen.update(ann.keys())
        for key, name in _SIGNATURES:
            if key in ann:
                return name
    raise AnnotationError(
        f"{path}: unknown annotation format: none of the keys that mark a known format "
        f"({', '.join(k for k, _ in _SIGNATURES)}) is in the annotations (keys found: "
        f"{', '.join(sorted(seen)) or 'none'}). Supported formats: {', '.join(FORMAT_NAMES)} "
        "(docs/datasets.md, 'Annotation formats'); convert the file or name its format explicitly."
    )


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (recorded in prior stores so a cache is tied to its annotation file)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path) -> Any:
    """Load a JSON file, turning a missing or malformed file into an error that names it and the position."""
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(
            f"{path}: file not found. Check the path (and that the dataset root is mounted).")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        raise AnnotationError(
            f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}. "
            "The file is truncated or not JSON; re-download or re-export it."
        ) from None
    except UnicodeDecodeError as exc:
        raise AnnotationError(
            f"{path}: not a UTF-8 text file ({exc.reason}); is it the annotation JSON?") from None


class AmodalAnnotations:
    """A validated amodal annotation file: images, categories and normalized instances.

    Instances are sorted by (image id, annotation id), the order prior stores use for their rows.
    Invalid records raise `AnnotationError` unless `skip_invalid` is set, in which case they are left
    out and kept in `invalid` (with reasons counted by `invalid_counts()`).
    """

    def __init__(self, path: str | Path, *, format: str | None = None, images_dir: str | Path | None = None,
                 skip_invalid: bool = False, check_masks: bool = True,
                 visible_tolerance: float = VISIBLE_TOLERANCE) -> None:
        self.path = Path(path)
        self.images_dir = Path(images_dir) if images_dir is not None else None
        self.skip_invalid = skip_invalid
        self.visible_tolerance = visible_tolerance
        self.invalid: list[InvalidRecord] = []
        self.num_crowd = 0

        data = read_json(self.path)
        if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
            found = ", ".join(sorted(data)) if isinstance(data, dict) else type(data).__name__
            raise AnnotationError(
                f"{self.path}: not a COCO-style annotation file: it needs top-level 'images', 'annotations' "
                f"and 'categories' (found: {found}). A detector results file goes to --proposals, not --ann."
            )
        if format is not None and format not in FORMATS:
            raise AnnotationError(f"unknown format {format!r}; choose one of {', '.join(FORMAT_NAMES)}")
        self.format = format or detect_format(data["annotations"], str(self.path))
        self.spec = FORMATS[self.format]
        self.categories = self._read_categories(data["categories"])
        self.images = self._read_images(data["images"])
        self.missing_images = self._find_missing_images()
        instances = self._read_instances(data["annotations"], check_masks)
        self.instances: list[Instance] = sorted(instances, key=lambda r: (r.image_id, r.ann_id))
        self._by_image: dict[int, list[Instance]] = defaultdict(list)
        for inst in self.instances:
            self._by_image[inst.image_id].append(inst)
        self._by_ann = {inst.ann_id: inst for inst in self.instances}

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, label i the i-th: the categories in id order (as the dataset, the prior providers
        and the metric map labels when a config names no classes)."""
        return tuple(self.categories[c] for c in sorted(self.categories))

    # -- reading ---------------------------------------------------------------------------------
    def _read_categories(self, cats: list[dict[str, Any]]) -> dict[int, str]:
        out: dict[int, str] = {}
        for i, cat in enumerate(cats):
            if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
                raise AnnotationError(f"{self.path}: categories[{i}] needs 'id' and 'name' (got {cat!r}).")
            out[int(cat["id"])] = str(cat["name"])
        if not out:
            raise AnnotationError(
                f"{self.path}: the 'categories' list is empty; every instance needs a category.")
        return out

    def _read_images(self, images: list[dict[str, Any]]) -> dict[int, ImageInfo]:
        out: dict[int, ImageInfo] = {}
        for i, img in enumerate(images):
            missing = [k for k in ("id", "file_name", "width", "height")
                       if not isinstance(img, dict) or k not in img]
            if missing:
                raise AnnotationError(
                    f"{self.path}: images[{i}] (id {img.get('id') if isinstance(img, dict) else '?'}) lacks "
                    f"{', '.join(missing)}; COCO image entries need id, file_name, width and height.")
            info = ImageInfo(int(img["id"]), str(img["file_name"]), int(img["width"]), int(img["height"]))
            if info.width <= 0 or info.height <= 0:
                raise AnnotationError(f"{self.path}: image {info.id} ({info.file_name}) has size "
                                      f"{info.width}x{info.height}; width and height must be positive.")
            if info.id in out:
                raise AnnotationError(
                    f"{self.path}: image id {info.id} appears twice in 'images'; ids must be unique.")
            out[info.id] = info
        return out

    def _find_missing_images(self) -> set[int]:
        if self.images_dir is None:
            return set()
        return {i for i, img in self.images.items() if not (self.images_dir / img.file_name).is_file()}

    def _invalid(self, reason: InvalidReason, image_id: int | None, ann_id: int | None, problem: str,
                 fix: str) -> None:
        where = f"{self.path}: image {image_id if image_id is not None else '?'}, " \
                f"annotation {ann_id if ann_id is not None else '?'}"
        record = InvalidRecord(reason, str(self.path), image_id, ann_id, f"{where}: {problem}. {fix}")
        if not self.skip_invalid:
            raise AnnotationError(record.message + " (Or skip invalid records with --skip-invalid.)")
        self.invalid.append(record)

    def _read_instances(self, anns: list[dict[str, Any]], check_masks: bool) -> list[Instance]:
        out: list[Instance] = []
        seen_ids: set[int] = set()
        for ann in anns:
            inst = self._read_instance(ann, seen_ids, check_masks)
            if inst is not None:
                out.append(inst)
        return out

    def _first_key(self, ann: dict[str, Any], keys: tuple[str, ...]) -> str | None:
        return next((k for k in keys if k in ann), None)

    def _read_instance(self, ann: dict[str, Any], seen_ids: set[int], check_masks: bool) -> Instance | None:
        spec = self.spec
        ann_id = ann.get("id")
        image_id = ann.get("image_id")
        amodal_key = self._first_key(ann, spec.amodal_mask)
        box_key = self._first_key(ann, spec.amodal_box)
        required = {"id": "id", "image_id": "image_id", "category_id": "category_id",
                    spec.amodal_mask[0]: amodal_key,
                    spec.visible_mask: spec.visible_mask if spec.visible_mask in ann else None,
                    spec.amodal_box[0]: box_key}
        if spec.visible_box is not None:
            required[spec.visible_box] = spec.visible_box if spec.visible_box in ann else None
        missing = [name for name, key in required.items() if key is None or key not in ann]
        if missing:
            self._invalid("missing_key", image_id, ann_id, f"missing key(s) {', '.join(missing)} for format "
                          f"'{self.format}'",
                          "Check that the file is in that format (or name the right one).")
            return None
        ann_id, image_id = int(ann_id), int(image_id)
        if ann.get("iscrowd", 0):
            self.num_crowd += 1
            return None
        if ann_id in seen_ids:
            self._invalid("duplicate_id", image_id, ann_id, "annotation id used more than once",
                          "Annotation ids must be unique; renumber the file.")
            return None
        seen_ids.add(ann_id)
        image = self.images.get(image_id)
        if image is None:
            self._invalid("unknown_image", image_id, ann_id, "refers to an image id that is not in 'images'",
                          "Add the image entry or drop the annotation.")
            return None
        category_id = int(ann["category_id"])
        if category_id not in self.categories:
            self._invalid("unknown_category", image_id, ann_id, f"unknown category id {category_id} (known: "
                          f"{sorted(self.categories)})", "Add the category to 'categories' or fix the id.")
            return None
        box = self._check_box(ann[box_key], image, ann_id, box_key)
        if box is None:
            return None
        vis_box = ann.get(spec.visible_box) if spec.visible_box else None
        inst = Instance(ann_id=ann_id, image_id=image_id, category_id=category_id,
                        category=self.categories[category_id], amodal_box=box, image=image,
                        amodal_segm=ann[amodal_key], visible_segm=ann[spec.visible_mask],
                        visible_box_xywh=tuple(float(v) for v in vis_box) if vis_box is not None else None)
        if image_id in self.missing_images:
            self._invalid("missing_image_file", image_id, ann_id,
                          f"image file {self.images_dir / image.file_name} does not exist",
                          "Point --images at the folder that holds the dataset's images.")
            return None
        if check_masks and not self._check_masks(inst):
            return None
        return inst

    def _check_box(self, raw: Any, image: ImageInfo, ann_id: int,
                   key: str) -> tuple[float, float, float, float] | None:
        try:
            return parse_box(raw, image, key)
        except InvalidField as bad:
            self._invalid(bad.reason, image.id, ann_id, bad.problem, bad.fix)
            return None

    def _check_masks(self, inst: Instance) -> bool:
        try:
            amodal, visible = inst.amodal_rle, inst.visible_rle
        except MaskFormatError as exc:
            self._invalid("bad_mask", inst.image_id, inst.ann_id, f"cannot read the mask: {exc}",
                          "Masks must be COCO polygons or RLE of the image size.")
            return False
        if masks.area(amodal) == 0:
            self._invalid("empty_amodal_mask", inst.image_id, inst.ann_id, "the amodal mask is empty",
                          "Drop the annotation or fix its mask.")
            return False
        vis_area = masks.area(visible)
        if vis_area == 0:
            self._invalid("empty_visible_mask", inst.image_id, inst.ann_id, "the visible mask is empty "
                          "(a fully occluded instance has nothing to condition a prior on)",
                          "Drop the annotation or fix its mask.")
            return False
        outside = masks.area_outside(visible, amodal)
        if outside > self.visible_tolerance * vis_area:
            self._invalid("visible_outside_amodal", inst.image_id, inst.ann_id,
                          f"{outside} of {vis_area} visible pixels ({outside / vis_area:.1%}) lie outside "
                          f"the amodal mask (tolerance {self.visible_tolerance:.0%})",
                          "The visible and amodal masks are swapped or misaligned; check the format's keys.")
            return False
        return True

    # -- access ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.instances)

    def __iter__(self) -> Iterator[Instance]:
        return iter(self.instances)

    def by_image(self, image_id: int) -> list[Instance]:
        """The image's valid instances, sorted by annotation id."""
        return self._by_image.get(image_id, [])

    def instance(self, ann_id: int) -> Instance:
        return self._by_ann[ann_id]

    def get(self, ann_id: int) -> Instance | None:
        """The valid instance with this annotation id, or None."""
        return self._by_ann.get(ann_id)

    def image_ids(self) -> list[int]:
        """Ids of images with at least one valid instance, sorted."""
        return sorted(self._by_image)

    def image_path(self, image_id: int) -> Path:
        if self.images_dir is None:
            raise AnnotationError(f"{self.path}: no images folder given; pass images_dir (--images).")
        return self.images_dir / self.images[image_id].file_name

    def invalid_counts(self) -> Counter[str]:
        return Counter(r.reason for r in self.invalid)

    def sha256(self) -> str:
        return sha256_file(self.path)

    def occluder_rles(self, image_id: int) -> dict[int, RLE]:
        """Occluder mask of every instance of an image (annotation id -> RLE), by the BCNet/AISFormer rule."""
        return occluder_rles(self.by_image(image_id))

    def occluder_mask(self, inst: Instance) -> np.ndarray:
        return masks.decode(self.occluder_rles(inst.image_id)[inst.ann_id])


def occluder_rles(instances: Sequence[Instance],
                  iou_threshold: float = OCCLUDER_IOU_THRESHOLD) -> dict[int, RLE]:
    """Occluder masks of the instances of one image (annotation id -> RLE), by the BCNet/AISFormer rule."""
    if not instances:
        return {}
    occ = occluder_masks([i.amodal_box for i in instances], [i.visible_box for i in instances],
                         [i.visible_rle for i in instances], instances[0].image.height,
                         instances[0].image.width, iou_threshold)
    return {inst.ann_id: rle for inst, rle in zip(instances, occ, strict=True)}


def occluder_masks(amodal_boxes: Sequence[Sequence[float]], visible_boxes: Sequence[Sequence[float]],
                   visible_rles: Sequence[RLE], height: int, width: int,
                   iou_threshold: float = OCCLUDER_IOU_THRESHOLD) -> list[RLE]:
    """For each object of one image: the union of the other objects' visible masks whose visible box
    (x1, y1, x2, y2) has IoU > `iou_threshold` with its amodal box, cut to its amodal box."""
    if not len(amodal_boxes):
        return []
    iou = masks.box_iou_xyxy(np.asarray(visible_boxes), np.asarray(amodal_boxes))  # [occluder j, object i]
    out: list[RLE] = []
    for i, box in enumerate(amodal_boxes):
        others = [visible_rles[j] for j in range(len(visible_rles)) if j != i and iou[j, i] > iou_threshold]
        out.append(masks.intersection(masks.union(others, height, width), masks.box_rle(box, height, width)))
    return out


def load_annotations(path: str | Path, **kwargs: Any) -> AmodalAnnotations:
    """Read and validate an amodal annotation file (see `AmodalAnnotations` for the options)."""
    return AmodalAnnotations(path, **kwargs)
