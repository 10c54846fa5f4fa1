"""The header every benchmark record under benchmarks/results/ carries: the command, the machine, the date."""
from __future__ import annotations

import datetime
import sys
from pathlib import Path


def record(machine: str, **fields) -> dict:
    """A JSON-ready record: the command as run, `machine` (the benchmark says what matters of it), the UTC
    date, then `fields`."""
    return {"command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "machine": machine,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **fields}
