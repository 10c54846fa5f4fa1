"""Where the AISDiff head's shape priors come from, chosen in the config (`train_prior` / `test_prior`).

- `CachedPriors` (training): each positive proposal takes its assigned ground truth's cached prior
  (loaded by the `LoadCachedPriors` transform) warped from the ground-truth box to the proposal box,
  batched on the device. Rows marked missing (on_missing="compute") are computed with DiffSP.
- `OnTheFlyPriors` (testing): DiffSP from the predicted visible mask, occluder mask and class of each
  detected box, batched per image; with `store=`, its settings are checked against that store's.
- `ProposalCachePriors` (testing): priors of proposal rows (source 1) of a store, matched by image and box.
- `NoPriors`: a prior of 1 everywhere (the ablation).
- `OraclePriors`: the ground-truth amodal mask itself as the prior (the ceiling a shape prior can reach).
Providers are plain objects (not modules): the diffusion model's weights never enter a checkpoint.
"""
from __future__ import annotations

import numpy as np
import torch
from mmdet.registry import MODELS
from torch import Tensor

from priors import geometry
from priors.diffsp import DiffSP, DiffSPConfig, box_key, prepare_rois, roi_seed
from priors.errors import AisdiffError
from priors.store import SOURCE_GT, SOURCE_PROPOSAL, PriorStore, settings_differences

# store settings that describe the dataset, not DiffSP: not compared with an on-the-fly provider's
DATASET_SETTINGS = ("annotations", "annotation_format", "proposals")


def gt_priors_for_proposals(sampling_results, batch_gt_instances) -> tuple[Tensor, Tensor, Tensor]:
    """The cached priors of the positive proposals' assigned ground truths, with the boxes they cover and
    the proposal boxes: ([P, S, S], [P, 4], [P, 4]) over the whole batch."""
    priors, src, dst = [], [], []
    for res, gt in zip(sampling_results, batch_gt_instances, strict=True):
        idx = res.pos_assigned_gt_inds
        priors.append(gt.priors[idx])
        src.append(gt.prior_boxes[idx])
        dst.append(res.pos_priors)
    return torch.cat(priors), torch.cat(src), torch.cat(dst)


class DiffSPRunner:
    """Lazily builds DiffSP on the head's device (shared by the providers that compute priors)."""

    def __init__(self, model: str, dtype: str, classes: tuple[str, ...] | list[str], store: str | None,
                 **diffsp_settings) -> None:
        self.model_name, self.dtype, self.classes = model, dtype, tuple(classes)
        self.config, self.store_path = DiffSPConfig(**diffsp_settings), store
        self._diffsp: DiffSP | None = None

    def diffsp(self, device: torch.device) -> DiffSP:
        if self._diffsp is None:
            from priors.models import load_model

            self._diffsp = DiffSP(load_model(self.model_name, dtype=self.dtype, device=device), self.config)
            if self.store_path:
                self.check_store(self.store_path)
        return self._diffsp

    def check_store(self, path: str) -> None:
        """Refuse DiffSP settings that differ from those a store was made with."""
        stored = {k: v for k, v in PriorStore.open(path).settings.items() if k not in DATASET_SETTINGS}
        diffs = settings_differences(stored, self._diffsp.attrs)
        if diffs:
            raise AisdiffError(f"on-the-fly DiffSP settings differ from the store {path} (training priors):\n  "
                               + "\n  ".join(diffs) + "\nUse the store's settings in test_prior, or another store.")

    def compute(self, image: Tensor, boxes: Tensor, visible: Tensor, occluder: Tensor, labels: Tensor,
                seeds: list[int]) -> Tensor:
        """Priors [n, S, S] for boxes of one image: image [3, H, W] RGB in [0, 1], masks [n, H, W] (bool)."""
        if len(boxes) == 0:
            return boxes.new_zeros((0, self.config.prior_size, self.config.prior_size))
        diffsp = self.diffsp(boxes.device)
        names = [self.classes[int(label)] for label in labels]
        rois = prepare_rois(image, boxes, visible, occluder, names, seeds, diffsp.config.resolution,
                            diffsp.config.context)
        return diffsp(rois).to(boxes.device)


@MODELS.register_module()
class CachedPriors:
    """Training priors from the prior store (see the module docstring). With `on_missing="compute"` in
    `LoadCachedPriors`, give `diffsp=dict(model=..., classes=...)` here to compute the missing ones."""

    needs_images = False

    def __init__(self, diffsp: dict | None = None) -> None:
        self.runner = DiffSPRunner(**{"dtype": "fp32", "store": None, **diffsp}) if diffsp else None
        self.needs_images = diffsp is not None

    def training_priors(self, head, sampling_results, batch_gt_instances) -> Tensor:
        if any(not hasattr(gt, "priors") for gt in batch_gt_instances):
            raise AisdiffError("the cache prior provider needs the LoadCachedPriors transform in the training "
                               "pipeline (after LoadAmodalAnnotations)")
        for i, gt in enumerate(batch_gt_instances):
            self._fill_missing(head, i, gt)
        priors, src, dst = gt_priors_for_proposals(sampling_results, batch_gt_instances)
        return geometry.warp_priors(priors, src, dst)

    def _fill_missing(self, head, index: int, gt) -> None:
        missing = torch.isnan(gt.priors.flatten(1)).any(1)
        if not missing.any():
            return
        if self.runner is None:
            raise AisdiffError("cached priors are missing (LoadCachedPriors on_missing='compute') but the "
                               "CachedPriors provider has no diffsp=dict(model=..., classes=...) to compute them")
        h, w = head.images_shapes[index]
        idx = torch.nonzero(missing).flatten()
        vis = gt.visible_masks[idx.cpu().numpy()].to_tensor(torch.bool, gt.priors.device)
        occ = gt.occluder_masks[idx.cpu().numpy()].to_tensor(torch.bool, gt.priors.device)
        seeds = [roi_seed(self.runner.config.seed, SOURCE_GT, int(head.image_ids[index]), int(a))
                 for a in gt.ann_ids[idx]]
        gt.priors[idx] = self.runner.compute(head.images[index, :, :h, :w], gt.prior_boxes[idx], vis[:, :h, :w],
                                             occ[:, :h, :w], gt.labels[idx], seeds)


@MODELS.register_module()
class OnTheFlyPriors:
    """Test-time DiffSP priors from the head's own predictions (see the module docstring)."""

    needs_images = needs_masks = True

    def __init__(self, model: str = "tiny", classes: tuple[str, ...] | list[str] = (), ann_file: str | None = None,
                 dtype: str = "fp32", store: str | None = None, **diffsp_settings) -> None:
        if not classes and ann_file:  # the dataset's classes: the file's categories in id order
            from priors.annotations import read_json

            classes = [c["name"] for c in sorted(read_json(ann_file)["categories"], key=lambda c: c["id"])]
        if not classes:
            raise AisdiffError("OnTheFlyPriors needs classes=(...) or ann_file=... (class names for the prompt)")
        self.runner = DiffSPRunner(model, dtype, classes, store, **diffsp_settings)

    def test_priors(self, head, index: int, boxes: Tensor, visible: Tensor, occluder: Tensor, labels: Tensor,
                    img_meta: dict) -> Tensor:
        """Priors [n, S, S] for one image's detections: boxes and predicted masks [n, h, w] in network-input
        pixels (the same masks a proposals dump writes, so cached proposal priors agree)."""
        h, w = img_meta["img_shape"]
        image = head.images[index, :, :h, :w]
        vis, occ = visible[:, :h, :w], occluder[:, :h, :w]
        scale = boxes.new_tensor(img_meta["scale_factor"]).repeat(2)
        seeds = [roi_seed(self.runner.config.seed, SOURCE_PROPOSAL, int(img_meta["img_id"]), *box_key(b))
                 for b in (boxes / scale).tolist()]  # a detection is a proposal: same identity, same noise
        return self.runner.compute(image, boxes, vis, occ, labels, seeds)


@MODELS.register_module()
class ProposalCachePriors:
    """Test-time priors read from proposal rows of a store, matched by image id and box (original image
    pixels, within `tolerance`). Made by `aisdiff precompute --proposals` from `aisdiff test --dump-proposals`."""

    needs_images = needs_masks = False

    def __init__(self, store: str, tolerance: float = 0.5, on_missing: str = "error") -> None:
        if on_missing not in ("error", "none"):
            raise ValueError(f"on_missing must be 'error' or 'none' (a prior of 1), not {on_missing!r}")
        self.store_path, self.tolerance, self.on_missing = store, tolerance, on_missing
        self._store: PriorStore | None = None

    def test_priors(self, head, index: int, boxes: Tensor, visible: Tensor | None, occluder: Tensor | None,
                    labels: Tensor, img_meta: dict) -> Tensor:
        store = self._store = self._store or PriorStore.open(self.store_path)
        rows = store.rows_of_image(int(img_meta["img_id"]))
        meta = store.rows(rows) if len(rows) else None
        proposal = meta.source == SOURCE_PROPOSAL if meta is not None else np.zeros(0, bool)
        candidates = rows[proposal]
        stored = meta.box[proposal] if meta is not None else np.zeros((0, 4), np.float32)
        scale = np.tile(np.asarray(img_meta["scale_factor"], dtype=np.float64), 2)
        original = boxes.detach().cpu().double().numpy() / scale
        priors = np.ones((len(original), store.prior_size, store.prior_size), np.float32)
        found: dict[int, int] = {}  # detection -> row
        for i, box in enumerate(original):
            err = np.abs(stored - box).max(1) if len(stored) else np.array([])
            if len(err) and err.min() <= self.tolerance:
                found[i] = int(candidates[int(err.argmin())])
            elif self.on_missing == "error":
                raise AisdiffError(
                    f"{self.store_path}: no proposal row for image {img_meta['img_id']} box "
                    f"{[round(float(v), 1) for v in box]} (detection {i}). Precompute the proposals this model "
                    "dumps (`aisdiff test --dump-proposals`, then `aisdiff precompute --proposals`), or set "
                    "on_missing='none' (a prior of 1 for detections without a row, e.g. empty visible masks).")
        if found:
            priors[list(found)] = store.priors(list(found.values()))
        return torch.from_numpy(priors).to(boxes.device)


@MODELS.register_module()
class NoPriors:
    """A prior of 1 everywhere: the Shape Prior Amodal Predictor's attention alone (the ablation)."""

    needs_images = needs_masks = False

    def __init__(self, prior_size: int = 28) -> None:
        self.prior_size = prior_size

    def training_priors(self, head, sampling_results, batch_gt_instances) -> Tensor:
        n = sum(len(r.pos_priors) for r in sampling_results)
        device = sampling_results[0].pos_priors.device
        return torch.ones(n, self.prior_size, self.prior_size, device=device)

    def test_priors(self, head, index, boxes, visible, occluder, labels, img_meta) -> Tensor:
        return torch.ones(len(boxes), self.prior_size, self.prior_size, device=boxes.device)


@MODELS.register_module()
class OraclePriors:
    """The ground-truth amodal mask as the prior: the ceiling of what a shape prior can give the head.

    Training: each positive proposal gets its assigned ground truth's amodal mask cropped to the proposal
    box (as mask targets are made). Testing: each detection gets the amodal mask of the ground truth of the
    same class whose amodal box overlaps it most (from `ann_file`; classes are its categories in id order,
    as the dataset configs list them), resampled onto the detection box; a
    detection that overlaps no ground truth of its class gets a prior of 0. Not a method: a measurement.
    """

    needs_images = needs_masks = False

    def __init__(self, ann_file: str | None = None, prior_size: int = 28) -> None:
        self.ann_file, self.prior_size = ann_file, prior_size
        self._ann = None

    def training_priors(self, head, sampling_results, batch_gt_instances) -> Tensor:
        out = []
        for res, gt in zip(sampling_results, batch_gt_instances, strict=True):
            idx = res.pos_assigned_gt_inds.cpu().numpy()
            out.append(gt.masks.crop_and_resize(res.pos_priors, (self.prior_size, self.prior_size), idx,
                                                device=res.pos_priors.device).to_tensor(torch.float32,
                                                                                        res.pos_priors.device))
        return torch.cat(out)

    def test_priors(self, head, index, boxes, visible, occluder, labels, img_meta) -> Tensor:
        from priors import masks
        from priors.annotations import AmodalAnnotations

        if self.ann_file is None:
            raise AisdiffError("OraclePriors needs ann_file=... (the ground truth) to give test priors")
        self._ann = self._ann or AmodalAnnotations(self.ann_file)
        priors = boxes.new_zeros((len(boxes), self.prior_size, self.prior_size))
        gts = self._ann.by_image(int(img_meta["img_id"]))
        if not gts or not len(boxes):
            return priors
        original = boxes.detach().cpu().double() / boxes.new_tensor(img_meta["scale_factor"]).double().repeat(2)
        overlap = masks.box_iou_xyxy(original.numpy(), np.array([g.amodal_box for g in gts], dtype=np.float64))
        label_of = {cat_id: i for i, cat_id in enumerate(sorted(self._ann.categories))}  # classes in id order
        for i, label in enumerate(labels.tolist()):
            same = [j for j, g in enumerate(gts) if label_of[g.category_id] == label]
            if not same or overlap[i, same].max() <= 0:
                continue
            best = gts[same[int(np.argmax(overlap[i, same]))]]
            mask = torch.from_numpy(best.amodal_mask().astype(np.float32))[None, None]
            priors[i] = geometry.roi_resample(mask, original[i:i + 1], self.prior_size)[0, 0].to(priors)
        return priors
