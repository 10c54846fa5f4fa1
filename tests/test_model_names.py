"""A model is its weights: the same weights under `tiny`, a local folder or a hub id in an offline Hugging
Face cache make and read one prior store; other weights are refused naming both."""
from __future__ import annotations

import os
import shutil

import pytest
from helpers import BIN, hub_cache

from priors.models import TINY_MODEL_DIR

HUB_ID = "stable-diffusion-v1-5/stable-diffusion-inpainting"  # the id the real-data configs name


def _precompute(bench, out, model, env, *extra):
    import subprocess

    return subprocess.run([str(BIN / "aisdiff"), "precompute",
                           "--ann", str(bench / "annotations" / "train.json"),
                           "--images", str(bench / "images"), "--out", str(out), "--model", model,
                           "--limit", "3", "--chunk-rows", "3", "--workers", "0", *extra],
                          capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def names(tmp_path_factory, make_benchmark):
    """A store made with `tiny`, a copy of tiny's folder, and an HF_HOME whose cache holds tiny as HUB_ID."""
    root = tmp_path_factory.mktemp("names")
    bench = make_benchmark()
    env = {**os.environ, "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1"}
    store = root / "tiny.zarr"
    proc = _precompute(bench, store, "tiny", env)
    assert proc.returncode == 0, proc.stderr
    folder = root / "models" / "sd-inpainting"
    shutil.copytree(TINY_MODEL_DIR, folder)
    hub_cache(TINY_MODEL_DIR, HUB_ID, root / "hf")
    return bench, store, folder, env


@pytest.mark.parametrize("how", ["local folder", "hub id in the offline cache"])
def test_the_same_weights_under_another_name_resume_the_store(names, how):
    bench, store, folder, env = names
    proc = _precompute(bench, store, str(folder) if how == "local folder" else HUB_ID, env)
    assert proc.returncode == 0, proc.stderr
    assert "resumed" in proc.stdout and "already done     3" in proc.stdout


def test_other_weights_are_refused_with_both_names_and_hashes(names, tmp_path):
    bench, store, _, env = names
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    proc = _precompute(bench, copy, "tiny-random", env, "--tau", "0", "--self-res", "16", "--cross-res", "16")
    assert proc.returncode == 2
    line = next(x for x in proc.stderr.splitlines() if x.strip().startswith("model:"))
    assert "store has 'tiny' (weights sha256 " in line and "requested 'tiny-random' (weights sha256 " in line
    assert line.endswith("other weights")


def test_a_hub_id_missing_from_the_offline_cache_says_where_the_cache_is_and_how_to_fill_it(names, tmp_path):
    bench, _, _, env = names
    proc = _precompute(bench, tmp_path / "s.zarr", HUB_ID, {**env, "HF_HOME": str(tmp_path / "empty")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{HUB_ID!r} is neither a local folder" in proc.stderr
    assert f"nor in the Hugging Face cache {tmp_path / 'empty' / 'hub'}" in proc.stderr
    assert f"hf download {HUB_ID}" in proc.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_a_cached_hub_snapshot_is_the_model_folder(names):
    """Its diffsp_config.json and vae_tiny/ count as a local folder's (the tiny model's tuned settings)."""
    import subprocess
    import sys

    _, _, _, env = names
    code = ("from priors.models import model_defaults, model_folder; import json, sys; "
            f"print(json.dumps([str(model_folder({HUB_ID!r})), model_defaults({HUB_ID!r})]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    import json

    folder, defaults = json.loads(proc.stdout)
    assert folder.endswith("snapshots/" + "0" * 39 + "1")
    assert defaults == {"tau": 0, "self_res": 16, "cross_res": 16, "threshold": 0.45}
