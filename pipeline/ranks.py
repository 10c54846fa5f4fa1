"""This process's rank, and how the main process of a job learns that the others failed or stalled.

Ranks come from the launcher's environment, read as Accelerate reads them: RANK (accelerate launch,
torchrun), then the MPI launchers' PMI_RANK (MPICH, Intel MPI), OMPI_COMM_WORLD_RANK (Open MPI) and
MV2_COMM_WORLD_RANK (MVAPICH). A rank whose share of a precompute job raises leaves a failure marker beside
the store, never inside it (a marker cannot make a half-written store look complete; a rerun clears them);
the main process's wait reports those, and gives up when no chunk has been finished for a while.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from priors.errors import AisdiffError

if TYPE_CHECKING:  # not imported at run time: the command line imports this module for process_rank
    from priors.store import PriorStore

RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
MARKER_INFIX = ".failed-rank"


def process_rank() -> int:
    """This process's rank as its launcher set it (0 for a process started alone)."""
    for name in RANK_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value:
            return int(value)
    return 0


def launched_as_many() -> bool:
    """Whether a launcher started this process as one of several (a world size is set)."""
    return any(name in os.environ for name in WORLD_SIZE_VARIABLES)


def failure_marker(store: Path, rank: int) -> Path:
    """Where `rank` records its failure: a hidden file beside the store."""
    return store.with_name(f".{store.name}{MARKER_INFIX}{rank}")


def record_failure(store: Path, rank: int, exc: BaseException) -> None:
    """Write `rank`'s failure marker (the exception, then its traceback); a marker that cannot be written
    is a warning, so that the exception itself is what the rank reports."""
    marker = failure_marker(store, rank)
    what = "".join(traceback.format_exception_only(exc)).strip()
    text = f"rank {rank} (host {socket.gethostname()}, pid {os.getpid()}): {what}\n\n"
    try:
        tmp = marker.with_name(f"{marker.name}.{os.getpid()}.tmp")
        tmp.write_text(text + "".join(traceback.format_exception(exc)), encoding="utf-8")
        tmp.replace(marker)
    except OSError as err:
        print(f"aisdiff: warning: rank {rank} could not write its failure marker {marker}: {err}",
              file=sys.stderr)


@contextmanager
def failure_recorded(store: Path, rank: int) -> Iterator[None]:
    """Record an exception raised in the block as `rank`'s failure marker, then let it propagate."""
    try:
        yield
    except BaseException as exc:
        record_failure(store, rank, exc)
        raise


def failures(store: Path) -> dict[int, str]:
    """The failure markers beside a store: rank -> the marker's first line."""
    prefix = f".{store.name}{MARKER_INFIX}"
    found = {}
    for path in store.parent.iterdir() if store.parent.is_dir() else ():
        rank = path.name.removeprefix(prefix)
        if path.name.startswith(prefix) and rank.isdigit():
            found[int(rank)] = path.read_text(encoding="utf-8").partition("\n")[0]
    return dict(sorted(found.items()))


def clear_failures(store: Path) -> None:
    """Remove the failure markers a previous run of the job left beside the store."""
    for rank in failures(store):
        failure_marker(store, rank).unlink(missing_ok=True)


def wait_for_ranks(store: PriorStore, owners: dict[int, int], timeout: float, poll: float = 0.5,
                   on_poll: Callable[[int], None] | None = None) -> None:
    """Block until every row of `store` is done (`owners`: pending chunk -> the rank computing it).

    Raises AisdiffError when a rank left a failure marker, or when no chunk was finished for `timeout`
    seconds (a rank killed, out of memory or on a lost node leaves no marker). `on_poll(done rows)` runs
    at each poll (the progress bar).
    """
    last_done, last_change = -1, time.monotonic()
    while True:
        failed = failures(store.path)
        if failed:
            raise AisdiffError(
                f"{store.path}: rank(s) {', '.join(map(str, failed))} failed computing their chunks:\n  "
                + "\n  ".join(failed.values()) + "\nTracebacks: "
                + ", ".join(str(failure_marker(store.path, rank)) for rank in failed)
                + ". Finished chunks are kept: fix the cause and rerun the same command, it resumes.")
        done = store.done()
        if on_poll is not None:
            on_poll(int(done.sum()))
        if done.all():
            return
        if done.sum() > last_done:
            last_done, last_change = int(done.sum()), time.monotonic()
        elif time.monotonic() - last_change > timeout:
            stalled = sorted({rank for chunk, rank in owners.items()
                              if not done[store.chunk_slice(chunk)].all()})
            raise AisdiffError(
                f"{store.path}: no chunk finished for {timeout:g} s while waiting for rank(s) "
                f"{', '.join(map(str, stalled))} ({int((~done).sum())} of {len(done)} rows missing); a rank "
                "that was killed, ran out of memory or lost its node leaves no error behind. Stop the job "
                "and rerun the same command: it resumes, keeping the finished chunks (--wait-timeout sets "
                "this limit).")
        time.sleep(poll)
