"""`make demo`'s script end to end at reduced sizes: every output, the metrics, the picture, and the rerun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from priors.store import PriorStore

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reruns_from_what_is_there(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "DEMO_DIR": str(out), "DEMO_TRAIN_IMAGES": "4", "DEMO_VAL_IMAGES": "2",
           "DEMO_ITERS": "2", "VENV": os.path.relpath(VENV, REPO), "PYTHONWARNINGS": "ignore"}
    first = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    for step in range(1, 7):
        assert f"== {step}/6" in first.stdout
    assert "| amodal |" in first.stdout and "| visible |" in first.stdout  # the AP table
    assert "DiffSP priors" in first.stdout and "train iteration 2/2" in first.stdout  # progress
    # the terminal tells the story; mmengine's hook tables and environment dump stay in the logs
    assert "before_train:" not in first.stdout and "before_train:" in (out / "logs" / "train.log").read_text()
    assert sorted(p.name for p in (out / "logs").iterdir()) == [
        "demo-data.log", "inspect.log", "precompute.log", "predict.log", "test.log", "train.log"]
    assert "images/s" in first.stdout
    assert sorted(p.name for p in (out / "predict" / "vis").iterdir()) == ["val_000000.png", "val_000001.png"]
    assert isinstance(json.loads((out / "predict" / "predictions.json").read_text()), list)

    metrics = json.loads((out / "metrics.json").read_text())
    for kind in ("amodal", "visible"):
        for key in ("AP", "AP50", "AP75", "AR"):
            assert 0.0 <= metrics[f"{kind}/{key}"] <= 1.0
    store = PriorStore.open(out / "priors_train.zarr")
    assert store.done().all() and len(store) > 0 and store.settings["model"]["id"] == "tiny"
    assert (out / "iter_2.pth").is_file()
    with Image.open(out / "priors.png") as img:
        img.load()
        assert img.size == (int(2.1 * 5 * 80), int(2.1 * 8 * 80))  # 8 sampled ROIs x 5 panels

    again = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("reusing") == 4  # data, checkpoint, metrics, predictions
    assert "computed now     0" in again.stdout


def test_demo_launches_precompute_with_the_chosen_accelerate_config(tmp_path):
    """Step 2 launches precompute with DEMO_ACCELERATE_CONFIG (configs/accelerate/1gpu.yaml on a GPU)."""
    missing = tmp_path / "no_such_config.yaml"
    env = {**os.environ, "DEMO_DIR": str(tmp_path / "demo"), "DEMO_TRAIN_IMAGES": "2", "DEMO_VAL_IMAGES": "1",
           "DEMO_ACCELERATE_CONFIG": str(missing), "VENV": os.path.relpath(VENV, REPO)}
    run = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode != 0
    assert f"== 2/6 train priors with DiffSP (tiny model, {missing})" in run.stdout
    assert "== 3/6" not in run.stdout
    assert str(missing) in (tmp_path / "demo" / "logs" / "precompute.log").read_text()


def test_the_terminal_gets_each_progress_line_as_it_happens(tmp_path):
    """`logged ... | iterations` passes each matching line (and each piece of a progress bar up to its
    carriage return) on as the command prints it, even into a pipe: the first lines come while the command
    still runs, not all at its end (as they did while `tr` block-buffered its output)."""
    producer = ("echo '05/01 12:00:00 - mmengine - INFO - Iter(train) [ 50/300]  lr: 2.0e-02  eta: 0:07:10  "
                "time: 1.4  loss: 3.1000  loss_rpn_cls: 0.6'; echo 'not shown'; "
                "printf 'DiffSP priors:  25%%|##  | 1/4 [00:01<00:03]\\r'; sleep 3; "
                "echo 'Iter(train) [100/300]  eta: 0:05:00  loss: 2.5000'")
    script = 'source scripts/demo.sh; LOGS="$1"; logged slow "$2" bash -c "$3" | iterations'
    run = subprocess.Popen(["timeout", "30", "bash", "-c", script, "bash", str(tmp_path),
                            r"Iter\(train\)|DiffSP priors: +[0-9]+%", producer],
                           cwd=REPO, stdout=subprocess.PIPE)
    lines = []
    for line in iter(run.stdout.readline, b""):
        lines.append((time.monotonic(), line.decode().rstrip("\n")))
    assert run.wait() == 0
    assert [text for _, text in lines] == ["  train iteration 50/300  loss 3.1000  eta 0:07:10",
                                           "DiffSP priors:  25%|##  | 1/4 [00:01<00:03]",
                                           "  train iteration 100/300  loss 2.5000  eta 0:05:00"]
    end = lines[-1][0]
    assert end - lines[0][0] > 1.5 and end - lines[1][0] > 1.5  # (the command sleeps 3 s before the last)
    log = (tmp_path / "slow.log").read_bytes().decode()  # everything, as printed
    assert "not shown\nDiffSP priors:  25%|##  | 1/4 [00:01<00:03]\rIter(train) [100/300]" in log
