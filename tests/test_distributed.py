"""`aisdiff train/test --launcher pytorch` under torch.distributed.run, as users run them on several GPUs:
here 2 CPU processes over gloo. The learning rate scales with the total batch; 2 processes test as 1 does."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import BIN, synthetic_data_root

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "aisdiff" / "aisdiff_r18_fpn_synthetic.py"
FAST = ["train_cfg.max_iters=2", "train_cfg.val_interval=1000", "default_hooks.logger.interval=1",
        "model.test_cfg.rcnn.score_thr=0.0",  # (after 2 iterations: keep low-scoring detections to compare)
        *(f"{loader}.{key}" for loader in ("train_dataloader", "val_dataloader", "test_dataloader")
          for key in ("num_workers=0", "persistent_workers=False"))]


def _run(args: list[str], data: Path, processes: int = 1) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={processes}", "-m", "pipeline"] if processes > 1
                else [str(BIN / "aisdiff")])
    extra = ["--launcher", "pytorch"] if processes > 1 else []
    env = {**os.environ, "AISDIFF_DATA": str(data), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # (CPU processes over gloo, also on a machine with one GPU)
    return subprocess.run([*launcher, *args, *extra, "--cfg-options", *FAST], capture_output=True, text=True,
                          env=env, cwd=REPO)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Synthetic data (6 train, 3 val images), its train store, and 2 iterations trained on 2 processes."""
    data = synthetic_data_root(tmp_path_factory.mktemp("dist-data"), 3, 7, "--workers", "0")
    work = data / "work"
    proc = _run(["train", str(CONFIG), "--work-dir", str(work), "--auto-scale-lr"], data, processes=2)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return data, work


@pytest.mark.slow
def test_two_processes_train_with_the_learning_rate_of_their_total_batch(trained):
    import segmenter  # noqa: F401  (mmengine's checkpoint types for weights-only loading)

    _, work = trained
    checkpoint = torch.load(work / "iter_2.pth", map_location="cpu", weights_only=True)
    # the synthetic schedule: lr 0.01 for a batch of 2; 2 processes x 2 images
    assert checkpoint["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(0.02)


@pytest.mark.slow
def test_two_processes_test_to_the_same_metrics_as_one(trained, tmp_path):
    data, work = trained
    metrics = {}
    for processes in (1, 2):
        out = tmp_path / f"metrics{processes}.json"
        proc = _run(["test", str(CONFIG), str(work / "iter_2.pth"),
                     "--work-dir", str(tmp_path / str(processes)), "--metrics-json", str(out)],
                    data, processes)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert proc.stdout.count("| amodal |") == 1  # (the main process reports)
        metrics[processes] = json.loads(out.read_text())
    assert metrics[1] == metrics[2]
    assert any(key.startswith("prior/") for key in metrics[1])  # prior-quality metrics included
