"""The AISDiff RoI head and detector on mmdet's two-stage (Faster R-CNN) framework.

Training: L = L_det + L_cls + L_v + L_o + L_a. mmdet's box classification loss is reported as
`loss_det_cls` (with `loss_bbox`, and the RPN's `loss_rpn_cls` / `loss_rpn_bbox`) so that `loss_cls` is
the mask head's category loss; the mask losses are `loss_mask_{visible,occluder,amodal}`.
Inference: visible, occluder and category first, then priors from the test provider, then the amodal mask.
Results carry the amodal masks as `masks` (what mmdet's metrics and visualizers read) and
`visible_masks` / `occluder_masks` alongside.
"""
from __future__ import annotations

import torch
from mmdet.models.detectors import TwoStageDetector
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
from mmdet.models.utils import empty_instances
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox2roi
from mmdet.structures.mask import mask_target
from torch import Tensor

from priors.errors import AisdiffError

MASK_KINDS = ("amodal", "visible", "occluder")


@MODELS.register_module()
class AISDiffRoIHead(StandardRoIHead):
    """StandardRoIHead with the AISDiff mask head and prior providers (`train_prior`, `test_prior`).

    `prior_labels` names the class a test prior is computed for: "head" (the paper: the mask head's own
    category prediction) or "detector" (the box head's label, the one the detection is scored under; for
    short schedules, where the mask head's classifier is still near chance).
    """

    def __init__(self, *args, train_prior: dict | None = None, test_prior: dict | None = None,
                 prior_labels: str = "head", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if prior_labels not in ("head", "detector"):
            raise AisdiffError(f"AISDiffRoIHead: prior_labels={prior_labels!r}; use 'head' or 'detector'")
        self.prior_labels = prior_labels
        self.train_prior = MODELS.build(train_prior or dict(type="CachedPriors"))
        self.test_prior = MODELS.build(test_prior or dict(type="NoPriors"))
        # set by the AISDiff detector for providers that run DiffSP: RGB [0, 1] images and their metadata
        self.images: Tensor | None = None
        self.images_shapes: list[tuple[int, int]] = []
        self.image_ids: list[int] = []

    def bbox_loss(self, x, sampling_results):
        results = super().bbox_loss(x, sampling_results)
        loss = results["loss_bbox"]
        loss["loss_det_cls"] = loss.pop("loss_cls")  # `loss_cls` is the mask head's category loss
        return results

    def mask_loss(self, x, sampling_results, bbox_feats, batch_gt_instances) -> dict:
        pos_rois = bbox2roi([res.pos_priors for res in sampling_results])
        feats = self.mask_roi_extractor(x[:self.mask_roi_extractor.num_inputs], pos_rois)
        priors = self.train_prior.training_priors(self, sampling_results, batch_gt_instances)
        labels = torch.cat([res.pos_gt_labels for res in sampling_results])
        out = self.mask_head(feats, priors, labels)
        proposals = [res.pos_priors for res in sampling_results]
        assigned = [res.pos_assigned_gt_inds for res in sampling_results]
        sources = {"amodal": "masks", "visible": "visible_masks", "occluder": "occluder_masks"}
        targets = {k: mask_target(proposals, assigned, [gt[v] for gt in batch_gt_instances], self.train_cfg)
                   for k, v in sources.items()}
        return {"loss_mask": self.mask_head.loss(out, targets, labels), "mask_feats": feats}

    def predict_mask(self, x, batch_img_metas, results_list, rescale: bool = False):
        rois = bbox2roi([res.bboxes for res in results_list])
        if rois.shape[0] == 0:
            results_list = empty_instances(batch_img_metas, rois.device, task_type="mask",
                                           instance_results=results_list,
                                           mask_thr_binary=self.test_cfg.mask_thr_binary)
            for res in results_list:
                res.visible_masks = res.masks.clone()
                res.occluder_masks = res.masks.clone()
            return results_list
        feats = self.mask_roi_extractor(x[:self.mask_roi_extractor.num_inputs], rois)
        first = self.mask_head.forward_visible(feats)
        counts = [len(res.bboxes) for res in results_list]
        probs = {k: first[k].sigmoid()[:, 0].split(counts) for k in ("visible", "occluder")}
        labels = first["cls"].argmax(1).split(counts)
        prior_labels = labels if self.prior_labels == "head" else [res.labels for res in results_list]
        thr = self.test_cfg.mask_thr_binary
        priors = []
        for i, (res, meta) in enumerate(zip(results_list, batch_img_metas, strict=True)):
            if self.test_prior.needs_masks:  # the predicted masks, pasted into the network input
                visible = paste_masks(probs["visible"][i], res.bboxes, meta, False, thr)
                occluder = paste_masks(probs["occluder"][i], res.bboxes, meta, False, thr)
            else:
                visible = occluder = None
            priors.append(self.test_prior.test_priors(self, i, res.bboxes, visible, occluder, prior_labels[i], meta))
        amodal = self.mask_head.forward_amodal(feats, torch.cat(priors), torch.cat(prior_labels))
        amodal = amodal.sigmoid()[:, 0].split(counts)
        maps = {"masks": amodal, "visible_masks": probs["visible"], "occluder_masks": probs["occluder"]}
        for i, (res, meta) in enumerate(zip(results_list, batch_img_metas, strict=True)):
            for key, per_image in maps.items():
                res[key] = paste_masks(per_image[i], res.bboxes, meta, rescale, self.test_cfg.mask_thr_binary)
            res.mask_labels, res.prior_labels = labels[i], prior_labels[i]
            res.priors = priors[i]
            if rescale:  # boxes to the original image, as mmdet's mask head does
                res.bboxes = res.bboxes / res.bboxes.new_tensor(meta["scale_factor"]).repeat(2)
        return results_list


def paste_masks(probs: Tensor, bboxes: Tensor, img_meta: dict, rescale: bool, threshold: float) -> Tensor:
    """Paste [n, 28, 28] probabilities into the image (the original image when `rescale`) -> bool [n, H, W]."""
    scale = bboxes.new_tensor(img_meta["scale_factor"]).repeat(2)
    if rescale:
        (h, w), boxes = img_meta["ori_shape"][:2], bboxes / scale
    else:
        (h, w), boxes = img_meta["img_shape"][:2], bboxes
    if len(boxes) == 0:
        return torch.zeros((0, h, w), dtype=torch.bool, device=bboxes.device)
    pasted, _ = _do_paste_mask(probs[:, None], boxes, h, w, skip_empty=False)
    return pasted >= threshold


@MODELS.register_module()
class AISDiff(TwoStageDetector):
    """Faster R-CNN with the AISDiff RoI head. Hands the head the input images (RGB in [0, 1]) when a prior
    provider runs DiffSP on them."""

    def _share_images(self, batch_inputs: Tensor, batch_data_samples, provider) -> None:
        head = self.roi_head
        if not getattr(provider, "needs_images", False):
            head.images = None
            return
        pre = self.data_preprocessor
        images = batch_inputs * pre.std + pre.mean
        if not getattr(pre, "_channel_conversion", False):  # mmcv decodes BGR; DiffSP wants RGB
            images = images.flip(1)
        head.images = (images / 255.0).clamp(0, 1)
        head.images_shapes = [tuple(s.metainfo["img_shape"][:2]) for s in batch_data_samples]
        head.image_ids = [int(s.metainfo.get("img_id", -1)) for s in batch_data_samples]

    def loss(self, batch_inputs: Tensor, batch_data_samples):
        self._share_images(batch_inputs, batch_data_samples, self.roi_head.train_prior)
        return super().loss(batch_inputs, batch_data_samples)

    def predict(self, batch_inputs: Tensor, batch_data_samples, rescale: bool = True):
        self._share_images(batch_inputs, batch_data_samples, self.roi_head.test_prior)
        return super().predict(batch_inputs, batch_data_samples, rescale=rescale)
