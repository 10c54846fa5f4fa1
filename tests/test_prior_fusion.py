"""`prior_fusion`: how the shape prior enters the amodal path (multiply, the paper's; residual; concat, with
or without the predicted visible and occluder probabilities)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from priors.errors import AisdiffError

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "aisdiff" / "aisdiff_r18_fpn_synthetic.py"


def _head(**kwargs):
    from segmenter.mask_head import AISDiffMaskHead

    torch.manual_seed(0)
    head = AISDiffMaskHead(num_classes=7, in_channels=16, conv_channels=8, **kwargs)
    torch.nn.init.normal_(head.amodal_predictor[-1].weight)  # (logits that differ clearly)
    if head.attention is not None:
        torch.nn.init.normal_(head.attention[-1].weight)  # (a gate that is not 1/2 everywhere)
    return head


def _inputs(n: int = 3):
    torch.manual_seed(1)
    return torch.randn(n, 16, 14, 14), torch.rand(n, 28, 28), torch.zeros(n, dtype=torch.long)


def _prior14(priors):
    return F.interpolate(priors[:, None], size=(14, 14), mode="bilinear", align_corners=False)


def test_multiply_is_the_paper_fusion_and_the_default():
    """features x sigmoid(gate) x prior, then the predictor; the default head is the same module."""
    feats, priors, labels = _inputs()
    head = _head()
    assert head.prior_fusion == "multiply" and not head.concat_masks
    amodal = head.amodal_features(feats)
    expected = head.amodal_predictor(amodal * (torch.sigmoid(head.attention(amodal)) * _prior14(priors)))
    assert torch.equal(head.forward_amodal(feats, priors, labels), expected)
    explicit = _head(prior_fusion="multiply")
    assert explicit.state_dict().keys() == head.state_dict().keys()
    assert torch.equal(explicit.forward_amodal(feats, priors, labels), expected)


def test_residual_keeps_the_features_where_the_prior_is_zero():
    feats, priors, labels = _inputs()
    head = _head(prior_fusion="residual")
    amodal = head.amodal_features(feats)
    gate = torch.sigmoid(head.attention(amodal))
    expected = head.amodal_predictor(amodal * (1 + gate * _prior14(priors)))
    torch.testing.assert_close(head.forward_amodal(feats, priors, labels), expected)
    zero = torch.zeros_like(priors)  # multiply erases every feature; residual passes them through
    torch.testing.assert_close(head.forward_amodal(feats, zero, labels), head.amodal_predictor(amodal))
    erased = _head().forward_amodal(feats, zero, labels)
    assert torch.allclose(erased, erased[:, :, :1, :1].expand_as(erased))  # one value: no shape left


@pytest.mark.parametrize("concat_masks", [False, True])
def test_concat_feeds_the_prior_to_the_amodal_convs(concat_masks):
    feats, priors, labels = _inputs()
    head = _head(prior_fusion="concat", concat_masks=concat_masks)
    first = head.amodal_features[0][0]
    assert first.in_channels == 16 + 1 + 2 * concat_masks
    masks = torch.rand(3, 2, 28, 28) if concat_masks else None
    inputs = [feats, _prior14(priors)] + ([F.avg_pool2d(masks, 2)] if concat_masks else [])
    amodal = head.amodal_features(torch.cat(inputs, 1))
    expected = head.amodal_predictor(amodal * torch.sigmoid(head.attention(amodal)))
    out = head.forward_amodal(feats, priors, labels, masks)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, head.forward_amodal(feats, 1 - priors, labels, masks))
    if concat_masks:
        with pytest.raises(AisdiffError, match="needs the visible and occluder probabilities"):
            head.forward_amodal(feats, priors, labels)


def test_concat_masks_are_the_visible_branch_probabilities_detached():
    """In forward(), the amodal path reads the visible and occluder probabilities without training the
    visible branch through them: the amodal loss alone gives that branch no gradient."""
    feats, priors, labels = _inputs()
    head = _head(prior_fusion="concat", concat_masks=True)
    out = head(feats, priors, labels)
    first = head.forward_visible(feats)
    masks = torch.cat([first["visible"], first["occluder"]], 1).sigmoid()
    torch.testing.assert_close(out["amodal"], head.forward_amodal(feats, priors, labels, masks))
    out["amodal"].sum().backward()
    assert head.visible.predictor[-1].weight.grad is None and head.occluder.predictor[-1].weight.grad is None
    assert head.amodal_features[0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("options", "message"), [
    (dict(prior_fusion="add"), "prior_fusion='add'; use one of"),
    (dict(prior_fusion="residual", concat_masks=True), "concat_masks=True needs prior_fusion='concat'")])
def test_bad_fusion_options_are_refused(options, message):
    with pytest.raises(AisdiffError, match=message):
        _head(**options)


@pytest.mark.parametrize("fusion", ["residual", "concat"])
def test_the_synthetic_model_trains_and_predicts_with_each_fusion(make_benchmark, fusion):
    """The RoI head hands the probabilities to the amodal path at test as in training."""
    from helpers import trained_one_step
    from mmengine.config import Config

    cfg = Config.fromfile(str(CONFIG))
    cfg.model.roi_head.mask_head.update(prior_fusion=fusion, concat_masks=fusion == "concat")
    cfg.model.roi_head.train_prior = cfg.model.roi_head.test_prior = dict(type="NoPriors")
    model, data, losses = trained_one_step(cfg, make_benchmark("kins2020", 4, 2, 3),
                                           cfg.train_pipeline_without_priors)
    assert torch.isfinite(losses["loss_mask_amodal"])
    model.eval()
    with torch.no_grad():
        results = model.predict(data["inputs"], data["data_samples"])
    assert all(r.pred_instances.masks.shape[0] == len(r.pred_instances) for r in results)
