"""`aisdiff inspect` on a complete, an in-progress and a damaged store; dask statistics checked with numpy."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import STORE_SETTINGS, aisdiff, store_rows
from PIL import Image

from pipeline.inspection import row_statistics
from priors.store import PriorStore


@pytest.fixture(scope="module")
def store(make_benchmark):
    root = make_benchmark("kins2020", train_images=6, val_images=2, seed=11)
    out = root / "priors.zarr"
    proc = aisdiff("precompute", "--ann", str(root / "annotations" / "train.json"),
                   "--images", str(root / "images"), "--out", str(out), "--chunk-rows", "8")
    assert proc.returncode == 0, proc.stderr
    return root, out


def test_complete_store_report_and_picture(store, tmp_path):
    root, path = store
    png = tmp_path / "grid.png"
    proc = aisdiff("inspect", str(path), "--ann", str(root / "annotations" / "train.json"), "--images",
                   str(root / "images"), "--png", str(png), "--samples", "6", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    s = report["summary"]
    n = len(PriorStore.open(path))
    assert s["rows"] == s["done"] == n and s["missing"] == 0 and s["complete"]
    assert s["by_source"] == {"ground truth": n, "proposal": 0}
    assert sum(s["by_category"].values()) == n and set(s["by_category"]) <= {
        "ball", "box", "triangle", "star", "cross", "heart", "moon"}
    assert s["chunking"] == {"chunk_rows": 8, "chunks": -(-n // 8), "chunks_done": -(-n // 8)}
    assert s["settings"]["steps"] == 10 and s["bytes"] > 0
    assert sum(v["rows"] for v in report["categories"].values()) == n
    iou = report["iou"]
    assert iou["all"]["instances"] == n and 0 <= iou["all"]["prior_iou"] <= 1
    assert iou["none"]["visible_iou"] == 1.0  # unoccluded: the visible mask is the amodal mask
    assert iou["occluded > 10%"]["visible_iou"] < 1.0
    with Image.open(png) as img:
        img.load()
        assert img.size == (int(2.1 * 5 * 80), int(2.1 * 6 * 80))  # 5 panels x 6 ROIs at 80 dpi
    assert report["png_rows"] == 6 and report["png_columns"] == 5
    text = aisdiff("inspect", str(path))
    assert (text.returncode == 0 and "per-category statistics" in text.stdout
            and "in progress" not in text.stdout)


def test_dask_statistics_equal_numpy(store):
    _, path = store
    st = PriorStore.open(path)
    ours = row_statistics(st)
    p = st.priors(slice(None)).astype(np.float32)
    q = np.clip(p, 1e-6, 1 - 1e-6)
    entropy = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    np.testing.assert_allclose(ours["mean"], p.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(ours["entropy"], entropy.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(ours["sharpness"], np.abs(2 * p - 1).mean(axis=(1, 2)), rtol=1e-6)


def test_dask_statistics_never_reduce_in_float16(tmp_path):
    """A row of 300 x 300 ones sums to 90000, above float16's largest 65504: a float16 reduction gives inf."""
    store = PriorStore.create(tmp_path / "big.zarr", STORE_SETTINGS, store_rows(2), prior_size=300,
                              chunk_rows=2)
    store.write_chunk(0, np.stack([np.ones((300, 300), np.float32), np.full((300, 300), 0.5, np.float32)]))
    stats = row_statistics(store)
    assert stats["mean"].tolist() == [1.0, 0.5] and stats["sharpness"].tolist() == [1.0, 0.0]
    np.testing.assert_allclose(stats["entropy"], [0.0, 1.0], atol=1e-4)
    assert all(v.dtype == np.float32 for v in stats.values())


def test_in_progress_and_damaged_stores(store, tmp_path):
    _, path = store
    st = PriorStore.open(path)
    partial = tmp_path / "partial.zarr"
    new = PriorStore.create(partial, st.settings, st.rows(), st.prior_size, chunk_rows=8)
    new.write_chunk(0, st.priors(new.chunk_slice(0)))
    proc = aisdiff("inspect", str(partial))
    assert proc.returncode == 0, proc.stderr
    assert f"done 8, missing {len(st) - 8}" in proc.stdout and "in progress" in proc.stdout
    damaged = tmp_path / "damaged.zarr"
    shutil.copytree(path, damaged)
    shutil.rmtree(damaged / "prior")
    proc = aisdiff("inspect", str(damaged))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "damaged prior store: missing arrays: prior" in proc.stderr


def test_proposal_rows_are_scored_against_the_ground_truths_they_find(make_benchmark, tmp_path):
    """Proposal rows on the ground-truth boxes with the amodal masks as priors score IoU 1; a proposal of
    another class, or one that misses its box, finds nothing; the report has the table beside the
    ground-truth rows' (none here)."""
    from pipeline.inspection import proposal_ious
    from priors import geometry
    from priors.annotations import load_annotations
    from priors.store import SOURCE_PROPOSAL, Rows

    root = make_benchmark("kins2020", train_images=2, val_images=2, seed=12)
    ann_path = root / "annotations" / "val.json"
    ann = load_annotations(ann_path)
    insts = list(ann)
    boxes = [i.amodal_box for i in insts]
    cats = [i.category_id for i in insts]
    boxes.append([b + 1000 for b in insts[0].amodal_box])  # misses every box
    cats.append(insts[0].category_id)
    n = len(boxes)
    rows = Rows(box=np.array(boxes, np.float32), image_id=[i.image_id for i in insts] + [insts[0].image_id],
                ann_id=np.full(n, -1), category_id=cats, source=np.full(n, SOURCE_PROPOSAL))
    store = PriorStore.create(tmp_path / "p.zarr", STORE_SETTINGS, rows, prior_size=28, chunk_rows=n)
    priors = [geometry.masks_in_box(i.amodal_mask()[None], i.amodal_box, 28)[0].numpy() for i in insts]
    store.write_chunk(0, np.stack([*priors, np.zeros((28, 28))]).astype(np.float32))
    records = proposal_ious(PriorStore.open(store.path), ann, 0.5)
    assert len(records) == len(insts) and all(r["prior_iou"] == 1.0 for r in records)
    assert sorted(r["row"] for r in records) == list(range(len(insts)))
    proc = aisdiff("inspect", str(store.path), "--ann", str(ann_path), "--json", "--threshold", "0.5")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["proposal_iou"]["all"] == {"instances": len(insts), "prior_iou": 1.0}
    assert report["iou"]["all"]["instances"] == 0
