"""Shared fixtures: small synthetic benchmarks generated once per session (nothing is downloaded)."""
from __future__ import annotations

import os

# Tests never touch the network: hub look-ups fail fast instead of trying to download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from priors import synthetic  # noqa: E402


@pytest.fixture(scope="session")
def make_benchmark(tmp_path_factory):
    """Return a function (fmt, train, val, seed) -> folder, caching each combination for the session."""
    cache: dict[tuple, Path] = {}

    def make(fmt: str = "kins2020", train_images: int = 6, val_images: int = 2, seed: int = 0) -> Path:
        key = (fmt, train_images, val_images, seed)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"bench-{fmt}-{seed}")
            synthetic.generate(out, fmt=fmt, train_images=train_images, val_images=val_images, seed=seed)
            cache[key] = out
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_model():
    """The tiny random inpainting model on the CPU (built once per session)."""
    from priors.models import load_model

    return load_model("tiny-random")


@pytest.fixture(scope="module")
def saved_folder(tiny_model, tmp_path_factory):
    """`tiny-random` saved as a diffusers folder, once per test module (tests that add files to it, a
    diffsp_config.json or a vae_tiny/, remove them)."""
    folder = tmp_path_factory.mktemp("saved") / "model"
    tiny_model.pipe.save_pretrained(folder, safe_serialization=True)
    return folder
