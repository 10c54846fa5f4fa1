"""Pictures of amodal instances: mmdet's `DetLocalVisualizer` drawing amodal, visible and occluder masks.

Per instance, in the instance's colour: the visible mask filled, the occluder region hatched, the amodal mask
(the whole shape, hidden part included) outlined, the box with label and score. With `show_priors=True`,
instances that carry shape priors get a second panel: each prior as a heat map over its box.
Used by `aisdiff predict` and, through the config's `visualizer`, by mmdet's `tools/test.py --show-dir`.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
from mmdet.registry import VISUALIZERS
from mmdet.structures.bbox import BaseBoxes
from mmdet.structures.mask import BitmapMasks, PolygonMasks, bitmap_to_polygon
from mmdet.visualization import DetLocalVisualizer
from mmdet.visualization.palette import get_palette

HATCH_PERIOD = 6  # pixels between the diagonal stripes that mark an occluder region


def as_numpy(values) -> np.ndarray:
    """A tensor, array, mmdet box or mask structure as a numpy array (float32 for floating tensors)."""
    if isinstance(values, BaseBoxes):  # (ground-truth boxes, as tools/test.py --show-dir draws them)
        values = values.tensor
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        return (values.float() if values.is_floating_point() else values).numpy()
    if isinstance(values, (BitmapMasks, PolygonMasks)):
        return values.to_ndarray()
    return np.asarray(values)


def as_bool_masks(masks) -> np.ndarray:
    """Masks (tensor, ndarray, Bitmap/PolygonMasks) as a bool array [N, H, W]."""
    return as_numpy(masks).astype(bool)


def hatch(shape: tuple[int, int], period: int = HATCH_PERIOD) -> np.ndarray:
    """Diagonal stripes, one pixel in three of each period on: a bool [H, W] pattern."""
    y, x = np.mgrid[:shape[0], :shape[1]]
    return (x + y) % period < max(1, period // 3)


def instance_colors(labels, palette) -> list[tuple[int, int, int]]:
    """One RGB colour per instance: its class colour, shifted per instance so that neighbours of one class
    differ (a fixed shift per index, so every run draws the same picture)."""
    base = get_palette(palette, max([int(v) for v in labels], default=0) + 1)
    colors = []
    for i, label in enumerate(labels):
        shift = ((i * 37) % 61) - 30  # in [-30, 30], the same for instance i on every run
        colors.append(tuple(int(np.clip(c + shift, 0, 255)) for c in base[int(label)]))
    return colors


def prior_panel(image: np.ndarray, boxes: np.ndarray, priors: np.ndarray, colormap: int = cv2.COLORMAP_JET,
                weight: float = 0.6) -> np.ndarray:
    """The image greyed, with each prior [S, S] resized onto its box (the maximum where boxes overlap) as a
    heat map: an RGB uint8 picture of what the amodal predictor was told about each shape."""
    h, w = image.shape[:2]
    heat = np.zeros((h, w), np.float32)
    for box, prior in zip(boxes, priors, strict=True):
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        bw, bh = x2 - x1, y2 - y1
        if bw < 1 or bh < 1:
            continue
        patch = cv2.resize(np.asarray(prior, np.float32), (bw, bh), interpolation=cv2.INTER_LINEAR)
        cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if cx2 <= cx1 or cy2 <= cy1:
            continue
        window = patch[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1]
        heat[cy1:cy2, cx1:cx2] = np.maximum(heat[cy1:cy2, cx1:cx2], window)
    grey = np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2).astype(np.float32)
    colored = cv2.applyColorMap((np.clip(heat, 0, 1) * 255).astype(np.uint8), colormap)[..., ::-1]
    alpha = (weight * np.clip(heat, 0, 1))[..., None]
    return (grey * (1 - alpha) + colored.astype(np.float32) * alpha).astype(np.uint8)


@VISUALIZERS.register_module()
class AmodalLocalVisualizer(DetLocalVisualizer):
    """DetLocalVisualizer for amodal instances (`visible_masks` / `occluder_masks` beside the amodal `masks`).

    Args:
        name: the instance's name (mmengine's visualizers are named, global instances).
        show_priors: add a panel with the instances' shape priors (`shape_priors`) as heat maps.
        hatch_period: pixels between the stripes that mark occluder regions.
        Other arguments as `DetLocalVisualizer` (instances without visible masks are drawn as it draws them).
    """

    def __init__(self, name: str = "visualizer", *, show_priors: bool = False,
                 hatch_period: int = HATCH_PERIOD, **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.show_priors, self.hatch_period = show_priors, hatch_period

    def _draw_instances(self, image: np.ndarray, instances, classes, palette) -> np.ndarray:
        if "visible_masks" not in instances or "masks" not in instances:
            return super()._draw_instances(image, instances, classes, palette)
        labels = [int(v) for v in instances.labels]
        colors = instance_colors(labels, palette if self.mask_color is None else self.mask_color)
        amodal, visible = as_bool_masks(instances.masks), as_bool_masks(instances.visible_masks)
        self.set_image(image)
        if len(labels):
            self.draw_binary_masks(visible, colors=colors, alphas=0.5)
            if "occluder_masks" in instances:
                stripes = hatch(image.shape[:2], self.hatch_period)
                self.draw_binary_masks(as_bool_masks(instances.occluder_masks) & stripes, colors=colors,
                                       alphas=0.7)
            for mask, color in zip(amodal, colors, strict=True):
                outline, _ = bitmap_to_polygon(mask)
                if outline:
                    self.draw_polygons(outline, edge_colors=[color], line_widths=2, alpha=1.0)
            self._draw_labels(instances, labels, colors, classes)
        drawn = self.get_image()
        if self.show_priors and "shape_priors" in instances:
            drawn = np.concatenate([drawn, self.priors_panel(image, instances)], axis=1)
        return drawn

    def _draw_labels(self, instances, labels: list[int], colors: list, classes) -> None:
        """Each instance's box (thin) and 'class: score' at its top-left corner."""
        if "bboxes" not in instances:
            return
        boxes = as_numpy(instances.bboxes)
        self.draw_bboxes(boxes, edge_colors=colors, alpha=0.8, line_widths=1)
        for i, (box, label) in enumerate(zip(boxes, labels, strict=True)):
            text = classes[label] if classes is not None else f"class {label}"
            if "scores" in instances:
                text += f": {100 * float(instances.scores[i]):.1f}"
            self.draw_texts(text, box[:2] + 1, colors=[colors[i]], font_sizes=10,
                            bboxes=[{"facecolor": "black", "alpha": 0.7, "pad": 0.5, "edgecolor": "none"}])

    @staticmethod
    def priors_panel(image: np.ndarray, instances) -> np.ndarray:
        """The shape priors of `instances` as heat maps over their boxes (see `prior_panel`)."""
        return prior_panel(image, as_numpy(instances.bboxes), as_numpy(instances.shape_priors))
