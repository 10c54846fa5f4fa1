"""A COCO file of amodal masks and a COCO file of visible masks of the same objects -> one aistron file.

The layout datasets most often come in: two ordinary COCO exports of one split, the first whose
`segmentation` (and `bbox`) is each object's amodal mask, the second whose `segmentation` is its visible
mask, the objects matched by annotation id. `merge_amodal_visible` checks that the two files describe the
same images, categories and objects and that every visible mask lies inside its amodal mask (within
`VISIBLE_TOLERANCE`, as `AmodalAnnotations` validates), and returns the aistron-format document.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from . import masks
from .annotations import FORMATS, VISIBLE_TOLERANCE, read_json
from .errors import AnnotationError
from .masks import RLE, MaskFormatError

REQUIRED_KEYS = ("id", "image_id", "category_id", "segmentation")
LISTED = 10  # ids named in a message, at most


def _ids(ids: Iterable[Any]) -> str:
    """Ids for a message: the first LISTED, sorted, and how many more."""
    ids = sorted(ids)
    more = f" and {len(ids) - LISTED} more" if len(ids) > LISTED else ""
    return ", ".join(str(i) for i in ids[:LISTED]) + more


def read_coco(path: str | Path) -> dict[str, Any]:
    """A COCO-style file (top-level `images`, `annotations`, `categories` lists); anything else is refused."""
    data = read_json(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        found = ", ".join(sorted(data)) if isinstance(data, dict) else type(data).__name__
        raise AnnotationError(f"{path}: not a COCO file: it needs top-level 'images', 'annotations' and "
                              f"'categories' lists (found: {found}). Export the split as COCO instances "
                              "JSON.")
    return data


def _keyed(path: Path, entries: list[dict[str, Any]], what: str,
           value: Callable[[dict[str, Any]], Any]) -> dict[int, Any]:
    """{id: value(entry)} of a file's images or categories; an entry without an id is refused."""
    try:
        return {int(e["id"]): value(e) for e in entries}
    except (KeyError, TypeError, ValueError) as exc:
        raise AnnotationError(f"{path}: an entry of '{what}' lacks {exc} (or is not an object); every entry "
                              "needs an integer 'id'. Fix the export.") from None


def _check_same(paths: tuple[Path, Path], entries: tuple[dict[int, Any], dict[int, Any]], what: str) -> None:
    """Both files list the same `what` (images or categories) under the same ids, or an error names them."""
    (a_path, v_path), (a, v) = paths, entries
    only_a, only_v = set(a) - set(v), set(v) - set(a)
    differ = {i for i in set(a) & set(v) if a[i] != v[i]}
    if not (only_a or only_v or differ):
        return
    parts = [f"ids {_ids(ids)} only in {path}" for ids, path in ((only_a, a_path), (only_v, v_path)) if ids]
    if differ:
        parts.append(f"ids {_ids(differ)} described differently (e.g. id {min(differ)}: {a[min(differ)]} in "
                     f"{a_path}, {v[min(differ)]} in {v_path})")
    raise AnnotationError(f"the amodal file {a_path} and the visible file {v_path} list different {what}: "
                          f"{'; '.join(parts)}. Both must be exports of the same split with the same {what}; "
                          "re-export them together.")


def _annotations(path: Path, data: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """{annotation id: annotation} of one file; missing keys and repeated ids are refused."""
    out: dict[int, dict[str, Any]] = {}
    for i, ann in enumerate(data["annotations"]):
        missing = [k for k in REQUIRED_KEYS if not isinstance(ann, dict) or k not in ann]
        if missing:
            ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
            raise AnnotationError(f"{path}: annotations[{i}] (id {ann_id}) lacks {', '.join(missing)}; COCO "
                                  "annotations need "
                                  f"{', '.join(REQUIRED_KEYS)}. Fix the export.")
        if int(ann["id"]) in out:
            raise AnnotationError(f"{path}: annotation id {ann['id']} appears twice; the two files are "
                                  "matched by annotation id, so ids must be unique. Renumber both files "
                                  "alike.")
        out[int(ann["id"])] = ann
    return out


def _check_same_objects(paths: tuple[Path, Path], amodal: dict[int, dict], visible: dict[int, dict]) -> None:
    """Both files hold the same annotation ids, each on the same image and category."""
    (a_path, v_path) = paths
    only_a, only_v = set(amodal) - set(visible), set(visible) - set(amodal)
    if only_a or only_v:
        parts = [f"ids {_ids(ids)} only in {path}"
                 for ids, path in ((only_a, a_path), (only_v, v_path)) if ids]
        raise AnnotationError(f"the amodal file {a_path} and the visible file {v_path} do not hold the same "
                              f"annotation ids: {'; '.join(parts)}. Every object needs both masks under one "
                              "id: add the missing masks, or drop those objects from both files.")
    moved = {i for i in amodal
             if (amodal[i]["image_id"], amodal[i]["category_id"]) != (visible[i]["image_id"],
                                                                       visible[i]["category_id"])}
    if moved:
        raise AnnotationError(f"annotation ids {_ids(moved)} lie on another image or category in {v_path} "
                              f"than in {a_path}: the ids do not pair the same objects. Export both files "
                              "with the same annotation ids.")


def _rle(path: Path, ann: dict[str, Any], image: dict[str, Any]) -> RLE:
    try:
        return masks.to_rle(ann["segmentation"], int(image["height"]), int(image["width"]))
    except MaskFormatError as exc:
        raise AnnotationError(f"{path}: image {ann['image_id']}, annotation {ann['id']}: cannot read the "
                              f"mask: {exc}. Masks must be COCO polygons or RLE of the image size.") from None


def _box(ann: dict[str, Any], rle: RLE) -> list[float]:
    """The annotation's COCO box, else its mask's tight box."""
    return [float(v) for v in ann["bbox"]] if "bbox" in ann else list(masks.bbox_xywh(rle))


def _merge_one(amodal: dict[str, Any], visible: dict[str, Any], amodal_rle: RLE,
               visible_rle: RLE) -> dict[str, Any]:
    """One aistron annotation from an object's amodal and visible COCO annotations."""
    a_area, v_area = masks.area(amodal_rle), masks.area(visible_rle)
    rate = 1.0 - (v_area - masks.area_outside(visible_rle, amodal_rle)) / a_area if a_area else 0.0
    ann = FORMATS["aistron"].encode(int(amodal["id"]), int(amodal["image_id"]), int(amodal["category_id"]),
                                    amodal["segmentation"], visible["segmentation"], _box(amodal, amodal_rle),
                                    _box(visible, visible_rle), a_area, v_area, rate)
    ann["iscrowd"] = int(amodal.get("iscrowd", 0))
    return ann


def _outside_share(amodal_rle: RLE, visible_rle: RLE) -> float:
    """Fraction of the visible mask outside the amodal one (0 for an empty visible mask)."""
    v_area = masks.area(visible_rle)
    return masks.area_outside(visible_rle, amodal_rle) / v_area if v_area else 0.0


def merge_amodal_visible(amodal_json: str | Path, visible_json: str | Path) -> dict[str, Any]:
    """The aistron-format document of an amodal COCO file and a visible COCO file of the same objects
    (matched by annotation id); the images and categories are the amodal file's, which must equal the
    visible file's. Any disagreement raises `AnnotationError` naming the file, the ids and the fix."""
    paths = (Path(amodal_json), Path(visible_json))
    docs = tuple(read_coco(p) for p in paths)
    for what, value in (("images", lambda e: (e.get("file_name"), e.get("width"), e.get("height"))),
                        ("categories", lambda e: e.get("name"))):
        _check_same(paths, tuple(_keyed(p, d[what], what, value) for p, d in zip(paths, docs, strict=True)),
                    what)
    amodal, visible = (_annotations(p, d) for p, d in zip(paths, docs, strict=True))
    _check_same_objects(paths, amodal, visible)
    images = {int(img["id"]): img for img in docs[0]["images"]}
    unknown = {i for i, ann in amodal.items() if int(ann["image_id"]) not in images}
    if unknown:
        raise AnnotationError(f"{paths[0]}: annotations {_ids(unknown)} refer to image ids not in 'images'. "
                              "Add the image entries (to both files) or drop those annotations.")
    merged, outside = [], {}
    for ann_id, ann in amodal.items():
        image = images[int(ann["image_id"])]
        a_rle, v_rle = _rle(paths[0], ann, image), _rle(paths[1], visible[ann_id], image)
        share = _outside_share(a_rle, v_rle)
        if share > VISIBLE_TOLERANCE:
            outside[ann_id] = share
        merged.append(_merge_one(ann, visible[ann_id], a_rle, v_rle))
    if outside:
        worst = max(outside, key=outside.get)
        raise AnnotationError(
            f"annotations {_ids(outside)}: the visible mask in {paths[1]} lies outside the amodal mask in "
            f"{paths[0]} beyond the {VISIBLE_TOLERANCE:.0%} tolerance (annotation {worst}: "
            f"{outside[worst]:.1%} of its visible pixels). The files are swapped (--amodal takes the amodal "
            "masks) or the ids pair different objects; fix the export, or drop those objects from both.")
    info = {**(docs[0].get("info") or {}),
            "converted_from": {"amodal": str(paths[0]), "visible": str(paths[1])}}
    return {"info": info, "images": docs[0]["images"], "annotations": merged,
            "categories": docs[0]["categories"]}


def write_json_atomic(doc: Any, path: str | Path) -> None:
    """Write `doc` as JSON to `path` through a temporary file in the same folder, renamed when complete: an
    interrupted write never leaves a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, separators=(",", ":"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
