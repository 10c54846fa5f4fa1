"""Prior stores on an object store: the same guarantees as on a file system, against a real S3-compatible
server started locally (moto's server mode, the `s3_server` fixture): creation without a rename, one and two
writing processes, kill and resume, refusal of other settings, readers (inspect, dask, training's
LoadCachedPriors in DataLoader workers, OnTheFlyPriors' store check), and no credential anywhere."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dask.array
import numpy as np
import pytest
import zarr
from helpers import (
    PRECOMPUTE_ENV,
    REPO,
    STORE_SETTINGS,
    aisdiff,
    assert_same_store,
    job_args,
    kill_midway,
    run_precompute,
    store_rows,
)

from priors.location import Location
from priors.store import CREATING_ATTR, PriorStore, UnfinishedStoreError

CONFIG = REPO / "configs" / "aisdiff" / "aisdiff_r18_fpn_synthetic.py"


def _objects(bucket: str) -> dict[str, bytes]:
    """Every object in the bucket: key -> bytes."""
    location = Location(bucket)
    return {key: location.fs.cat_file(key) for key in location.fs.find(location.path)}


def _no_credentials(s3_env: dict, *texts: str | bytes) -> None:
    for secret in (s3_env["AWS_SECRET_ACCESS_KEY"], s3_env["AWS_ACCESS_KEY_ID"]):
        for text in texts:
            assert secret.encode() not in (text if isinstance(text, bytes) else text.encode())


@pytest.fixture(scope="module")
def reference(reference_run):
    return reference_run[0]


def test_a_store_on_the_server_holds_what_one_on_disk_holds(s3_bucket, s3_server, tmp_path):
    priors = np.random.default_rng(0).random((10, 6, 6)).astype(np.float32)
    stores = {}
    for where in (tmp_path / "p.zarr", f"{s3_bucket}/runs/p.zarr"):
        store = PriorStore.create(where, STORE_SETTINGS, store_rows(), prior_size=6, chunk_rows=4)
        for chunk in range(store.num_chunks):
            store.write_chunk(chunk, priors[store.chunk_slice(chunk)])
        stores[str(where)] = PriorStore.open(where, STORE_SETTINGS)
    local, remote = stores.values()
    assert remote.path.remote and str(remote.path) == f"{s3_bucket}/runs/p.zarr"
    assert remote.rows().equals(local.rows()) and remote.done().all()
    np.testing.assert_array_equal(remote.priors(slice(None)), local.priors(slice(None)))
    np.testing.assert_array_equal(remote.dask_priors().compute(), local.dask_priors().compute())
    by_url = dask.array.from_zarr(f"{s3_bucket}/runs/p.zarr", component="prior")  # as docs/precompute.md
    np.testing.assert_array_equal(by_url.compute(), local.priors(slice(None)))
    assert remote.has_checksums and remote.size_bytes() > 0
    # the same objects as the folder's files, and no credential in any of them
    objects = _objects(s3_bucket)
    files = sorted(str(p.relative_to(tmp_path / "p.zarr")) for p in (tmp_path / "p.zarr").rglob("*")
                   if p.is_file())
    assert sorted(key.split("/runs/p.zarr/")[1] for key in objects) == files
    _no_credentials(s3_server, *objects.values())


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_unfinished_creation_is_never_taken_for_a_store_and_is_started_over(where, tmp_path, request):
    url = (f"{request.getfixturevalue('s3_bucket')}/u.zarr" if where == "s3" else str(tmp_path / "u.zarr"))
    # what a creation killed before its last write leaves: the group marked `creating`, some arrays
    group = zarr.create_group(Location(url).zarr_store(read_only=False),
                              attributes={"format": "aisdiff-priors", CREATING_ATTR: True})
    group.create_array("box", shape=(10, 4), chunks=(4, 4), dtype=np.float32)[:] = 1
    with pytest.raises(UnfinishedStoreError, match="unfinished prior store.*Rerun the same"):
        PriorStore.open(url)
    store, resumed = PriorStore.open_or_create(url, STORE_SETTINGS, store_rows(), 6, chunk_rows=4)
    assert not resumed and store.rows().equals(store_rows()) and not store.done().any()
    assert CREATING_ATTR not in PriorStore.open(url).attrs
    # a removal cut short leaves a store marked unfinished, never one that looks complete
    PriorStore.remove(url)
    assert not Location(url).exists()


def test_precompute_and_inspect_on_the_server(bench, reference, s3_bucket, s3_server):
    url = f"{s3_bucket}/run/train.zarr"
    proc = run_precompute(*job_args(bench, url), env=s3_server)
    assert proc.returncode == 0, proc.stderr
    assert f"store            {url} (new, " in proc.stdout
    assert_same_store(url, reference)
    assert not (REPO / "s3:").exists()  # (once, a local folder named `s3:`)
    inspected = subprocess.run([sys.executable, "-m", "pipeline", "inspect", url, "--verify"],
                               capture_output=True, text=True, env={**PRECOMPUTE_ENV, **s3_server})
    assert inspected.returncode == 0, inspected.stderr
    assert f"prior store {url}" in inspected.stdout and "none damaged (crc32c checksums)" in inspected.stdout
    _no_credentials(s3_server, proc.stdout, proc.stderr, inspected.stdout, inspected.stderr,
                    *_objects(s3_bucket).values())
    # other settings are refused, and the store is left as it was
    before = _objects(s3_bucket)
    other = run_precompute(*job_args(bench, url, "--steps", "3"), env=s3_server)
    assert other.returncode == 2 and "was made with other settings" in other.stderr
    assert "steps: store has 10, requested 3" in other.stderr
    assert _objects(s3_bucket) == before


def test_two_processes_write_disjoint_chunks_of_one_store_on_the_server(bench, reference, s3_bucket,
                                                                        s3_server):
    url = f"{s3_bucket}/two/train.zarr"
    proc = run_precompute(*job_args(bench, url), processes=2, env=s3_server)
    assert proc.returncode == 0, proc.stderr
    assert "2 process(es)" in proc.stdout
    assert_same_store(url, reference)


def test_a_killed_run_on_the_server_resumes_to_the_same_store(bench, reference, s3_bucket, s3_server):
    url = f"{s3_bucket}/killed.zarr"
    args = job_args(bench, url, "--batch-size", "1", "--chunk-rows", "2")
    done = kill_midway(args, reference, env=s3_server)
    resumed = run_precompute(*args, env=s3_server)
    assert resumed.returncode == 0, resumed.stderr
    assert f"already done     {done}" in resumed.stdout
    assert_same_store(url, reference)


@pytest.mark.slow
def test_training_reads_cached_priors_from_the_server_in_dataloader_workers(s3_bucket, s3_server, tmp_path):
    """The synthetic config trained 2 iterations with its train priors on the server: LoadCachedPriors reads
    them in 2 DataLoader workers, OnTheFlyPriors checks its settings against that store when built."""
    from priors import synthetic

    root = tmp_path / "data"
    synthetic.generate(root / "synthetic", train_images=4, val_images=1, seed=5)
    url = f"{s3_bucket}/synthetic/priors_train.zarr"
    made = run_precompute("--ann", str(root / "synthetic" / "annotations" / "train.json"), "--images",
                          str(root / "synthetic" / "images"), "--out", url, "--model", "tiny", env=s3_server)
    assert made.returncode == 0, made.stderr
    env = {**PRECOMPUTE_ENV, **s3_server, "AISDIFF_DATA": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline", "train", str(CONFIG), "--work-dir", str(tmp_path / "work"),
         "--cfg-options", "train_cfg.max_iters=2", "train_cfg.val_interval=1000",
         "default_hooks.logger.interval=1",
         f"train_dataloader.dataset.prior_store={url}", f"model.roi_head.test_prior.store={url}",
         "train_dataloader.num_workers=2", "train_dataloader.persistent_workers=False"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "work" / "iter_2.pth").is_file()
    # the on-the-fly provider (test_prior) checks its DiffSP settings against the store's
    import torch

    from priors.errors import AisdiffError
    from segmenter.prior_providers import DiffSPRunner

    DiffSPRunner("tiny", "fp32", url).diffsp(torch.device("cpu"))  # the store's settings: accepted
    with pytest.raises(AisdiffError, match=f"differ from the store {url} .*\n  steps: store has"):
        DiffSPRunner("tiny", "fp32", url, steps=3).diffsp(torch.device("cpu"))


def test_a_url_whose_protocol_cannot_be_opened_is_one_clear_error(bench):
    proc = run_precompute(*job_args(bench, "nosuchproto://bucket/p.zarr"))
    assert proc.returncode == 2 and "cannot open nosuchproto:// URLs" in proc.stderr
    assert "Traceback" not in proc.stderr
    inspected = aisdiff("inspect", "nosuchproto://user:hunter2@bucket/p.zarr")
    assert inspected.returncode == 2 and "nosuchproto://bucket/p.zarr" in inspected.stderr
    assert "hunter2" not in inspected.stderr  # (no user, no password in a message)


def test_locations_name_paths_and_urls_alike(tmp_path):
    local = Location(tmp_path / "a.zarr")
    assert local == tmp_path / "a.zarr" and os.fspath(local) == str(tmp_path / "a.zarr")
    assert local.sibling(".a.zarr.failed-rank1") == tmp_path / ".a.zarr.failed-rank1"
    remote = Location("s3://bucket/run/a.zarr/")
    assert remote.remote and remote.name == "a.zarr" and str(remote) == "s3://bucket/run/a.zarr"
    assert str(remote.sibling("b")) == "s3://bucket/run/b" and remote.path == "bucket/run/a.zarr"
    assert str(Location("s3://key:secret@bucket/x.zarr")) == "s3://bucket/x.zarr"
    with pytest.raises(TypeError, match="not on the local file system"):
        os.fspath(remote)
    assert Path(Location(f"file://{tmp_path}/c.zarr")) == tmp_path / "c.zarr"
