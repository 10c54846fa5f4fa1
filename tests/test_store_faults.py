"""Faults that end in a clear word with nothing lost: damaged chunks (crc32c checksums; `inspect --verify`,
`precompute --recompute-damaged`, training's LoadCachedPriors), a disk that fills up (a small tmpfs in a
user and mount namespace: no root needed where unprivileged namespaces are allowed), and a rank that fails
before the store exists (torch.distributed.run)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import (
    PRECOMPUTE_ENV,
    REPO,
    STORE_SETTINGS,
    aisdiff,
    assert_same_store,
    hub_cache,
    job_args,
    precompute_cmd,
    run_precompute,
    store_rows,
)

from priors.store import RECOMPUTE_FLAG, DamagedChunkError, PriorStore, StoreError, row_bytes


def _flip_byte(chunk_file: Path) -> None:
    """Damage a chunk as storage or a network would: one byte inverted in the middle."""
    data = bytearray(chunk_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk_file.write_bytes(bytes(data))


def _written(n: int = 10, chunk_rows: int = 4, where: Path | None = None) -> PriorStore:
    store = PriorStore.create(where, STORE_SETTINGS, store_rows(n), prior_size=6, chunk_rows=chunk_rows)
    priors = np.random.default_rng(0).random((n, 6, 6)).astype(np.float32)
    for chunk in range(store.num_chunks):
        store.write_chunk(chunk, priors[store.chunk_slice(chunk)])
    return store


# -- checksums ----------------------------------------------------------------------------------------
def test_a_flipped_byte_is_named_by_chunk_rows_and_the_repairing_command(tmp_path):
    store = _written(where=tmp_path / "p.zarr")
    assert store.has_checksums and list(store.verify()) == []
    _flip_byte(tmp_path / "p.zarr" / "prior" / "c" / "1" / "0" / "0")
    store = PriorStore.open(tmp_path / "p.zarr")  # the metadata is intact: the store opens
    np.testing.assert_array_equal(store.done(), True)
    assert store.priors(slice(0, 4)).shape == (4, 6, 6) and store.priors([8, 9]).shape == (2, 6, 6)
    for rows in (slice(4, 8), [0, 5]):  # any read that touches chunk 1
        with pytest.raises(DamagedChunkError) as caught:
            store.priors(rows)
        assert caught.value.chunks.keys() == {1}
        text = str(caught.value)
        assert text.startswith(f"{tmp_path / 'p.zarr'}: 1 damaged chunk(s):\n  chunk 1 (rows 4-7): prior: ")
        assert f"precompute --ann ANN --images IMAGES --out {tmp_path / 'p.zarr'} --model tiny" in text
        assert RECOMPUTE_FLAG in text and f"aisdiff inspect --verify {tmp_path / 'p.zarr'}" in text
    damaged = list(store.verify())
    assert [chunk for chunk, _ in damaged] == [1] and damaged[0][1][0].startswith("prior: ")


def test_a_damaged_row_array_is_named_too_and_reset_rewrites_it(tmp_path):
    store = _written(where=tmp_path / "p.zarr")
    rows = store.rows()
    _flip_byte(tmp_path / "p.zarr" / "box" / "c" / "2" / "0")
    store = PriorStore.open(tmp_path / "p.zarr", mode="r+")
    with pytest.raises(DamagedChunkError, match=r"chunk 2 \(rows 8-9\): box: "):
        store.rows()
    # the repair: `open_or_create(recompute_damaged=True)` resets exactly the damaged chunks
    store, resumed = PriorStore.open_or_create(tmp_path / "p.zarr", STORE_SETTINGS, rows, 6, chunk_rows=4,
                                               recompute_damaged=True)
    assert resumed and store.reset == [2] and store.pending_chunks() == [2]
    assert store.rows().equals(rows) and list(store.verify()) == []


def test_a_store_made_before_checksums_opens_and_verifies(tmp_path):
    new = _written(where=tmp_path / "new.zarr")
    old = zarr.create_group(str(tmp_path / "old.zarr"), attributes=dict(new.group.attrs))
    for name, array in new.group.arrays():  # zarr's default codecs: zstd, no checksum
        old.create_array(name, data=array[:], chunks=array.chunks)
    store = PriorStore.open(tmp_path / "old.zarr", STORE_SETTINGS)
    assert not store.has_checksums and list(store.verify()) == []
    np.testing.assert_array_equal(store.priors(slice(None)), new.priors(slice(None)))
    proc = aisdiff("inspect", str(tmp_path / "old.zarr"), "--verify")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"\n  verified +3 chunks, none damaged \(no checksums\)\n", proc.stdout)


PRIOR_CHUNK_2, IMAGE_ID_CHUNK_5 = Path("prior", "c", "2", "0", "0"), Path("image_id", "c", "5")


def _damaged_copy(store: Path, out: Path, *chunk_files: Path) -> Path:
    """A copy of `store` with a byte flipped in each of `chunk_files` (paths inside the store)."""
    shutil.copytree(store, out)
    for chunk_file in chunk_files:
        _flip_byte(out / chunk_file)
    return out


@pytest.fixture
def damaged(reference_run, tmp_path):
    """A copy of the reference store with a byte flipped in prior chunk 2 and in image_id chunk 5."""
    return _damaged_copy(reference_run[0], tmp_path / "damaged.zarr", PRIOR_CHUNK_2, IMAGE_ID_CHUNK_5)


def test_verify_lists_damaged_chunks_and_precompute_recomputes_exactly_them(bench, reference_run, damaged):
    proc = aisdiff("inspect", str(damaged), "--verify")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].endswith("(crc32c checksums): 2 damaged chunk(s)")
    assert lines[1].startswith("  chunk 2 (rows 8-11): prior: ") and lines[2].startswith(
        "  chunk 5 (rows 20-23): image_id: ")
    assert lines[3].startswith("Recompute them: aisdiff precompute --ann ANN --images IMAGES --out "
                               f"{damaged} ")
    # the job refuses a damaged store, in one paragraph that names the flag
    proc = run_precompute(*job_args(bench, damaged))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "damaged chunk(s)" in proc.stderr and RECOMPUTE_FLAG in proc.stderr
    # the flag recomputes chunks 2 and 5, and only them
    proc = run_precompute(*job_args(bench, damaged, RECOMPUTE_FLAG))
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"damaged, recomputed +2 chunk\(s\): 2, 5\n", proc.stdout)
    assert re.search(r"computed now +8\n", proc.stdout)  # chunks 2 and 5: 4 rows each
    assert_same_store(damaged, reference_run[0])
    proc = aisdiff("inspect", str(damaged), "--verify")
    assert proc.returncode == 0 and "none damaged (crc32c checksums)" in proc.stdout


def test_training_that_meets_a_damaged_chunk_stops_with_the_store_chunk_and_command(reference_run, tmp_path):
    from segmenter.transforms import LoadCachedPriors

    meta = PriorStore.open(reference_run[0]).rows(slice(8, 12))  # chunk 2's rows
    image_id = int(meta.image_id[0])
    ann_ids = meta.ann_id[meta.image_id == image_id]
    for name, chunk_file, problem in (("rows", IMAGE_ID_CHUNK_5, "chunk 5 (rows 20-23): image_id: "),
                                      ("priors", PRIOR_CHUNK_2, "chunk 2 (rows 8-11): prior: ")):
        store = _damaged_copy(reference_run[0], tmp_path / f"{name}.zarr", chunk_file)
        with pytest.raises(StoreError) as caught:
            LoadCachedPriors(store=str(store)).transform({"img_id": image_id, "gt_ann_ids": ann_ids})
        text = str(caught.value)
        assert text.startswith(f"{store}: 1 damaged chunk(s):\n  {problem}"), text
        assert f"--out {store} --model tiny-random" in text and RECOMPUTE_FLAG in text


# -- a full disk --------------------------------------------------------------------------------------
def _namespaces_work() -> bool:
    """Whether this user can make a user + mount namespace and mount a tmpfs in it (root needs none)."""
    try:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
                               capture_output=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(
    not _namespaces_work(), reason="no user namespaces here (`unshare -rm` fails): the tmpfs cannot be made")


@needs_namespaces
@pytest.mark.slow
def test_a_full_disk_stops_in_one_paragraph_and_the_rerun_resumes(bench, tmp_path):
    """In one namespace (its tmpfs lives as long as it does): a store that will not fit is refused before
    it starts; with --ignore-free-space, a tmpfs too small for the store's creation keeps nothing; one
    that fills up mid-run stops with exit status 2 and the rows done; grown, the same command resumes."""
    mnt, logs = tmp_path / "mnt", tmp_path / "logs"
    mnt.mkdir(), logs.mkdir()
    args = [*job_args(bench, mnt / "p.zarr", split="val"), "--chunk-rows", "2"]
    run = " ".join(precompute_cmd(*args))
    steps = {  # step: (tmpfs size, extra flag)
        "refused": ("16k", ""), "creation": ("16k", "--ignore-free-space"),
        "midway": ("150k", "--ignore-free-space"), "resumed": ("4m", "")}
    script = ["set -u", f"mount -t tmpfs -o size=16k none {mnt}"]
    for step, (size, flag) in steps.items():
        script += [f"mount -o remount,size={size} {mnt}",
                   f"{run} {flag} >{logs}/{step}.out 2>{logs}/{step}.err; echo $? >{logs}/{step}.rc",
                   f"ls -A {mnt} >{logs}/{step}.ls"]
    script.append(f"cp -a {mnt}/p.zarr {tmp_path}/kept.zarr")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", "\n".join(script)], capture_output=True, text=True,
                          cwd=REPO, env=PRECOMPUTE_ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr

    def result(step: str) -> tuple[int, str, str, str]:
        return tuple((logs / f"{step}.{kind}").read_text() for kind in ("rc", "out", "err", "ls"))

    rc, _, err, listing = result("refused")
    rows = int(err.split(" rows left")[0].rsplit(" ", 1)[1])
    assert (rc, listing) == ("2\n", "")  # refused before anything was written
    assert err.startswith(f"aisdiff precompute: error: {mnt / 'p.zarr'}: the store will not fit: its "
                          f"{rows} rows left need about ")
    assert rows * row_bytes(28) > 16 * 1024 and "--ignore-free-space" in err and "Traceback" not in err
    rc, _, err, listing = result("creation")
    assert (rc, listing) == ("2\n", "")  # nothing half-made kept
    assert f"{mnt / 'p.zarr'}: no space left creating the store (No space left on device); nothing was kept" \
        in err and "Traceback" not in err
    rc, _, err, listing = result("midway")
    assert rc == "2\n" and listing == "p.zarr\n" and "Traceback" not in err and "warning" not in err
    message = err.rsplit("aisdiff precompute: error: ", 1)[1]
    assert message.startswith(f"{mnt / 'p.zarr'}: no space left writing chunk ")
    done = int(message.split(" rows done")[0].rsplit("with ", 1)[1].split(" of ")[0])
    assert 0 < done < rows and f"with {done} of {rows} rows done; the {rows - done} rows left need about" \
        in message and message.count("\n") == 1  # one paragraph
    rc, out, err, _ = result("resumed")
    assert rc == "0\n", err
    assert re.search(rf"already done +{done}\n", out) and re.search(rf"computed now +{rows - done}\n", out)
    reference = tmp_path / "reference.zarr"
    proc = run_precompute(*job_args(bench, reference, split="val"), "--chunk-rows", "2")
    assert proc.returncode == 0, proc.stderr
    assert_same_store(tmp_path / "kept.zarr", reference)


# -- a rank that fails before the store exists --------------------------------------------------------
RANK_ONE_WITHOUT_MODEL = '''"""`aisdiff`, rank 1 given an empty Hugging Face cache (its model cannot load)."""
import os
import runpy
import sys

empty = sys.argv.pop(1)
if os.environ["RANK"] == "1":
    os.environ["HF_HOME"] = empty
sys.argv[0] = "aisdiff"
runpy.run_module("pipeline", run_name="__main__")
'''


@pytest.mark.slow
def test_a_rank_that_fails_loading_ends_every_rank_with_its_error(bench, saved_folder, tmp_path):
    hub_cache(saved_folder, "aisdiff-test/tiny-inpaint", tmp_path / "hf")
    (tmp_path / "empty").mkdir()
    wrapper = tmp_path / "rank_one_without_model.py"
    wrapper.write_text(RANK_ONE_WITHOUT_MODEL)
    out = tmp_path / "p.zarr"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    job = [*job_args(bench, out, split="val"), "--model", "aisdiff-test/tiny-inpaint", "--wait-timeout", "60"]
    env = {**PRECOMPUTE_ENV, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*launcher, str(wrapper), str(tmp_path / "empty"), "precompute", *job],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=240)
    assert proc.returncode != 0
    # rank 0 (which loaded its model) reports rank 1's error, and both exited with status 2
    said = ("aisdiff precompute: error: loading the annotations and the model failed on rank(s) 1:\n"
            "  rank 1: the inpainting model 'aisdiff-test/tiny-inpaint' is neither a local folder")
    assert said in proc.stderr
    assert "exitcode  : 2" in proc.stderr and not out.exists()
    # the same launch with the model on both ranks: one store, written by two processes over gloo
    proc = subprocess.run([*launcher, str(wrapper), str(tmp_path / "hf"), "precompute", *job],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "1 process(es)" not in proc.stdout and "2 process(es)" in proc.stdout
    assert PriorStore.open(out).done().all()

