"""This process's rank, and how the processes of a job learn that one of them failed or stalled.

Ranks come from the launcher's environment, read as Accelerate reads them: RANK (accelerate launch,
torchrun), then the MPI launchers' PMI_RANK (MPICH, Intel MPI), OMPI_COMM_WORLD_RANK (Open MPI) and
MV2_COMM_WORLD_RANK (MVAPICH). A rank whose share of a precompute job raises leaves a failure marker beside
the store, never inside it (a marker cannot make a half-written store look complete; a rerun clears them);
the main process's wait reports those, and gives up when no chunk has been finished for a while. Before
the store exists (loading the annotations and the model, creating the store), the ranks agree after each
step instead: one that raised is reported by every rank (`agreed`), none waits at a barrier for it.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from priors.errors import AisdiffError
from priors.location import Location, Where

if TYPE_CHECKING:  # not imported at run time: the command line imports this module for process_rank
    from accelerate import Accelerator

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


def failure_marker(store: Where, rank: int) -> Location:
    """Where `rank` records its failure: a hidden file (or object) beside the store."""
    store = Location(store)
    return store.sibling(f".{store.name}{MARKER_INFIX}{rank}")


def record_failure(store: Where, rank: int, exc: BaseException) -> None:
    """Write `rank`'s failure marker (the exception, then its traceback); a marker that cannot be written
    is a warning (none where the store's disk is full: the exception says so), so that the exception
    itself is what the rank reports."""
    marker = failure_marker(store, rank)
    what = "".join(traceback.format_exception_only(exc)).strip()
    text = f"rank {rank} (host {socket.gethostname()}, pid {os.getpid()}): {what}\n\n"
    try:
        marker.write_text(text + "".join(traceback.format_exception(exc)))
    except Exception as err:  # noqa: BLE001 (OSError, or an object store's own errors)
        from priors.store import StoreFullError

        if isinstance(exc, StoreFullError):
            return
        print(f"aisdiff: warning: rank {rank} could not write its failure marker {marker}: {err}",
              file=sys.stderr)


@contextmanager
def failure_recorded(store: Where, rank: int) -> Iterator[None]:
    """Record an exception raised in the block as `rank`'s failure marker, then let it propagate."""
    try:
        yield
    except BaseException as exc:
        record_failure(store, rank, exc)
        raise


@contextmanager
def agreed(accelerator: Accelerator, step: str) -> Iterator[None]:
    """Run `step` on every rank, then exchange how it ended: if any rank raised, every rank raises (the one
    that failed its own error, the others an AisdiffError quoting it), so that none is left waiting at the
    next collective for a rank that is gone. A rank that dies without raising ends the exchange with the
    process group's timeout (--wait-timeout)."""
    from accelerate.utils import gather_object

    error: BaseException | None = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 (every failure is exchanged, then raised again)
        error = exc
    if accelerator.num_processes > 1:
        said = None if error is None else (
            str(error) if isinstance(error, AisdiffError)
            else "".join(traceback.format_exception_only(error)).strip())
        try:
            reports = gather_object([(accelerator.process_index, said)])
        except Exception as exc:  # noqa: BLE001 (a peer gone: the collective fails or times out)
            raise AisdiffError(f"{step}: a process of this job stopped without a word ({exc}). Its own log "
                               "says why; rerun the same command once it is fixed.") from error
        failed = [(rank, text) for rank, text in reports if text is not None]
        if failed and error is None:
            raise AisdiffError(f"{step} failed on rank(s) {', '.join(str(r) for r, _ in failed)}:\n  "
                               + "\n  ".join(f"rank {r}: {text}" for r, text in failed))
    if error is not None:
        raise error


def failures(store: Where) -> dict[int, str]:
    """The failure markers beside a store: rank -> the marker's first line."""
    store = Location(store)
    prefix = f".{store.name}{MARKER_INFIX}"
    found = {}
    for name in store.names_beside(prefix):
        rank = name.removeprefix(prefix)
        if rank.isdigit():
            try:
                found[int(rank)] = store.sibling(name).read_text().partition("\n")[0]
            except FileNotFoundError:  # cleared meanwhile
                continue
    return dict(sorted(found.items()))


def clear_failures(store: Where) -> None:
    """Remove the failure markers a previous run of the job left beside the store."""
    for rank in failures(store):
        failure_marker(store, rank).remove()


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
