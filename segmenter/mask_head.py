"""The AISDiff mask head (paper 3.2.1 and 3.2.3).

Occluder branch: conv3x3 -> non-local "GCN" block -> conv3x3, then deconv2x2/s2 + 1x1 -> occluder mask.
Visible branch: input RoI feature + occluder feature, the same structure -> visible mask; the visible
features -> (global average pool) FC -> category logits.
Shape Prior Amodal Predictor: conv3x3 stack on the RoI feature -> amodal feature; conv3x3 stack + sigmoid
on it -> spatial attention (none with `num_attention_convs=0`, an ablation: the prior alone), times the
shape prior M_sp (resized to the feature size), times the amodal feature; deconv2x2/s2 + 1x1 -> amodal mask.
That is `prior_fusion="multiply"`, the paper's; beyond the paper, "residual" weighs the features by
1 + attention x prior (a prior near 0 no longer erases them) and "concat" feeds the prior (and with
`concat_masks` the predicted visible and occluder probabilities) to the amodal convs as extra channels,
so the head can learn where to trust it.
Visible and occluder masks are one channel; the amodal mask is one channel per category unless
`class_agnostic_amodal` (the channel of the category its prior is for).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from mmdet.models.roi_heads.mask_heads.fcn_mask_head import BYTES_PER_FLOAT, GPU_MEM_LIMIT, _do_paste_mask
from mmdet.registry import MODELS
from mmdet.structures.mask import mask_target
from mmengine.model import BaseModule
from mmengine.model.weight_init import constant_init, kaiming_init, normal_init
from torch import Tensor, nn

from priors.errors import AisdiffError


def kaiming_init_(layer: nn.Module) -> nn.Module:
    """`layer` with mmdet's mask-head initialization (ConvModule, FCNMaskHead: mmengine's `kaiming_init`,
    normal, fan_out, ReLU gain, zero bias). With PyTorch's default the gated amodal path learned nothing in
    the fidelity benchmark's schedule."""
    kaiming_init(layer)
    return layer


def _conv3x3(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(kaiming_init_(nn.Conv2d(cin, cout, 3, padding=1)), nn.ReLU(inplace=True))


class NonLocalBlock(nn.Module):
    """The "GCN" block of BCNet: 1x1 query/key/value, softmax attention over positions, 1x1 out, residual."""

    def __init__(self, channels: int, inner: int | None = None) -> None:
        super().__init__()
        inner = inner or max(channels // 2, 1)
        self.query, self.key, self.value = (nn.Conv2d(channels, inner, 1) for _ in range(3))
        self.out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.out.weight)  # starts as the identity (as non-local networks are initialized)
        nn.init.zeros_(self.out.bias)
        self.scale = 1.0 / math.sqrt(inner)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # [n, hw, inner]
        k = self.key(x).flatten(2)  # [n, inner, hw]
        v = self.value(x).flatten(2).transpose(1, 2)  # [n, hw, inner]
        attended = torch.softmax(q @ k * self.scale, dim=-1) @ v
        return x + self.out(attended.transpose(1, 2).reshape(n, -1, h, w))


LOGITS_INITS = ("normal", "kaiming")


class MaskPredictor(nn.Sequential):
    """deconv2x2 stride 2 (+ ReLU) then 1x1 conv to `out_channels` masks: 14x14 features -> 28x28 logits.
    `logits_init` "normal": near-zero logits at the start (Detectron2's, N(0, 0.001)); "kaiming": mmdet's
    FCNMaskHead's (fan_out, ReLU gain), logits of std 4 to 12 for one channel, whose early gradients can
    saturate the amodal gate."""

    def __init__(self, channels: int, out_channels: int = 1, logits_init: str = "normal") -> None:
        logits = nn.Conv2d(channels, out_channels, 1)
        if logits_init == "kaiming":
            kaiming_init_(logits)
        else:
            normal_init(logits, std=0.001)
        super().__init__(kaiming_init_(nn.ConvTranspose2d(channels, channels, 2, stride=2)),
                         nn.ReLU(inplace=True), logits)


class OcclusionBranch(nn.Module):
    """conv3x3 -> non-local block -> conv3x3 (the features), and a mask predictor on them."""

    def __init__(self, in_channels: int, channels: int, logits_init: str = "normal") -> None:
        super().__init__()
        self.features = nn.Sequential(_conv3x3(in_channels, channels), NonLocalBlock(channels),
                                      _conv3x3(channels, channels))
        self.predictor = MaskPredictor(channels, logits_init=logits_init)


MASK_TARGETS = {"amodal": "masks", "visible": "visible_masks", "occluder": "occluder_masks"}
PRIOR_FUSIONS = ("multiply", "residual", "concat")


@MODELS.register_module()
class AISDiffMaskHead(BaseModule):
    """Occlusion-aware visible segmentation, classification and the Shape Prior Amodal Predictor.

    Args:
        num_classes: number of object categories (the classifier's outputs, and the amodal channels unless
            `class_agnostic_amodal`).
        in_channels: channels of the RoI features (the FPN's).
        conv_channels: channels of every conv in the branches.
        num_amodal_convs: 3x3 convs that make the amodal feature (at least 1).
        num_attention_convs: 3x3 convs of the learned spatial gate (0: no gate, the prior alone weighs the
            amodal features; an ablation).
        class_agnostic_amodal: one amodal mask channel (default), or one per category as mmdet's
            `FCNMaskHead(class_agnostic=False)`, each RoI's mask the channel of the class its prior is for.
        loss_mask: the mask loss of the three masks (default binary cross-entropy).
        loss_cls: the category loss (default softmax cross-entropy).
        loss_weights: weights of the amodal / visible / occluder mask losses (default 1 each).
        prior_fusion: how the shape prior enters the amodal path: "multiply" (the paper's: features x
            attention x prior), "residual" (features x (1 + attention x prior)) or "concat" (the prior is an
            input channel of the amodal convs; features x attention).
        concat_masks: with "concat", also feed the predicted visible and occluder probabilities (detached:
            the amodal loss does not train the visible branch through them).
        logits_init: how the three mask predictors' 1x1 logit convs start: "normal" (default; N(0, 0.001),
            Detectron2's) or "kaiming" (mmdet's FCNMaskHead's). The fidelity screens' `init_cfg` override
            gives only the amodal predictor mmdet's.
        init_cfg: mmengine's init config (the layers initialize themselves as mmdet's mask heads do).
    """

    def __init__(self, num_classes: int, in_channels: int = 256, conv_channels: int = 256,
                 num_amodal_convs: int = 2, num_attention_convs: int = 2, class_agnostic_amodal: bool = True,
                 loss_mask: dict | None = None, loss_cls: dict | None = None,
                 loss_weights: dict | None = None, prior_fusion: str = "multiply", concat_masks: bool = False,
                 logits_init: str = "normal", init_cfg: dict | None = None) -> None:
        if num_amodal_convs < 1 or num_attention_convs < 0:
            raise AisdiffError(f"AISDiffMaskHead: num_amodal_convs={num_amodal_convs}, num_attention_convs="
                               f"{num_attention_convs}; use at least 1 feature conv and 0 or more gate convs")
        if prior_fusion not in PRIOR_FUSIONS:
            raise AisdiffError(f"AISDiffMaskHead: prior_fusion={prior_fusion!r}; use one of {PRIOR_FUSIONS}")
        if concat_masks and prior_fusion != "concat":
            raise AisdiffError(f"AISDiffMaskHead: concat_masks=True needs prior_fusion='concat', not "
                               f"{prior_fusion!r}")
        if logits_init not in LOGITS_INITS:
            raise AisdiffError(f"AISDiffMaskHead: logits_init={logits_init!r}; use one of {LOGITS_INITS}")
        super().__init__(init_cfg=init_cfg)
        self.prior_fusion, self.concat_masks = prior_fusion, concat_masks
        self.num_classes = num_classes
        self.occluder = OcclusionBranch(in_channels, conv_channels, logits_init)
        self.visible = OcclusionBranch(in_channels, conv_channels, logits_init)
        # the visible branch's input is the RoI feature plus the occluder feature, brought to its width
        self.occluder_to_input = (nn.Identity() if conv_channels == in_channels
                                  else kaiming_init_(nn.Conv2d(conv_channels, in_channels, 1)))
        classifier = nn.Linear(conv_channels, num_classes)
        normal_init(classifier, std=0.01)  # as mmdet's box classifier
        self.cls_fc = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), classifier)
        # "concat": the prior (and the visible and occluder probabilities) as extra input channels
        extra = (1 + 2 * concat_masks) if prior_fusion == "concat" else 0
        self.amodal_features = nn.Sequential(*[_conv3x3(in_channels + extra if i == 0 else conv_channels,
                                                        conv_channels)
                                               for i in range(num_amodal_convs)])
        self.attention = self._gate(conv_channels, num_attention_convs) if num_attention_convs else None
        # per category, as mmdet's FCNMaskHead (class_agnostic=False): the channel of the class the prior is
        # for
        self.amodal_predictor = MaskPredictor(conv_channels, 1 if class_agnostic_amodal else num_classes,
                                              logits_init)
        self.loss_mask = MODELS.build(loss_mask or dict(type="CrossEntropyLoss", use_mask=True,
                                                        loss_weight=1.0))
        self.loss_cls = MODELS.build(loss_cls or dict(type="CrossEntropyLoss", use_sigmoid=False,
                                                      loss_weight=1.0))
        self.loss_weights = {"amodal": 1.0, "visible": 1.0, "occluder": 1.0, **(loss_weights or {})}

    @staticmethod
    def _gate(channels: int, num_convs: int) -> nn.Sequential:
        """`num_convs` 3x3 convs to one channel (sigmoid applied in forward): the learned spatial
        attention."""
        gate = nn.Conv2d(channels, 1, 3, padding=1)
        # the gate starts at sigmoid(0) = 1/2 everywhere: it scales the prior evenly until it has learned
        # where to look (as a non-local block starts at the identity)
        constant_init(gate, 0)
        return nn.Sequential(*[_conv3x3(channels, channels) for _ in range(num_convs - 1)], gate)

    def forward_visible(self, feats: Tensor) -> dict[str, Tensor]:
        """Occluder and visible mask logits [n, 1, 28, 28] and category logits [n, num_classes]."""
        occ = self.occluder.features(feats)
        vis = self.visible.features(feats + self.occluder_to_input(occ))
        return {"occluder": self.occluder.predictor(occ), "visible": self.visible.predictor(vis),
                "cls": self.cls_fc(vis)}

    def forward_amodal(self, feats: Tensor, shape_priors: Tensor, labels: Tensor,
                       masks: Tensor | None = None) -> Tensor:
        """Amodal mask logits [n, 1, 28, 28] from RoI features and shape priors [n, S, S] in [0, 1];
        per-category heads give the channel of `labels` [n] (the classes the priors are for). `masks`
        [n, 2, 28, 28], the visible and occluder probabilities, are read with `concat_masks`."""
        size = feats.shape[-2:]
        prior = F.interpolate(shape_priors[:, None].to(feats.dtype), size=size, mode="bilinear",
                              align_corners=False)
        if self.prior_fusion == "concat":
            inputs = [feats, prior]
            if self.concat_masks:
                if masks is None:
                    raise AisdiffError("AISDiffMaskHead(concat_masks=True) needs the visible and occluder "
                                       "probabilities (masks=...) to predict the amodal mask")
                inputs.append(F.adaptive_avg_pool2d(masks.to(feats.dtype), size))
            feats = torch.cat(inputs, 1)
        amodal = self.amodal_features(feats)
        # without gate convs (an ablation) the prior alone is the spatial attention
        gate = None if self.attention is None else torch.sigmoid(self.attention(amodal))
        if self.prior_fusion == "multiply":
            fused = amodal * (prior if gate is None else gate * prior)
        elif self.prior_fusion == "residual":
            fused = amodal * (1 + (prior if gate is None else gate * prior))
        else:
            fused = amodal if gate is None else amodal * gate
        logits = self.amodal_predictor(fused)
        if logits.shape[1] == 1:
            return logits
        return logits[torch.arange(len(logits), device=logits.device), labels.long()][:, None]

    @staticmethod
    def mask_probabilities(out: dict[str, Tensor]) -> Tensor:
        """The visible and occluder probabilities [n, 2, 28, 28] of `forward_visible`'s output, detached (the
        amodal path's extra input with `concat_masks`)."""
        return torch.cat([out["visible"], out["occluder"]], 1).sigmoid().detach()

    def forward(self, feats: Tensor, shape_priors: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Every output of the head; `labels` [n] are the classes of the priors (the ground truth's in
        training)."""
        out = self.forward_visible(feats)
        masks = self.mask_probabilities(out) if self.concat_masks else None
        out["amodal"] = self.forward_amodal(feats, shape_priors, labels, masks)
        return out

    def get_targets(self, sampling_results, batch_gt_instances, rcnn_train_cfg) -> dict[str, Tensor]:
        """Amodal, visible and occluder mask targets [P, 28, 28] of the positive proposals (as
        FCNMaskHead's)."""
        proposals = [res.pos_priors for res in sampling_results]
        assigned = [res.pos_assigned_gt_inds for res in sampling_results]
        return {kind: mask_target(proposals, assigned, [gt[key] for gt in batch_gt_instances], rcnn_train_cfg)
                for kind, key in MASK_TARGETS.items()}

    def loss_and_target(self, preds: dict[str, Tensor], sampling_results, batch_gt_instances,
                        rcnn_train_cfg) -> dict:
        """loss_mask_{amodal,visible,occluder} (BCE with the matched ground truth) and loss_cls (CE with the
        ground-truth category) as `loss_mask`, and the targets as `mask_targets` (FCNMaskHead's API)."""
        targets = self.get_targets(sampling_results, batch_gt_instances, rcnn_train_cfg)
        labels = torch.cat([res.pos_gt_labels for res in sampling_results])
        zeros = torch.zeros_like(labels)  # every mask here is one channel (amodal: already the class's)
        losses = {f"loss_mask_{k}": self.loss_weights[k] * self.loss_mask(preds[k], targets[k], zeros)
                  for k in MASK_TARGETS}
        losses["loss_cls"] = self.loss_cls(preds["cls"], labels)
        return dict(loss_mask=losses, mask_targets=targets)

    def predict_by_feat(self, probs: dict[str, tuple[Tensor, ...]], results_list, batch_img_metas: list[dict],
                        rcnn_test_cfg, rescale: bool = False):
        """Paste each image's [n, 28, 28] mask probabilities (`probs[key][i]`, for the result keys `masks`,
        `visible_masks`, `occluder_masks`) into its image as bool masks: the original image when `rescale`
        (boxes too are rescaled, as FCNMaskHead does), else the network input."""
        for i, (res, meta) in enumerate(zip(results_list, batch_img_metas, strict=True)):
            boxes = res.bboxes
            shape = meta["img_shape"][:2]
            if rescale:
                boxes = boxes / boxes.new_tensor(meta["scale_factor"]).repeat(2)
                shape = meta["ori_shape"][:2]
            for key, per_image in probs.items():
                res[key] = self.paste_masks(per_image[i], boxes, shape, rcnn_test_cfg.mask_thr_binary)
            res.bboxes = boxes
        return results_list

    @staticmethod
    def paste_masks(probs: Tensor, boxes: Tensor, shape: tuple[int, int], threshold: float) -> Tensor:
        """[n, 28, 28] probabilities on `boxes` -> bool masks [n, h, w] (`probs >= threshold`), pasted in
        chunks as FCNMaskHead does: one box at a time on the CPU, within a memory budget on a GPU."""
        h, w = int(shape[0]), int(shape[1])
        out = torch.zeros((len(boxes), h, w), dtype=torch.bool, device=boxes.device)
        if len(boxes) == 0:
            return out
        on_cpu = boxes.device.type == "cpu"
        chunks = len(boxes) if on_cpu else int(np.ceil(len(boxes) * h * w * BYTES_PER_FLOAT / GPU_MEM_LIMIT))
        for idx in torch.chunk(torch.arange(len(boxes), device=boxes.device), min(chunks, len(boxes))):
            pasted, region = _do_paste_mask(probs[idx, None], boxes[idx], h, w, skip_empty=on_cpu)
            out[(idx, *region)] = pasted >= threshold
        return out
