"""What every benchmark shares: its command line, run as `python -m benchmarks.NAME`, and the header its
records under benchmarks/results/ carry (the command, the machine, the date)."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"  # one folder per benchmark (see its README.md)


def argument_parser(doc: str, module: str, **kwargs) -> argparse.ArgumentParser:
    """A benchmark's parser: named as it is run (`python -m` and its module), described by the first
    paragraph of its docstring."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0], **kwargs)


def command() -> str:
    """The command as run: `python -m benchmarks.NAME` and its arguments (the script path if not run so)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    program = ["-m", spec.name] if spec else [Path(sys.argv[0]).as_posix()]
    return " ".join(["python", *program, *sys.argv[1:]])


def record(machine: str, **fields) -> dict:
    """A JSON-ready record: the command as run, `machine` (the benchmark says what matters of it), the UTC
    date, then `fields`."""
    return {"command": command(), "machine": machine,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), **fields}


def write_record(path: Path, data: dict) -> None:
    """Write a record as the committed ones are (JSON, indent 1), its folder made if needed, and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    print(f"written to {path}")


def cpu_machine() -> str:
    """A CPU benchmark's `machine`: CPU model, cores, torch version and the load average when it ends (what
    its times depend on; a shared machine's other jobs show in the load)."""
    import torch

    from benchmarks.fidelity import cpu_model

    return (f"{cpu_model()} ({platform.machine()}), {os.cpu_count()} cores, torch {torch.__version__}, "
            f"load average {os.getloadavg()[0]:.1f}")
