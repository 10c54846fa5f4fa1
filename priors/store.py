"""The prior store: a Zarr v3 group with one row per ROI (schema: docs/precompute.md, 'The store').

| array       | dtype   | shape     | meaning                                    |
| prior       | float16 | [N, S, S] | prior in [0, 1], covering exactly the box  |
| box         | float32 | [N, 4]    | x1, y1, x2, y2 in image pixels             |
| image_id    | int64   | [N]       | COCO image id                              |
| ann_id      | int64   | [N]       | annotation id, -1 for proposals            |
| category_id | int32   | [N]       | category used for the text condition       |
| source      | uint8   | [N]       | 0 ground truth, 1 proposal                 |
| done        | bool    | [N]       | row written and complete                   |

Rows are chunked along N. The store lives in a local folder or at any URL fsspec opens (`s3://...`;
`priors.location`). Creation renames nothing (object stores cannot): the group is made with the attribute
`creating`, then the arrays and the row metadata are written, then the attributes are replaced by the
store's settings in one write; a store that still says `creating` is refused by readers and started over
by `open_or_create`. Priors are written a whole chunk at a time by one writer, then that chunk's `done`
rows; a writer killed at any point leaves no row marked done whose prior was not written. Every chunk
carries a crc32c checksum (stores made before checksums open as before): a damaged chunk is named with
the command that recomputes it. The group attributes hold every setting that changes a prior; opening
with other settings is refused with a list of the differences. The model is compared by its weights
(`model.weights_sha256`), not by the name it was loaded under.
"""
from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import AisdiffError
from .location import Location, Where
from .store_settings import REQUIRED_SETTINGS

FORMAT = "aisdiff-priors"
VERSION = 1
SOURCE_GT, SOURCE_PROPOSAL = 0, 1
ROW_ARRAYS = {"box": np.float32, "image_id": np.int64, "ann_id": np.int64, "category_id": np.int32,
              "source": np.uint8}
ARRAYS = {"prior": np.float16, **ROW_ARRAYS, "done": np.bool_}
# attributes the store itself manages; every other attribute is a setting
STRUCTURE_ATTRS = ("format", "version", "rows", "chunk_rows", "prior_size")
# the attribute a store has while it is being created (replaced, with the settings, by the last write)
CREATING_ATTR = "creating"
# what `aisdiff precompute` is told to recompute a store's damaged chunks with
RECOMPUTE_FLAG = "--recompute-damaged"
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# settings added after stores were first written, with the value every store made before them used (for
# timestep_spacing: the scheduler's own, "leading" for SD-1.5 and every model this project ships; an older
# store of a model whose scheduler says otherwise needs --overwrite; encoder: the model's VAE)
SETTINGS_ADDED_LATER = {"strength": 1.0, "timestep_spacing": "leading", "encoder": "vae"}


class StoreError(AisdiffError):
    """A prior store that cannot be used as asked (damaged, other settings, other rows)."""


class UnfinishedStoreError(StoreError):
    """A store whose creation did not finish (the job that made it stopped before the last write)."""


class DamagedChunkError(StoreError):
    """Chunks whose bytes do not decode (a checksum mismatch, a truncated object)."""

    def __init__(self, message: str, chunks: dict[int, list[str]] | None = None) -> None:
        super().__init__(message)
        self.chunks = chunks or {}


class StoreFullError(StoreError):
    """The file system holding a store has no space left (or the user's quota is used up)."""


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
    """A prior store in a local folder or on an object store (see the module docstring). Open with `create`,
    `open` or `open_or_create`; writers call `write_chunk` for the chunks they own."""

    def __init__(self, path: Where, mode: str = "r") -> None:
        import zarr

        self.path = Location(path)
        if not self.path.has("zarr.json"):
            raise StoreError(
                f"{self.path}: not a prior store (no zarr.json). Run `aisdiff precompute` to make one.")
        try:
            self.group = zarr.open_group(self.path.zarr_store(read_only=mode == "r"), mode=mode)
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
        self.reset: list[int] = []  # chunks found damaged and reset to be recomputed (`reset_chunks`)

    # -- creation and opening ----------------------------------------------------------------------
    @classmethod
    def create(cls, path: Where, settings: dict[str, Any], rows: Rows, prior_size: int,
               chunk_rows: int = 256, overwrite: bool = False) -> PriorStore:
        """Create a store with its row metadata; the attributes, written last, make it complete."""
        import zarr
        from zarr.codecs import Crc32cCodec, ZstdCodec

        location = Location(path)
        missing = [k for k in REQUIRED_SETTINGS if k not in settings]
        if missing:
            raise ValueError(f"settings lack {', '.join(missing)}")
        if location.exists() and not overwrite:
            raise StoreError(f"{location} already exists; pass overwrite=True (--overwrite) to replace it.")
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        cls.remove(location)
        n = len(rows)
        try:
            group = zarr.create_group(location.zarr_store(read_only=False), overwrite=True,
                                      attributes={"format": FORMAT, CREATING_ATTR: True})
            for name, dtype in ARRAYS.items():
                shape = (n, *_row_shape(name, prior_size))
                arr = group.create_array(name, shape=shape, chunks=(chunk_rows,) + shape[1:], dtype=dtype,
                                         fill_value=False if name == "done" else 0,
                                         compressors=(ZstdCodec(level=0), Crc32cCodec()))
                if name in ROW_ARRAYS and n:
                    arr[:] = getattr(rows, name)
            group.attrs.put(_normalize({"format": FORMAT, "version": VERSION, "rows": n,
                                        "chunk_rows": chunk_rows, "prior_size": prior_size, **settings}))
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
            cls.remove(location)  # (deleting frees space: nothing half-made stays behind)
            raise StoreFullError(
                f"{location}: no space left creating the store ({os.strerror(exc.errno)}); nothing was kept. "
                f"Its {n} rows need about {human_bytes(n * row_bytes(prior_size))}: free that much space (or "
                "raise the quota) and rerun the same command.") from None
        return cls(location, mode="r+")

    @staticmethod
    def remove(path: Where) -> None:
        """Remove a store (nothing if there is none). It is marked unfinished first, so that one whose
        removal is interrupted is never taken for complete."""
        import zarr

        location = Location(path)
        if location.has("zarr.json"):
            try:
                zarr.open_group(location.zarr_store(read_only=False), mode="r+").attrs.put(
                    {"format": FORMAT, CREATING_ATTR: True})
            except Exception:  # noqa: BLE001 (unreadable metadata: removed all the same)
                pass
        location.remove()

    @classmethod
    def open(cls, path: Where, settings: dict[str, Any] | None = None, mode: str = "r") -> PriorStore:
        """Open and validate a store; with `settings`, refuse one made with other settings."""
        store = cls(path, mode=mode)
        if settings is not None:
            store.check_settings(settings)
        return store

    @classmethod
    def open_or_create(cls, path: Where, settings: dict[str, Any], rows: Rows, prior_size: int,
                       chunk_rows: int = 256, overwrite: bool = False,
                       recompute_damaged: bool = False) -> tuple[PriorStore, bool]:
        """Resume a store made with the same settings and rows, or create it (also over an unfinished one);
        with `recompute_damaged`, every chunk is read first and the damaged ones are reset to be computed
        again (`reset_chunks`). Returns (store, resumed)."""
        path = Location(path)
        if overwrite or not path.exists():
            return cls.create(path, settings, rows, prior_size, chunk_rows, overwrite=overwrite), False
        try:
            store = cls.open(path, settings, mode="r+")
        except UnfinishedStoreError:
            return cls.create(path, settings, rows, prior_size, chunk_rows, overwrite=True), False
        if store.prior_size != prior_size:
            raise StoreError(f"{path}: made with prior size {store.prior_size}, requested {prior_size}. "
                             "Pass --overwrite to start over, or choose another --out.")
        if recompute_damaged and len(store) == len(rows):
            store.reset_chunks([chunk for chunk, _ in store.verify()], rows)
        if not store.rows().equals(rows):
            raise StoreError(
                f"{path}: the store's {store.rows_total} rows are not the {len(rows)} ROIs this job "
                "enumerates (other annotations, proposals or --limit). Pass --overwrite to start over, or "
                "choose another --out.")
        return store, True

    def _check_structure(self) -> None:
        if self.attrs.get(CREATING_ATTR):
            raise UnfinishedStoreError(
                f"{self.path}: an unfinished prior store: the job that created it stopped before it was "
                "complete. Rerun the same `aisdiff precompute` command: it starts the store over.")
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

    def check_annotations(self, ann_file: str | os.PathLike) -> None:
        """Refuse a store made from another annotation file than `ann_file` (the sha256 the store
        records): its rows would be another dataset's, or the file changed since, and row ids could still
        match."""
        from .annotations import sha256_file

        made, now = self.attrs.get("annotations"), sha256_file(ann_file)
        if made is not None and made != now:
            raise StoreError(
                f"{self.path} was made from another annotation file than {ann_file} (sha256 {made[:12]}, "
                f"this file {now[:12]}): the store belongs to another dataset, or the file changed since. "
                f"Point prior_store at the store made from this file, or remake it: "
                f"{self.precompute_command('--overwrite', ann=ann_file)}.")

    def precompute_command(self, flag: str, ann: str | os.PathLike = "ANN") -> str:
        """The `aisdiff precompute` command that remakes or repairs this store (for messages)."""
        model = self.attrs.get("model")
        model_id = str(model.get("id")) if isinstance(model, dict) else "MODEL"
        return (f"aisdiff precompute --ann {ann} --images IMAGES --out {self.path} --model {model_id} "
                f"--dtype {self.attrs.get('dtype', 'fp32')} {flag} (and the store's other settings)")

    @property
    def has_checksums(self) -> bool:
        """Whether the store's chunks carry crc32c checksums (stores made before them do not)."""
        return any(type(codec).__name__ == "Crc32cCodec" for codec in self.group["prior"].compressors)

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
        try:
            self.group["prior"][sl] = priors.astype(np.float16)
            self.group["done"][sl] = True
        except OSError as exc:
            if exc.errno not in NO_SPACE:
                raise
            raise self._full_error(chunk, exc) from None

    def _full_error(self, chunk: int, exc: OSError) -> StoreFullError:
        """The paragraph for a write that found no space: what the store holds, what the rest needs."""
        done, size = int(self.done().sum()), self.size_bytes()
        left = self.rows_total - done
        per_row = self.bytes_per_row()
        return StoreFullError(
            f"{self.path}: no space left writing chunk {chunk} ({os.strerror(exc.errno)}). The store "
            f"holds {human_bytes(size)} with {done} of {self.rows_total} rows done; the {left} rows left "
            f"need about {human_bytes(left * per_row)} more. Free that much space (or raise the quota) and "
            "rerun the same command: it resumes from the rows done.")

    def bytes_per_row(self) -> float:
        """Bytes a row's prior takes on storage (the row metadata is written when the store is made):
        measured from the rows done, else the prior's uncompressed size."""
        done = int(self.done().sum())
        if done:
            return (self.path.size_bytes("prior") + self.path.size_bytes("done")) / done
        return row_bytes(self.prior_size, arrays=("prior", "done"))

    # -- reading -----------------------------------------------------------------------------------
    def rows(self, index: slice | np.ndarray | None = None) -> Rows:
        sel = slice(None) if index is None else index
        return Rows(**{name: self._read(name, sel) for name in ROW_ARRAYS})

    def _read(self, name: str, sel) -> np.ndarray:
        arr = self.group[name]
        try:
            if isinstance(sel, slice):
                return arr[sel]
            return arr.get_orthogonal_selection((np.asarray(sel, dtype=np.int64),)
                                                + (slice(None),) * (arr.ndim - 1))
        except (FileNotFoundError, PermissionError):
            raise
        except Exception:  # noqa: BLE001 (a chunk that does not decode: name it, else raise as it was)
            rows = np.arange(self.rows_total)[sel]
            chunks = sorted({int(r) // self.chunk_rows for r in np.atleast_1d(rows)})
            damaged = {c: problems for c, problems in self.verify(chunks, arrays=(name,))}
            if not damaged:
                raise
            raise self.damaged_error(damaged) from None

    def verify(self, chunks: list[int] | None = None,
               arrays: tuple[str, ...] = tuple(ARRAYS)) -> Iterator[tuple[int, list[str]]]:
        """Read every chunk of `arrays` (all chunks, or `chunks`); yield (chunk, problems) for each chunk of
        which some array does not decode (checksum mismatch, truncated or unreadable bytes)."""
        for chunk in range(self.num_chunks) if chunks is None else chunks:
            sl = self.chunk_slice(chunk)
            problems = []
            for name in arrays:
                try:
                    self.group[name][sl]
                except Exception as exc:  # noqa: BLE001 (every decoding failure is damage)
                    problems.append(f"{name}: {_first_line(exc)}")
            if problems:
                yield chunk, problems

    def damaged_error(self, damaged: dict[int, list[str]]) -> DamagedChunkError:
        """The error for damaged chunks: which rows, which arrays, and the command that recomputes them."""
        lines = [f"chunk {c} (rows {self.chunk_slice(c).start}-{self.chunk_slice(c).stop - 1}): "
                 + "; ".join(problems) for c, problems in sorted(damaged.items())]
        return DamagedChunkError(
            f"{self.path}: {len(damaged)} damaged chunk(s):\n  " + "\n  ".join(lines)
            + f"\nRecompute them: {self.precompute_command(RECOMPUTE_FLAG)}. `aisdiff inspect --verify "
            f"{self.path}` lists every damaged chunk.", damaged)

    def reset_chunks(self, chunks: list[int], rows: Rows) -> None:
        """Rewrite the row metadata of `chunks` from `rows` (the job's rows) and mark them not done, so that
        the job recomputes them (the repair of damaged chunks)."""
        for chunk in chunks:
            sl = self.chunk_slice(chunk)
            self.group["done"][sl] = False
            for name in ROW_ARRAYS:
                self.group[name][sl] = getattr(rows, name)[sl]
            self.reset.append(chunk)

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

        return da.from_zarr(self.path.url, component="prior")

    def size_bytes(self) -> int:
        return self.path.size_bytes()

    def __len__(self) -> int:
        return self.rows_total

    def __repr__(self) -> str:
        return f"PriorStore({str(self.path)!r}, rows={self.rows_total}, chunk_rows={self.chunk_rows})"


def row_bytes(prior_size: int, arrays: tuple[str, ...] = tuple(ARRAYS)) -> int:
    """Uncompressed bytes of one row of `arrays` (all of them: a whole row), the estimate of what a row
    takes before any is written (compressed priors take less, file-system blocks can take more)."""
    return sum(np.dtype(ARRAYS[name]).itemsize * int(np.prod(_row_shape(name, prior_size)))
               for name in arrays)


def _row_shape(name: str, prior_size: int) -> tuple[int, ...]:
    """The shape of one row of array `name`."""
    return {"prior": (prior_size, prior_size), "box": (4,)}.get(name, ())


def _first_line(exc: BaseException) -> str:
    """What a chunk's decoding error says, in a few words."""
    text = str(exc).strip().partition("\n")[0] or type(exc).__name__
    if "checksum do not match" in text:
        return "crc32c checksum mismatch"
    return text if len(text) < 160 else text[:157] + "..."


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KB'."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
