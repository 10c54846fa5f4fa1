"""The published Stable Diffusion 1.5 inpainting architecture (random weights, built offline) runs DiffSP."""
from __future__ import annotations

import pytest
import torch

from priors.architectures import build_sd15_inpaint_architecture
from priors.diffsp import DiffSP, DiffSPConfig, RoiBatch
from priors.models import DiffusionModel


@pytest.mark.slow
def test_one_roi_through_diffsp_at_512_px_on_the_real_architecture():
    pipe = build_sd15_inpaint_architecture()
    assert pipe.unet.config.block_out_channels == (320, 640, 1280, 1280) and pipe.unet.config.in_channels == 9
    assert sum(p.numel() for p in pipe.unet.parameters()) > 850_000_000
    model = DiffusionModel(pipe, "sd15-inpaint-architecture-random", "-", "fp32")
    diffsp = DiffSP(model, DiffSPConfig(steps=2))  # 2 of the default 10 steps keep the test near a minute
    assert (diffsp.config.resolution, diffsp.config.self_res, diffsp.config.cross_res) == (512, 32, 16)
    g = torch.Generator().manual_seed(0)
    visible = torch.zeros(1, 1, 512, 512)
    visible[..., 100:400, 60:300] = 1
    batch = RoiBatch(torch.rand(1, 3, 512, 512, generator=g), visible, 1 - visible,
                     torch.tensor([[43.0, 43.0, 469.0, 469.0]]), ["car"], [0])
    with torch.no_grad():
        prior = diffsp(batch)
    assert prior.shape == (1, 28, 28) and torch.isfinite(prior).all()
    assert prior.min() >= 0 and prior.max() <= 1
