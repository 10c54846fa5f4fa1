"""`aisdiff train-diffusion`: train the small inpainting model on a dataset's train split and save it."""
from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

from ..annotations import AmodalAnnotations
from ..errors import AisdiffError
from ..models import DTYPES, MODEL_DEFAULTS_FILE, shipped_name
from .arguments import add_run_arguments
from .crops import load_object_crops
from .output import command_line, replaced_when_done
from .train import (
    TrainConfig,
    build_architecture,
    plot_losses,
    train_unet,
    train_vae,
    write_card,
)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train-diffusion",
        help="train a small Stable Diffusion inpainting model on ROI crops (for DiffSP offline)",
        description="Train a small inpainting diffusion model (Stable Diffusion's classes and 9-channel "
                    "interface) on the unoccluded ROI crops of an amodal train split, and save it with "
                    "save_pretrained (safetensors), a model card and the loss curve.")
    p.add_argument("--ann", required=True, help="train annotation file (any supported amodal format)")
    p.add_argument("--images", required=True, help="folder holding the images the annotations name")
    p.add_argument("--out", required=True,
                   help="output folder (diffusers layout); replaced only when training ends")
    add_run_arguments(p, TrainConfig)
    p.add_argument("--save-dtype", choices=["fp32", "fp16"], default="fp16",
                   help="dtype of the saved weights (default: fp16, half the size; loading casts to any "
                        "dtype)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise AisdiffError(f"{out} exists; pass --overwrite to replace it, or choose another --out.")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    if cfg.resolution % 32:
        raise AisdiffError(
            f"--resolution {cfg.resolution} must be a multiple of 32 (VAE factor 4, UNet factor 8)")
    if not 0 <= cfg.text_to_image_steps <= cfg.unet_steps:
        raise AisdiffError(f"--text-to-image-steps {cfg.text_to_image_steps} must lie between 0 and "
                           f"--unet-steps {cfg.unet_steps} (they are the first of the UNet steps)")
    device = torch.device(args.device)
    annotations = AmodalAnnotations(args.ann, images_dir=args.images)
    started = time.time()
    crops = load_object_crops(annotations, cfg.resolution, cfg.context)
    print(f"{len(crops)} unoccluded instances of {len(annotations)} in {len(annotations.images)} images",
          flush=True)
    torch.manual_seed(cfg.seed)  # the VAE's posterior sampling draws from the global generator
    generator = torch.Generator().manual_seed(cfg.seed)
    pipe = build_architecture(cfg.resolution, crops.categories, cfg.seed).to(device)
    losses = {"vae": train_vae(pipe.vae, crops, cfg, generator, device)}
    losses.update(train_unet(pipe, crops, cfg, generator, device))
    seconds = time.time() - started

    with replaced_when_done(out) as tmp:
        pipe.to("cpu", DTYPES[args.save_dtype]).save_pretrained(tmp, safe_serialization=True)
        (tmp / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        (tmp / "losses.json").write_text(json.dumps({k: [round(v, 5) for v in vals]
                                                     for k, vals in losses.items()}))
        plot_losses(losses, tmp / "loss.png")
        data = {"name": shipped_name(out), "ann": Path(args.ann).name, "sha256": annotations.sha256(),
                "images": len(annotations.images), "instances": len(annotations),
                "scaling_factor": pipe.vae.config.scaling_factor}
        command = command_line(f"aisdiff train-diffusion --ann {shlex.quote(args.ann)} --out "
                               f"{shlex.quote(str(out))} --seed {cfg.seed}")
        write_card(tmp, cfg, crops, data, losses, seconds, str(device), command, args.save_dtype)
    print(f"saved {out} ({seconds / 60:.1f} min); final loss VAE {losses['vae'][-1]:.4f}, UNet "
          f"{losses['unet'][-1]:.4f}")
    print(f"DiffSP uses the paper's settings with it until tuned: `aisdiff tune-diffsp --model {out}` says "
          f"how to record its own in {out / MODEL_DEFAULTS_FILE}.")
    return 0
