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
def bench(make_benchmark):
    """The benchmark the precompute job's tests run on (train split: 8 images)."""
    return make_benchmark("kins2020", train_images=8, val_images=3, seed=3)


@pytest.fixture(scope="session")
def reference_run(bench, tmp_path_factory):
    """An uninterrupted one-process `aisdiff precompute` of `bench`'s train split (helpers.job_args), into a
    local folder, once per session: (store, finished process)."""
    from helpers import job_args, run_precompute

    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    proc = run_precompute(*job_args(bench, out))
    assert proc.returncode == 0, proc.stderr
    return out, proc


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


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A local S3-compatible server (moto's server mode, a test dependency) on a free loopback port, for the
    session; yields the standard AWS environment that points clients at it (credentials are moto's any)."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("s3-server") / "moto.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"the S3 test server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
    home = tmp_path_factory.mktemp("aws-home")  # no user config or credentials of this machine
    yield {"AWS_ACCESS_KEY_ID": "aisdiff-test-key", "AWS_SECRET_ACCESS_KEY": "aisdiff-test-secret-5f3a9c",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
           "AWS_CONFIG_FILE": str(home / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials")}
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, request):
    """A new, empty bucket on the test server, with this process's AWS environment pointing at it; yields
    its URL (s3://NAME)."""
    import re
    import uuid

    import boto3

    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"
