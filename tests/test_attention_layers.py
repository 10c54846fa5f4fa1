"""The per-layer attention diagnostic (benchmarks.attention_layers): its scores and its table."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import attention_layers as diag

REPO = Path(__file__).resolve().parents[1]


def test_scores_on_a_hand_made_grid():
    """2x2 grid: pixel 0 visible, pixel 1 hidden, pixels 2-3 background; exact lifts and ratios."""
    amodal = torch.tensor([[True, True, False, False]])
    visible = torch.tensor([[True, False, False, False]])
    uniform = torch.full((1, 4, 4), 0.25)
    assert diag.score_layer("self", uniform, amodal, visible, None) == {"self lift": [1.0]}
    toward_object = uniform.clone()
    toward_object[0, 1] = torch.tensor([0.4, 0.4, 0.1, 0.1])  # the hidden pixel attends to the object
    assert diag.score_layer("self", toward_object, amodal, visible, None)["self lift"] == [pytest.approx(1.6)]
    cross = torch.tensor([[[0.6, 0.4], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7]]])  # 4 pixels x 2 tokens
    weights = torch.tensor([[1.0, 0.0]])  # the category is token 0; background mean 0.2
    scores = diag.score_layer("cross", cross, amodal, visible, weights)
    assert (scores["cross hidden/bg"] == [pytest.approx(1.0)]
            and scores["cross visible/bg"] == [pytest.approx(3.0)])
    no_hidden = diag.score_layer("cross", cross, amodal & visible, visible, weights)
    assert no_hidden == {}  # a ROI with nothing hidden says nothing about shape completion


def test_table_lists_every_attention_layer(make_benchmark):
    root = make_benchmark("kins2020", train_images=6, val_images=2, seed=0)
    args = ["--ann", str(root / "annotations" / "train.json"), "--images", str(root / "images"), "--model",
            "tiny-random", "--steps", "2", "--min-occlusion", "0.1", "--limit", "4"]
    proc = subprocess.run([sys.executable, "-m", "benchmarks.attention_layers", *args], capture_output=True,
                          text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("4 ROIs of") and "self lift" in lines[1]
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 10 * 2  # tiny-random: 10 transformer blocks, each with attn1 and attn2
    for row in (r for r in rows if int(r[1]) >= 8):  # coarser grids may have no hidden cell: "-"
        values = row[2:]
        kind_cells = values[:1] if row[0].endswith("attn1") else values[1:]
        assert all(v != "-" and float(v) > 0 for v in kind_cells), row
