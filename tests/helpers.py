"""Helpers shared by tests (importable: pytest puts this folder on sys.path)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from priors.store import Rows

BIN = Path(sys.executable).parent
# settings of a prior store made by hand in tests (every setting a store requires, none from a real model)
STORE_SETTINGS = {"model": {"id": "tiny", "weights_sha256": "ab" * 32}, "steps": 10, "tau": 4, "self_res": 16,
                  "cross_res": 8, "prompt": "a photo of a {category}", "seed": 0, "context": 1.2,
                  "annotations": "cd" * 32, "proposals": None, "resolution": 64, "guidance_scale": 1.0,
                  "mask_mode": "occluder", "dtype": "fp32"}


def aisdiff(*args: str) -> subprocess.CompletedProcess:
    """Run the `aisdiff` command of this environment, capturing its output."""
    return subprocess.run([str(BIN / "aisdiff"), *args], capture_output=True, text=True)


def store_rows(n: int = 10) -> Rows:
    """The rows of a hand-made store: n <= 10 ground-truth rows of images 1, 2, 3 and 5."""
    image_id = np.array([1, 1, 1, 2, 2, 3, 3, 3, 3, 5][:n])
    return Rows(box=np.arange(n * 4, dtype=np.float32).reshape(n, 4), image_id=image_id,
                ann_id=np.arange(100, 100 + n), category_id=np.arange(n) % 3 + 1, source=np.zeros(n))


def trained_one_step(cfg, data_root, pipeline=None):
    """The config's model (seed 0) and a batch of the first two training samples of `data_root`, after one
    loss: (model, preprocessed data, losses)."""
    import torch
    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules
    from mmengine.dataset import pseudo_collate

    import segmenter  # noqa: F401

    register_all_modules()
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    dataset = cfg.train_dataloader.dataset
    dataset.update(data_root=str(data_root), **({"pipeline": pipeline} if pipeline is not None else {}))
    batch = pseudo_collate([DATASETS.build(dataset)[i] for i in range(2)])
    data = model.data_preprocessor(batch, training=True)
    return model, data, model.loss(data["inputs"], data["data_samples"])
