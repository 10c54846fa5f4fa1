"""Where the AISDiff head's shape priors come from, chosen in the config (`train_prior` / `test_prior`).

- `CachedPriors` (training): each positive proposal takes its assigned ground truth's cached prior
  (loaded by the `LoadCachedPriors` transform) warped from the ground-truth box to the proposal box,
  batched on the device. Rows marked missing (on_missing="compute") are computed with DiffSP.
- `OnTheFlyPriors` (testing): DiffSP from the predicted visible mask, occluder mask and class of each
  detected box, batched per image; with `store=`, its settings are checked against that store's.
- `ProposalCachePriors` (testing): priors of proposal rows (source 1) of a store, matched by image and box.
- `NoPriors`: a prior of 1 everywhere (the ablation).
- `OraclePriors`: the ground-truth amodal mask itself as the prior (the ceiling a shape prior can reach),
  where it lies in the image (`frame="image"`) or only its shape, stretched over the box (`frame="box"`).
The fidelity benchmark's other controls (`DegradedPriors`, `ClassTemplatePriors`, `OracleInputPriors`)
are in `segmenter.prior_controls`. Providers are registered in mmdet's TASK_UTILS: plain objects, not
modules, so the diffusion model's weights never enter a checkpoint. `PriorProvider` is the contract they keep.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from mmdet.registry import TASK_UTILS
from mmdet.structures.bbox import get_box_tensor
from torch import Tensor

from priors import geometry, masks
from priors.annotations import AmodalAnnotations, Instance
from priors.diffsp import DiffSP, prepare_rois, preset_config
from priors.errors import AisdiffError
from priors.identity import gt_roi_seed, proposal_roi_seed
from priors.store import SOURCE_PROPOSAL, PriorStore, settings_differences
from priors.store_settings import DATASET_SETTINGS

from .prior_context import PriorContext

ROLES = {"train": "training_priors", "test": "test_priors"}
ORACLE_FRAMES = ("image", "box")


class PriorProvider:
    """The contract of a shape-prior provider (built from the config by mmdet's TASK_UTILS).

    A shape prior is a float tensor [S, S] in [0, 1] that covers one box (its S x S cells span the box);
    providers return them batched, [n, S, S], on the boxes' device. A provider serves in training when it
    implements `training_priors`, at test when it implements `test_priors`; the RoI head checks this when
    it is built (`check_role`). Class attributes tell the detector what to put in the `PriorContext`:
    `needs_images` (the RGB input images) and, at test, `needs_masks` (the predicted visible and occluder
    masks pasted into the network input; otherwise None is passed). `serves_new_images`: its test priors
    need no dataset record (annotations, a cache), so it serves images nobody annotated (`aisdiff predict`).
    """

    needs_images: bool = False
    needs_masks: bool = False
    serves_new_images: bool = False

    def diffsp_seconds(self) -> float:
        """Seconds this provider has spent running DiffSP (0 for providers that do not run it)."""
        runner = getattr(self, "runner", None)
        return runner.seconds if isinstance(runner, DiffSPRunner) else 0.0

    def serves(self, role: str) -> bool:
        """Whether this provider implements the method of `role` ("train" or "test")."""
        method = ROLES[role]
        return getattr(type(self), method) is not getattr(PriorProvider, method)

    def check_role(self, role: str) -> None:
        """Refuse, with the fix, a provider configured where it cannot serve."""
        if not self.serves(role):
            raise self._refusal(role)

    def _refusal(self, role: str) -> AisdiffError:
        can = " and ".join(f"{r}_prior" for r in ROLES if self.serves(r)) or "nothing"
        return AisdiffError(f"{type(self).__name__} gives no {role} priors (it serves as {can}); set "
                            f"{role}_prior in the config to a provider that does (docs/train_test.md)")

    def training_priors(self, sampling_results, batch_gt_instances, context: PriorContext) -> Tensor:
        """Priors [P, S, S] of the positive proposals of every image in the batch, in sampling order."""
        raise self._refusal("train")

    def test_priors(self, index: int, boxes: Tensor, visible: Tensor | None, occluder: Tensor | None,
                    labels: Tensor, img_meta: dict, context: PriorContext) -> Tensor:
        """Priors [n, S, S] of image `index`'s detections: `boxes` [n, 4] and, when `needs_masks`, the
        predicted masks [n, h, w] in network-input pixels; `labels` [n] the classes the priors are for."""
        raise self._refusal("test")


def gt_priors_for_proposals(sampling_results, batch_gt_instances) -> tuple[Tensor, Tensor, Tensor]:
    """The cached priors of the positive proposals' assigned ground truths, with the boxes they cover and
    the proposal boxes: ([P, S, S], [P, 4], [P, 4]) over the whole batch."""
    priors, src, dst = [], [], []
    for res, gt in zip(sampling_results, batch_gt_instances, strict=True):
        idx = res.pos_assigned_gt_inds
        priors.append(gt.shape_priors[idx])
        src.append(gt.shape_prior_boxes[idx])
        dst.append(res.pos_priors)
    return torch.cat(priors), torch.cat(src), torch.cat(dst)


class DiffSPRunner:
    """Lazily builds DiffSP on the boxes' device and computes priors for one image's boxes (shared by the
    providers that run DiffSP). `seconds` adds up the time spent computing priors (model loading excluded),
    so that commands can report DiffSP's share of the run."""

    def __init__(self, model: str, dtype: str, store: str | None, tiny_vae: str | None = None,
                 **diffsp_settings) -> None:
        self.model_name, self.dtype, self.store_path, self.tiny_vae = model, dtype, store, tiny_vae
        self.config = preset_config(**diffsp_settings)
        self._diffsp: DiffSP | None = None
        self.seconds = 0.0

    def diffsp(self, device: torch.device) -> DiffSP:
        if self._diffsp is None:
            from priors.models import load_model

            model = load_model(self.model_name, dtype=self.dtype, device=device, tiny_vae=self.tiny_vae)
            self._diffsp = DiffSP(model, self.config)
            if self.store_path:
                self.check_store(self.store_path)
        return self._diffsp

    def check_store(self, path: str) -> None:
        """Refuse DiffSP settings that differ from those a store was made with."""
        stored = {k: v for k, v in PriorStore.open(path).settings.items() if k not in DATASET_SETTINGS}
        diffs = settings_differences(stored, self._diffsp.attrs)
        if diffs:
            raise AisdiffError(f"on-the-fly DiffSP settings differ from the store {path} (training "
                               "priors):\n  "
                               + "\n  ".join(diffs)
                               + "\nUse the store's settings in test_prior, or another store.")

    def compute(self, image: Tensor, boxes: Tensor, visible: Tensor, occluder: Tensor, categories: list[str],
                seeds: list[int]) -> Tensor:
        """Priors [n, S, S] for boxes of one image: image [3, H, W] RGB in [0, 1], masks [n, H, W] (bool)."""
        if len(boxes) == 0:
            return boxes.new_zeros((0, self.config.prior_size, self.config.prior_size))
        diffsp = self.diffsp(boxes.device)
        if boxes.is_cuda:  # (the clock starts when the kernels queued before DiffSP are done)
            torch.cuda.synchronize(boxes.device)
        start = time.perf_counter()
        rois = prepare_rois(image, boxes, visible, occluder, categories, seeds, diffsp.config.resolution,
                            diffsp.config.context)
        priors = diffsp(rois).to(boxes.device)
        if priors.is_cuda:  # (kernels run asynchronously: wait for them before reading the clock)
            torch.cuda.synchronize(priors.device)
        self.seconds += time.perf_counter() - start
        return priors


@TASK_UTILS.register_module()
class CachedPriors(PriorProvider):
    """Training priors from the prior store (see the module docstring). With `on_missing="compute"` in
    `LoadCachedPriors`, give `diffsp=dict(model=..., classes=...)` here to compute the missing ones."""

    def __init__(self, diffsp: dict | None = None) -> None:
        settings = dict(diffsp or {})
        self.classes = tuple(settings.pop("classes", ()))
        if diffsp is not None and not self.classes:
            raise AisdiffError("CachedPriors(diffsp=...) needs classes=(...) in diffsp: the class names that "
                               "complete DiffSP's prompt, in label order (the config's metainfo classes)")
        self.runner = (DiffSPRunner(**{"dtype": "fp32", "store": None, **settings}) if diffsp is not None
                       else None)
        self.needs_images = diffsp is not None

    def training_priors(self, sampling_results, batch_gt_instances, context: PriorContext) -> Tensor:
        if any("shape_priors" not in gt for gt in batch_gt_instances):
            raise AisdiffError("the cache prior provider needs the LoadCachedPriors transform in the "
                               "training pipeline (after LoadAmodalAnnotations)")
        for i, gt in enumerate(batch_gt_instances):
            self._fill_missing(i, gt, context)
        priors, src, dst = gt_priors_for_proposals(sampling_results, batch_gt_instances)
        return geometry.warp_priors(priors, src, dst)

    def _fill_missing(self, index: int, gt, context: PriorContext) -> None:
        """Compute the priors LoadCachedPriors marked missing (NaN) for image `index`'s ground truths."""
        missing = torch.isnan(gt.shape_priors.flatten(1)).any(1)
        if not missing.any():
            return
        if self.runner is None:
            raise AisdiffError("cached priors are missing (LoadCachedPriors on_missing='compute') but the "
                               "CachedPriors provider has no diffsp=dict(model=..., classes=...) to compute "
                               "them")
        image = context.image(index, type(self).__name__)
        h, w = image.shape[-2:]
        idx = torch.nonzero(missing).flatten()
        rows = idx.cpu().numpy()
        device = gt.shape_priors.device
        vis = gt.visible_masks[rows].to_tensor(torch.bool, device)[:, :h, :w]
        occ = gt.occluder_masks[rows].to_tensor(torch.bool, device)[:, :h, :w]
        image_id = context.image_id(index, type(self).__name__)
        seeds = [gt_roi_seed(self.runner.config.seed, image_id, int(a)) for a in gt.ann_ids[idx]]
        names = [self.classes[int(label)] for label in gt.labels[idx]]
        gt.shape_priors[idx] = self.runner.compute(image, gt.shape_prior_boxes[idx], vis, occ, names, seeds)


@TASK_UTILS.register_module()
class OnTheFlyPriors(PriorProvider):
    """Test-time DiffSP priors from the head's own predictions (see the module docstring).

    Args:
        model: the inpainting model ('tiny', a local diffusers folder or a hub id).
        classes: the class names in label order (the config's metainfo classes); when empty, those of the
            detector's `dataset_meta` (a checkpoint's, as mmdet's init_detector sets it).
        dtype: the model's dtype ('fp32', 'fp16', 'bf16').
        store: a prior store (the training priors) whose DiffSP settings these must equal.
        tiny_vae: the small autoencoder for `encoder='tiny'` (an AutoencoderTiny folder or hub id; default:
            the model folder's vae_tiny/).
        diffsp_settings: DiffSPConfig fields (steps, tau, self_res, ...), and `preset` ('fast': DiffSP's
            cheap setting, see `priors.diffsp.PRESETS`) for the fields not given.
    """

    needs_images = needs_masks = serves_new_images = True

    def __init__(self, model: str = "tiny", classes: tuple[str, ...] | list[str] = (), dtype: str = "fp32",
                 store: str | None = None, tiny_vae: str | None = None, **diffsp_settings) -> None:
        self.classes = tuple(classes)
        self.runner = DiffSPRunner(model, dtype, store, tiny_vae, **diffsp_settings)

    def class_names(self, context: PriorContext) -> tuple[str, ...]:
        """The configured class names, checked against the detector's; else the detector's."""
        if self.classes and context.classes and self.classes != context.classes:
            raise AisdiffError(f"OnTheFlyPriors: the config's classes {list(self.classes)} differ from the "
                               f"model's dataset_meta classes {list(context.classes)}; use a config and a "
                               "checkpoint made for the same dataset")
        if not (self.classes or context.classes):
            raise AisdiffError("OnTheFlyPriors needs class names for DiffSP's prompt: set classes=(...) in "
                               "test_prior (the config's metainfo classes), or load a checkpoint that "
                               "records its dataset_meta")
        return self.classes or context.classes

    def test_priors(self, index: int, boxes: Tensor, visible: Tensor, occluder: Tensor, labels: Tensor,
                    img_meta: dict, context: PriorContext) -> Tensor:
        who = type(self).__name__
        image = context.image(index, who)
        h, w = image.shape[-2:]
        names = self.class_names(context)
        image_id = context.image_id(index, who)
        scale = boxes.new_tensor(img_meta["scale_factor"]).repeat(2)
        # a detection is a proposal of the original image: same identity, same noise as its cached row
        seeds = [proposal_roi_seed(self.runner.config.seed, image_id, b) for b in (boxes / scale).tolist()]
        return self.runner.compute(image, boxes, visible[:, :h, :w], occluder[:, :h, :w],
                                   [names[int(label)] for label in labels], seeds)


@TASK_UTILS.register_module()
class ProposalCachePriors(PriorProvider):
    """Test-time priors read from proposal rows of a store, matched by image id and box (original image
    pixels, within `tolerance`). Made by `aisdiff precompute --proposals` from
    `aisdiff test --dump-proposals`."""

    def __init__(self, store: str, tolerance: float = 0.5, on_missing: str = "error") -> None:
        if on_missing not in ("error", "none"):
            raise AisdiffError(f"ProposalCachePriors: on_missing must be 'error' or 'none' (a prior of 1), "
                               f"not {on_missing!r}")
        self.store_path, self.tolerance, self.on_missing = store, tolerance, on_missing
        self._store: PriorStore | None = None

    def test_priors(self, index: int, boxes: Tensor, visible: Tensor | None, occluder: Tensor | None,
                    labels: Tensor, img_meta: dict, context: PriorContext) -> Tensor:
        store = self._store = self._store or PriorStore.open(self.store_path)
        image_id = context.image_id(index, type(self).__name__)
        rows = store.rows_of_image(image_id)
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
                    f"{self.store_path}: no proposal row for image {image_id} box "
                    f"{[round(float(v), 1) for v in box]} (detection {i}). Precompute the proposals this "
                    "model dumps (`aisdiff test --dump-proposals`, then `aisdiff precompute --proposals`), "
                    "or set on_missing='none' (a prior of 1 for detections without a row, e.g. empty visible "
                    "masks).")
        if found:
            priors[list(found)] = store.priors(list(found.values()))
        return torch.from_numpy(priors).to(boxes.device)


@TASK_UTILS.register_module()
class NoPriors(PriorProvider):
    """A prior of 1 everywhere: the Shape Prior Amodal Predictor's attention alone (the ablation)."""

    serves_new_images = True

    def __init__(self, prior_size: int = 28) -> None:
        self.prior_size = prior_size

    def training_priors(self, sampling_results, batch_gt_instances, context: PriorContext) -> Tensor:
        n = sum(len(r.pos_priors) for r in sampling_results)
        device = sampling_results[0].pos_priors.device
        return torch.ones(n, self.prior_size, self.prior_size, device=device)

    def test_priors(self, index, boxes, visible, occluder, labels, img_meta, context) -> Tensor:
        return torch.ones(len(boxes), self.prior_size, self.prior_size, device=boxes.device)


def original_boxes(boxes: Tensor, img_meta: dict) -> Tensor:
    """Detection boxes [n, 4] in original-image pixels (float64, CPU), where annotation files draw them."""
    scale = torch.as_tensor(img_meta["scale_factor"], dtype=boxes.dtype).double().repeat(2)
    return boxes.detach().cpu().double() / scale


def match_ground_truth(gts: list[Instance], classes: tuple[str, ...], boxes_original: np.ndarray,
                       labels: list[int]) -> list[Instance | None]:
    """Each detection's ground truth (the oracles' look-up): of the detection's class (`labels` index
    `classes`), the one whose amodal box has the highest IoU with the detection's box (original-image
    pixels); None where no ground truth of its class overlaps it."""
    if not gts:
        return [None] * len(labels)
    overlap = masks.box_iou_xyxy(boxes_original, np.array([g.amodal_box for g in gts], dtype=np.float64))
    gt_labels = [classes.index(g.category) for g in gts]  # once per image, not per detection
    matches: list[Instance | None] = []
    for i, label in enumerate(labels):
        same = [j for j, gt_label in enumerate(gt_labels) if gt_label == label]
        matched = same and overlap[i, same].max() > 0
        matches.append(gts[same[int(np.argmax(overlap[i, same]))]] if matched else None)
    return matches


@TASK_UTILS.register_module()
class OraclePriors(PriorProvider):
    """The ground-truth amodal mask as the prior: the ceiling of what a shape prior can give the head.

    Each box gets a ground truth's amodal mask: in training the positive proposal's assigned ground truth;
    at test the ground truth that `match_ground_truth` gives the detection (from `ann_file`, read at the
    first test batch; classes are its categories in id order, as the dataset configs list them), a
    detection without one getting a prior of 0. `frame` says what of the mask the prior keeps:
    - "image" (default): the mask where it lies in the image, cropped to the box (training, as mask targets
      are made) or resampled onto it (test): the oracle also corrects the box's misalignment.
    - "box": only the shape, the mask in its ground truth's own amodal box (at test as
      `geometry.masks_in_box`), stretched as it is over the proposal or detection box: what a perfect
      shape prior that knows nothing of the box's error would give.
    Not a method: a measurement.
    """

    def __init__(self, ann_file: str | None = None, prior_size: int = 28, frame: str = "image") -> None:
        if frame not in ORACLE_FRAMES:
            raise AisdiffError(f"OraclePriors: frame={frame!r}; use 'image' (the mask where it lies in the "
                               "image) or 'box' (its shape in its own box, stretched over the detection)")
        self.ann_file, self.prior_size, self.frame = ann_file, prior_size, frame
        self._ann = None

    def training_priors(self, sampling_results, batch_gt_instances, context: PriorContext) -> Tensor:
        out = []
        for res, gt in zip(sampling_results, batch_gt_instances, strict=True):
            idx = res.pos_assigned_gt_inds
            boxes = res.pos_priors if self.frame == "image" else get_box_tensor(gt.bboxes)[idx]
            out.append(gt.masks.crop_and_resize(boxes, (self.prior_size, self.prior_size), idx.cpu().numpy(),
                                                device=res.pos_priors.device).to_tensor(torch.float32,
                                                                                        res.pos_priors.device))
        return torch.cat(out)

    def test_priors(self, index, boxes, visible, occluder, labels, img_meta, context) -> Tensor:
        if self.ann_file is None:
            raise AisdiffError("OraclePriors needs ann_file=... (the ground truth) to give test priors")
        self._ann = self._ann or AmodalAnnotations(self.ann_file)
        priors = boxes.new_zeros((len(boxes), self.prior_size, self.prior_size))
        gts = self._ann.by_image(context.image_id(index, type(self).__name__))
        if not gts or not len(boxes):
            return priors
        original = original_boxes(boxes, img_meta)
        matches = match_ground_truth(gts, self._ann.classes, original.numpy(), labels.tolist())
        for i, best in enumerate(matches):
            if best is None:
                continue
            if self.frame == "image":
                mask = torch.from_numpy(best.amodal_mask().astype(np.float32))[None, None]
                priors[i] = geometry.roi_resample(mask, original[i:i + 1], self.prior_size)[0, 0].to(priors)
            else:
                priors[i] = geometry.masks_in_box(best.amodal_mask()[None], best.amodal_box,
                                                  self.prior_size)[0].to(priors)
        return priors
