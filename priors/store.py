"""The prior store: a Zarr v3 group with one row per ROI (schema: docs/precompute.md, 'The store').

| array       | dtype   | shape     | meaning                                    |
| prior       | float16 | [N, S, S] | prior in [0, 1], covering exactly the box  |
| box         | float32 | [N, 4]    | x1, y1, x2, y2 in image pixels             |
| image_id    | int64   | [N]       | COCO image id                              |
| ann_id      | int64   | [N]       | annotation id, -1 for proposals            |
| category_id | int32   | [N]       | category used for the text condition       |
| source      | uint8   | [N]       | 0 ground truth, 1 proposal                 |
| done        | bool    | [N]       | row written and complete                   |

Rows are chunked along N. Row metadata is written when the store is created, which happens in a
temporary folder renamed into place, so a store that exists is never half-created. Priors are written
a whole chunk at a time by one writer, then that chunk's `done` rows; a writer killed at any point
leaves no row marked done whose prior was not written. The group attributes hold every setting that
changes a prior; opening with other settings is refused with a list of the differences. The model is
compared by its weights (`model.weights_sha256`), not by the name it was loaded under.
"""
from __future__ import annotations

import json
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import AisdiffError

FORMAT = "aisdiff-priors"
VERSION = 1
SOURCE_GT, SOURCE_PROPOSAL = 0, 1
ROW_ARRAYS = {"box": np.float32, "image_id": np.int64, "ann_id": np.int64, "category_id": np.int32,
              "source": np.uint8}
ARRAYS = {"prior": np.float16, **ROW_ARRAYS, "done": np.bool_}
# attributes the store itself manages; every other attribute is a setting
STRUCTURE_ATTRS = ("format", "version", "rows", "chunk_rows", "prior_size")
# settings added after stores were first written, with the value every store made before them used (for
# timestep_spacing: the scheduler's own, "leading" for SD-1.5 and every model this project ships; an older
# store of a model whose scheduler says otherwise needs --overwrite; encoder: the model's VAE)
SETTINGS_ADDED_LATER = {"strength": 1.0, "timestep_spacing": "leading", "encoder": "vae"}
REQUIRED_SETTINGS = ("model", "steps", "tau", "self_res", "cross_res", "prompt", "seed", "context",
                     "annotations", "proposals")


class StoreError(AisdiffError):
    """A prior store that cannot be used as asked (damaged, other settings, other rows)."""


@dataclass
class Rows:
    """The row metadata of a store, in row order."""

    box: np.ndarray
    image_id: np.ndarray
    ann_id: np.ndarray
    category_id: np.ndarray
    source: np.ndarray

    def __post_init__(self) -> None:
        for name, dtype in ROW_ARRAYS.items():
            setattr(self, name, np.asarray(getattr(self, name), dtype=dtype))
        self.box = self.box.reshape(-1, 4)
        lengths = {name: len(getattr(self, name)) for name in ROW_ARRAYS}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"row arrays differ in length: {lengths}")

    def __len__(self) -> int:
        return len(self.image_id)

    def equals(self, other: Rows) -> bool:
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in ROW_ARRAYS)


def _normalize(value: Any) -> Any:
    """JSON round trip, so settings compare the same way before and after being stored."""
    return json.loads(json.dumps(value))


def model_difference(stored: Any, wanted: Any) -> list[str]:
    """The line saying that two model identities ({"id", "weights_sha256"}) name different weights, or none.
    A model is its weights: a hub id, a local folder and a cache snapshot of the same weights are one
    model."""
    if stored == wanted:
        return []
    if (isinstance(stored, dict) and isinstance(wanted, dict)
            and stored.get("weights_sha256") is not None
            and stored.get("weights_sha256") == wanted.get("weights_sha256")):
        return []

    def describe(identity: Any) -> str:
        if not isinstance(identity, dict):
            return repr(identity)
        return f"{identity.get('id')!r} (weights sha256 {identity.get('weights_sha256')})"

    return [f"model: store has {describe(stored)}, requested {describe(wanted)}: other weights"]


def settings_differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """One line per setting that differs between a store's attributes and the requested settings."""
    stored, wanted = _normalize(stored), _normalize(wanted)
    for settings in (stored, wanted):  # (a store older than a setting was made with its default)
        for key, value in SETTINGS_ADDED_LATER.items():
            settings.setdefault(key, value)
    lines = []
    for key in sorted(set(stored) | set(wanted)):
        if key in STRUCTURE_ATTRS:
            continue
        if key == "model":
            lines += model_difference(stored.get(key), wanted.get(key))
        elif stored.get(key, "<missing>") != wanted.get(key, "<missing>"):
            lines.append(f"{key}: store has {stored.get(key, '<missing>')!r}, requested "
                         f"{wanted.get(key, '<missing>')!r}")
    return lines


class PriorStore:
    """A prior store on the local file system (see the module docstring). Open with `create`, `open` or
    `open_or_create`; writers call `write_chunk` for the chunks they own."""

    def __init__(self, path: str | Path, mode: str = "r") -> None:
        import zarr

        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise StoreError(
                f"{self.path}: not a prior store (no zarr.json). Run `aisdiff precompute` to make one.")
        try:
            self.group = zarr.open_group(str(self.path), mode=mode)
        except Exception as exc:  # zarr raises several types for unreadable metadata
            raise StoreError(
                f"{self.path}: damaged prior store: cannot open the Zarr group ({exc}).") from None
        self.attrs: dict[str, Any] = dict(self.group.attrs)
        self._check_structure()
        self.rows_total = int(self.attrs["rows"])
        self.chunk_rows = int(self.attrs["chunk_rows"])
        self.prior_size = int(self.attrs["prior_size"])
        self._image_index: dict[int, np.ndarray] | None = None
        self._row_lookup: dict[tuple[int, int], int] | None = None

    # -- creation and opening ----------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, settings: dict[str, Any], rows: Rows, prior_size: int,
               chunk_rows: int = 256, overwrite: bool = False) -> PriorStore:
        """Create a store with its row metadata (in a temporary folder renamed into place)."""
        import zarr

        path = Path(path)
        missing = [k for k in REQUIRED_SETTINGS if k not in settings]
        if missing:
            raise ValueError(f"settings lack {', '.join(missing)}")
        if path.exists() and not overwrite:
            raise StoreError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it.")
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        n = len(rows)
        tmp = path.with_name(f".{path.name}.creating-{uuid.uuid4().hex[:8]}")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        try:
            group = zarr.open_group(str(tmp), mode="w")
            for name, dtype in ARRAYS.items():
                shape = {"prior": (n, prior_size, prior_size), "box": (n, 4)}.get(name, (n,))
                chunks = (chunk_rows,) + shape[1:]
                arr = group.create_array(name, shape=shape, chunks=chunks, dtype=dtype,
                                         fill_value=False if name == "done" else 0)
                if name in ROW_ARRAYS and n:
                    arr[:] = getattr(rows, name)
            group.attrs.update(_normalize({"format": FORMAT, "version": VERSION, "rows": n,
                                           "chunk_rows": chunk_rows, "prior_size": prior_size, **settings}))
            if path.exists():
                shutil.rmtree(path)
            tmp.rename(path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(path, mode="r+")

    @classmethod
    def open(cls, path: str | Path, settings: dict[str, Any] | None = None, mode: str = "r") -> PriorStore:
        """Open and validate a store; with `settings`, refuse one made with other settings."""
        store = cls(path, mode=mode)
        if settings is not None:
            store.check_settings(settings)
        return store

    @classmethod
    def open_or_create(cls, path: str | Path, settings: dict[str, Any], rows: Rows, prior_size: int,
                       chunk_rows: int = 256, overwrite: bool = False) -> tuple[PriorStore, bool]:
        """Resume a store made with the same settings and rows, or create it; returns (store, resumed)."""
        path = Path(path)
        if overwrite or not path.exists():
            return cls.create(path, settings, rows, prior_size, chunk_rows, overwrite=overwrite), False
        store = cls.open(path, settings, mode="r+")
        if store.prior_size != prior_size:
            raise StoreError(f"{path}: made with prior size {store.prior_size}, requested {prior_size}. "
                             "Pass --overwrite to start over, or choose another --out.")
        if not store.rows().equals(rows):
            raise StoreError(
                f"{path}: the store's {store.rows_total} rows are not the {len(rows)} ROIs this job "
                "enumerates (other annotations, proposals or --limit). Pass --overwrite to start over, or "
                "choose another --out.")
        return store, True

    def _check_structure(self) -> None:
        problems = []
        if self.attrs.get("format") != FORMAT:
            problems.append(f"attribute format is {self.attrs.get('format')!r}, expected {FORMAT!r}")
        elif self.attrs.get("version") != VERSION:
            problems.append(f"version {self.attrs.get('version')!r} is not the supported {VERSION}")
        missing = [k for k in (*STRUCTURE_ATTRS, *REQUIRED_SETTINGS) if k not in self.attrs]
        if missing:
            problems.append(f"missing attributes: {', '.join(missing)}")
        present = {name for name, _ in self.group.arrays()}
        absent = [name for name in ARRAYS if name not in present]
        if absent:
            problems.append(f"missing arrays: {', '.join(absent)}")
        if not problems:
            problems += self._array_problems()
        if problems:
            raise StoreError(f"{self.path}: damaged prior store: {'; '.join(problems)}. It cannot be used as "
                             "it is: rerun the job with --overwrite (or another --out) to rebuild it.")

    def _array_problems(self) -> list[str]:
        rows, s = int(self.attrs["rows"]), int(self.attrs["prior_size"])
        problems = []
        for name, dtype in ARRAYS.items():
            arr = self.group[name]
            expected = {"prior": (rows, s, s), "box": (rows, 4)}.get(name, (rows,))
            if tuple(arr.shape) != expected:
                problems.append(f"array {name} has shape {tuple(arr.shape)}, expected {expected}")
            if np.dtype(arr.dtype) != np.dtype(dtype):
                problems.append(f"array {name} has dtype {arr.dtype}, expected {np.dtype(dtype)}")
            if arr.chunks[0] != int(self.attrs["chunk_rows"]):
                problems.append(
                    f"array {name} is chunked by {arr.chunks[0]} rows, expected {self.attrs['chunk_rows']}")
        lengths = {name: self.group[name].shape[0] for name in ARRAYS}
        if len(set(lengths.values())) > 1:
            problems.insert(
                0, f"arrays disagree in length ({', '.join(f'{k} {v}' for k, v in lengths.items())})")
        return problems

    def check_settings(self, settings: dict[str, Any]) -> None:
        diffs = settings_differences({k: v for k, v in self.attrs.items()}, settings)
        if diffs:
            raise StoreError(f"{self.path} was made with other settings:\n  " + "\n  ".join(diffs) +
                             "\nPass --overwrite to start over with the new settings, or choose another "
                             "--out.")

    def check_annotations(self, ann_file: str | Path) -> None:
        """Refuse a store made from another annotation file than `ann_file` (the sha256 the store
        records): its rows would be another dataset's, or the file changed since, and row ids could still
        match."""
        from .annotations import sha256_file

        made, now = self.attrs.get("annotations"), sha256_file(ann_file)
        if made is not None and made != now:
            raise StoreError(
                f"{self.path} was made from another annotation file than {ann_file} (sha256 {made[:12]}, "
                f"this file {now[:12]}): the store belongs to another dataset, or the file changed since. "
                f"Point prior_store at the store made from this file, or remake it: aisdiff precompute --ann "
                f"{ann_file} --images IMAGES --out {self.path} --model {self._model_id()} --dtype "
                f"{self.attrs.get('dtype', 'fp32')} --overwrite (and the store's other settings).")

    def _model_id(self) -> str:
        """The name the store's model was loaded under (for commands in messages)."""
        model = self.attrs.get("model")
        return str(model.get("id")) if isinstance(model, dict) else "MODEL"

    @property
    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in self.attrs.items() if k not in STRUCTURE_ATTRS}

    # -- chunks and writing ------------------------------------------------------------------------
    @property
    def num_chunks(self) -> int:
        return -(-self.rows_total // self.chunk_rows)

    def chunk_slice(self, chunk: int) -> slice:
        if not 0 <= chunk < self.num_chunks:
            raise IndexError(f"chunk {chunk} out of range (store has {self.num_chunks})")
        return slice(chunk * self.chunk_rows, min((chunk + 1) * self.chunk_rows, self.rows_total))

    def done(self, index: slice | np.ndarray | list[int] | None = None) -> np.ndarray:
        """The `done` flags of all rows, or of the given rows."""
        sel = slice(None) if index is None else (index if isinstance(index, slice) else np.asarray(index))
        return np.asarray(self._read("done", sel), dtype=bool)

    def pending_chunks(self) -> list[int]:
        """Chunks with at least one row not done (a chunk is written whole, so: not written)."""
        done = self.done()
        return [c for c in range(self.num_chunks) if not done[self.chunk_slice(c)].all()]

    def write_chunk(self, chunk: int, priors: np.ndarray) -> None:
        """Write the priors of one whole chunk, then mark its rows done."""
        sl = self.chunk_slice(chunk)
        priors = np.asarray(priors)
        expected = (sl.stop - sl.start, self.prior_size, self.prior_size)
        if priors.shape != expected:
            raise ValueError(f"chunk {chunk} needs priors of shape {expected}, got {priors.shape}")
        if not np.isfinite(priors).all() or priors.min(initial=0) < 0 or priors.max(initial=0) > 1:
            raise ValueError(f"chunk {chunk}: priors must be finite and in [0, 1]")
        self.group["prior"][sl] = priors.astype(np.float16)
        self.group["done"][sl] = True

    # -- reading -----------------------------------------------------------------------------------
    def rows(self, index: slice | np.ndarray | None = None) -> Rows:
        sel = slice(None) if index is None else index
        return Rows(**{name: self._read(name, sel) for name in ROW_ARRAYS})

    def _read(self, name: str, sel) -> np.ndarray:
        arr = self.group[name]
        if isinstance(sel, slice):
            return arr[sel]
        return arr.get_orthogonal_selection((np.asarray(sel, dtype=np.int64),)
                                            + (slice(None),) * (arr.ndim - 1))

    def priors(self, index: slice | np.ndarray | list[int]) -> np.ndarray:
        """Priors of the given rows as float32 [k, S, S]."""
        return self._read("prior",
                          index if isinstance(index, slice) else np.asarray(index)).astype(np.float32)

    def rows_of_image(self, image_id: int) -> np.ndarray:
        """Row indices of an image (an index over `image_id`, built once on first use)."""
        if self._image_index is None:
            ids = self._read("image_id", slice(None))
            order = np.argsort(ids, kind="stable")
            uniq, starts = np.unique(ids[order], return_index=True)
            bounds = list(starts[1:]) + [len(ids)]
            self._image_index = {int(u): order[s:e] for u, s, e in zip(uniq, starts, bounds, strict=True)}
        return self._image_index.get(int(image_id), np.empty(0, dtype=np.int64))

    def row_of(self, image_id: int, ann_id: int) -> int | None:
        """The row of a ground-truth annotation, or None (proposal rows are found by image and box)."""
        if self._row_lookup is None:
            rows = self.rows()
            gt = np.flatnonzero(rows.source == SOURCE_GT)
            self._row_lookup = {(int(rows.image_id[r]), int(rows.ann_id[r])): int(r) for r in gt}
        return self._row_lookup.get((int(image_id), int(ann_id)))

    def dask_priors(self):
        """The `prior` array as a dask array (lazy, chunked like the store)."""
        import dask.array as da

        return da.from_zarr(str(self.path), component="prior")

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def __len__(self) -> int:
        return self.rows_total

    def __repr__(self) -> str:
        return f"PriorStore({str(self.path)!r}, rows={self.rows_total}, chunk_rows={self.chunk_rows})"
