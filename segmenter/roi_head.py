"""The AISDiff RoI head: mmdet's StandardRoIHead with the AISDiff mask head and shape-prior providers.

Training: L = L_det + L_cls + L_v + L_o + L_a. mmdet's box classification loss is reported as
`loss_det_cls` (with `loss_bbox`, and the RPN's `loss_rpn_cls` / `loss_rpn_bbox`) so that `loss_cls` is
the mask head's category loss; the mask losses are `loss_mask_{visible,occluder,amodal}`.
Inference: visible, occluder and category first, then shape priors from the test provider, then the amodal
mask. Results carry the amodal masks as `masks` (what mmdet's metrics and visualizers read),
`visible_masks` / `occluder_masks` beside them, and `shape_priors`, `mask_labels`, `prior_labels`.
"""
from __future__ import annotations

import torch
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.models.utils import empty_instances, unpack_gt_instances
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures.bbox import bbox2roi
from torch import Tensor

from priors.errors import AisdiffError

from .prior_context import PriorContext
from .prior_providers import PriorProvider

PRIOR_LABEL_SOURCES = ("head", "detector")


def build_provider(cfg: dict, role: str) -> PriorProvider:
    """A prior provider from its config (mmdet's TASK_UTILS), checked to serve as `role` ("train" /
    "test")."""
    provider = TASK_UTILS.build(cfg)
    if not isinstance(provider, PriorProvider):
        raise AisdiffError(f"{role}_prior={cfg!r} built a {type(provider).__name__}, not a PriorProvider")
    provider.check_role(role)
    return provider


@MODELS.register_module()
class AISDiffRoIHead(StandardRoIHead):
    """StandardRoIHead with the AISDiff mask head and shape-prior providers.

    Args:
        train_prior: the provider of training shape priors (default `CachedPriors`).
        test_prior: the provider of test shape priors (default `NoPriors`).
        prior_labels: the class a test prior is computed for: "head" (the paper: the mask head's own category
            prediction) or "detector" (the box head's label, the one the detection is scored under; for short
            schedules, where the mask head's classifier is still near chance).
        Other arguments as `StandardRoIHead`.
    """

    def __init__(self, *args, train_prior: dict | None = None, test_prior: dict | None = None,
                 prior_labels: str = "head", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if prior_labels not in PRIOR_LABEL_SOURCES:
            raise AisdiffError(f"AISDiffRoIHead: prior_labels={prior_labels!r}; use 'head' or 'detector'")
        self.prior_labels = prior_labels
        self.train_prior = build_provider(train_prior or dict(type="CachedPriors"), "train")
        self.test_prior = build_provider(test_prior or dict(type="NoPriors"), "test")

    def loss(self, x: tuple[Tensor, ...], rpn_results_list, batch_data_samples,
             context: PriorContext) -> dict:
        """StandardRoIHead's loss, with the batch's prior context handed to the mask branch."""
        batch_gt_instances, batch_gt_instances_ignore, _ = unpack_gt_instances(batch_data_samples)
        sampling_results = []
        for i, rpn_results in enumerate(rpn_results_list):
            rpn_results.priors = rpn_results.pop("bboxes")  # (mmdet's name for proposal boxes)
            assigned = self.bbox_assigner.assign(rpn_results, batch_gt_instances[i],
                                                 batch_gt_instances_ignore[i])
            sampling_results.append(self.bbox_sampler.sample(assigned, rpn_results, batch_gt_instances[i],
                                                             feats=[level[i][None] for level in x]))
        losses = self.bbox_loss(x, sampling_results)["loss_bbox"]
        losses.update(self.mask_loss(x, sampling_results, batch_gt_instances, context)["loss_mask"])
        return losses

    def bbox_loss(self, x, sampling_results) -> dict:
        results = super().bbox_loss(x, sampling_results)
        loss = results["loss_bbox"]
        loss["loss_det_cls"] = loss.pop("loss_cls")  # `loss_cls` is the mask head's category loss
        return results

    def mask_loss(self, x, sampling_results, batch_gt_instances, context: PriorContext) -> dict:
        """The mask head's losses on the positive proposals, with shape priors from `train_prior`."""
        feats = self.mask_roi_extractor(x[:self.mask_roi_extractor.num_inputs],
                                        bbox2roi([res.pos_priors for res in sampling_results]))
        shape_priors = self.train_prior.training_priors(sampling_results, batch_gt_instances, context)
        labels = torch.cat([res.pos_gt_labels for res in sampling_results])
        preds = self.mask_head(feats, shape_priors, labels)
        out = self.mask_head.loss_and_target(preds, sampling_results, batch_gt_instances, self.train_cfg)
        return {**out, "mask_feats": feats, "shape_priors": shape_priors}

    def predict(self, x: tuple[Tensor, ...], rpn_results_list, batch_data_samples, context: PriorContext,
                rescale: bool = False):
        """StandardRoIHead's predict, with the batch's prior context handed to the mask branch."""
        batch_img_metas = [sample.metainfo for sample in batch_data_samples]
        results_list = self.predict_bbox(x, batch_img_metas, rpn_results_list, rcnn_test_cfg=self.test_cfg,
                                         rescale=False)
        return self.predict_mask(x, batch_img_metas, results_list, context, rescale=rescale)

    def predict_mask(self, x, batch_img_metas, results_list, context: PriorContext, rescale: bool = False):
        """Visible, occluder and category; shape priors for the chosen labels; then the amodal masks."""
        rois = bbox2roi([res.bboxes for res in results_list])
        if rois.shape[0] == 0:
            return self._empty_results(batch_img_metas, results_list, rois.device)
        feats = self.mask_roi_extractor(x[:self.mask_roi_extractor.num_inputs], rois)
        first = self.mask_head.forward_visible(feats)
        counts = [len(res.bboxes) for res in results_list]
        mask_labels = first["cls"].argmax(1).split(counts)
        prior_labels = mask_labels if self.prior_labels == "head" else [res.labels for res in results_list]
        probs = {k: first[k].sigmoid()[:, 0].split(counts) for k in ("visible", "occluder")}
        shape_priors = [self._test_priors(i, res, probs, prior_labels[i], meta, context)
                        for i, (res, meta) in enumerate(zip(results_list, batch_img_metas, strict=True))]
        masks = self.mask_head.mask_probabilities(first) if self.mask_head.concat_masks else None
        amodal = self.mask_head.forward_amodal(feats, torch.cat(shape_priors), torch.cat(prior_labels), masks)
        maps = {"masks": amodal.sigmoid()[:, 0].split(counts), "visible_masks": probs["visible"],
                "occluder_masks": probs["occluder"]}
        results_list = self.mask_head.predict_by_feat(maps, results_list, batch_img_metas, self.test_cfg,
                                                      rescale)
        for res, labels, chosen, priors in zip(results_list, mask_labels, prior_labels, shape_priors,
                                               strict=True):
            res.mask_labels, res.prior_labels, res.shape_priors = labels, chosen, priors
        return results_list

    def _test_priors(self, index: int, res, probs: dict, labels: Tensor, meta: dict,
                     context: PriorContext) -> Tensor:
        """Image `index`'s test shape priors; with the predicted masks pasted into the network input when the
        provider reads them, binarized at `test_cfg.prior_mask_thr` (default: `mask_thr_binary`, the
        masks a proposals dump writes, so that cached proposal priors agree)."""
        visible = occluder = None
        if self.test_prior.needs_masks:
            paste = self.mask_head.paste_masks
            h, w = meta["img_shape"][:2]
            thr = self.test_cfg.get("prior_mask_thr")
            thr = self.test_cfg.mask_thr_binary if thr is None else thr
            visible = paste(probs["visible"][index], res.bboxes, (h, w), thr)
            occluder = paste(probs["occluder"][index], res.bboxes, (h, w), thr)
        return self.test_prior.test_priors(index, res.bboxes, visible, occluder, labels, meta, context)

    def _empty_results(self, batch_img_metas, results_list, device):
        """Results without detections, with empty visible and occluder masks beside the amodal ones."""
        results_list = empty_instances(batch_img_metas, device, task_type="mask",
                                       instance_results=results_list,
                                       mask_thr_binary=self.test_cfg.mask_thr_binary)
        for res in results_list:
            res.visible_masks = res.masks.clone()
            res.occluder_masks = res.masks.clone()
        return results_list
