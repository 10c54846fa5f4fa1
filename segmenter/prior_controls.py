"""Prior providers for the fidelity benchmark's controls: what each part of the prior is worth.

- `DegradedPriors` (training): another training provider's priors, some dropped, eroded or dilated, or
  shifted at random, so that the head meets priors as imperfect as the test-time ones (train as you test).
- `ClassTemplatePriors`: the mean amodal mask of the category (the prior that only knows the class).
- `OracleInputPriors` (testing): DiffSP on the fly fed the matched ground truth's visible and occluder masks
  on the detected box: how much of the gap to the oracle the predicted masks cost.
Registered in mmdet's TASK_UTILS like the providers of `segmenter.prior_providers`.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from mmdet.registry import TASK_UTILS
from mmdet.structures.bbox import get_box_tensor
from mmdet.structures.mask import BitmapMasks
from torch import Tensor

from priors import geometry, masks
from priors.annotations import AmodalAnnotations
from priors.errors import AisdiffError

from .prior_context import PriorContext
from .prior_providers import OnTheFlyPriors, PriorProvider, match_ground_truth, original_boxes


@TASK_UTILS.register_module()
class DegradedPriors(PriorProvider):
    """A training provider's priors, each degraded at random (independently, from torch's global generator,
    which mmengine's `randomness.seed` seeds): the head learns not to trust its priors more than the
    test-time ones deserve.

    Args:
        provider: the training provider whose priors are degraded (default `CachedPriors`).
        drop: the probability that a prior becomes 1 everywhere (no information, as `NoPriors`).
        morph: the probability that a prior is eroded or dilated (even odds) by a square max-pool of
            half-width k cells, k uniform in 1..`morph_cells`; outside the box counts as neither, so a
            shape that fills its box keeps touching the box's sides.
        shift: the probability that a prior is translated by whole cells, uniform in
            -m..m (m = int(`shift_frac` * S)) in x and in y, zeros coming in.
    Morph and shift apply first, then drop replaces the prior; `needs_images` is the wrapped provider's.
    """

    def __init__(self, provider: dict | None = None, drop: float = 0.0, morph: float = 0.0,
                 morph_cells: int = 3, shift: float = 0.0, shift_frac: float = 0.15) -> None:
        bad = {k: v for k, v in dict(drop=drop, morph=morph, shift=shift).items() if not 0 <= v <= 1}
        if bad:
            raise AisdiffError(f"DegradedPriors: {', '.join(f'{k}={v}' for k, v in bad.items())}: "
                               "probabilities must lie in [0, 1]")
        if morph_cells < 1 or shift_frac < 0:
            raise AisdiffError(f"DegradedPriors: morph_cells={morph_cells}, shift_frac={shift_frac}; use "
                               "morph_cells >= 1 and shift_frac >= 0")
        self.provider = TASK_UTILS.build(provider or dict(type="CachedPriors"))
        if not isinstance(self.provider, PriorProvider) or not self.provider.serves("train"):
            raise AisdiffError(f"DegradedPriors degrades training priors, and provider={provider!r} gives "
                               "none; wrap a training provider (CachedPriors, OraclePriors, "
                               "ClassTemplatePriors, NoPriors)")
        self.drop, self.morph, self.morph_cells = drop, morph, morph_cells
        self.shift, self.shift_frac = shift, shift_frac
        self.needs_images = self.provider.needs_images

    def training_priors(self, sampling_results, batch_gt_instances, context: PriorContext) -> Tensor:
        priors = self.provider.training_priors(sampling_results, batch_gt_instances, context)
        n = len(priors)
        # drawn on the CPU (the same draws on every device), and only for the degradations asked for
        if self.morph:
            chosen = torch.rand(n) < self.morph
            erode = torch.rand(n) < 0.5
            cells = torch.randint(1, self.morph_cells + 1, (n,))
            priors = self._morphed(priors, chosen, erode, cells)
        if self.shift:
            chosen = torch.rand(n) < self.shift
            most = int(self.shift_frac * priors.shape[-1])
            offsets = torch.randint(-most, most + 1, (n, 2)) * chosen[:, None]
            priors = self._shifted(priors, offsets)
        if self.drop:
            dropped = (torch.rand(n) < self.drop).to(priors.device)
            priors = torch.where(dropped[:, None, None], torch.ones_like(priors), priors)
        return priors

    @staticmethod
    def _morphed(priors: Tensor, chosen: Tensor, erode: Tensor, cells: Tensor) -> Tensor:
        """The chosen priors eroded (-maxpool(-x)) or dilated (maxpool(x)) by (2 k + 1)-cell squares."""
        out = priors.clone()
        sign = torch.where(erode, -1.0, 1.0).to(priors)[:, None, None]
        for k in cells[chosen].unique().tolist():
            rows = (chosen & (cells == k)).to(priors.device)
            x = sign[rows] * priors[rows]
            out[rows] = sign[rows] * F.max_pool2d(x[:, None], 2 * k + 1, stride=1, padding=k)[:, 0]
        return out

    @staticmethod
    def _shifted(priors: Tensor, offsets: Tensor) -> Tensor:
        """Priors [n, S, S] translated by `offsets` [n, 2] (dx, dy) whole cells, zeros coming in."""
        n, h, w = priors.shape
        offsets = offsets.to(priors.device)
        rows = torch.arange(h, device=priors.device)[None] - offsets[:, 1:]  # source row of each row [n, h]
        cols = torch.arange(w, device=priors.device)[None] - offsets[:, :1]  # [n, w]
        inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        index = torch.arange(n, device=priors.device)[:, None, None]
        picked = priors[index, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]
        return picked * inside


@TASK_UTILS.register_module()
class ClassTemplatePriors(PriorProvider):
    """The prior that only knows the category: the class's template, the mean over `ann_file`'s instances
    of the class (give the TRAIN annotations) of the amodal mask in its own amodal box
    (`geometry.masks_in_box`, as float). A class without instances gets a template of 1 everywhere (no
    information). Labels index the file's categories in id order, as `OraclePriors`' do. The templates are
    computed at the first call and kept. With `symmetric` (the default) each is averaged with its left-right
    mirror: training flips images (`AmodalRandomFlip`) and a template cannot know whether a sample was
    flipped, while cached priors and the oracle follow the flip; a mirrored template would otherwise be
    wrong half the time for shapes that are not left-right symmetric. Boxes are the amodal boxes as the
    data pipeline gives them (clipped to the image in training, as mmdet's Resize does; unclipped in the
    annotations): the same for objects inside the image, as the synthetic ones are.

    Training: each positive proposal gets its assigned ground truth's class template warped from the ground
    truth's (amodal) box to the proposal box, as `CachedPriors` warps cached priors. Test: each detection
    gets its label's template as it is (spanning the detection box).
    """

    serves_new_images = True  # (the templates come from the train annotations, not the test image's)

    def __init__(self, ann_file: str, prior_size: int = 28, symmetric: bool = True) -> None:
        self.ann_file, self.prior_size, self.symmetric = ann_file, prior_size, symmetric
        self._templates: Tensor | None = None

    def templates(self, device: torch.device) -> Tensor:
        """The class templates [C, S, S] on `device` (label i, the i-th category in id order)."""
        if self._templates is None:
            ann = AmodalAnnotations(self.ann_file)
            label = {name: i for i, name in enumerate(ann.classes)}
            sums = torch.zeros(len(ann.classes), self.prior_size, self.prior_size, dtype=torch.float64)
            counts = torch.zeros(len(ann.classes), dtype=torch.float64)
            for inst in ann:
                c = label[inst.category]
                sums[c] += geometry.masks_in_box(inst.amodal_mask()[None], inst.amodal_box,
                                                 self.prior_size)[0]
                counts[c] += 1
            mean = sums / counts.clamp(min=1)[:, None, None]
            if self.symmetric:
                mean = (mean + mean.flip(-1)) / 2
            self._templates = torch.where(counts[:, None, None] > 0, mean, 1.0).float()
        return self._templates.to(device)

    def training_priors(self, sampling_results, batch_gt_instances, context: PriorContext) -> Tensor:
        labels = torch.cat([res.pos_gt_labels for res in sampling_results])
        gt_boxes = torch.cat([get_box_tensor(gt.bboxes)[res.pos_assigned_gt_inds]
                              for res, gt in zip(sampling_results, batch_gt_instances, strict=True)])
        proposals = torch.cat([res.pos_priors for res in sampling_results])
        return geometry.warp_priors(self.templates(proposals.device)[labels], gt_boxes, proposals)

    def test_priors(self, index, boxes, visible, occluder, labels, img_meta, context) -> Tensor:
        return self.templates(boxes.device)[labels]


def masks_in_input(instance_masks: np.ndarray, scale_factor, height: int, width: int) -> np.ndarray:
    """Original-image masks [n, H, W] in network-input pixels: resized by `scale_factor` (w, h) as mmdet
    resizes ground-truth masks (nearest), then cropped or zero-padded to height x width."""
    n, h0, w0 = instance_masks.shape
    sx, sy = scale_factor
    resized = BitmapMasks(instance_masks.astype(np.uint8), h0, w0).resize(
        (int(round(h0 * sy)), int(round(w0 * sx)))).masks[:, :height, :width]
    out = np.zeros((n, height, width), bool)
    out[:, :resized.shape[1], :resized.shape[2]] = resized
    return out


@TASK_UTILS.register_module()
class OracleInputPriors(OnTheFlyPriors):
    """DiffSP on the fly (as `OnTheFlyPriors`, same noise seeds) but fed, for each detection that
    `match_ground_truth` matches in `ann_file` (the test annotations), that ground truth's visible and
    occluder masks in network-input pixels on the detected box; unmatched detections keep the predicted
    masks. It splits the gap between DiffSP on predicted masks and the oracle into what the visible branch
    costs and what the box and DiffSP cost. Not a method: a measurement. Other args as `OnTheFlyPriors`.
    """

    serves_new_images = False  # (it reads the test annotations)

    def __init__(self, ann_file: str, model: str = "tiny", classes: tuple[str, ...] | list[str] = (),
                 dtype: str = "fp32", store: str | None = None, **diffsp_settings) -> None:
        super().__init__(model=model, classes=classes, dtype=dtype, store=store, **diffsp_settings)
        self.ann_file = ann_file
        self._ann: AmodalAnnotations | None = None

    def test_priors(self, index: int, boxes: Tensor, visible: Tensor, occluder: Tensor, labels: Tensor,
                    img_meta: dict, context: PriorContext) -> Tensor:
        self._ann = self._ann or AmodalAnnotations(self.ann_file)
        image_id = context.image_id(index, type(self).__name__)
        gts = self._ann.by_image(image_id)
        matches = match_ground_truth(gts, self._ann.classes, original_boxes(boxes, img_meta).numpy(),
                                     labels.tolist())
        rows = [i for i, gt in enumerate(matches) if gt is not None]
        if rows:
            h, w = context.image_shapes[index]
            found = [matches[i] for i in rows]
            occluders = self._ann.occluder_rles(image_id)
            truth = {"visible": np.stack([gt.visible_mask() for gt in found]),
                     "occluder": np.stack([masks.decode(occluders[gt.ann_id]) for gt in found])}
            pixels = {k: torch.from_numpy(masks_in_input(v, img_meta["scale_factor"], h, w))
                      for k, v in truth.items()}
            visible, occluder = visible[:, :h, :w].clone(), occluder[:, :h, :w].clone()  # (not the caller's)
            visible[rows], occluder[rows] = pixels["visible"].to(visible), pixels["occluder"].to(occluder)
        return super().test_priors(index, boxes, visible, occluder, labels, img_meta, context)
