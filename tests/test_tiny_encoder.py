"""DiffSP's small autoencoder (`encoder="tiny"`): loading a model folder's vae_tiny/, what DiffSP encodes with
it and records, its cost on SD-1.5, and `aisdiff distill-encoder` end to end."""
from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from helpers import aisdiff, roi_batch

from priors.architectures import build_tiny_autoencoder
from priors.cost import diffsp_tflops, sd15_on_meta
from priors.diffsp import DiffSP, DiffSPConfig
from priors.errors import AisdiffError
from priors.models import TINY_VAE_FOLDER, load_model, tiny_vae_sha256
from priors.store import PriorStore, StoreError


def test_the_small_autoencoder_matches_its_vae(tiny_model):
    """tiny-random has one (built from its seed); TAESD's layout for SD-1.5's factor-8 VAE."""
    from diffusers import AutoencoderTiny

    tiny = tiny_model.tiny_vae
    assert isinstance(tiny, AutoencoderTiny) and tiny.config.scaling_factor == 1.0
    latents = tiny.encode(torch.zeros(1, 3, 64, 64)).latents
    assert latents.shape == (1, 4, 16, 16)  # tiny-random's VAE: factor 4, 4 channels
    sd15 = sd15_on_meta().tiny_vae
    assert sd15.config.encoder_block_out_channels == (64, 64, 64, 64)
    assert sd15.config.num_encoder_blocks == (1, 3, 3, 3)  # TAESD's


def test_encoder_tiny_encodes_with_it_and_records_its_weights(tiny_model):
    batch = roi_batch()
    vae, tiny = DiffSP(tiny_model), DiffSP(tiny_model, DiffSPConfig(encoder="tiny"))
    assert vae.config.encoder == "vae" and "tiny_vae_sha256" not in vae.attrs
    assert tiny.attrs["encoder"] == "tiny"
    assert tiny.attrs["tiny_vae_sha256"] == tiny_vae_sha256(tiny_model.tiny_vae)
    images = batch.images * 2 - 1
    torch.testing.assert_close(tiny.encode(images), tiny_model.tiny_vae.encode(images).latents)
    kl = tiny_model.pipe.vae
    posterior = kl.encode(images).latent_dist
    torch.testing.assert_close(vae.encode(images), posterior.mode() * kl.config.scaling_factor)
    priors = tiny(batch)
    assert priors.shape == (2, 28, 28) and (priors - vae(batch)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="encoder must be one of .*'vae', 'tiny'.*, not 'taesd'"):
        DiffSP(tiny_model, DiffSPConfig(encoder="taesd"))


def test_a_folder_without_one_refuses_encoder_tiny_and_loads_one_saved_there(saved_folder, tiny_model):
    model = load_model(str(saved_folder))
    assert model.tiny_vae is None
    DiffSP(model)  # (the VAE encodes: nothing needed)
    with pytest.raises(AisdiffError, match="has no small autoencoder. Give one .*--tiny-vae.*'vae_tiny/'"):
        DiffSP(model, DiffSPConfig(encoder="tiny"))
    tiny_model.tiny_vae.save_pretrained(saved_folder / TINY_VAE_FOLDER, safe_serialization=True)
    try:
        loaded = load_model(str(saved_folder))
        assert loaded.tiny_vae_source == str(saved_folder / TINY_VAE_FOLDER)
        batch = roi_batch()
        torch.testing.assert_close(DiffSP(loaded, DiffSPConfig(encoder="tiny"))(batch),
                                   DiffSP(tiny_model, DiffSPConfig(encoder="tiny"))(batch))
        assert loaded.identity == model.identity  # (the pipeline's identity: VAE-encoded stores stay valid)
        (saved_folder / TINY_VAE_FOLDER / "diffusion_pytorch_model.safetensors").rename(
            saved_folder / TINY_VAE_FOLDER / "diffusion_pytorch_model.bin")
        broken = load_model(str(saved_folder))  # (loads on first use: the VAE path never touches it)
        DiffSP(broken)(batch)
        with pytest.raises(AisdiffError, match="no .safetensors weights .*diffusion_pytorch_model.bin"):
            DiffSP(broken, DiffSPConfig(encoder="tiny"))
        shutil.rmtree(saved_folder / TINY_VAE_FOLDER)
        factor_8 = SimpleNamespace(block_out_channels=(8, 8, 8, 8), latent_channels=4)  # (a VAE config)
        build_tiny_autoencoder(factor_8, channels=8).save_pretrained(saved_folder / TINY_VAE_FOLDER,
                                                                     safe_serialization=True)
        with pytest.raises(AisdiffError, match="encodes by a factor 8 into 4 channels, the VAE of .* by 4"):
            DiffSP(load_model(str(saved_folder)), DiffSPConfig(encoder="tiny"))
    finally:
        shutil.rmtree(saved_folder / TINY_VAE_FOLDER, ignore_errors=True)


def test_tiny_vae_gives_the_small_autoencoder_from_anywhere(saved_folder, tiny_model, tmp_path):
    """A folder elsewhere, or a hub id (refused, naming it, when it is not in the offline cache)."""
    tiny_model.tiny_vae.save_pretrained(tmp_path / "taesd-like", safe_serialization=True)
    model = load_model(str(saved_folder), tiny_vae=str(tmp_path / "taesd-like"))
    diffsp = DiffSP(model, DiffSPConfig(encoder="tiny"))
    assert diffsp.attrs["tiny_vae_sha256"] == tiny_vae_sha256(tiny_model.tiny_vae)
    with pytest.raises(AisdiffError, match="could not load the small autoencoder 'madebyollin/taesd' of"):
        DiffSP(load_model(str(saved_folder), tiny_vae="madebyollin/taesd"), DiffSPConfig(encoder="tiny"))


def test_stores_of_one_encoder_refuse_the_other_and_another_small_autoencoder(tmp_path):
    from helpers import STORE_SETTINGS, store_rows

    path = tmp_path / "p.zarr"
    PriorStore.create(path, STORE_SETTINGS, store_rows(), prior_size=6, chunk_rows=4)  # (before `encoder`)
    PriorStore.open_or_create(path, {**STORE_SETTINGS, "encoder": "vae"}, store_rows(), 6, chunk_rows=4)
    tiny = {**STORE_SETTINGS, "encoder": "tiny", "tiny_vae_sha256": "ef" * 32}
    with pytest.raises(StoreError, match="encoder: store has 'vae', requested 'tiny'"):
        PriorStore.open_or_create(path, tiny, store_rows(), 6, chunk_rows=4)
    path = tmp_path / "tiny.zarr"
    PriorStore.create(path, tiny, store_rows(), prior_size=6, chunk_rows=4)
    PriorStore.open_or_create(path, tiny, store_rows(), 6, chunk_rows=4)
    with pytest.raises(StoreError, match="encoder: store has 'tiny', requested 'vae'"):
        PriorStore.open_or_create(path, {**STORE_SETTINGS, "encoder": "vae"}, store_rows(), 6, chunk_rows=4)
    with pytest.raises(StoreError, match="tiny_vae_sha256: store has 'efef.*', requested 'abab"):
        PriorStore.open_or_create(path, {**tiny, "tiny_vae_sha256": "ab" * 32}, store_rows(), 6, chunk_rows=4)


def test_the_small_encoder_cuts_the_encode_on_sd15():
    """The same DiffSP on SD-1.5's architecture costs TAESD's encode in place of the VAE's: the difference is
    the same at every T (counted FLOPs are exact)."""
    model = sd15_on_meta()
    cost = {(enc, steps): diffsp_tflops(DiffSPConfig(steps=steps, tau=0, encoder=enc).resolved(model))
            for enc in ("vae", "tiny") for steps in (1, 2)}
    saved = cost["vae", 1] - cost["tiny", 1]
    assert saved > 0.9  # the VAE encode at 512 px is about 1.1 TFLOP, TAESD's about a tenth of it
    assert cost["vae", 2] - cost["tiny", 2] == pytest.approx(saved, rel=1e-9)


def test_distill_encoder_writes_a_small_autoencoder_the_model_loads(saved_folder, make_benchmark, tmp_path):
    root = make_benchmark("kins2020", train_images=6, val_images=2, seed=0)
    model = tmp_path / "model"
    shutil.copytree(saved_folder, model)
    args = ["distill-encoder", "--model", str(model), "--ann", str(root / "annotations" / "train.json"),
            "--images", str(root / "images"), "--steps", "3", "--batch-size", "4", "--threads", "1"]
    proc = aisdiff(*args)
    assert proc.returncode == 0, proc.stderr
    out = model / TINY_VAE_FOLDER
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    assert not (model / "vae_tiny.partial").exists()
    card = json.loads((out / "distill_config.json").read_text())
    assert card["config"]["steps"] == 3
    assert len(card["losses"]["encoder"]) == len(card["losses"]["decoder"]) == 3
    loaded = load_model(str(model))
    assert card["weights_sha256"] == tiny_vae_sha256(loaded.tiny_vae)
    assert card["model"] == loaded.identity and card["resolution"] == 64
    again = aisdiff(*args)
    assert again.returncode == 2 and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    hub = aisdiff("distill-encoder", "--model", "org/some-model", "--ann", "x.json", "--images", ".")
    assert hub.returncode == 2 and "not a local model folder; pass --out" in hub.stderr
