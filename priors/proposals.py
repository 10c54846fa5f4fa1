"""Detector proposals (docs/precompute.md, 'Proposals'): a COCO results JSON list with visible masks.

Each record: `image_id`, `bbox` [x, y, w, h] (the amodal box), `category_id`, `score`, `segmentation`
(RLE of the predicted visible mask) and optionally `occluder_segmentation` (RLE). Without it, a
proposal's occluder mask is derived from the image's other proposals by the ground-truth rule.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from . import masks
from .annotations import AmodalAnnotations, InvalidField, InvalidRecord, occluder_masks, parse_box, read_json
from .errors import AnnotationError
from .masks import RLE, MaskFormatError

REQUIRED_KEYS = ("image_id", "bbox", "category_id", "score", "segmentation")


@dataclass(frozen=True, eq=False)
class Proposal:
    """One proposal: `index` is its position in the results file (its identity in a prior store)."""

    index: int
    image_id: int
    category_id: int
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    visible_rle: RLE
    occluder_rle: RLE | None

    @cached_property
    def visible_box(self) -> tuple[float, float, float, float]:
        x, y, w, h = masks.bbox_xywh(self.visible_rle)
        return (x, y, x + w, y + h)


class Proposals:
    """A validated proposals file, checked against the annotation file that names its images and
    categories."""

    def __init__(self, path: str | Path, annotations: AmodalAnnotations, skip_invalid: bool = False) -> None:
        self.path = Path(path)
        self.invalid: list[InvalidRecord] = []
        self.skip_invalid = skip_invalid
        data = read_json(self.path)
        if not isinstance(data, list):
            raise AnnotationError(f"{self.path}: a proposals file is a COCO results JSON list of records "
                                  f"({', '.join(REQUIRED_KEYS)}), not a {type(data).__name__}.")
        self.items: list[Proposal] = []
        for index, record in enumerate(data):
            proposal = self._read(index, record, annotations)
            if proposal is not None:
                self.items.append(proposal)
        self._by_image: dict[int, list[Proposal]] = defaultdict(list)
        for p in self.items:
            self._by_image[p.image_id].append(p)
        self._by_index = {p.index: p for p in self.items}

    def _invalid(self, reason, index: int, image_id, problem: str, fix: str) -> None:
        message = (f"{self.path}: proposal #{index} (image {image_id if image_id is not None else '?'}): "
                   f"{problem}. {fix}")
        if not self.skip_invalid:
            raise AnnotationError(message + " (Or skip invalid records with --skip-invalid.)")
        self.invalid.append(InvalidRecord(reason, str(self.path), image_id, None, message))

    def _read(self, index: int, record: Any, annotations: AmodalAnnotations) -> Proposal | None:
        if not isinstance(record, dict) or any(k not in record for k in REQUIRED_KEYS):
            missing = [k for k in REQUIRED_KEYS if not isinstance(record, dict) or k not in record]
            self._invalid("missing_key", index, record.get("image_id") if isinstance(record, dict) else None,
                          f"missing key(s) {', '.join(missing)}",
                          f"Proposals need the keys {', '.join(REQUIRED_KEYS)} "
                          "(docs/precompute.md, 'Proposals').")
            return None
        image_id, category_id = int(record["image_id"]), int(record["category_id"])
        image = annotations.images.get(image_id)
        if image is None:
            self._invalid("unknown_image", index, image_id, "image id not in the annotation file's 'images'",
                          "Use the annotation file the proposals were made for.")
            return None
        if category_id not in annotations.categories:
            self._invalid("unknown_category", index, image_id, f"unknown category id {category_id}",
                          "Use the annotation file the proposals were made for.")
            return None
        if image_id in annotations.missing_images:
            self._invalid("missing_image_file", index, image_id, f"image file "
                          f"{annotations.images_dir / image.file_name} does not exist",
                          "Point --images at the folder that holds the dataset's images.")
            return None
        try:
            box = parse_box(record["bbox"], image, "bbox")
            visible = masks.to_rle(record["segmentation"], image.height, image.width)
            occluder = record.get("occluder_segmentation")
            occluder = masks.to_rle(occluder, image.height, image.width) if occluder is not None else None
        except InvalidField as bad:
            self._invalid(bad.reason, index, image_id, bad.problem, bad.fix)
            return None
        except MaskFormatError as exc:
            self._invalid("bad_mask", index, image_id, f"cannot read the mask: {exc}",
                          "Masks must be COCO RLE of the image size.")
            return None
        if masks.area(visible) == 0:
            self._invalid("empty_visible_mask", index, image_id, "the predicted visible mask is empty",
                          "Drop the proposal (or lower the mask threshold when dumping proposals).")
            return None
        return Proposal(index, image_id, category_id, float(record["score"]), box, visible, occluder)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)

    def by_image(self, image_id: int) -> list[Proposal]:
        return self._by_image.get(image_id, [])

    def get(self, index: int) -> Proposal:
        """The proposal at position `index` of the file."""
        return self._by_index[index]

    def occluder_rles(self, image_id: int, height: int, width: int) -> dict[int, RLE]:
        """Occluder mask of each proposal of an image (index -> RLE): the file's, else by the GT rule."""
        props = self.by_image(image_id)
        derived = occluder_masks([p.box for p in props], [p.visible_box for p in props],
                                 [p.visible_rle for p in props], height, width)
        return {p.index: p.occluder_rle if p.occluder_rle is not None else d
                for p, d in zip(props, derived, strict=True)}


def proposal_record(image_id: int, box_xyxy, category_id: int, score: float, visible_rle: RLE,
                    occluder_rle: RLE | None = None) -> dict[str, Any]:
    """One record of a proposals file (as `aisdiff test --dump-proposals` writes them)."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    record = {"image_id": int(image_id), "bbox": [x1, y1, x2 - x1, y2 - y1], "category_id": int(category_id),
              "score": float(score), "segmentation": masks.rle_to_json(visible_rle)}
    if occluder_rle is not None:
        record["occluder_segmentation"] = masks.rle_to_json(occluder_rle)
    return record
