"""This process's rank from every launcher, failure markers, and the main process's wait for the others."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import STORE_SETTINGS, store_rows

from pipeline.ranks import (
    RANK_VARIABLES,
    clear_failures,
    failure_marker,
    failure_recorded,
    failures,
    process_rank,
    wait_for_ranks,
)
from priors.errors import AisdiffError
from priors.store import PriorStore


@pytest.fixture
def store(tmp_path) -> PriorStore:
    """10 rows in 3 chunks (4, 4, 2 rows): chunk 0 done; chunks 1 and 2 pending, owned by ranks 1 and 2."""
    store = PriorStore.create(tmp_path / "p.zarr", STORE_SETTINGS, store_rows(), prior_size=6, chunk_rows=4)
    store.write_chunk(0, np.zeros((4, 6, 6), np.float32))
    return store


OWNERS = {1: 1, 2: 2}


def _write(store: PriorStore, chunk: int) -> None:
    sl = store.chunk_slice(chunk)
    store.write_chunk(chunk, np.full((sl.stop - sl.start, 6, 6), 0.5, np.float32))


@pytest.mark.parametrize("variable", RANK_VARIABLES)
def test_the_rank_comes_from_any_launcher(monkeypatch, variable):
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert process_rank() == 0
    monkeypatch.setenv(variable, "3")
    assert process_rank() == 3


def test_a_failure_is_recorded_beside_the_store_and_cleared(store):
    with pytest.raises(ValueError, match="boom"), failure_recorded(store.path, 2):
        raise ValueError("boom")
    marker = failure_marker(store.path, 2)
    assert marker == store.path.sibling(".p.zarr.failed-rank2")
    assert marker == Path(store.path.url).parent / ".p.zarr.failed-rank2"
    assert failures(store.path) == {2: marker.read_text().partition("\n")[0]}
    assert failures(store.path)[2].startswith("rank 2 (host ") and failures(store.path)[2].endswith(
        "ValueError: boom")
    assert "Traceback" in marker.read_text()
    assert PriorStore.open(store.path).done().sum() == 4  # the store itself is untouched
    clear_failures(store.path)
    assert failures(store.path) == {} and not marker.exists()


def test_wait_returns_when_every_row_is_done(store):
    seen = []
    writer = threading.Timer(0.2, lambda: [_write(store, c) for c in (1, 2)])
    writer.start()
    wait_for_ranks(store, OWNERS, timeout=30, poll=0.05, on_poll=seen.append)
    writer.join()
    assert seen[0] == 4 and seen[-1] == 10 and store.done().all()


def test_wait_stops_with_the_failed_ranks_error(store):
    with pytest.raises(RuntimeError), failure_recorded(store.path, 1):
        raise RuntimeError("CUDA out of memory")
    started = time.monotonic()
    with pytest.raises(AisdiffError) as err:
        wait_for_ranks(store, OWNERS, timeout=30, poll=0.05)
    assert time.monotonic() - started < 5
    text = str(err.value)
    assert text.startswith(f"{store.path}: rank(s) 1 failed computing their chunks:\n  rank 1 (host ")
    assert "RuntimeError: CUDA out of memory" in text and str(failure_marker(store.path, 1)) in text
    assert "rerun the same command, it resumes" in text


def test_wait_gives_up_without_progress_and_names_the_stalled_ranks(store):
    _write(store, 2)  # rank 2 finished; rank 1 never will
    with pytest.raises(AisdiffError) as err:
        wait_for_ranks(store, OWNERS, timeout=0.3, poll=0.05)
    text = str(err.value)
    assert text.startswith(f"{store.path}: no chunk finished for 0.3 s while waiting for rank(s) 1 "
                           "(4 of 10 rows missing)")
    assert "rerun the same command: it resumes" in text and "--wait-timeout" in text


def test_progress_restarts_the_timeout(store):
    writer = threading.Timer(0.5, _write, (store, 1))
    started = time.monotonic()
    writer.start()
    with pytest.raises(AisdiffError, match="waiting for rank\\(s\\) 2 \\(2 of 10 rows missing\\)"):
        wait_for_ranks(store, OWNERS, timeout=1.5, poll=0.05)
    writer.join()
    assert time.monotonic() - started >= 2.0  # chunk 1 finished at 0.5 s, so the 1.5 s count restarted
