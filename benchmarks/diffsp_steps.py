"""How few DiffSP steps are enough: prior quality against cost, for the fast preset.

    python -m benchmarks.diffsp_steps --data work_dirs/fidelity/synthetic     # the synthetic benchmark

For each setting (DDIM steps T, `strength` < 1 = the last strength x T steps of that schedule started from
the visible crop's noised latent, attention grids, the encoder: the model's VAE or its small autoencoder)
the trained tiny model's priors are scored on occluded ground-truth instances as `aisdiff tune-diffsp`
scores them: the threshold is chosen on train (a fixed sample of `--train-limit`), the IoU with the amodal
mask reported on val (every occluded instance), overall and by occlusion bucket. Beside each, the cost per
ROI on SD-1.5 inpainting's architecture at 512 px (with TAESD for the small autoencoder), counted
(`priors.cost`: FLOPs on the meta device, same on every machine) as a ratio to T = 10. The fast preset is
the cheapest setting whose val IoU is within `--tolerance` of T = 10's overall and in every bucket. Writes
benchmarks/results/diffsp_steps/diffsp_steps.json (command, machine, date, every row, the choice).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.records import RESULTS, argument_parser, record
from priors.annotations import AmodalAnnotations
from priors.cost import diffsp_tflops, on_sd15
from priors.diffsp import ENCODERS, TIMESTEP_SPACINGS, DiffSP, DiffSPConfig
from priors.models import load_model
from priors.occlusion import OCCLUDED, OCCLUSION_BUCKETS
from priors.training.tune import sample_instances, score, visible_baseline

THRESHOLDS = [round(0.05 * i, 2) for i in range(2, 19)]
# (steps, strength, self_res, cross_res, resolution, timestep_spacing, encoder); None takes the model's
# default. The tiny model (64 px, latent 16) is tuned to self_res = cross_res = 16; at 48 px (latent 12) its
# grids are 12. Its scheduler spaces steps "leading" (as SD-1.5's): T = 1 runs t = 1 only, "trailing" runs
# t = 999. Encoder "tiny": its distilled small autoencoder (`aisdiff distill-encoder`) in place of the VAE.
DEFAULT_GRID = [(10, 1.0, None, None, None, None, None), (5, 1.0, None, None, None, None, None),
                (3, 1.0, None, None, None, None, None), (2, 1.0, None, None, None, None, None),
                (1, 1.0, None, None, None, None, None), (10, 0.5, None, None, None, None, None),
                (10, 0.3, None, None, None, None, None), (10, 0.2, None, None, None, None, None),
                (10, 0.1, None, None, None, None, None), (5, 0.4, None, None, None, None, None),
                (2, 1.0, 8, None, None, None, None), (2, 1.0, None, 8, None, None, None),
                (10, 1.0, 12, 12, 48, None, None), (2, 1.0, 12, 12, 48, None, None),
                (1, 1.0, 12, 12, 48, None, None),
                (10, 1.0, None, None, None, "trailing", None), (3, 1.0, None, None, None, "trailing", None),
                (2, 1.0, None, None, None, "trailing", None), (1, 1.0, None, None, None, "trailing", None),
                (10, 0.2, None, None, None, "trailing", None), (10, 0.1, None, None, None, "trailing", None),
                (10, 1.0, None, None, None, None, "tiny"),
                (3, 1.0, None, None, None, "trailing", "tiny"),
                (2, 1.0, None, None, None, "trailing", "tiny"),
                (1, 1.0, None, None, None, "trailing", "tiny")]
SETTING = "steps,strength,self_res,cross_res,resolution[,timestep_spacing[,encoder]]"


def parse_setting(text: str) -> tuple:
    """SETTING as text ('-' for the model's default) -> a DEFAULT_GRID tuple."""
    parts = [None if p in ("-", "") else p for p in text.split(",")]
    if len(parts) not in (5, 6, 7):
        raise argparse.ArgumentTypeError(f"{text!r}: give {SETTING}")
    steps, strength, *sizes = parts[:5]
    spacing, encoder = (parts[5:] + [None, None])[:2]
    if spacing not in (None, *TIMESTEP_SPACINGS):
        raise argparse.ArgumentTypeError(f"{text!r}: timestep_spacing must be one of {TIMESTEP_SPACINGS}")
    if encoder not in (None, *ENCODERS):
        raise argparse.ArgumentTypeError(f"{text!r}: encoder must be one of {ENCODERS}")
    return (int(steps), float(strength) if strength else 1.0, *(s and int(s) for s in sizes), spacing,
            encoder)


def measure(model, train, val, setting: tuple, args) -> dict:
    """One setting: the threshold chosen on train, val IoU overall and by bucket, and the SD-1.5 cost."""
    steps, strength, self_res, cross_res, resolution, spacing, encoder = setting
    base = DiffSPConfig(steps=steps, strength=strength, self_res=self_res, cross_res=cross_res,
                        resolution=resolution, timestep_spacing=spacing, encoder=encoder, seed=args.seed)
    start = time.perf_counter()
    on_train = score(model, train[0], train[1], base, [args.tau], THRESHOLDS, args.batch_size,
                     progress=False)
    best = max(on_train, key=lambda r: r.prior_iou)
    on_val = score(model, val[0], val[1], base, [args.tau], [best.settings["threshold"]], args.batch_size,
                   progress=False)[0]
    resolved = base.resolved(model)
    sd15 = on_sd15(replace(resolved, tau=args.tau), model)
    return {"steps": steps, "strength": strength, "unet_steps": resolved.unet_steps,
            "timestep_spacing": resolved.timestep_spacing, "encoder": resolved.encoder,
            "timesteps": [int(t) for t in DiffSP(model, base).run_timesteps],
            "self_res": resolved.self_res, "cross_res": resolved.cross_res, "resolution": resolved.resolution,
            "sd15_resolution": sd15.resolution, "tau": args.tau,
            "threshold": best.settings["threshold"], "train_iou": best.prior_iou, "val_iou": on_val.prior_iou,
            "val_by_bucket": on_val.by_bucket, "sd15_tflops": diffsp_tflops(sd15),
            "sd15_tflops_uncut": diffsp_tflops(sd15, cut_final_step=False),
            "seconds": time.perf_counter() - start}


def choose(rows: list[dict], reference: dict, tolerance: float) -> dict | None:
    """The cheapest row within `tolerance` of `reference`'s val IoU, overall and in every bucket."""
    def close(row: dict) -> bool:
        return (row["val_iou"] >= reference["val_iou"] - tolerance
                and all(row["val_by_bucket"].get(b, 0.0) >= v - tolerance
                        for b, v in reference["val_by_bucket"].items()))

    fitting = [r for r in rows if close(r)]
    return min(fitting, key=lambda r: (r["sd15_tflops"], -r["val_iou"])) if fitting else None


def table(rows: list[dict], reference: dict, buckets: list[str], chosen: dict | None) -> str:
    lines = ["| T | spacing | encoder | strength | timesteps run | self | cross | px (SD-1.5 px) | "
             "threshold | val IoU | " + " | ".join(buckets) + " | SD-1.5 TFLOP/ROI | cost vs T=10 |",
             "|---" * (12 + len(buckets)) + "|"]
    for r in rows:
        mark = " **fast**" if r is chosen else ""
        lines.append(f"| {r['steps']} | {r['timestep_spacing']} | {r['encoder']} | "
                     f"{r['strength']} | "
                     f"{', '.join(map(str, r['timesteps']))} | {r['self_res']} | "
                     f"{r['cross_res']} | {r['resolution']} ({r['sd15_resolution']}) | {r['threshold']} | "
                     f"{r['val_iou']:.3f}{mark} | "
                     + " | ".join(f"{r['val_by_bucket'].get(b, float('nan')):.3f}" for b in buckets)
                     + f" | {r['sd15_tflops']:.2f} | {reference['sd15_tflops'] / r['sd15_tflops']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argument_parser(__doc__, __spec__.name)
    parser.add_argument("--data", type=Path, required=True,
                        help="a synthetic benchmark folder (annotations/{train,val}.json, images/)")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--tau", type=int, default=0, help="(the tiny model's tuned tau)")
    parser.add_argument("--train-limit", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--settings", type=parse_setting, nargs="+", default=DEFAULT_GRID,
                        help=f"{SETTING} each ('-': the model's default)")
    parser.add_argument("--out", type=Path, default=RESULTS / "diffsp_steps" / "diffsp_steps.json")
    args = parser.parse_args()

    model = load_model(args.model, device="cpu")
    splits = {}
    for split, limit in (("train", args.train_limit), ("val", None)):
        ann = AmodalAnnotations(args.data / "annotations" / f"{split}.json", images_dir=args.data / "images")
        splits[split] = (ann, sample_instances(ann, OCCLUDED, limit, args.seed))
    reference_setting = DEFAULT_GRID[0]  # T = 10 at the model's defaults: what every row is measured against
    settings = [reference_setting, *(s for s in args.settings if s != reference_setting)]
    rows = []
    for setting in settings:
        rows.append(measure(model, splits["train"], splits["val"], setting, args))
        r = rows[-1]
        print(f"T {r['steps']} {r['timestep_spacing']} {r['encoder']} strength {r['strength']} self "
              f"{r['self_res']} "
              f"cross {r['cross_res']}: val IoU "
              f"{r['val_iou']:.3f}, {r['sd15_tflops']:.2f} TFLOP/ROI ({r['seconds']:.0f} s)", flush=True)
    reference = rows[0]
    chosen = choose(rows, reference, args.tolerance)
    baseline = visible_baseline(splits["val"][1], DiffSPConfig().prior_size)
    buckets = [b.name for b in OCCLUSION_BUCKETS if b.name in baseline.by_bucket]
    text = table(rows, reference, buckets, chosen)
    print(f"\n{len(splits['val'][1])} occluded val instances ({len(splits['train'][1])} train for the "
          f"threshold); visible mask's IoU {baseline.prior_iou:.3f}\n{text}")
    print(f"fast preset (cheapest within {args.tolerance} of T=10, overall and every bucket): "
          + (json.dumps({k: chosen[k] for k in ("steps", "strength", "self_res", "cross_res", "resolution",
                                                 "timestep_spacing", "encoder")})
             if chosen else "none"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = (f"{platform.machine()}, {platform.processor() or 'cpu'}, "
               f"torch threads {torch.get_num_threads()}")
    args.out.write_text(json.dumps(record(
        machine, model=args.model, tolerance=args.tolerance, visible_iou=baseline.prior_iou,
        visible_by_bucket=baseline.by_bucket, rows=rows, fast=chosen, table=text), indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
