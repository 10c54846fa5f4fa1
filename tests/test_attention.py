"""Attention capture: which layers, same outputs as SDPA, conditional branch only, processors restored."""
from __future__ import annotations

import pytest
import torch

from priors.attention import CaptureAttnProcessor, capture_attention, layer_resolutions, swapped_processors


def _unet_inputs(model, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    unet = model.pipe.unet
    x = torch.randn(batch, unet.config.in_channels, 16, 16, generator=g)
    text = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor(500), text


def test_layer_resolutions_match_the_token_grids_seen_in_a_forward_pass(tiny_model):
    unet = tiny_model.pipe.unet
    seen = {}
    hooks = [module.register_forward_pre_hook(
        lambda mod, args, kwargs, name=name: seen.__setitem__(name, args[0].shape[1] if args else
                                                               kwargs["hidden_states"].shape[1]),
        with_kwargs=True)
        for name, module in unet.named_modules() if name.endswith(("attn1", "attn2"))]
    try:
        x, t, text = _unet_inputs(tiny_model)
        with torch.no_grad():
            unet(x, t, encoder_hidden_states=text)
    finally:
        for h in hooks:
            h.remove()
    expected = {name[: -len(".processor")]: res * res
                for name, (_, res) in layer_resolutions(unet, 16).items()}
    assert seen == expected
    kinds = {kind for kind, _ in layer_resolutions(unet, 16).values()}
    assert kinds == {"self", "cross"}


def test_capture_gives_the_same_unet_output_and_keeps_sdpa_elsewhere(tiny_model):
    unet = tiny_model.pipe.unet
    x, t, text = _unet_inputs(tiny_model)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=text).sample
        original = unet.attn_processors
        with capture_attention(unet, 16, self_res=8, cross_res=4) as sums:
            inside = unet.attn_processors
            captured = unet(x, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(captured, plain, atol=1e-5, rtol=1e-5)
    capturing = {k for k, v in inside.items() if isinstance(v, CaptureAttnProcessor)}
    wanted = {k for k, (kind, res) in layer_resolutions(unet, 16).items()
              if (kind, res) in (("self", 8), ("cross", 4))}
    assert capturing == wanted and capturing
    assert all(inside[k] is original[k] for k in inside if k not in capturing)  # SDPA processors untouched
    assert sums.self_count == 3 and sums.cross_count == 3  # layers at 8x8 (self) and 4x4 (cross), one step
    a_self, a_cross = sums.means()
    assert a_self.shape == (2, 64, 64) and a_cross.shape == (2, 16, 77)
    torch.testing.assert_close(a_self.sum(-1), torch.ones(2, 64))  # rows of probabilities
    torch.testing.assert_close(a_cross.sum(-1), torch.ones(2, 16))


def test_classifier_free_guidance_keeps_only_the_conditional_half(tiny_model):
    unet = tiny_model.pipe.unet
    x, t, text = _unet_inputs(tiny_model, batch=2)
    with torch.no_grad():
        with capture_attention(unet, 16, 8, 4, cond_only=True) as guided:
            both = unet(x, t, encoder_hidden_states=text).sample  # batch = [uncond; cond]
        with capture_attention(unet, 16, 8, 4) as cond:
            unet(x[1:], t, encoder_hidden_states=text[1:])
        plain = unet(x, t, encoder_hidden_states=text).sample
    g_self, g_cross = guided.means()
    c_self, c_cross = cond.means()
    assert g_self.shape[0] == 1
    torch.testing.assert_close(g_self, c_self, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g_cross, c_cross, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(both, plain, atol=1e-5, rtol=1e-5)


def test_guided_capture_uses_each_layer_scale_in_both_halves(tiny_model):
    """A layer whose scale is not 1/sqrt(head dim): the unconditional half (SDPA) uses it as the conditional
    half does, so the UNet output equals diffusers' AttnProcessor's (explicit scores times attn.scale)."""
    from diffusers.models.attention_processor import AttnProcessor

    unet = tiny_model.pipe.unet
    x, t, text = _unet_inputs(tiny_model)
    layers = [m for name, m in unet.named_modules() if name.endswith(("attn1", "attn2"))]
    scales = [m.scale for m in layers]
    try:
        for m in layers:
            m.scale *= 3.0
        reference_processors = {name: AttnProcessor() for name in unet.attn_processors}
        with torch.no_grad(), swapped_processors(unet, reference_processors):
            reference = unet(x, t, encoder_hidden_states=text).sample
            with capture_attention(unet, 16, 8, 4, cond_only=True):
                captured = unet(x, t, encoder_hidden_states=text).sample  # batch = [uncond; cond]
    finally:
        for m, scale in zip(layers, scales, strict=True):
            m.scale = scale
    torch.testing.assert_close(captured[:1], reference[:1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(captured[1:], reference[1:], atol=1e-5, rtol=1e-5)


def test_processors_are_restored_after_use_and_after_an_exception(tiny_model):
    unet = tiny_model.pipe.unet
    before = unet.attn_processors
    with capture_attention(unet, 16, 8, 4):
        assert any(isinstance(p, CaptureAttnProcessor) for p in unet.attn_processors.values())
    assert unet.attn_processors == before
    with pytest.raises(RuntimeError, match="boom"), capture_attention(unet, 16, 8, 4):
        raise RuntimeError("boom")
    after = unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_a_resolution_without_attention_layers_is_refused(tiny_model):
    with pytest.raises(ValueError, match=r"no self-attention layer at 32x32 .*at \[2, 4, 8, 16\]"):
        with capture_attention(tiny_model.pipe.unet, 16, 32, 4):
            pass
