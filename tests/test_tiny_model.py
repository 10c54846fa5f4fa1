"""The shipped trained tiny models: they load offline like real weights, and `tiny`'s priors beat the visible
mask."""
from __future__ import annotations

import json

import pytest
from helpers import aisdiff

from priors.diffsp import DiffSP, DiffSPConfig
from priors.models import (
    SHIPPED_MODELS,
    THRESHOLD_KEY,
    TINY_MODEL_DIR,
    load_model,
    model_defaults,
    model_folder,
)
from priors.store import settings_differences

# The figures the trained model's shipped DiffSP settings (tuned on the synthetic train split with `aisdiff
# tune-diffsp`, see docs/research/prior_quality.md) give on a fixed val set (the first 10 val images of
# seed 0, its 17 instances occluded > 10%), and `tiny-random`'s at the same settings, recorded from a run of
# this test: (prior IoU, visible-mask IoU).
RECORDED = {"tiny": (0.9154, 0.5475), "tiny-random": (0.3240, 0.5475)}
TOLERANCE = 0.01  # float summation order may differ across CPUs; the figures are means over 17 ROIs
# What a store of the tiny model recorded when its tuned settings were given as flags (`--tau 0 --self-res 16
# --cross-res 16`), before the model shipped them: its defaults must give byte-for-byte the same.
EXPLICIT_SETTINGS = ('{"steps": 10, "tau": 0, "prior_size": 28, "resolution": 64, "self_res": 16, '
                     '"cross_res": 16, "context": 1.2, "prompt": "a photo of a {category}", '
                     '"guidance_scale": 1.0, "mask_mode": "occluder", "seed": 0}')


@pytest.mark.parametrize("name", list(SHIPPED_MODELS))
def test_shipped_model_loads_offline_with_from_pretrained(name):
    from diffusers import StableDiffusionInpaintPipeline

    folder = SHIPPED_MODELS[name]
    pipe = StableDiffusionInpaintPipeline.from_pretrained(folder, use_safetensors=True,
                                                          safety_checker=None, requires_safety_checker=False)
    assert pipe.unet.config.in_channels == 9 and pipe.unet.config.cross_attention_dim == 64
    for sub in ("unet", "vae", "text_encoder"):
        assert list((folder / sub).glob("*.safetensors"))
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert size < 8 * 2**20, f"the shipped model is {size / 2**20:.1f} MB"
    card = (folder / "README.md").read_text()
    assert ("## Reproduce" in card and "aisdiff train-diffusion" in card and (folder / "loss.png").is_file())
    assert f"--model {name}`" in card  # the card names the model as `load_model` knows it
    model = load_model(name)
    assert model.identity["id"] == name and model.resolution == 64 and model_folder(name) == folder
    others = {load_model(other).weights_sha256 for other in ("tiny-random", *SHIPPED_MODELS) if other != name}
    assert model.weights_sha256 not in others
    assert load_model(name).weights_sha256 == model.weights_sha256  # loading is deterministic


def test_shipped_diffsp_defaults_give_the_settings_stores_recorded_with_flags():
    model = load_model("tiny")
    assert model.diffsp_defaults == {"tau": 0, "self_res": 16, "cross_res": 16, "threshold": 0.45}
    attrs = DiffSP(model).config.attrs()
    # (settings added later: stores without them were made with strength 1, the scheduler's spacing and the
    # VAE)
    assert (attrs["strength"], attrs["timestep_spacing"], attrs["encoder"]) == (1.0, "leading", "vae")
    later = ("strength", "timestep_spacing", "encoder")
    assert json.dumps({k: v for k, v in attrs.items() if k not in later}) == EXPLICIT_SETTINGS
    assert settings_differences(json.loads(EXPLICIT_SETTINGS), attrs) == []  # those stores still open
    flags = DiffSPConfig(tau=0, self_res=16, cross_res=16)  # `--tau 0 --self-res 16 --cross-res 16`
    assert json.dumps(DiffSP(model, flags).attrs) == json.dumps(DiffSP(model).attrs)


def test_tune_diffsp_says_to_record_its_best_setting_in_the_shipped_file():
    from priors.training.tune import Scored, how_to_record

    tuned = {"steps": 10, "self_res": 16, "cross_res": 16, "guidance_scale": 1.0, "tau": 0, "threshold": 0.45}
    text = how_to_record("tiny", load_model("tiny"), Scored(tuned, 0.9, {}))
    path = TINY_MODEL_DIR / "diffsp_config.json"
    assert text.startswith(f"To make the best setting above the defaults of tiny, write into {path}:\n")
    assert text.splitlines()[1] == json.dumps(json.loads(path.read_text()))  # the file's content, as is


@pytest.fixture(scope="module")
def val_set(tmp_path_factory):
    """`aisdiff precompute` + `aisdiff inspect --ann` on the fixed val set, for both tiny models: `tiny` at
    its shipped defaults, `tiny-random` (which ships none) at the same settings, given as flags."""
    from priors import synthetic

    root = tmp_path_factory.mktemp("tiny-val")
    synthetic.generate(root, train_images=0, val_images=10, seed=0)
    ann = root / "annotations" / "val.json"
    shipped = model_defaults("tiny")
    threshold = shipped.pop(THRESHOLD_KEY)
    flags = {"tiny": ([], []), "tiny-random": ([f"--{k.replace('_', '-')}={v}" for k, v in shipped.items()],
                                               [f"--threshold={threshold}"])}
    reports = {}
    for model, (precompute_flags, inspect_flags) in flags.items():
        store = root / f"{model}.zarr"
        proc = aisdiff("precompute", "--ann", str(ann), "--images", str(root / "images"), "--out", str(store),
                       "--model", model, *precompute_flags)
        assert proc.returncode == 0, proc.stderr
        proc = aisdiff("inspect", str(store), "--ann", str(ann), "--json", *inspect_flags)
        assert proc.returncode == 0, proc.stderr
        reports[model] = json.loads(proc.stdout)
    return root, reports


def test_a_store_made_with_the_tuned_flags_is_the_one_the_defaults_make(val_set):
    root, reports = val_set
    store = root / "tiny.zarr"
    before = (store / "zarr.json").read_bytes()
    proc = aisdiff("precompute", "--ann", str(root / "annotations" / "val.json"), "--images",
                   str(root / "images"), "--out", str(store), "--model", "tiny",
                   "--tau", "0", "--self-res", "16", "--cross-res", "16")
    assert proc.returncode == 0, proc.stderr
    assert "computed now     0" in proc.stdout  # accepted and resumed: nothing to do
    assert (store / "zarr.json").read_bytes() == before
    attributes = json.loads(before)["attributes"]
    assert {k: attributes[k] for k in json.loads(EXPLICIT_SETTINGS)} == json.loads(EXPLICIT_SETTINGS)
    assert reports["tiny"]["threshold"] == 0.45  # inspect's default: the model's tuned threshold


def test_trained_priors_on_a_fixed_val_set_match_the_recorded_figures(val_set):
    """The trained model's thresholded prior beats the visible mask on this heavily occluded set, and the
    random model's (which knows no shapes) does not: the shape knowledge is the model's, not the box's."""
    val_reports = {model: report["iou"]["occluded > 10%"] for model, report in val_set[1].items()}
    for model, (prior, visible) in RECORDED.items():
        report = val_reports[model]
        assert report["instances"] == 17
        assert report["visible_iou"] == pytest.approx(visible, abs=1e-3)
        assert report["prior_iou"] == pytest.approx(prior, abs=TOLERANCE)
    assert val_reports["tiny"]["prior_iou"] > val_reports["tiny"]["visible_iou"] + 0.1
    assert val_reports["tiny-random"]["prior_iou"] < val_reports["tiny-random"]["visible_iou"]
