"""`aisdiff demo-data` through the installed console script, as a user runs it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.ranks import RANK_VARIABLES

BIN = Path(sys.executable).parent


def _run(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "aisdiff"), *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})


def test_demo_data_writes_reuses_and_refuses_foreign_folders(tmp_path):
    out = tmp_path / "bench"
    first = _run("demo-data", str(out), "--format", "cocoa", "--train-images", "3", "--val-images", "1",
                 "--seed", "1")
    assert first.returncode == 0, first.stderr
    assert ("train: 3 images" in first.stdout and "val: 1 images" in first.stdout
            and "occlusion:" in first.stdout)
    assert sorted(p.name for p in (out / "annotations").iterdir()) == ["train.json", "val.json"]
    assert len(list((out / "images").iterdir())) == 4
    mtime = (out / "annotations" / "train.json").stat().st_mtime_ns

    again = _run("demo-data", str(out), "--format", "cocoa", "--train-images", "3", "--val-images", "1",
                 "--seed", "1")
    assert again.returncode == 0 and "reusing it" in again.stdout and "train: 3 images" in again.stdout
    assert (out / "annotations" / "train.json").stat().st_mtime_ns == mtime

    (out / "notes.txt").write_text("mine")
    refused = _run("demo-data", str(out), "--train-images", "2", "--val-images", "1")
    assert refused.returncode == 2
    assert "already holds other data" in refused.stderr and "--overwrite" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (out / "annotations" / "train.json").stat().st_mtime_ns == mtime

    replaced = _run("demo-data", str(out), "--train-images", "2", "--val-images", "1", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert len(list((out / "images").iterdir())) == 3 and (out / "notes.txt").exists()


def test_python_dash_m_pipeline_runs_the_same_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pipeline", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "demo-data" in proc.stdout


def test_an_error_is_printed_by_rank_0_only_under_mpi_launchers_too(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    unset = {name: "" for name in RANK_VARIABLES}
    for variable, rank, printed in (("PMI_RANK", "0", True), ("PMI_RANK", "1", False),
                                    ("OMPI_COMM_WORLD_RANK", "1", False)):
        proc = _run("demo-data", str(tmp_path), env={**unset, variable: rank})
        assert proc.returncode == 2 and ("already holds other data" in proc.stderr) == printed, proc.stderr


def test_demo_data_high_variation_says_what_varies_and_is_another_benchmark(tmp_path):
    out = tmp_path / "bench"
    high = _run("demo-data", str(out), "--variation", "high", "--train-images", "2", "--val-images", "1")
    assert high.returncode == 0, high.stderr
    lines = high.stdout.splitlines()
    assert "variation high" in lines[0] and lines[1].startswith("variation high: arc: span 150-300 deg")
    assert lines[2].startswith("train: 2 images, ") and "(arc " in lines[2]
    # the default benchmark with the same counts is other data, refused without --overwrite
    low = _run("demo-data", str(out), "--train-images", "2", "--val-images", "1")
    assert low.returncode == 2 and "already holds other data" in low.stderr
    layout = _run("demo-data", str(tmp_path / "root"), "--variation", "high", "--layout", "kins")
    assert layout.returncode == 2 and "drop --variation high or --layout" in layout.stderr
