"""Safe loading of mmengine checkpoints: torch's weights-only unpickler, with mmengine's own types allowed.

torch >= 2.6 unpickles with `weights_only=True` by default, which refuses the types mmengine 0.10.7 writes
into every checkpoint besides tensors: its message hub's `HistoryBuffer`, the numpy arrays, dtypes and
scalars inside it, and `getattr(HistoryBuffer, 'min')` (and max, current, mean: the buffer's statistics
methods, which it pickles by name). `allow_mmengine_checkpoints` (run when the plugin is imported: the only
process-wide change the import makes) adds exactly those to torch's allow-list; `getattr` is served by
`history_buffer_method`, which resolves those four names and refuses anything else (a general `getattr`
would reach any function). So `load_checkpoint`, `load_from`, `Runner.resume` and mmdet's tools read
mmengine's checkpoints, a file holding any other type is still refused, and nothing from a file is fully
unpickled. A file you trust that holds other types loads with `aisdiff train/test --trust-checkpoint`, or
with `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` for mmdet's tools.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from priors.errors import AisdiffError

TRUST_ENV = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"  # torch's own switch to full unpickling


HISTORY_STATISTICS = ("min", "max", "current", "mean")  # HistoryBuffer's methods, pickled via getattr
# never object arrays: their items are pickles
NUMERIC_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                  "float32", "float64", "complex64", "complex128")


def history_buffer_method(owner: object, name: str):
    """The unpickler's `getattr`: HistoryBuffer's statistics methods, nothing else."""
    from mmengine.logging.history_buffer import HistoryBuffer

    if owner is HistoryBuffer and name in HISTORY_STATISTICS:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f"getattr({getattr(owner, '__qualname__', type(owner).__name__)}, {name!r}) "
                                 "refused: a checkpoint may only name HistoryBuffer's statistics methods")


def mmengine_checkpoint_types() -> list:
    """The allow-list: the non-tensor globals mmengine writes into a checkpoint, under the names they are
    pickled with (numpy 1.x files name `numpy.core`, numpy 2 files `numpy._core`)."""
    from mmengine.logging.history_buffer import HistoryBuffer

    core = np._core.multiarray
    dtype_classes = [type(np.dtype(name)) for name in NUMERIC_DTYPES]
    return [HistoryBuffer, np.ndarray, np.dtype, *dtype_classes, core._reconstruct, core.scalar,
            (core._reconstruct, "numpy.core.multiarray._reconstruct"),
            (core.scalar, "numpy.core.multiarray.scalar"), (history_buffer_method, "builtins.getattr")]


def allow_mmengine_checkpoints() -> None:
    """Add mmengine's checkpoint types to torch's weights-only allow-list (idempotent)."""
    torch.serialization.add_safe_globals(mmengine_checkpoint_types())


@contextmanager
def trusted_checkpoints(trust: bool) -> Iterator[None]:
    """With `trust`, every checkpoint loaded inside is fully unpickled (it can run code): the user's explicit
    opt-in for files they trust. Without it, nothing changes."""
    if not trust:
        yield
        return
    before = os.environ.get(TRUST_ENV)
    os.environ[TRUST_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(TRUST_ENV, None)
        else:
            os.environ[TRUST_ENV] = before


def refused_types(exc: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, in words: the types it names."""
    found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
    return f"the type {', '.join(dict.fromkeys(found))}" if found else "a type outside the allow-list"


def refused_checkpoint(exc: pickle.UnpicklingError) -> AisdiffError:
    """The error for a checkpoint that torch's weights-only unpickler refused, naming the type and the
    opt-in."""
    what = refused_types(exc)
    return AisdiffError(
        f"a checkpoint was refused: it holds {what}, which is neither a tensor nor one of the types mmengine "
        "writes, and unpickling it could run code. If you made this file or trust its source, rerun with "
        f"--trust-checkpoint (mmdet's tools: set {TRUST_ENV}=1). torch said: {str(exc).splitlines()[0]}")
