"""Writing a trained model's folder: whole or not at all, with the command that made it."""
from __future__ import annotations

import shlex
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_when_done(out: Path) -> Iterator[Path]:
    """A fresh `OUT.partial` folder to write into, which replaces `out` only when the block ends without an
    error: an interrupted run never leaves a folder that looks complete."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    yield tmp
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)


def command_line(fallback: str) -> str:
    """The `aisdiff ...` command this process runs (for model cards); `fallback` when run otherwise."""
    return "aisdiff " + shlex.join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("aisdiff") else fallback
