"""Helpers shared by tests (importable: pytest puts this folder on sys.path)."""
from __future__ import annotations

import copy
import json
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


def hub_cache(model_folder: Path, hub_id: str, hf_home: Path, revision: str = "0" * 39 + "1") -> Path:
    """Lay out a diffusers model folder in `hf_home` as huggingface_hub caches a download of `hub_id`: files
    as blobs named by their sha256, the snapshot's files as relative links to them, refs/main naming the
    revision. Returns the snapshot folder."""
    import hashlib
    import os

    repo = hf_home / "hub" / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in model_folder.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / file.relative_to(model_folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def synthetic_data_root(root: Path, val_images: int, seed: int, *precompute_flags: str) -> Path:
    """`root` as an $AISDIFF_DATA: synthetic/ (6 train images, `val_images` val) and its train prior store
    (`aisdiff precompute` with the tiny model and `precompute_flags`). Returns `root`."""
    from priors import synthetic

    syn = root / "synthetic"
    synthetic.generate(syn, train_images=6, val_images=val_images, seed=seed)
    proc = aisdiff("precompute", "--ann", str(syn / "annotations" / "train.json"),
                   "--images", str(syn / "images"), "--out", str(syn / "priors_train.zarr"),
                   *precompute_flags)
    assert proc.returncode == 0, proc.stderr
    return root


def coco_pair_files(source: Path, folder: Path) -> tuple[Path, Path]:
    """The aistron file `source` as two plain COCO files in `folder`, amodal.json and visible.json (their
    segmentation and bbox: the amodal, and the visible, ones): what `aisdiff convert-coco-amodal` merges."""
    doc = json.loads(source.read_text())
    paths = []
    for name in ("amodal", "visible"):
        part = copy.deepcopy(doc)
        part["annotations"] = [{"id": a["id"], "image_id": a["image_id"], "category_id": a["category_id"],
                                "iscrowd": 0, "segmentation": a[f"{name}_segm"], "bbox": a[f"{name}_bbox"]}
                               for a in doc["annotations"]]
        paths.append(folder / f"{name}.json")
        paths[-1].write_text(json.dumps(part))
    return paths[0], paths[1]
