"""`aisdiff precompute` end to end on the CPU: 1 vs 2 processes, kill and resume, proposals, bad input."""
from __future__ import annotations

import copy
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    assert_same_store,
    job_args,
    kill_midway,
)
from helpers import run_precompute as run

from priors import masks
from priors.annotations import load_annotations
from priors.diffsp import PRESETS
from priors.store import SOURCE_GT, SOURCE_PROPOSAL, PriorStore


@pytest.fixture(scope="module")
def reference(reference_run):
    return reference_run


def test_one_process_run_makes_a_complete_store_with_a_summary(bench, reference):
    out, proc = reference
    ann = load_annotations(bench / "annotations" / "train.json")
    store = PriorStore.open(out)
    assert len(store) == len(ann) and store.done().all()
    rows = store.rows()
    assert (rows.source == SOURCE_GT).all()
    assert [(int(i), int(a)) for i, a in zip(rows.image_id, rows.ann_id, strict=True)] == \
        [(r.image_id, r.ann_id) for r in ann]  # sorted by image id, then annotation id
    np.testing.assert_array_equal(rows.box, np.array([r.amodal_box for r in ann], np.float32))
    priors = store.priors(slice(None))
    assert priors.min() >= 0 and priors.max() <= 1 and (priors.reshape(len(store), -1).max(1) > 0.5).all()
    assert store.settings["steps"] == 10 and store.settings["model"]["id"] == "tiny-random"
    assert store.settings["annotations"] == hashlib.sha256(
        (bench / "annotations" / "train.json").read_bytes()).hexdigest()
    for line in ("precompute summary:", f"computed now     {len(store)}", "already done     0",
                 "skipped invalid  0", "ROIs/s", "store size"):
        assert line in proc.stdout
    assert "DiffSP priors" in proc.stderr and f"{len(store)}/{len(store)}" in proc.stderr  # the progress bar
    again = run(*job_args(bench, out))  # resume: nothing left to do
    assert again.returncode == 0 and "computed now     0" in again.stdout
    assert f"already done     {len(store)}" in again.stdout


def test_two_processes_give_the_same_store(bench, reference, tmp_path):
    proc = run(*job_args(bench, tmp_path / "two.zarr"), processes=2)
    assert proc.returncode == 0, proc.stderr
    assert "2 process(es)" in proc.stdout
    assert_same_store(tmp_path / "two.zarr", reference[0])


@pytest.mark.parametrize("processes", [1, 2])
def test_a_killed_run_resumes_to_the_same_store(bench, reference, tmp_path, processes):
    out = tmp_path / "killed.zarr"
    args = job_args(bench, out, "--batch-size", "1", "--chunk-rows", "2")
    total = len(PriorStore.open(reference[0]))
    done = kill_midway(args, reference[0], processes=processes)
    resumed = run(*args, processes=processes)
    assert resumed.returncode == 0, resumed.stderr
    assert f"already done     {done}" in resumed.stdout
    assert f"computed now     {total - done}" in resumed.stdout
    assert_same_store(out, reference[0])


def test_a_failing_process_leaves_a_marker_that_the_resuming_rerun_clears(bench, reference, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(bench / "images", images)
    ann = load_annotations(bench / "annotations" / "train.json")
    last = images / ann.images[ann.image_ids()[-1]].file_name
    good = last.read_bytes()
    last.write_bytes(b"not a png")  # found when the job starts, unreadable when its chunk comes
    out = tmp_path / "p.zarr"
    args = [*job_args(bench, out), "--images", str(images), "--workers", "0"]
    failed = run(*args)
    assert failed.returncode == 2 and f"image file {last} cannot be read" in failed.stderr
    marker = tmp_path / ".p.zarr.failed-rank0"
    first_line = marker.read_text().partition("\n")[0]
    assert first_line.startswith("rank 0 (host ") and str(last) in first_line
    done = int(PriorStore.open(out).done().sum())
    assert 0 < done < len(ann)
    last.write_bytes(good)
    resumed = run(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert not marker.exists() and f"already done     {done}" in resumed.stdout
    assert_same_store(out, reference[0])


def test_proposals_become_rows_of_source_1(bench, tmp_path):
    ann = load_annotations(bench / "annotations" / "val.json")
    rng = np.random.default_rng(0)
    records = []
    for i, inst in enumerate(ann):
        x1, y1, x2, y2 = np.array(inst.amodal_box) + rng.uniform(-3, 3, 4)
        record = {"image_id": inst.image_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
                  "category_id": inst.category_id,
                  "score": 0.9, "segmentation": masks.rle_to_json(inst.visible_rle)}
        if i % 2:
            record["occluder_segmentation"] = masks.rle_to_json(ann.occluder_rles(inst.image_id)[inst.ann_id])
        records.append(record)
    (tmp_path / "proposals.json").write_text(json.dumps(records))
    out = tmp_path / "p.zarr"
    proc = run(*job_args(bench, out, "--proposals", str(tmp_path / "proposals.json"), split="val"))
    assert proc.returncode == 0, proc.stderr
    store = PriorStore.open(out)
    rows = store.rows()
    assert len(store) == 2 * len(ann) and store.done().all()
    proposal_rows = rows.source == SOURCE_PROPOSAL
    assert proposal_rows.sum() == len(ann) and (rows.ann_id[proposal_rows] == -1).all()
    assert (rows.ann_id[rows.source == SOURCE_GT] >= 0).all()
    order = list(zip(rows.image_id, rows.source, strict=True))
    assert order == sorted(order)  # per image: ground truth first, then proposals in file order
    boxes = np.array([[r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]]
                      for r in records], np.float32)
    np.testing.assert_allclose(rows.box[proposal_rows], boxes, rtol=0, atol=1e-4)
    assert store.settings["proposals"] == hashlib.sha256(
        (tmp_path / "proposals.json").read_bytes()).hexdigest()
    # --proposals-only: the same proposal rows and priors, no ground-truth rows, and the store says so
    only = tmp_path / "only.zarr"
    proc = run(*job_args(bench, only, "--proposals", str(tmp_path / "proposals.json"), "--proposals-only",
                         split="val"))
    assert proc.returncode == 0, proc.stderr
    alone = PriorStore.open(only)
    assert (alone.rows().source == SOURCE_PROPOSAL).all() and alone.done().all()
    np.testing.assert_array_equal(alone.rows().box, rows.box[proposal_rows])
    # (equal up to DiffSP's batch tolerance and one float16 step: the batches hold other ROIs)
    np.testing.assert_allclose(alone.priors(slice(None)), store.priors(np.flatnonzero(proposal_rows)),
                               rtol=0, atol=1e-4 + 2**-10)
    assert alone.settings["row_sources"] == "proposals only" and "row_sources" not in store.settings
    refused = run(*job_args(bench, only, "--proposals", str(tmp_path / "proposals.json"), split="val"))
    assert refused.returncode == 2 and "row_sources" in refused.stderr
    missing = run(*job_args(bench, tmp_path / "x.zarr", "--proposals-only", split="val"))
    assert missing.returncode == 2 and "--proposals-only needs --proposals" in missing.stderr


# -- bad input ---------------------------------------------------------------------------------------
def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode() + p.read_bytes())
    return h.hexdigest()


def _edit_first_annotation(doc: dict, **changes) -> dict:
    doc = copy.deepcopy(doc)
    doc["annotations"][0].update(changes)
    return doc


def _bad_cases(bench: Path, work: Path) -> dict[str, tuple[list[str], str]]:
    """case -> (arguments replacing --ann/--images, expected message)."""
    doc = json.loads((bench / "annotations" / "train.json").read_text())
    first = doc["annotations"][0]
    image = next(i for i in doc["images"] if i["id"] == first["image_id"])
    ann_id, image_id = first["id"], first["image_id"]
    empty = masks.rle_to_json(masks.empty(image["height"], image["width"]))
    files = {
        "malformed JSON": ("{\"images\": [", r"malformed JSON at line 1"),
        "unknown format": (json.dumps({**doc, "annotations": [{k: v for k, v in a.items()
                                                               if k not in ("a_segm", "i_segm")}
                                                             for a in doc["annotations"]]}),
                           "unknown annotation format"),
        "zero-area box": (json.dumps(_edit_first_annotation(doc, a_bbox=[10, 10, 0, 5])),
                          "zero or negative area"),
        "box outside the image": (json.dumps(_edit_first_annotation(doc, a_bbox=[5000, 10, 20, 20])),
                                  "lies outside"),
        "empty visible mask": (json.dumps(_edit_first_annotation(doc, i_segm=empty)),
                               "visible mask is empty"),
        "unknown category id": (json.dumps(_edit_first_annotation(doc, category_id=99)),
                                "unknown category id 99"),
    }
    cases = {}
    for name, (text, message) in files.items():
        path = work / f"{name.replace(' ', '_')}.json"
        path.write_text(text)
        needs_record = name not in ("malformed JSON", "unknown format")
        cases[name] = (["--ann", str(path), "--images", str(bench / "images")],
                       message, f"image {image_id}, annotation {ann_id}" if needs_record else str(path))
    images = work / "images_missing_one"
    shutil.copytree(bench / "images", images)
    (images / image["file_name"]).unlink()
    cases["missing image file"] = (["--ann", str(bench / "annotations" / "train.json"),
                                    "--images", str(images)],
                                   "does not exist", f"image {image_id}, annotation {ann_id}")
    return cases


@pytest.fixture(scope="module")
def bad_cases(bench, tmp_path_factory):
    return _bad_cases(bench, tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", ["malformed JSON", "unknown format", "missing image file", "zero-area box",
                                  "box outside the image", "empty visible mask", "unknown category id"])
def test_bad_input_is_one_clear_error_and_the_store_is_untouched(bench, reference, bad_cases, tmp_path, case):
    store = tmp_path / "existing.zarr"
    shutil.copytree(reference[0], store)
    before = _digest(store)
    args, message, where = bad_cases[case]
    proc = run(*args, "--out", str(store), "--chunk-rows", "4")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("aisdiff precompute: error: ") and message in error and where in error, error
    assert _digest(store) == before


def test_a_store_with_other_settings_or_damage_is_refused_untouched(bench, reference, tmp_path):
    store = tmp_path / "existing.zarr"
    shutil.copytree(reference[0], store)
    before = _digest(store)
    proc = run(*job_args(bench, store, "--steps", "5", "--tau", "2"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "made with other settings" in proc.stderr and "steps: store has 10, requested 5" in proc.stderr
    assert "tau: store has 4, requested 2" in proc.stderr and "--overwrite" in proc.stderr
    assert _digest(store) == before
    proc = run(*job_args(bench, store, "--preset", "fast"))  # a store of one preset refuses the other
    assert proc.returncode == 2 and "made with other settings" in proc.stderr
    assert f"steps: store has 10, requested {PRESETS['fast']['steps']}" in proc.stderr
    assert "timestep_spacing: store has 'leading', requested 'trailing'" in proc.stderr
    assert f"encoder: store has 'vae', requested '{PRESETS['fast']['encoder']}'" in proc.stderr
    proc = run(*job_args(bench, store, "--timestep-spacing", "trailing"))  # the flag reaches the settings
    assert proc.returncode == 2
    assert "timestep_spacing: store has 'leading', requested 'trailing'" in proc.stderr
    assert _digest(store) == before
    shutil.rmtree(store / "done")
    before = _digest(store)
    proc = run(*job_args(bench, store))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "damaged prior store: missing arrays: done" in proc.stderr
    assert _digest(store) == before
    proc = run(*job_args(bench, store, "--overwrite"))
    assert proc.returncode == 0, proc.stderr
    assert_same_store(store, reference[0])


def test_skip_invalid_skips_and_counts(bench, bad_cases, tmp_path):
    args, _, _ = bad_cases["zero-area box"]
    proc = run(*args, "--out", str(tmp_path / "p.zarr"), "--chunk-rows", "4", "--skip-invalid")
    assert proc.returncode == 0, proc.stderr
    assert "skipped invalid  1 (degenerate_box 1)" in proc.stdout
    ann = load_annotations(bench / "annotations" / "train.json")
    assert len(PriorStore.open(tmp_path / "p.zarr")) == len(ann) - 1
