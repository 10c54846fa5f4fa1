"""DiffSP's cost per ROI on Stable Diffusion 1.5 inpainting's architecture, counted, not timed.

The architecture is built on PyTorch's meta device (shapes only: no memory, no arithmetic) and one ROI goes
through DiffSP under `torch.utils.flop_counter.FlopCounterMode`, which counts the floating-point operations
of every matmul, convolution and attention call. The count is exact and the same on every machine, so a
setting's cost compares with another's as a plain ratio (what a GPU's throughput follows, less overheads).
A setting made for another model (the tiny one) is mapped onto SD-1.5 by its attention grids' fraction of
the latent grid: self_res = latent / 2 stays latent / 2.
"""
from __future__ import annotations

import functools
from dataclasses import replace

import torch

SD15_VAE_FACTOR = 8
SD15_LATENT = 512 // SD15_VAE_FACTOR


@functools.cache
def sd15_on_meta():
    """SD-1.5 inpainting's architecture as a `DiffusionModel` on the meta device (built once), with TAESD's
    (its small autoencoder, for `encoder="tiny"`)."""
    from .architectures import build_sd15_inpaint_architecture, build_tiny_autoencoder
    from .models import DiffusionModel

    with torch.device("meta"):
        pipe = build_sd15_inpaint_architecture()
        tiny_vae = build_tiny_autoencoder(pipe.vae.config)
    return DiffusionModel(pipe, "sd15-inpaint-architecture-meta", "meta", "fp32", _tiny_vae=tiny_vae)


def on_sd15(config, model):
    """`config` (resolved for `model`) on SD-1.5: its input size and attention grids scaled by SD-1.5's
    latent grid over `model`'s native one (a model run below its native size maps onto SD-1.5 below
    512 px likewise)."""
    factor = model.pipe.vae_scale_factor
    scale = SD15_LATENT / (model.resolution // factor)
    latent = round(config.resolution // factor * scale)
    return replace(config, resolution=latent * SD15_VAE_FACTOR, self_res=round(config.self_res * scale),
                   cross_res=round(config.cross_res * scale))


def diffsp_tflops(config, cut_final_step: bool = True) -> float:
    """Floating-point operations (in 10^12) that DiffSP with `config` (settings for SD-1.5; see `on_sd15`)
    spends on one ROI on SD-1.5 inpainting's architecture: VAE encode, UNet steps, attention capture."""
    from torch.utils.flop_counter import FlopCounterMode

    from .diffsp import DiffSP, RoiBatch

    diffsp = DiffSP(sd15_on_meta(), config)
    diffsp.scheduler.set_timesteps(diffsp.config.steps, device="cpu")  # (timesteps index CPU tables)
    side = diffsp.config.resolution
    diffsp.token_weights(["car"])  # (prompts are encoded once per category, not per ROI: not counted)
    if diffsp.config.guidance_scale > 1.0:
        diffsp.unconditional_text()  # (the empty prompt, likewise)
    with torch.device("meta"):
        roi = RoiBatch(torch.empty(1, 3, side, side), torch.empty(1, 1, side, side),
                       torch.empty(1, 1, side, side), torch.tensor([[8.0, 8.0, side - 8.0, side - 8.0]]),
                       ["car"], [0])
    with FlopCounterMode(display=False) as counter:
        diffsp.attention(roi, cut_final_step=cut_final_step)
    return counter.get_total_flops() / 1e12
