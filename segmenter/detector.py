"""The AISDiff detector: mmdet's two-stage (Faster R-CNN) framework with the AISDiff RoI head.

It differs from `TwoStageDetector` in one thing: each `loss` / `predict` call builds a `PriorContext`
(the RGB images when a prior provider runs DiffSP on them, image shapes and ids) and passes it to the RoI
head, which passes it to its prior providers.
"""
from __future__ import annotations

import copy

import torch
from mmdet.models.detectors import TwoStageDetector
from mmdet.registry import MODELS
from torch import Tensor

from priors.errors import AisdiffError

from .prior_context import PriorContext, rgb_unit_images


def inputs_are_rgb(data_preprocessor) -> bool:
    """Whether the network inputs are RGB, from the preprocessor's public config: mmcv decodes BGR, and
    `bgr_to_rgb=True` (mmdet's default for torchvision-style weights) turns it to RGB."""
    if isinstance(data_preprocessor, dict):
        return bool(data_preprocessor.get("bgr_to_rgb", False))
    if data_preprocessor is None:
        return False
    raise AisdiffError("AISDiff: give data_preprocessor as a config dict (its bgr_to_rgb tells the channel "
                       f"order of the network inputs), not a built {type(data_preprocessor).__name__}")


@MODELS.register_module()
class AISDiff(TwoStageDetector):
    """Faster R-CNN with the AISDiff RoI head (`AISDiffRoIHead`), handing it a per-batch `PriorContext`."""

    def __init__(self, *args, data_preprocessor: dict | None = None, **kwargs) -> None:
        self.inputs_are_rgb = inputs_are_rgb(data_preprocessor)
        super().__init__(*args, data_preprocessor=data_preprocessor, **kwargs)

    def prior_context(self, batch_inputs: Tensor, batch_data_samples, provider) -> PriorContext:
        """The batch as `provider` sees it: with RGB [0, 1] images only when it declares `needs_images`."""
        images = None
        if provider.needs_images:
            pre = self.data_preprocessor
            images = rgb_unit_images(batch_inputs, pre.mean, pre.std, self.inputs_are_rgb)
        meta = getattr(self, "dataset_meta", None) or {}  # set by mmdet's init_detector from the checkpoint
        classes = tuple(meta["classes"]) if meta.get("classes") else None
        return PriorContext.from_batch(batch_data_samples, images, classes)

    def rpn_loss_and_proposals(self, x: tuple[Tensor, ...], batch_data_samples) -> tuple[dict, list]:
        """The RPN's losses and proposals, as `TwoStageDetector.loss` computes them."""
        if not self.with_rpn:
            return {}, [sample.proposals for sample in batch_data_samples]
        proposal_cfg = self.train_cfg.get("rpn_proposal", self.test_cfg.rpn)
        rpn_data_samples = copy.deepcopy(batch_data_samples)
        for sample in rpn_data_samples:  # the RPN is class-agnostic
            sample.gt_instances.labels = torch.zeros_like(sample.gt_instances.labels)
        losses, proposals = self.rpn_head.loss_and_predict(x, rpn_data_samples, proposal_cfg=proposal_cfg)
        renamed = {f"rpn_{k}" if "loss" in k and "rpn" not in k else k: v for k, v in losses.items()}
        return renamed, proposals

    def loss(self, batch_inputs: Tensor, batch_data_samples) -> dict:
        x = self.extract_feat(batch_inputs)
        losses, proposals = self.rpn_loss_and_proposals(x, batch_data_samples)
        context = self.prior_context(batch_inputs, batch_data_samples, self.roi_head.train_prior)
        losses.update(self.roi_head.loss(x, proposals, batch_data_samples, context))
        return losses

    def predict(self, batch_inputs: Tensor, batch_data_samples, rescale: bool = True):
        x = self.extract_feat(batch_inputs)
        if batch_data_samples[0].get("proposals", None) is None:
            proposals = self.rpn_head.predict(x, batch_data_samples, rescale=False)
        else:
            proposals = [sample.proposals for sample in batch_data_samples]
        context = self.prior_context(batch_inputs, batch_data_samples, self.roi_head.test_prior)
        results = self.roi_head.predict(x, proposals, batch_data_samples, context, rescale=rescale)
        return self.add_pred_to_datasample(batch_data_samples, results)
