"""Helpers shared by tests (importable: pytest puts this folder on sys.path)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def aisdiff(*args: str) -> subprocess.CompletedProcess:
    """Run the `aisdiff` command of this environment, capturing its output."""
    return subprocess.run([str(BIN / "aisdiff"), *args], capture_output=True, text=True)
