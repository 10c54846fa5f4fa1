"""Helpers shared by tests (importable: pytest puts this folder on sys.path)."""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from priors.store import PriorStore, Rows

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# the environment of `aisdiff precompute` runs (the venv's bin/ first: mpirun for 2 CPU processes)
PRECOMPUTE_ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONWARNINGS": "ignore"}
# Two runs of the same ROI agree to DiffSP's batch tolerance (1e-4) plus one float16 step at 1.0.
STORE_TOLERANCE = 1e-4 + 2**-10
# settings of a prior store made by hand in tests (every setting a store requires, none from a real model)
STORE_SETTINGS = {"model": {"id": "tiny", "weights_sha256": "ab" * 32}, "steps": 10, "tau": 4, "self_res": 16,
                  "cross_res": 8, "prompt": "a photo of a {category}", "seed": 0, "context": 1.2,
                  "annotations": "cd" * 32, "proposals": None, "resolution": 64, "guidance_scale": 1.0,
                  "mask_mode": "occluder", "dtype": "fp32"}


def aisdiff(*args: str) -> subprocess.CompletedProcess:
    """Run the `aisdiff` command of this environment, capturing its output."""
    return subprocess.run([str(BIN / "aisdiff"), *args], capture_output=True, text=True)


def roi_batch(n: int = 2):
    """A DiffSP input of `n` random 64x64 ROIs (balls and moons), the same every call."""
    import torch

    from priors.diffsp import RoiBatch

    g = torch.Generator().manual_seed(0)
    vis = (torch.rand(n, 1, 64, 64, generator=g) > 0.4).float()
    return RoiBatch(torch.rand(n, 3, 64, 64, generator=g), vis, 1 - vis,
                    torch.tensor([[8.0, 8.0, 56.0, 56.0]] * n), ["ball", "moon"][:n], list(range(n)))


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


def precompute_cmd(*args: str, processes: int = 1) -> list[str]:
    """`aisdiff precompute`'s command line, on one or two CPU processes. Tests of the job (processes, kills,
    resume, stores) use `tiny-random`, well-conditioned at any settings: a trained model's maps can be
    near-flat at untuned settings, and min-max normalization then amplifies float rounding across batch
    compositions."""
    if "--model" not in args:
        args = (*args, "--model", "tiny-random")
    if processes == 1:
        return [str(BIN / "aisdiff"), "precompute", *args]
    return [str(BIN / "accelerate"), "launch", "--config_file", "configs/accelerate/cpu_2proc.yaml",
            "-m", "pipeline", "precompute", *args]


def run_precompute(*args: str, processes: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `aisdiff precompute` (`precompute_cmd`) with PRECOMPUTE_ENV plus `env`, capturing its output."""
    return subprocess.run(precompute_cmd(*args, processes=processes), capture_output=True, text=True,
                          cwd=REPO, env={**PRECOMPUTE_ENV, **(env or {})}, timeout=300)


def job_args(root: Path, out: Path | str, *extra: str, split: str = "train") -> list[str]:
    """A precompute job over a synthetic benchmark's split: chunks of 4 rows, batches of 3."""
    return ["--ann", str(root / "annotations" / f"{split}.json"), "--images", str(root / "images"),
            "--out", str(out), "--chunk-rows", "4", "--batch-size", "3", *extra]


def assert_same_store(a: Path | str, b: Path | str) -> None:
    """Two complete stores with the same rows, settings and priors (to STORE_TOLERANCE)."""
    sa, sb = PriorStore.open(a), PriorStore.open(b)
    assert sa.rows().equals(sb.rows())
    assert sa.done().all() and sb.done().all()
    assert np.abs(sa.priors(slice(None)) - sb.priors(slice(None))).max() <= STORE_TOLERANCE
    assert sa.settings == sb.settings


def kill_midway(args: list[str], reference: Path | str, processes: int = 1, env: dict | None = None) -> int:
    """Start `aisdiff precompute` (`precompute_cmd`), SIGKILL its process group once the store has a done row,
    and check the store it leaves: some but not all rows done, none of them without its prior (the
    reference store's). Returns the rows done."""
    out = args[args.index("--out") + 1]
    proc = subprocess.Popen(precompute_cmd(*args, processes=processes), cwd=REPO,
                            env={**PRECOMPUTE_ENV, **(env or {})}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while done_rows(out) == 0 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed, ref = PriorStore.open(out), PriorStore.open(reference)
    done = killed.done()
    assert 0 < done.sum() < len(ref), "the kill must land in the middle of the run"
    written = killed.priors(np.flatnonzero(done))
    assert np.abs(written - ref.priors(slice(None))[done]).max() <= STORE_TOLERANCE
    return int(done.sum())


def done_rows(store: Path | str) -> int:
    """Rows done in a store, 0 while it does not exist yet (or is being created)."""
    try:
        return int(PriorStore.open(store).done().sum())
    except Exception:  # noqa: BLE001 (not created yet)
        return 0
