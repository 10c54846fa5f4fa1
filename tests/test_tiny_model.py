"""The shipped trained tiny model: it loads offline like real weights, and its priors beat the visible mask."""
from __future__ import annotations

import json

import pytest
from helpers import aisdiff

from priors.models import TINY_MODEL_DIR, load_model

# DiffSP settings tuned on the synthetic train split (`aisdiff tune-diffsp`, see the README) and the figures
# they give on a fixed val set (the first 10 val images of seed 0, its 17 instances occluded > 10%),
# recorded from a run of this test: (prior IoU, visible-mask IoU).
TUNED = {"steps": 10, "tau": 0, "self-res": 16, "cross-res": 16}
THRESHOLD = 0.45
RECORDED = {"tiny": (0.9154, 0.5475), "tiny-random": (0.3240, 0.5475)}
TOLERANCE = 0.01  # float summation order may differ across CPUs; the figures are means over 17 ROIs


def test_shipped_model_loads_offline_with_from_pretrained():
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(TINY_MODEL_DIR, use_safetensors=True,
                                                          safety_checker=None, requires_safety_checker=False)
    assert pipe.unet.config.in_channels == 9 and pipe.unet.config.cross_attention_dim == 64
    for sub in ("unet", "vae", "text_encoder"):
        assert list((TINY_MODEL_DIR / sub).glob("*.safetensors"))
    size = sum(f.stat().st_size for f in TINY_MODEL_DIR.rglob("*") if f.is_file())
    assert size < 8 * 2**20, f"the shipped model is {size / 2**20:.1f} MB"
    card = (TINY_MODEL_DIR / "README.md").read_text()
    assert "## Reproduce" in card and "aisdiff train-diffusion" in card and (TINY_MODEL_DIR / "loss.png").is_file()
    model = load_model("tiny")
    assert model.identity["id"] == "tiny" and model.resolution == 64
    assert model.weights_sha256 != load_model("tiny-random").weights_sha256
    assert load_model("tiny").weights_sha256 == model.weights_sha256  # loading is deterministic


@pytest.fixture(scope="module")
def val_reports(tmp_path_factory):
    """`aisdiff precompute` + `aisdiff inspect --ann` on the fixed val set, for both tiny models."""
    from priors import synthetic

    root = tmp_path_factory.mktemp("tiny-val")
    synthetic.generate(root, train_images=0, val_images=10, seed=0)
    ann = root / "annotations" / "val.json"
    reports = {}
    for model in RECORDED:
        store = root / f"{model}.zarr"
        proc = aisdiff("precompute", "--ann", str(ann), "--images", str(root / "images"), "--out", str(store),
                       "--model", model, *[f"--{k}={v}" for k, v in TUNED.items()])
        assert proc.returncode == 0, proc.stderr
        proc = aisdiff("inspect", str(store), "--ann", str(ann), "--threshold", str(THRESHOLD), "--json")
        assert proc.returncode == 0, proc.stderr
        reports[model] = json.loads(proc.stdout)["iou"]["occluded > 10%"]
    return reports


def test_trained_priors_on_a_fixed_val_set_match_the_recorded_figures(val_reports):
    """The trained model's thresholded prior beats the visible mask on this heavily occluded set, and the
    random model's (which knows no shapes) does not: the shape knowledge is the model's, not the box's."""
    for model, (prior, visible) in RECORDED.items():
        report = val_reports[model]
        assert report["instances"] == 17
        assert report["visible_iou"] == pytest.approx(visible, abs=1e-3)
        assert report["prior_iou"] == pytest.approx(prior, abs=TOLERANCE)
    assert val_reports["tiny"]["prior_iou"] > val_reports["tiny"]["visible_iou"] + 0.1
    assert val_reports["tiny-random"]["prior_iou"] < val_reports["tiny-random"]["visible_iou"]
