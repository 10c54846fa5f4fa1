"""DiffSP on the tiny model: the prior equals an independent (A_S)^tau . A_C, batch/order invariance,
seeds."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from priors import masks
from priors.annotations import load_annotations
from priors.architectures import build_tiny_pipeline
from priors.diffsp import DiffSP, DiffSPConfig, RoiBatch, prepare_rois
from priors.errors import AisdiffError
from priors.identity import gt_roi_seed
from priors.models import DiffusionModel

REPO = Path(__file__).resolve().parents[1]

BATCH_TOLERANCE = 1e-4  # |prior(batch) - prior(alone)|: CPU kernels round differently by batch size


def synthetic_rois(root, count: int, resolution: int = 64, context: float = 1.2) -> RoiBatch:
    """Real DiffSP inputs: ROIs of the synthetic benchmark with their visible and occluder masks."""
    ann = load_annotations(root / "annotations" / "train.json", images_dir=root / "images")
    batches = []
    for image_id in ann.image_ids():
        insts = ann.by_image(image_id)
        image = (torch.from_numpy(np.array(Image.open(ann.image_path(image_id)).convert("RGB")))
                 .permute(2, 0, 1))
        occ = ann.occluder_rles(image_id)
        batches.append(prepare_rois(
            image.float() / 255, [i.amodal_box for i in insts],
            torch.from_numpy(np.stack([i.visible_mask() for i in insts])),
            torch.from_numpy(np.stack([masks.decode(occ[i.ann_id]) for i in insts])),
            [i.category for i in insts], [gt_roi_seed(0, image_id, i.ann_id) for i in insts], resolution,
            context))
    joined = RoiBatch(*(torch.cat([getattr(b, f) for b in batches])
                        for f in ("images", "visible", "occluder", "boxes")),
                      sum((b.categories for b in batches), []), sum((b.seeds for b in batches), []))
    return joined[:count]


class StoreEveryMap:
    """A deliberately simple reference processor: keeps every probability map of every layer and step."""

    def __init__(self, log: list, kind: str) -> None:
        self.log, self.kind = log, kind

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = (attn.head_to_batch_dim(t) for t in (attn.to_q(hidden_states), attn.to_k(context),
                                                       attn.to_v(context)))
        probs = attn.get_attention_scores(q, k, None)  # [batch * heads, queries, keys]
        self.log.append((self.kind, probs.view(hidden_states.shape[0], attn.heads, *probs.shape[1:]).clone()))
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        return attn.to_out[1](attn.to_out[0](out))


def test_prior_equals_an_independent_computation_from_every_captured_map(tiny_model, make_benchmark):
    diffsp = DiffSP(tiny_model, DiffSPConfig(prior_size=8))  # 8 = self_res: the box resample is exact
    batch = synthetic_rois(make_benchmark("kins2020"), 3)
    batch.boxes = torch.tensor([[0.0, 0.0, 64.0, 64.0]] * 3)  # the prior covers the whole crop
    unet = tiny_model.pipe.unet
    original, log = unet.attn_processors, []
    unet.set_attn_processor({name: StoreEveryMap(log, "self" if ".attn1." in name else "cross")
                             for name in original})
    try:
        diffsp.denoise(batch)
    finally:
        unet.set_attn_processor(dict(original))
    self_maps = [p.double().mean(1) for kind, p in log if kind == "self" and p.shape[-1] == 8 * 8]
    cross_maps = [p.double().mean(1) for kind, p in log if kind == "cross" and p.shape[-2] == 4 * 4]
    assert len(self_maps) == 3 * 10 and len(cross_maps) == 3 * 10  # layers x steps
    a_s = torch.stack(self_maps).mean(0)  # [3, 64, 64]
    a_c = torch.stack(cross_maps).mean(0)  # [3, 16, 77]
    tok = tiny_model.pipe.tokenizer
    reference = []
    for n, category in enumerate(batch.categories):
        first = len(tok("a photo of a")["input_ids"]) - 1  # start token + prompt words
        last = len(tok(f"a photo of a {category}")["input_ids"]) - 1  # before the end token
        a_c_cat = a_c[n, :, first:last].mean(-1).view(1, 1, 4, 4)
        a_c_up = F.interpolate(a_c_cat, size=(8, 8), mode="bilinear", align_corners=False).view(64)
        m = torch.linalg.matrix_power(a_s[n], 4) @ a_c_up
        reference.append(((m - m.min()) / (m.max() - m.min())).view(8, 8))
    ours = diffsp(batch).double()
    # ours is float32 and min-max amplifies its rounding, which differs with the CPU's kernels (2.1e-5 with
    # torch's AVX2 kernels, under 2e-5 with AVX512); a wrong map, layer, step or token moves it by far more
    torch.testing.assert_close(ours, torch.stack(reference), atol=1e-4, rtol=0)
    assert ours.amin() == 0 and ours.amax() == 1


def test_batch_and_order_invariance(tiny_model, make_benchmark):
    diffsp = DiffSP(tiny_model)
    batch = synthetic_rois(make_benchmark("kins2020"), 8)
    together = diffsp(batch)
    alone = torch.cat([diffsp(batch[i:i + 1]) for i in range(8)])
    assert together.shape == (8, 28, 28)
    assert (together - alone).abs().max() < BATCH_TOLERANCE
    reversed_ = diffsp(batch[list(range(7, -1, -1))])
    assert (reversed_.flip(0) - together).abs().max() < BATCH_TOLERANCE
    assert 0 <= together.min() and together.max() <= 1 and together.amax((1, 2)).min() > 0.5


def test_seeds_settings_and_guidance_change_the_prior(tiny_model, make_benchmark):
    batch = synthetic_rois(make_benchmark("kins2020"), 2)
    base = DiffSP(tiny_model)(batch)
    torch.testing.assert_close(DiffSP(tiny_model)(batch), base)  # deterministic
    reseeded = RoiBatch(batch.images, batch.visible, batch.occluder, batch.boxes, batch.categories, [7, 8])
    assert (DiffSP(tiny_model)(reseeded) - base).abs().max() > 1e-3
    for cfg in (DiffSPConfig(guidance_scale=3.0), DiffSPConfig(mask_mode="invisible"), DiffSPConfig(tau=1)):
        other = DiffSP(tiny_model, cfg)(batch)
        assert other.shape == base.shape and (other - base).abs().max() > 1e-3, cfg


class UNetCalls:
    """Counts the UNet's calls, their timesteps, and how often its last layer (conv_out) ran."""

    def __init__(self, unet) -> None:
        self.timesteps, self.finished = [], 0
        self.hooks = [unet.register_forward_pre_hook(self.called, with_kwargs=True),
                      unet.conv_out.register_forward_hook(self.done)]

    def called(self, _module, args, kwargs) -> None:
        self.timesteps.append(int(args[1]))

    def done(self, *_) -> None:
        self.finished += 1

    def remove(self) -> None:
        for hook in self.hooks:
            hook.remove()


@pytest.mark.parametrize("settings", [dict(steps=10), dict(steps=1), dict(steps=4, strength=0.5),
                                      dict(steps=3, guidance_scale=3.0)])
def test_the_final_step_stops_after_the_last_captured_layer_and_the_prior_stays(tiny_model, make_benchmark,
                                                                                 settings):
    diffsp = DiffSP(tiny_model, DiffSPConfig(**settings))
    batch = synthetic_rois(make_benchmark("kins2020"), 3)
    calls = UNetCalls(tiny_model.pipe.unet)
    try:
        cut = diffsp.attention(batch)
        runs, finished = len(calls.timesteps), calls.finished
        full = diffsp.attention(batch, cut_final_step=False)
    finally:
        calls.remove()
    steps = diffsp.config.unet_steps
    assert (runs, finished) == (steps, steps - 1)  # every step's UNet ran, the final one not to its end
    assert calls.finished - finished == steps
    for ours, reference in zip(cut, full, strict=True):
        assert torch.equal(ours, reference)  # the same maps, bit for bit


def test_strength_runs_the_last_steps_of_the_schedule_from_the_noised_visible_latent(tiny_model,
                                                                                      make_benchmark):
    batch = synthetic_rois(make_benchmark("kins2020"), 2)
    full, part = DiffSP(tiny_model, DiffSPConfig(steps=10)), DiffSP(tiny_model, DiffSPConfig(steps=10,
                                                                                            strength=0.3))
    assert part.config.unet_steps == 3
    calls = UNetCalls(tiny_model.pipe.unet)
    try:
        part.denoise(batch)
    finally:
        calls.remove()
    assert calls.timesteps == [int(t) for t in full.scheduler.timesteps[-3:]] == [201, 101, 1]
    # the start: the visible crop's latent (as denoise encodes it) noised to the first step's timestep
    seeds, t = batch.seeds, part.scheduler.timesteps[-3]
    latents = torch.randn(1, 4, part.latent_size, part.latent_size)
    alpha = part.scheduler.alphas_cumprod[int(t)]
    torch.testing.assert_close(part._start_latents(seeds, latents.expand(2, -1, -1, -1), t),
                               alpha.sqrt() * latents + (1 - alpha).sqrt() * part._noise(seeds))
    assert (part(batch) - full(batch)).abs().max() > 1e-3
    assert part.attrs["strength"] == 0.3 and full.attrs["strength"] == 1.0  # recorded in stores
    for bad in (dict(strength=0.0), dict(strength=1.5), dict(steps=2, strength=0.3)):
        with pytest.raises(ValueError, match="strength"):
            DiffSP(tiny_model, DiffSPConfig(**bad))


@pytest.mark.parametrize(("steps", "spacing", "timesteps"), [
    (1, None, [1]), (2, None, [501, 1]), (1, "trailing", [999]), (2, "trailing", [999, 499]),
    (3, "trailing", [999, 666, 332])])
def test_timestep_spacing_chooses_the_timesteps_the_unet_runs_at(tiny_model, make_benchmark, steps, spacing,
                                                                 timesteps):
    diffsp = DiffSP(tiny_model, DiffSPConfig(steps=steps, timestep_spacing=spacing))
    assert diffsp.attrs["timestep_spacing"] == (spacing or "leading")  # (None: the model scheduler's)
    calls = UNetCalls(tiny_model.pipe.unet)
    try:
        diffsp.denoise(synthetic_rois(make_benchmark("kins2020"), 1))
    finally:
        calls.remove()
    assert calls.timesteps == [int(t) for t in diffsp.run_timesteps] == timesteps


def test_strength_takes_the_last_steps_of_a_trailing_schedule_too(tiny_model, make_benchmark):
    batch = synthetic_rois(make_benchmark("kins2020"), 1)
    part = DiffSP(tiny_model, DiffSPConfig(steps=10, strength=0.2, timestep_spacing="trailing"))
    calls = UNetCalls(tiny_model.pipe.unet)
    try:
        part.denoise(batch)
    finally:
        calls.remove()
    assert calls.timesteps == [int(t) for t in part.run_timesteps] == [199, 99]
    latents, t = torch.randn(1, 4, part.latent_size, part.latent_size), part.run_timesteps[0]
    alpha = part.scheduler.alphas_cumprod[199]  # started from the visible latent noised to t = 199
    torch.testing.assert_close(part._start_latents(batch.seeds, latents, t),
                               alpha.sqrt() * latents + (1 - alpha).sqrt() * part._noise(batch.seeds))


def test_trailing_spacing_changes_the_prior_and_a_bad_spacing_is_refused(tiny_model, make_benchmark):
    batch = synthetic_rois(make_benchmark("kins2020"), 2)
    leading, trailing = (DiffSP(tiny_model, DiffSPConfig(steps=2, timestep_spacing=s))(batch)
                         for s in ("leading", "trailing"))
    assert (leading - trailing).abs().max() > 1e-3
    assert torch.equal(leading, DiffSP(tiny_model, DiffSPConfig(steps=2))(batch))  # the scheduler's default
    for bad in ("last", "linspace"):
        with pytest.raises(ValueError,
                           match=f"timestep_spacing must be one of .*'leading', 'trailing'.*, not '{bad}'"):
            DiffSP(tiny_model, DiffSPConfig(timestep_spacing=bad))


def test_a_preset_fills_the_settings_not_given():
    from priors.diffsp import PRESETS, preset_config
    from segmenter.prior_providers import OnTheFlyPriors

    assert preset_config("fast") == DiffSPConfig(**PRESETS["fast"]) != DiffSPConfig()
    assert preset_config("fast", steps=7, tau=None).steps == 7  # the caller's value wins; None is unset
    assert preset_config("default") == preset_config() == DiffSPConfig()
    with pytest.raises(ValueError, match="unknown DiffSP preset 'quick'; choose one of default, fast"):
        preset_config("quick")
    provider = OnTheFlyPriors(model="tiny", classes=("ball",), preset="fast", tau=0)  # as a config gives it
    assert provider.runner.config == replace(preset_config("fast"), tau=0)


def test_the_fast_preset_is_the_setting_the_steps_sweep_chose():
    """PRESETS['fast'] resolves, on the trained tiny model, to the row benchmarks.diffsp_steps marked (its
    committed record): cheapest within 0.01 prior IoU of T = 10, overall and in every bucket."""
    from priors.diffsp import preset_config
    from priors.models import load_model

    record = json.loads((REPO / "benchmarks" / "results" / "diffsp_steps" / "diffsp_steps.json").read_text())
    keys = ("steps", "strength", "self_res", "cross_res", "resolution", "timestep_spacing", "encoder")
    resolved = preset_config("fast").resolved(load_model("tiny"))
    assert {k: getattr(resolved, k) for k in keys} == {k: record["fast"][k] for k in keys}
    reference, fast = record["rows"][0], record["fast"]
    assert (reference["steps"], reference["timestep_spacing"]) == (10, "leading")
    tolerance = record["tolerance"]
    assert fast["val_iou"] >= reference["val_iou"] - tolerance
    assert all(fast["val_by_bucket"][b] >= v - tolerance for b, v in reference["val_by_bucket"].items())
    fitting = [r for r in record["rows"] if r["val_iou"] >= reference["val_iou"] - tolerance
               and all(r["val_by_bucket"][b] >= v - tolerance for b, v in reference["val_by_bucket"].items())]
    assert fast["sd15_tflops"] == min(r["sd15_tflops"] for r in fitting)  # the cheapest of those that fit


def test_category_tokens_skip_the_start_token(tiny_model):
    diffsp = DiffSP(tiny_model)
    assert diffsp.category_token_positions("ball") == [5]
    tok = tiny_model.pipe.tokenizer
    n = len(tok("traffic light")["input_ids"]) - 2
    assert diffsp.category_token_positions("traffic light") == list(range(5, 5 + n)) and n == 2
    odd = DiffSP(tiny_model, DiffSPConfig(prompt="{category} in a photo"))
    assert odd.category_token_positions("star") == [1]


def test_configuration_is_validated(tiny_model):
    with pytest.raises(ValueError, match="mask_mode"):
        DiffSP(tiny_model, DiffSPConfig(mask_mode="everything"))
    with pytest.raises(ValueError, match="placeholder"):
        DiffSP(tiny_model, DiffSPConfig(prompt="a photo"))
    with pytest.raises(ValueError, match="multiple of 16"):
        DiffSP(tiny_model, DiffSPConfig(resolution=60))
    attrs = DiffSP(tiny_model).attrs
    assert attrs["self_res"] == 8 and attrs["cross_res"] == 4 and attrs["resolution"] == 64
    assert attrs["model"] == tiny_model.identity and attrs["steps"] == 10 and attrs["tau"] == 4


def test_unset_settings_come_from_the_model_then_from_the_paper(tiny_model):
    model = replace(tiny_model, diffsp_defaults={"tau": 1, "cross_res": 8, "threshold": 0.4})
    config = DiffSP(model).config
    assert (config.tau, config.cross_res) == (1, 8)  # the model's
    assert (config.steps, config.self_res, config.resolution, config.context) == (10, 8, 64, 1.2)  # paper's
    assert config.prompt == "a photo of a {category}" and config.mask_mode == "occluder"
    given = DiffSP(model, DiffSPConfig(tau=2, cross_res=4)).config
    assert (given.tau, given.cross_res) == (2, 4)  # the caller's win
    assert DiffSPConfig().differences_from_paper(model) == {"tau": 1, "cross_res": 8}
    assert DiffSPConfig(tau=4, steps=5).differences_from_paper(model) == {"steps": 5, "cross_res": 8}
    assert DiffSPConfig().differences_from_paper(tiny_model) == {}


def test_a_unet_without_the_inpainting_channels_is_refused():
    from diffusers import UNet2DConditionModel

    pipe = build_tiny_pipeline()
    pipe.unet = UNet2DConditionModel.from_config(pipe.unet.config, in_channels=4)  # a text-to-image UNet
    model = DiffusionModel(pipe, "text-to-image-unet", "-", "fp32")
    with pytest.raises(AisdiffError) as refused:
        DiffSP(model)
    assert str(refused.value) == (
        "text-to-image-unet: its UNet takes 4 input channels, but DiffSP needs a Stable Diffusion inpainting "
        "model, whose UNet takes 9 (4 latent + 1 mask + 4 masked-image latent channels). Use an inpainting "
        "model (e.g. stable-diffusion-v1-5/stable-diffusion-inpainting), not a text-to-image one.")

