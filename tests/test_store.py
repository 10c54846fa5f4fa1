"""The Zarr prior store: schema, round trip, resume, settings checks, damage detection, dask access."""
from __future__ import annotations

import json
import shutil

import dask.array
import numpy as np
import pytest
import zarr
from helpers import STORE_SETTINGS as SETTINGS
from helpers import store_rows

from priors.store import ARRAYS, PriorStore, StoreError


def _priors(n: int, s: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, s, s)).astype(np.float32)


def test_schema_matches_the_design(tmp_path):
    store = PriorStore.create(tmp_path / "p.zarr", SETTINGS, store_rows(), prior_size=6, chunk_rows=4)
    group = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    shapes = {name: (tuple(group[name].shape), np.dtype(group[name].dtype)) for name in ARRAYS}
    assert shapes == {"prior": ((10, 6, 6), np.dtype("float16")), "box": ((10, 4), np.dtype("float32")),
                      "image_id": ((10,), np.dtype("int64")), "ann_id": ((10,), np.dtype("int64")),
                      "category_id": ((10,), np.dtype("int32")), "source": ((10,), np.dtype("uint8")),
                      "done": ((10,), np.dtype("bool"))}
    assert all(group[name].chunks[0] == 4 for name in ARRAYS)
    attrs = dict(group.attrs)
    assert attrs["format"] == "aisdiff-priors" and attrs["version"] == 1 and attrs["prior_size"] == 6
    assert {k: attrs[k] for k in SETTINGS} == SETTINGS
    assert json.loads((tmp_path / "p.zarr" / "zarr.json").read_text())["zarr_format"] == 3
    assert store.num_chunks == 3 and not store.done().any()


def test_round_trip_by_chunk_row_and_image(tmp_path):
    rows = store_rows()
    store = PriorStore.create(tmp_path / "p.zarr", SETTINGS, rows, prior_size=6, chunk_rows=4)
    priors = _priors(10)
    for chunk in range(store.num_chunks):
        store.write_chunk(chunk, priors[store.chunk_slice(chunk)])
    again = PriorStore.open(tmp_path / "p.zarr", SETTINGS)
    assert again.done().all() and again.pending_chunks() == []
    np.testing.assert_allclose(again.priors(slice(None)), priors, atol=5e-4)  # float16 storage
    assert again.rows().equals(rows)
    assert again.rows_of_image(3).tolist() == [5, 6, 7, 8]
    assert again.rows_of_image(4).tolist() == []
    np.testing.assert_allclose(again.priors(again.rows_of_image(2)), priors[3:5], atol=5e-4)
    assert again.row_of(3, 107) == 7 and again.row_of(3, 999) is None
    lazy = dask.array.from_zarr(str(tmp_path / "p.zarr"), component="prior")
    assert lazy.shape == (10, 6, 6) and lazy.chunks[0] == (4, 4, 2)
    np.testing.assert_array_equal(lazy.compute(), again.priors(slice(None)).astype(np.float16))
    assert float(again.dask_priors().mean().compute()) == pytest.approx(float(priors.mean()), abs=1e-3)


def test_resume_skips_done_chunks(tmp_path):
    store, resumed = PriorStore.open_or_create(tmp_path / "p.zarr", SETTINGS, store_rows(), 6, chunk_rows=4)
    assert not resumed and store.pending_chunks() == [0, 1, 2]
    store.write_chunk(1, _priors(4))
    store, resumed = PriorStore.open_or_create(tmp_path / "p.zarr", SETTINGS, store_rows(), 6, chunk_rows=4)
    assert resumed and store.pending_chunks() == [0, 2]
    assert store.done().tolist() == [False] * 4 + [True] * 4 + [False] * 2
    store, resumed = PriorStore.open_or_create(tmp_path / "p.zarr", SETTINGS, store_rows(), 6, 4,
                                               overwrite=True)
    assert not resumed and store.pending_chunks() == [0, 1, 2]


def test_other_settings_are_refused_with_each_difference(tmp_path):
    PriorStore.create(tmp_path / "p.zarr", SETTINGS, store_rows(), prior_size=6, chunk_rows=4)
    other = {**SETTINGS, "steps": 5, "model": {"id": "runwayml/sd-inpaint", "weights_sha256": "ef" * 32}}
    with pytest.raises(StoreError) as err:
        PriorStore.open_or_create(tmp_path / "p.zarr", other, store_rows(), 6, chunk_rows=4)
    text = str(err.value)
    assert "made with other settings" in text and "--overwrite" in text
    assert "steps: store has 10, requested 5" in text
    assert (f"model: store has 'tiny' (weights sha256 {'ab' * 32}), requested 'runwayml/sd-inpaint' "
            f"(weights sha256 {'ef' * 32}): other weights") in text
    assert "tau" not in text
    with pytest.raises(StoreError, match="prior size 6, requested 8"):
        PriorStore.open_or_create(tmp_path / "p.zarr", SETTINGS, store_rows(), 8, chunk_rows=4)
    with pytest.raises(StoreError, match="10 rows are not the 9 ROIs"):
        PriorStore.open_or_create(tmp_path / "p.zarr", SETTINGS, store_rows(9), 6, chunk_rows=4)
    with pytest.raises(StoreError, match="already exists"):
        PriorStore.create(tmp_path / "p.zarr", SETTINGS, store_rows(), prior_size=6)


@pytest.mark.parametrize("name", ["stable-diffusion-v1-5/stable-diffusion-inpainting",
                                  "/models/sd-inpainting", "/hf/hub/models--org--name/snapshots/0123abcd"])
def test_the_same_weights_under_another_name_are_the_same_model(tmp_path, name):
    PriorStore.create(tmp_path / "p.zarr", SETTINGS, store_rows(), prior_size=6, chunk_rows=4)
    renamed = {**SETTINGS, "model": {"id": name, "weights_sha256": SETTINGS["model"]["weights_sha256"]}}
    store, resumed = PriorStore.open_or_create(tmp_path / "p.zarr", renamed, store_rows(), 6, chunk_rows=4)
    assert resumed and store.settings["model"] == SETTINGS["model"]  # (it keeps the name it was made with)


def test_a_store_older_than_a_setting_counts_as_made_with_its_default(tmp_path):
    old = {k: v for k, v in SETTINGS.items() if k != "strength"}  # (written before `strength` existed)
    PriorStore.create(tmp_path / "p.zarr", old, store_rows(), prior_size=6, chunk_rows=4)
    path = tmp_path / "p.zarr"
    PriorStore.open_or_create(path, {**old, "strength": 1.0}, store_rows(), 6, chunk_rows=4)
    with pytest.raises(StoreError, match="strength: store has 1.0, requested 0.5"):
        PriorStore.open_or_create(path, {**old, "strength": 0.5}, store_rows(), 6, chunk_rows=4)
    PriorStore.open_or_create(path, {**old, "timestep_spacing": "leading"}, store_rows(), 6, chunk_rows=4)
    with pytest.raises(StoreError, match="timestep_spacing: store has 'leading', requested 'trailing'"):
        PriorStore.open_or_create(path, {**old, "timestep_spacing": "trailing"}, store_rows(), 6,
                                  chunk_rows=4)


def _damage(path, how):
    group = zarr.open_group(str(path), mode="r+")
    if how == "missing array":
        shutil.rmtree(path / "done")
    elif how == "length":
        group["ann_id"].resize((7,))
    elif how == "attribute":
        del group.attrs["steps"]
    elif how == "format":
        group.attrs["format"] = "something-else"
    elif how == "dtype":
        del group["source"]
        group.create_array("source", shape=(10,), chunks=(4,), dtype="int32")


@pytest.mark.parametrize("how, message", [
    ("missing array", "missing arrays: done"),
    ("length", "arrays disagree in length .*ann_id 7"),
    ("attribute", "missing attributes: steps"),
    ("format", "attribute format is 'something-else'"),
    ("dtype", "array source has dtype int32, expected uint8"),
])
def test_damaged_stores_are_reported_never_used(tmp_path, how, message):
    path = tmp_path / "p.zarr"
    PriorStore.create(path, SETTINGS, store_rows(), prior_size=6, chunk_rows=4)
    _damage(path, how)
    with pytest.raises(StoreError, match=f"damaged prior store: {message}"):
        PriorStore.open(path)
    with pytest.raises(StoreError, match="damaged"):
        PriorStore.open_or_create(path, SETTINGS, store_rows(), 6, chunk_rows=4)


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not a prior store"):
        PriorStore.open(tmp_path)


def test_write_chunk_checks_its_input(tmp_path):
    store = PriorStore.create(tmp_path / "p.zarr", SETTINGS, store_rows(), prior_size=6, chunk_rows=4)
    with pytest.raises(ValueError, match=r"needs priors of shape \(2, 6, 6\)"):
        store.write_chunk(2, _priors(4))
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        store.write_chunk(0, _priors(4) + 1)
    with pytest.raises(IndexError):
        store.write_chunk(3, _priors(4))
    assert not store.done().any()


def test_creation_leaves_no_partial_store(tmp_path):
    with pytest.raises(ValueError, match="settings lack annotations"):
        PriorStore.create(tmp_path / "p.zarr", {k: v for k, v in SETTINGS.items() if k != "annotations"},
                          store_rows(), 6)
    assert list(tmp_path.iterdir()) == []
    PriorStore.create(tmp_path / "p.zarr", SETTINGS, store_rows(), prior_size=6)
    assert [p.name for p in tmp_path.iterdir()] == ["p.zarr"]
