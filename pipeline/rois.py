"""The ROIs of a precompute job, in their store row order, and DiffSP inputs cut from their images.

Rows are every valid ground-truth instance and, when a proposals file is given, every valid proposal,
sorted by (image id, source, annotation id or proposal index): a rerun of the same job maps every ROI to
the same row. Each ROI's noise seed comes from the job seed and its identity: the annotation id of a
ground-truth ROI, the box of a proposal (so a detection computed on the fly shares its proposal's noise).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from priors import masks
from priors.annotations import AmodalAnnotations
from priors.diffsp import RoiBatch, prepare_rois
from priors.identity import gt_roi_seed, proposal_roi_seed
from priors.images import read_image
from priors.proposals import Proposals
from priors.store import SOURCE_GT, SOURCE_PROPOSAL, Rows


@dataclass
class RoiTable:
    """Store rows plus what is needed to compute them: `key` is the annotation id of a ground-truth row
    and the proposal index of a proposal row."""

    rows: Rows
    key: np.ndarray
    seeds: list[int]

    def __len__(self) -> int:
        return len(self.rows)


def enumerate_rois(annotations: AmodalAnnotations, proposals: Proposals | None, seed: int,
                   limit: int | None = None, ground_truth: bool = True) -> RoiTable:
    """The store's rows: every ground-truth instance (unless not `ground_truth`) and every proposal, by
    image; with their DiffSP seeds."""
    entries = ([(i.image_id, SOURCE_GT, i.ann_id, i.amodal_box, i.category_id) for i in annotations]
               if ground_truth else [])
    if proposals is not None:
        entries += [(p.image_id, SOURCE_PROPOSAL, p.index, p.box, p.category_id) for p in proposals]
    entries.sort(key=lambda e: (e[0], e[1], e[2]))
    if limit is not None:
        entries = entries[:limit]
    n = len(entries)
    image_id = np.array([e[0] for e in entries], dtype=np.int64)
    source = np.array([e[1] for e in entries], dtype=np.uint8)
    key = np.array([e[2] for e in entries], dtype=np.int64)
    rows = Rows(box=np.array([e[3] for e in entries], dtype=np.float32).reshape(n, 4), image_id=image_id,
                ann_id=np.where(source == SOURCE_GT, key, -1), category_id=[e[4] for e in entries],
                source=source)
    seeds = [gt_roi_seed(seed, i, k) if s == SOURCE_GT else proposal_roi_seed(seed, i, b)
             for i, s, k, b in zip(image_id, source, key, rows.box, strict=True)]
    return RoiTable(rows=rows, key=key, seeds=seeds)


def image_rois(annotations: AmodalAnnotations, proposals: Proposals | None, table: RoiTable,
               row_indices: np.ndarray, resolution: int, context: float) -> RoiBatch:
    """DiffSP inputs for rows that all belong to one image (the image is decoded once)."""
    image_id = int(table.rows.image_id[row_indices[0]])
    info = annotations.images[image_id]
    image = read_image(annotations.image_path(image_id), (info.height, info.width)).float() / 255
    visible, occluder = [], []
    gt_occluders = proposal_occluders = None
    for r in row_indices:
        key = int(table.key[r])
        if table.rows.source[r] == SOURCE_GT:
            if gt_occluders is None:
                gt_occluders = annotations.occluder_rles(image_id)
            visible.append(annotations.instance(key).visible_rle)
            occluder.append(gt_occluders[key])
        else:
            if proposal_occluders is None:
                proposal_occluders = proposals.occluder_rles(image_id, info.height, info.width)
            visible.append(proposals.get(key).visible_rle)
            occluder.append(proposal_occluders[key])
    dense = [torch.from_numpy(np.stack([masks.decode(m) for m in group])) for group in (visible, occluder)]
    categories = [annotations.categories[int(c)] for c in table.rows.category_id[row_indices]]
    return prepare_rois(image, table.rows.box[row_indices], dense[0], dense[1], categories,
                        [table.seeds[r] for r in row_indices], resolution, context)
