"""Shared fixtures: small synthetic benchmarks generated once per session (nothing is downloaded)."""
from __future__ import annotations

from pathlib import Path

import pytest

from priors import synthetic


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
