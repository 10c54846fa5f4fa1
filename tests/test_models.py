"""Model loading: the tiny offline model, real `from_pretrained` folders, safetensors only, identities."""
from __future__ import annotations

import json

import pytest
import torch
from helpers import roi_batch

from priors.architectures import build_tiny_pipeline, tiny_tokenizer
from priors.diffsp import DiffSP, DiffSPConfig
from priors.errors import AisdiffError
from priors.models import load_model, weights_sha256
from priors.synthetic import CATEGORIES


def test_tiny_model_is_deterministic_and_uses_the_stable_diffusion_classes(tiny_model):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    pipe = tiny_model.pipe
    assert isinstance(pipe, StableDiffusionInpaintPipeline) and isinstance(pipe.scheduler, DDIMScheduler)
    assert isinstance(pipe.unet, UNet2DConditionModel) and pipe.unet.config.in_channels == 9
    assert isinstance(pipe.vae, AutoencoderKL) and isinstance(pipe.text_encoder, CLIPTextModel)
    assert isinstance(pipe.tokenizer, CLIPTokenizer)
    assert tiny_model.resolution == 64
    assert weights_sha256(build_tiny_pipeline()) == tiny_model.weights_sha256
    assert tiny_model.identity == {"id": "tiny-random", "weights_sha256": tiny_model.weights_sha256}


def test_tiny_tokenizer_knows_the_category_names():
    tok = tiny_tokenizer()
    for _, name in CATEGORIES:
        ids = tok(name)["input_ids"]
        assert len(ids) == 3 and tok.convert_ids_to_tokens(ids[1]) == f"{name}</w>"
    unknown = tok("zqx")["input_ids"]
    assert len(unknown) == 5  # start, z, q, x</w>, end: any text still tokenizes, byte by byte


def test_save_pretrained_folder_loads_like_real_weights(tiny_model, tmp_path):
    tiny_model.pipe.save_pretrained(tmp_path / "model", safe_serialization=True)
    loaded = load_model(str(tmp_path / "model"))
    assert loaded.weights_sha256 == tiny_model.weights_sha256
    assert loaded.name == str((tmp_path / "model").resolve())
    batch = roi_batch()
    torch.testing.assert_close(DiffSP(loaded)(batch), DiffSP(tiny_model)(batch))


def test_a_folder_ships_its_diffsp_defaults(saved_folder):
    (saved_folder / "diffsp_config.json").write_text(json.dumps(
        {"tau": 1, "cross_res": 8, "guidance_scale": 2, "mask_mode": "invisible", "threshold": 0.4}))
    model = load_model(str(saved_folder))
    assert model.diffsp_defaults == {"tau": 1, "cross_res": 8, "guidance_scale": 2.0,
                                     "mask_mode": "invisible", "threshold": 0.4}
    assert isinstance(model.diffsp_defaults["guidance_scale"], float)  # a JSON 2 is the float setting 2.0
    config = DiffSP(model).config
    assert (config.tau, config.cross_res, config.guidance_scale, config.mask_mode) == (1, 8, 2.0, "invisible")
    assert DiffSP(model, DiffSPConfig(tau=3)).config.tau == 3
    (saved_folder / "diffsp_config.json").unlink()
    assert load_model(str(saved_folder)).diffsp_defaults == {}
    assert load_model("tiny-random").diffsp_defaults == {}


@pytest.mark.parametrize(("content", "message"), [
    ('{"self-res": 16}', "'self-res' is not a setting a model can default; use steps, tau, resolution, "
                         "self_res, cross_res, context, prompt, guidance_scale, mask_mode, strength, "
                         "timestep_spacing, encoder, threshold (seed and prior_size are the caller's)."),
    ('{"seed": 1}', "'seed' is not a setting a model can default"),
    ('{"tau": "0"}', "tau must be a JSON int, not '0'."),
    ('{"tau": true}', "tau must be a JSON int, not True."),
    ('{"threshold": "high"}', "threshold must be a JSON float, not 'high'."),
    ('[16, 16]', 'expected a JSON object of DiffSP settings, e.g. {"tau": 0}.'),
    ('{"tau": 0,}', "not valid JSON ("),
])
def test_bad_diffsp_defaults_are_refused_naming_the_file(saved_folder, content, message):
    path = saved_folder / "diffsp_config.json"
    path.write_text(content)
    try:
        with pytest.raises(AisdiffError) as refused:
            load_model(str(saved_folder))
    finally:
        path.unlink()
    assert str(refused.value).startswith(f"{path}: {message}")


def test_pickle_weights_are_refused(tiny_model, tmp_path):
    tiny_model.pipe.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(AisdiffError, match=r"unet: no \.safetensors weights \(found pickle weights: "
                                           r"diffusion_pytorch_model\.bin\)\. "
                                           r"Pickle checkpoints are refused"):
        load_model(str(tmp_path / "pickled"))
    with pytest.raises(AisdiffError, match="pickle files are refused"):
        load_model(str(tmp_path / "sd-inpainting.ckpt"))


def test_unusable_folders_and_hub_ids_give_clear_errors(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(AisdiffError, match="no 'unet/' folder"):
        load_model(str(tmp_path / "half"))
    with pytest.raises(AisdiffError, match=r"the inpainting model 'nobody/not-a-cached-model' is neither a "
                                           r"local folder .* nor in the Hugging Face cache .*hf download"):
        load_model("nobody/not-a-cached-model")  # HF_HUB_OFFLINE=1 in the tests: nothing is fetched
    with pytest.raises(AisdiffError, match="unknown dtype 'fp8'"):
        load_model("tiny-random", dtype="fp8")


def test_bf16_runs_on_cpu():
    model = load_model("tiny-random", dtype="bf16")
    assert model.pipe.unet.dtype == torch.bfloat16 and model.dtype == "bf16"
    priors = DiffSP(model)(roi_batch())
    assert torch.isfinite(priors).all() and priors.min() >= 0 and priors.max() <= 1
    assert model.weights_sha256 != load_model("tiny-random").weights_sha256  # the identity includes the dtype
