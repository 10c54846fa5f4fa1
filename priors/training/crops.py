"""Inpainting examples from an amodal dataset: crops of unoccluded objects with occluders laid over them.

An example mirrors what DiffSP feeds the model at inference: the ROI context crop with only the object's
visible pixels kept (blank elsewhere), the occluder mask as the region to inpaint, and the prompt
"a photo of a {category}". The target is the whole object on a blank background, so the model learns to
complete shapes. Only objects with no occlusion are used (their whole appearance is known); occluders are
other training objects' amodal masks, placed next to the object in front of it or behind it, as in scenes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import geometry
from ..annotations import AmodalAnnotations
from ..errors import AisdiffError
from ..images import read_image

MIN_VISIBLE_FRACTION = 0.3  # an occluder in front may hide at most 70% of the object (else it goes behind)
OCCLUDER_PROBABILITY = (0.85, 0.35)  # chance of a first and of a second occluder
FRONT_PROBABILITY = 0.8  # an occluder is in front of the object (hides it) or behind it (only in the hole)
OCCLUDER_SCALE = (0.7, 1.4)  # occluder size relative to the object
OCCLUDER_OFFSET = (0.35, 0.9)  # centre distance in object sizes
COMPANION_OFFSET = (0.3, 0.6)  # companions stand closer than occluders, so that they show in the crop
RECT_SIDE = (0.2, 0.6)  # random extra mask rectangles: width and height as fractions of the crop side


@dataclass
class ObjectCrops:
    """Context crops of whole objects at R x R: images [N, 3, R, R] in [0, 1], amodal masks [N, 1, R, R]
    in {0, 1}, the object box in crop pixels [N, 4] and the category index of each."""

    images: torch.Tensor
    amodal: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    categories: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def load_object_crops(annotations: AmodalAnnotations, resolution: int, context: float = 1.2,
                      progress: bool = True) -> ObjectCrops:
    """Crop every unoccluded instance of `annotations` (the train split) as DiffSP would crop its ROI."""
    categories = sorted(set(annotations.categories.values()))
    index = {name: i for i, name in enumerate(categories)}
    images, amodal, boxes, labels = [], [], [], []
    for image_id in tqdm(annotations.image_ids(), desc="crops", unit="img", disable=not progress):
        whole = [i for i in annotations.by_image(image_id) if i.occlusion_rate == 0]
        if not whole:
            continue
        info = annotations.images[image_id]
        image = read_image(annotations.image_path(image_id), (info.height, info.width)).float() / 255
        box = geometry.as_boxes([i.amodal_box for i in whole])
        crops = geometry.context_boxes(box, context)
        masks = torch.from_numpy(np.stack([i.amodal_mask() for i in whole]))[:, None].float()
        images.append(geometry.crop_rois(image, crops, resolution))
        amodal.append((geometry.roi_resample(masks, crops, resolution) >= 0.5).float())
        boxes.append(geometry.boxes_in_frame(box, crops, resolution))
        labels += [index[i.category] for i in whole]
    if not labels:
        raise AisdiffError(f"{annotations.path}: no instance without occlusion; the inpainting model is "
                           "trained on whole objects (their appearance is known everywhere). Use a split "
                           "with unoccluded objects.")
    return ObjectCrops(torch.cat(images), torch.cat(amodal), torch.cat(boxes), torch.tensor(labels),
                       categories)


def _warp(crops: torch.Tensor, centres: torch.Tensor, sizes: torch.Tensor, context: float,
          flips: torch.Tensor) -> torch.Tensor:
    """Bilinearly resample object crops [B, C, R, R] (images or masks, each object centred in its crop, its
    box 1/context of the crop) so that each is `sizes` wide (normalized units) around `centres` [B, 2]
    (normalized [-1, 1] coordinates), mirrored where `flips` is -1."""
    scale = sizes * context / 2  # the source object's longer side is 2 / context in normalized units
    theta = torch.zeros(len(crops), 2, 3)
    theta[:, 0, 0] = flips / scale
    theta[:, 1, 1] = 1 / scale
    theta[:, :, 2] = -centres / scale[:, None] * torch.stack([flips, torch.ones_like(flips)], 1)
    grid = F.affine_grid(theta, list(crops.shape), align_corners=False)
    return F.grid_sample(crops, grid, align_corners=False)


def _beside(crops: torch.Tensor, boxes: torch.Tensor, context: float, u: torch.Tensor,
            offsets: tuple[float, float] = OCCLUDER_OFFSET) -> torch.Tensor:
    """Resample object crops [B, C, R, R] next to each object (its box in `boxes`): direction, distance (in
    `offsets`, object sizes), size and flip drawn from the uniform numbers u[:, 0:4]."""
    r = crops.shape[-1]
    size = (boxes[:, 2:] - boxes[:, :2]).amax(1) / r * 2  # the object's longer side, normalized
    centre = (boxes[:, :2] + boxes[:, 2:]) / r - 1
    angle = u[:, 0] * 2 * math.pi
    offset = (offsets[0] + u[:, 1] * (offsets[1] - offsets[0])) * size
    scale = OCCLUDER_SCALE[0] + u[:, 2] * (OCCLUDER_SCALE[1] - OCCLUDER_SCALE[0])
    where = centre + offset[:, None] * torch.stack([angle.cos(), angle.sin()], 1)
    return _warp(crops, where, size * scale, context, torch.where(u[:, 3] < 0.5, -1.0, 1.0))


def occlude(amodal: torch.Tensor, boxes: torch.Tensor, occluders: list[torch.Tensor], context: float,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay up to len(occluders) shapes next to each object; returns (visible, hole) [B, 1, R, R].

    An occluder in front hides the object (unless it would leave less than MIN_VISIBLE_FRACTION of it, then
    it goes behind); its visible part is the hole. As with the BCNet occluder rule used at inference, the
    hole is cut to the object's box.
    """
    b, _, r, _ = amodal.shape
    visible, taken = amodal.clone(), torch.zeros_like(amodal)
    for shapes, prob in zip(occluders, OCCLUDER_PROBABILITY, strict=False):
        u = torch.rand(b, 6, generator=generator)
        occ = (_beside(shapes, boxes, context, u) >= 0.5).float()
        occ = occ * (u[:, 4] < prob).float()[:, None, None, None]
        front_visible = visible * (1 - occ)
        enough = front_visible.sum((1, 2, 3)) >= MIN_VISIBLE_FRACTION * amodal.sum((1, 2, 3))
        front = ((u[:, 5] < FRONT_PROBABILITY) & enough).float()[:, None, None, None]
        visible = front * front_visible + (1 - front) * visible
        # in front: all of the occluder not behind an earlier one shows; behind: only off the object
        shown = occ * (1 - taken) * (front + (1 - front) * (1 - amodal))
        taken = torch.maximum(taken, shown)
    return visible, taken * box_masks(boxes, r)


def box_masks(boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Masks [B, 1, size, size] of the pixels whose centre lies in each box (crop pixel coordinates)."""
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    inside_x = (centres[None] >= boxes[:, 0:1]) & (centres[None] < boxes[:, 2:3])
    inside_y = (centres[None] >= boxes[:, 1:2]) & (centres[None] < boxes[:, 3:4])
    return (inside_y[:, :, None] & inside_x[:, None, :]).float()[:, None]


def extra_masks(visible: torch.Tensor, hole: torch.Tensor, full_probability: float, random_probability: float,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable Diffusion inpainting's training masks on top of the occluders: with `full_probability` the
    whole crop is masked (nothing visible: the prompt alone says what to draw), else with
    `random_probability` a random rectangle (RECT_SIDE of the crop side) joins the hole and hides what it
    covers. Both make the object's pixels depend on the prompt, not only on the visible pixels."""
    b, _, r, _ = visible.shape
    u = torch.rand(b, 6, generator=generator)
    full = (u[:, 0] < full_probability)[:, None, None, None]
    side = (RECT_SIDE[0] + u[:, 1:3] * (RECT_SIDE[1] - RECT_SIDE[0])) * r
    corner = u[:, 3:5] * (r - side)
    rect = box_masks(torch.cat([corner, corner + side], 1), r)
    rect = rect * (u[:, 5] < random_probability).float()[:, None, None, None]
    hole = torch.where(full, torch.ones_like(hole), torch.maximum(hole, rect))
    return visible * (1 - hole), hole


def add_companions(crops: ObjectCrops, scene: torch.Tensor, amodal: torch.Tensor, visible: torch.Tensor,
                   hole: torch.Tensor, boxes: torch.Tensor, context: float, probability: float,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """With `probability`, a second whole object (a "companion", drawn from the crops) stands next to each
    object, behind it, in the target as well as in the input (outside the hole). Returns the scene [B, 3, R,
    R] in [-1, 1], the visible mask of both objects and each companion's category (-1: none). A prompt that
    names both objects makes each category token matter in its own region, as in captioned images."""
    b = len(scene)
    pick = torch.randint(len(crops), (b,), generator=generator)
    u = torch.rand(b, 5, generator=generator)
    warped = _beside(torch.cat([crops.images[pick] * 2 - 1, crops.amodal[pick]], 1), boxes, context, u,
                     COMPANION_OFFSET)
    present = (u[:, 4] < probability).float()[:, None, None, None]
    mask = (warped[:, 3:] >= 0.5).float() * (1 - amodal) * present  # behind the object
    scene = scene * (1 - mask) + warped[:, :3] * mask
    labels = torch.where(present.flatten() > 0, crops.labels[pick], torch.full_like(pick, -1))
    return scene, torch.maximum(visible, mask * (1 - hole)), labels


@dataclass
class InpaintingBatch:
    """Targets and inputs in [-1, 1]: the whole object (and any companion) on blank, the visible-only crop,
    the hole mask, the object's amodal mask (where it is in the target), its category and the companion's
    (-1: none)."""

    target: torch.Tensor
    masked: torch.Tensor
    hole: torch.Tensor
    amodal: torch.Tensor
    labels: torch.Tensor
    companions: torch.Tensor


def sample_batch(crops: ObjectCrops, batch_size: int, generator: torch.Generator, context: float = 1.2,
                 full_mask_probability: float = 0.0, random_mask_probability: float = 0.0,
                 companion_probability: float = 0.0) -> InpaintingBatch:
    """A random batch: objects and occluders drawn from the crops, random horizontal flips; optionally
    companion objects (`add_companions`) and Stable Diffusion inpainting's extra masks (`extra_masks`)."""
    n = len(crops)
    idx = torch.randint(n, (batch_size,), generator=generator)
    image, amodal, boxes = crops.images[idx], crops.amodal[idx], crops.boxes[idx].clone()
    flip = torch.rand(batch_size, generator=generator) < 0.5
    image[flip], amodal[flip] = image[flip].flip(-1), amodal[flip].flip(-1)
    r = image.shape[-1]
    boxes[flip] = torch.stack([r - boxes[flip, 2], boxes[flip, 1], r - boxes[flip, 0], boxes[flip, 3]], 1)
    occluders = [crops.amodal[torch.randint(n, (batch_size,), generator=generator)]
                 for _ in OCCLUDER_PROBABILITY]
    visible, hole = occlude(amodal, boxes, occluders, context, generator)
    scene, companions = (image * 2 - 1) * amodal, torch.full((batch_size,), -1)
    if companion_probability:
        scene, visible, companions = add_companions(crops, scene, amodal, visible, hole, boxes, context,
                                                    companion_probability, generator)
    if full_mask_probability or random_mask_probability:
        visible, hole = extra_masks(visible, hole, full_mask_probability, random_mask_probability, generator)
    return InpaintingBatch(target=scene, masked=scene * visible, hole=hole, amodal=amodal,
                           labels=crops.labels[idx], companions=companions)
