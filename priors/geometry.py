"""ROI geometry, vectorized in torch: context crops for DiffSP, priors between boxes and images, warps.

Conventions: boxes are x1, y1, x2, y2 in continuous pixel coordinates (pixel i covers [i, i + 1)).
A prior of size S x S covers its box exactly: cell (r, c) is centred at
(x1 + (c + 0.5) * w / S, y1 + (r + 0.5) * h / S). All resampling is bilinear at cell centres with zeros
outside the source, so mapping a box onto itself is the identity.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def as_boxes(boxes, device: torch.device | str | None = None) -> torch.Tensor:
    """Boxes as a float32 tensor [N, 4] (accepts lists, numpy arrays and tensors)."""
    return torch.as_tensor(boxes, dtype=torch.float32, device=device).reshape(-1, 4)


def context_boxes(boxes: torch.Tensor, context: float) -> torch.Tensor:
    """Square crops centred on the boxes, of side `context` x the longer box side (DiffSP's input crops).

    A square keeps the object's aspect ratio when the crop is resized to the model's square input.
    """
    boxes = as_boxes(boxes)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(dim=1, keepdim=True).values * (context / 2)
    return torch.cat([centre - half, centre + half], dim=1)


def roi_resample(src: torch.Tensor, boxes: torch.Tensor, size: int | tuple[int, int],
                 mode: str = "bilinear") -> torch.Tensor:
    """Sample each box of `src` [N, C, H, W] (box n from map n, in src pixel coordinates) onto a grid
    of `size` cells placed at the box's cell centres -> [N, C, h, w].

    Samples whose centre lies outside the source are 0; inside, the border extends (a cell near the edge
    is not blended with the outside). Coordinates are computed in float64 so that exact cases stay exact.
    """
    h, w = (size, size) if isinstance(size, int) else size
    n, _, src_h, src_w = src.shape
    boxes = as_boxes(boxes, src.device).double()
    steps_x = (torch.arange(w, device=src.device, dtype=torch.float64) + 0.5) / w
    steps_y = (torch.arange(h, device=src.device, dtype=torch.float64) + 0.5) / h
    xs = boxes[:, 0:1] + steps_x[None] * (boxes[:, 2:3] - boxes[:, 0:1])  # [N, w] pixel coordinates
    ys = boxes[:, 1:2] + steps_y[None] * (boxes[:, 3:4] - boxes[:, 1:2])  # [N, h]
    inside = ((ys >= 0) & (ys <= src_h))[:, :, None] & ((xs >= 0) & (xs <= src_w))[:, None, :]
    gx = (2 * xs / src_w - 1)[:, None, :].expand(n, h, w)  # grid_sample, align_corners=False
    gy = (2 * ys / src_h - 1)[:, :, None].expand(n, h, w)
    dtype = src.dtype if src.is_floating_point() else torch.float32
    grid = torch.stack([gx, gy], dim=-1).to(dtype)
    out = F.grid_sample(src.to(dtype), grid, mode=mode, padding_mode="border", align_corners=False)
    return out * inside[:, None].to(dtype)


def crop_rois(image: torch.Tensor, crop_boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crops of one image [C, H, W] at `crop_boxes` [N, 4], resized to size x size -> [N, C, size, size]."""
    return roi_resample(image[None].expand(len(crop_boxes), *image.shape), crop_boxes, size)


def boxes_in_frame(boxes: torch.Tensor, frames: torch.Tensor, frame_size: int | float) -> torch.Tensor:
    """Express boxes in the pixel coordinates of frames (other boxes) resized to frame_size x frame_size."""
    boxes, frames = as_boxes(boxes), as_boxes(frames, boxes.device)
    origin = frames[:, :2].repeat(1, 2)
    scale = (frames[:, 2:] - frames[:, :2]).repeat(1, 2) / frame_size
    return (boxes - origin) / scale


def warp_priors(priors: torch.Tensor, src_boxes: torch.Tensor, dst_boxes: torch.Tensor) -> torch.Tensor:
    """Re-express priors [N, S, S] covering `src_boxes` as priors covering `dst_boxes` (zeros where the
    destination box reaches outside the source box). Used to give a proposal its ground truth's prior."""
    size = priors.shape[-1]
    region = boxes_in_frame(dst_boxes, src_boxes.to(priors.device), size)
    # float64 sampling (priors are small) keeps exact cases exact: identity, whole-cell shifts
    return roi_resample(priors[:, None].double(), region, (priors.shape[-2], size))[:, 0].float()


def paste_priors(priors: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Place priors [N, S, S] covering `boxes` into images of height x width -> [N, H, W] (0 off the box)."""
    image_frame = torch.tensor([[0.0, 0.0, float(width), float(height)]], device=priors.device)
    # the whole image in each prior's cell coordinates, sampled at every pixel centre
    region = boxes_in_frame(image_frame.expand(len(boxes), 4), as_boxes(boxes, priors.device),
                            priors.shape[-1])
    return roi_resample(priors[:, None].double(), region, (height, width))[:, 0].float()


def masks_in_box(instance_masks: np.ndarray, box, size: int) -> torch.Tensor:
    """Masks [n, H, W] of one image resampled onto one box's size x size cells (cell centres, > 0.5): the
    frame in which priors are compared with ground truth."""
    src = torch.from_numpy(instance_masks.astype(np.float32))[:, None]
    return roi_resample(src, as_boxes(box).expand(len(src), 4), size)[:, 0] > 0.5


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """IoU of two boolean masks (1 when both are empty)."""
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 1.0
