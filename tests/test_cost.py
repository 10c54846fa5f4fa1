"""DiffSP's cost per ROI on SD-1.5 inpainting's architecture, counted on the meta device (`priors.cost`)."""
from __future__ import annotations

from priors.cost import diffsp_tflops, on_sd15
from priors.diffsp import DiffSPConfig

PAPER_SD15 = DiffSPConfig(tau=0)  # the paper's settings on SD-1.5: 512 px, self 32, cross 16, T = 10


def test_the_paper_setting_costs_what_the_architecture_adds_up_to():
    # torch's FlopCounterMode formulas (pinned torch): VAE encode + 10 UNet steps + capture, per ROI
    uncut = diffsp_tflops(PAPER_SD15, cut_final_step=False)
    assert round(uncut * 1e12) == 9_150_572_527_616  # (the prompt is encoded once per category: not here)
    one = diffsp_tflops(DiffSPConfig(tau=0, steps=1), cut_final_step=False)
    unet_step = (uncut - one) / 9
    assert round(unet_step, 3) == 0.803 and round(one - unet_step, 3) == 1.117  # UNet step, VAE encode
    # the final step stops after the last captured layer (up block 2, at 32 x 32): a third of a step saved
    saved = uncut - diffsp_tflops(PAPER_SD15)
    assert 0.25 * unet_step < saved < 0.4 * unet_step
    # strength 0.2 of 10 steps runs 2 steps: the cost of T = 2
    assert diffsp_tflops(DiffSPConfig(tau=0, steps=10, strength=0.2)) == diffsp_tflops(
        DiffSPConfig(tau=0, steps=2))


def test_a_tiny_model_setting_maps_onto_sd15_by_grid_fractions(tiny_model):
    tiny = DiffSPConfig(tau=0, self_res=8, cross_res=4).resolved(tiny_model)  # 64 px, latent 16
    mapped = on_sd15(tiny, tiny_model)
    assert (mapped.resolution, mapped.self_res, mapped.cross_res) == (512, 32, 16)
    smaller = on_sd15(DiffSPConfig(tau=0, resolution=48, self_res=6, cross_res=3).resolved(tiny_model),
                      tiny_model)
    assert (smaller.resolution, smaller.self_res, smaller.cross_res) == (384, 24, 12)
