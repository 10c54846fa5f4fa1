"""Streaming DiffSP inputs for the chunks one process owns, decoded in DataLoader workers.

Items are (chunk, row indices, RoiBatch) with at most `batch_size` ROIs, never spanning two chunks;
each image is decoded once per chunk. Workers split the chunks between them, so image decoding and
cropping overlap the model's compute; nothing holds more than a few batches in memory.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from priors.annotations import AmodalAnnotations
from priors.diffsp import RoiBatch
from priors.proposals import Proposals

from .rois import RoiTable, image_rois


def _cat(parts: list[RoiBatch]) -> RoiBatch:
    if len(parts) == 1:
        return parts[0]
    return RoiBatch(*(torch.cat([getattr(p, f) for p in parts])
                      for f in ("images", "visible", "occluder", "boxes")),
                    sum((p.categories for p in parts), []), sum((p.seeds for p in parts), []))


class ChunkRois(IterableDataset):
    """DiffSP inputs, batch by batch, for `chunks` (chunk index -> row slice)."""

    def __init__(self, annotations: AmodalAnnotations, proposals: Proposals | None, table: RoiTable,
                 chunks: list[tuple[int, slice]], resolution: int, context: float, batch_size: int) -> None:
        self.annotations, self.proposals, self.table = annotations, proposals, table
        self.chunks, self.resolution, self.context, self.batch_size = chunks, resolution, context, batch_size

    def __iter__(self) -> Iterator[tuple[int, np.ndarray, RoiBatch]]:
        worker = get_worker_info()
        chunks = self.chunks if worker is None else self.chunks[worker.id::worker.num_workers]
        for chunk, rows in chunks:
            yield from self._chunk_batches(chunk, np.arange(rows.start, rows.stop))

    def _chunk_batches(self, chunk: int, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray, RoiBatch]]:
        image_ids = self.table.rows.image_id[rows]
        starts = np.flatnonzero(np.r_[True, image_ids[1:] != image_ids[:-1]])  # rows are sorted by image
        pending: list[RoiBatch] = []
        pending_rows: list[np.ndarray] = []
        for start, stop in zip(starts, [*starts[1:], len(rows)], strict=True):
            group = rows[start:stop]
            rois = image_rois(self.annotations, self.proposals, self.table, group, self.resolution,
                              self.context)
            for i in range(0, len(group), self.batch_size):
                pending.append(rois[i:i + self.batch_size])
                pending_rows.append(group[i:i + self.batch_size])
                while sum(len(p) for p in pending) >= self.batch_size:
                    batch, idx = _cat(pending), np.concatenate(pending_rows)
                    yield chunk, idx[:self.batch_size], batch[:self.batch_size]
                    rest = len(idx) - self.batch_size
                    pending = [batch[self.batch_size:]] if rest else []
                    pending_rows = [idx[self.batch_size:]] if rest else []
        if pending:
            yield chunk, np.concatenate(pending_rows), _cat(pending)


def roi_loader(dataset: ChunkRois, workers: int) -> DataLoader:
    """A DataLoader over ready-made batches (batch_size=None), decoding in `workers` processes."""
    return DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=2 if workers else None,
                      persistent_workers=False)
