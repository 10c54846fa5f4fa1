"""`aisdiff tune-diffsp`: choose DiffSP's settings for a model on a dataset's train split.

For the occluded ground-truth instances of a split (occlusion above `--min-occlusion`), DiffSP runs once per
(steps, self_res, cross_res) and every tau and threshold is scored from the same attention maps: the mean
IoU of the thresholded prior with the amodal mask in the box frame, as `aisdiff inspect` measures it. Beside
the visible mask (the number to beat) the table gives each grid's ceiling: the amodal mask itself put through
the attention grid, what a perfect prior at that resolution would score. Tune on train, report on val: the
command refuses nothing, but its table says which split it read.
"""
from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import geometry
from ..annotations import AmodalAnnotations, Instance
from ..diffsp import (
    ENCODERS,
    TIMESTEP_SPACINGS,
    DiffSP,
    DiffSPConfig,
    grid_to_priors,
    prepare_rois,
)
from ..errors import AisdiffError
from ..identity import gt_roi_seed
from ..images import read_image
from ..masks import decode
from ..models import MODEL_DEFAULTS_FILE, THRESHOLD_KEY, load_model, model_folder
from ..occlusion import OCCLUDED, OCCLUSION_BUCKETS, occlusion_bucket


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("tune-diffsp",
                              help="grid-search DiffSP's steps, tau, resolutions and threshold",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("--ann", required=True, help="annotation file of the split to tune on (train)")
    p.add_argument("--images", required=True, help="its image folder")
    p.add_argument("--model", default="tiny",
                   help="'tiny', 'tiny-high', 'tiny-random', a local diffusers folder or a hub id")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32")
    model_default = f"(default: the model's, from its {MODEL_DEFAULTS_FILE}, else the paper's)"
    p.add_argument("--steps", type=int, nargs="+", default=[None], help=model_default)
    p.add_argument("--tau", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--self-res", type=int, nargs="+", default=[None], help=model_default)
    p.add_argument("--cross-res", type=int, nargs="+", default=[None], help=model_default)
    p.add_argument("--guidance-scale", type=float, nargs="+", default=[None], help=model_default)
    p.add_argument("--timestep-spacing", nargs="+", default=[None], choices=TIMESTEP_SPACINGS,
                   help="how the T steps spread over the training timesteps " + model_default)
    p.add_argument("--encoder", nargs="+", default=[None], choices=ENCODERS,
                   help="what encodes the visible-only crop (the VAE, or the model's small autoencoder) "
                        + model_default)
    p.add_argument("--tiny-vae", help="the small autoencoder for --encoder tiny: an AutoencoderTiny folder "
                                      "or hub id (default: the model folder's vae_tiny/)")
    p.add_argument("--thresholds", type=float, nargs="+",
                   default=[round(t, 2) for t in np.arange(0.1, 0.95, 0.05)])
    p.add_argument("--min-occlusion", type=float, default=OCCLUDED)
    p.add_argument("--limit", type=int, default=300, help="at most this many instances (a fixed sample)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write every scored setting here")
    p.set_defaults(func=run)


@dataclass
class Scored:
    """Mean IoUs of one setting over the sampled instances, overall and by occlusion bucket."""

    settings: dict
    prior_iou: float
    by_bucket: dict[str, float]

    @classmethod
    def of(cls, settings: dict, ious: list[float], buckets: list[str]) -> Scored:
        """Mean of per-instance IoUs, overall and per occlusion bucket (`buckets[i]` is instance i's)."""
        values = np.asarray(ious)
        return cls(settings, float(values.mean()),
                   {b: float(values[[x == b for x in buckets]].mean()) for b in dict.fromkeys(buckets)})


def sample_instances(ann: AmodalAnnotations, min_occlusion: float, limit: int | None,
                     seed: int) -> list[Instance]:
    """Occluded instances (rate > min_occlusion), a fixed random sample of at most `limit`, by image."""
    chosen = [i for i in ann if i.occlusion_rate > min_occlusion]
    if not chosen:
        raise AisdiffError(
            f"{ann.path}: no instance with occlusion above {min_occlusion}; nothing to tune on")
    if limit is not None and len(chosen) > limit:
        pick = np.random.default_rng(seed).choice(len(chosen), limit, replace=False)
        chosen = [chosen[i] for i in sorted(pick)]
    return sorted(chosen, key=lambda i: (i.image_id, i.ann_id))


def roi_batches(diffsp: DiffSP, ann: AmodalAnnotations, instances: list[Instance], batch_size: int,
                progress: bool = True):
    """DiffSP's inputs for every instance's ground-truth ROI, by image: yields (instances, RoiBatch)."""
    cfg = diffsp.config
    by_image: dict[int, list[Instance]] = {}
    for inst in instances:
        by_image.setdefault(inst.image_id, []).append(inst)
    bar = tqdm(total=len(instances), desc=f"T={cfg.steps} self={cfg.self_res} cross={cfg.cross_res}",
               disable=not progress)
    for image_id, group in by_image.items():
        info = ann.images[image_id]
        image = read_image(ann.image_path(image_id), (info.height, info.width)).float() / 255
        occluders = ann.occluder_rles(image_id)
        for start in range(0, len(group), batch_size):
            part = group[start:start + batch_size]
            vis = torch.from_numpy(np.stack([i.visible_mask() for i in part]))
            occ = torch.from_numpy(np.stack([decode(occluders[i.ann_id]) for i in part]))
            yield part, prepare_rois(image.to(diffsp.model.device), [i.amodal_box for i in part], vis, occ,
                                     [i.category for i in part],
                                     [gt_roi_seed(cfg.seed, i.image_id, i.ann_id) for i in part],
                                     cfg.resolution, cfg.context)
            bar.update(len(part))
    bar.close()


def attention_maps(diffsp: DiffSP, ann: AmodalAnnotations, instances: list[Instance], batch_size: int,
                   progress: bool = True):
    """Averaged attention of every instance's ROI: yields (instances, a_self, a_cross, token weights,
    boxes)."""
    for part, batch in roi_batches(diffsp, ann, instances, batch_size, progress):
        yield part, *diffsp.attention(batch), batch.boxes


def score(model, ann: AmodalAnnotations, instances: list[Instance], base: DiffSPConfig, taus: list[int],
          thresholds: list[float], batch_size: int, progress: bool = True) -> list[Scored]:
    """Score every (tau, threshold) for one (steps, self_res, cross_res) setting."""
    diffsp = DiffSP(model, base)
    size = diffsp.config.prior_size
    ious = {(tau, t): [] for tau in taus for t in thresholds}
    buckets = []
    for part, a_self, a_cross, weights, boxes in attention_maps(diffsp, ann, instances, batch_size, progress):
        amodal = torch.stack([geometry.masks_in_box(i.amodal_mask()[None], i.amodal_box, size)[0]
                              for i in part])
        buckets += [occlusion_bucket(i.occlusion_rate) for i in part]
        for tau in taus:
            priors = diffsp.priors_from_attention(a_self, a_cross, weights, boxes, tau=tau).cpu()
            for t in thresholds:
                ious[(tau, t)] += [geometry.mask_iou(p > t, a) for p, a in zip(priors, amodal, strict=True)]
    settings = {k: v for k, v in diffsp.config.attrs().items()
                if k in ("steps", "self_res", "cross_res", "guidance_scale", "timestep_spacing", "encoder")}
    return [Scored.of({**settings, "tau": tau, "threshold": t}, values, buckets)
            for (tau, t), values in ious.items()]


def visible_baseline(instances: list[Instance], size: int) -> Scored:
    """The visible mask's IoU with the amodal mask: the number a prior must beat."""
    values, buckets = [], []
    for inst in instances:
        amodal, visible = geometry.masks_in_box(np.stack([inst.amodal_mask(), inst.visible_mask()]),
                                                inst.amodal_box, size)
        values.append(geometry.mask_iou(visible, amodal))
        buckets.append(occlusion_bucket(inst.occlusion_rate))
    return Scored.of({"visible mask": True}, values, buckets)


def grid_ceiling(instances: list[Instance], grid: int, config: DiffSPConfig,
                 thresholds: list[float]) -> Scored:
    """The most a prior on a grid x grid attention map can score: the amodal mask itself, averaged onto the
    grid of its context crop and mapped back to the box as DiffSP maps its priors (best threshold). `config`
    gives the resolution, context and prior size (a resolved one: `DiffSPConfig.resolved`)."""
    values, buckets = {t: [] for t in thresholds}, []
    for inst in instances:
        box = geometry.as_boxes([inst.amodal_box])
        crop = geometry.context_boxes(box, config.context)
        mask = inst.amodal_mask()
        amodal = torch.from_numpy(mask.astype(np.float32))[None, None]
        cells = F.adaptive_avg_pool2d(geometry.roi_resample(amodal, crop, config.resolution), grid)[:, 0]
        prior = grid_to_priors(cells, geometry.boxes_in_frame(box, crop, config.resolution),
                               config.resolution, config.prior_size)[0]
        truth = geometry.masks_in_box(mask[None], inst.amodal_box, config.prior_size)[0]
        for t in thresholds:
            values[t].append(geometry.mask_iou(prior > t, truth))
        buckets.append(occlusion_bucket(inst.occlusion_rate))
    best = max(thresholds, key=lambda t: np.mean(values[t]))
    return Scored.of({"amodal mask on the grid (ceiling)": grid, "threshold": best}, values[best], buckets)


def how_to_record(name: str, model, best: Scored) -> str:
    """How to make `best` the model's DiffSP defaults: what its folder's MODEL_DEFAULTS_FILE should hold."""
    tuned = DiffSPConfig(**{k: v for k, v in best.settings.items() if k != THRESHOLD_KEY})
    record = {**tuned.differences_from_paper(model), THRESHOLD_KEY: best.settings[THRESHOLD_KEY]}
    folder = model_folder(name)
    small = (", and its small autoencoder as FOLDER/vae_tiny with model.tiny_vae.save_pretrained"
             if record.get("encoder") == "tiny" else "")
    where = (f"write into {folder / MODEL_DEFAULTS_FILE}" if folder else
             f"save the model to a folder (save_pretrained{small}; {name} itself takes no defaults) and "
             f"write into its {MODEL_DEFAULTS_FILE}")
    return (f"To make the best setting above the defaults of {name}, {where}:\n{json.dumps(record)}\n"
            "(the settings that differ from the paper's, and the threshold for `aisdiff inspect`): DiffSP "
            "then uses them for any setting not given (precompute, tune-diffsp, the segmenter's priors).")


def run(args: argparse.Namespace) -> int:
    ann = AmodalAnnotations(args.ann, images_dir=args.images)
    instances = sample_instances(ann, args.min_occlusion, args.limit, args.seed)
    model = load_model(args.model, dtype=args.dtype, device=args.device, tiny_vae=args.tiny_vae)
    results = []
    grid = itertools.product(args.steps, args.self_res, args.cross_res, args.guidance_scale,
                             args.timestep_spacing, args.encoder)
    bases = [replace(DiffSPConfig(), steps=steps, self_res=self_res, cross_res=cross_res,
                     guidance_scale=guidance, timestep_spacing=spacing, encoder=encoder, seed=args.seed)
             for steps, self_res, cross_res, guidance, spacing, encoder in grid]
    for base in bases:  # every setting checked before any is scored
        try:
            base.resolved(model)
        except ValueError as exc:
            raise AisdiffError(f"DiffSP settings for {args.model}: {exc}") from None
    for base in bases:
        results += score(model, ann, instances, base, args.tau, args.thresholds, args.batch_size)
    results.sort(key=lambda r: -r.prior_iou)
    baseline = visible_baseline(instances, DiffSPConfig().prior_size)
    native = DiffSPConfig().resolved(model)  # the model's resolution and the crop context
    ceilings = [grid_ceiling(instances, grid, native, args.thresholds)
                for grid in sorted({r.settings["self_res"] for r in results})]
    buckets = [b.name for b in OCCLUSION_BUCKETS if b.name in baseline.by_bucket]
    print(f"{len(instances)} instances of {args.ann} with occlusion > {args.min_occlusion:.0%}; model "
          f"{args.model}")
    print(f"{'setting':<80} {'IoU':>6} " + " ".join(f"{b:>7}" for b in buckets))
    for r in [baseline, *ceilings, *results[:15]]:
        name = ", ".join(f"{k} {v}" for k, v in r.settings.items())
        print(f"{name:<80} {r.prior_iou:6.3f} "
              + " ".join(f"{r.by_bucket.get(b, float('nan')):7.3f}" for b in buckets))
    print(how_to_record(args.model, model, results[0]))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"baseline": baseline.__dict__, "ceilings": [r.__dict__ for r in ceilings],
                       "results": [r.__dict__ for r in results]}, fh, indent=1)
    return 0
