"""`aisdiff distill-encoder`: a model's small autoencoder (`vae_tiny/`), distilled from its VAE.

DiffSP encodes one visible-only crop per ROI; on Stable Diffusion 1.5 that VAE encode costs as much as 1.4
UNet steps, so with few steps it is the largest share left (`--encoder tiny`,
docs/research/diffsp_steps.md). The stand-in is diffusers' `AutoencoderTiny` (TAESD's class and layout,
latents already scaled): its encoder learns the VAE's scaled latents (posterior mode, MSE) on the inputs
DiffSP encodes, the visible-only crops of a train split's objects with occluders and Stable Diffusion
inpainting's random masks laid over them (`crops.sample_batch`); its decoder learns the crop back from the
VAE's latents (L1 + MSE), so that the saved autoencoder is a whole one, as TAESD is (DiffSP never decodes).
For SD-1.x TAESD itself (madebyollin/taesd) can be saved into `vae_tiny/` instead.
"""
from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..annotations import AmodalAnnotations
from ..architectures import build_tiny_autoencoder
from ..diffsp import DiffSPConfig, vae_latents
from ..errors import AisdiffError
from ..models import TINY_VAE_FOLDER, load_model, model_folder, tiny_vae_sha256
from .arguments import add_run_arguments
from .crops import ObjectCrops, load_object_crops, sample_batch
from .output import command_line, replaced_when_done

CARD_FILE = "distill_config.json"  # beside the weights: settings, data, teacher, losses


@dataclass
class DistillConfig:
    """Everything that determines the distilled weights (recorded in CARD_FILE)."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    channels: int = 0  # block width; 0: TAESD's 64 for a factor-8 VAE, else the VAE's first block width
    random_mask_probability: float = 0.25  # SD inpainting's random rectangles, as the tiny model trained
    seed: int = 0


def distill(vae, crops: ObjectCrops, cfg: DistillConfig, context: float, device: torch.device,
            progress: bool = True) -> tuple[torch.nn.Module, dict[str, list[float]]]:
    """Train an AutoencoderTiny on `vae`'s latents of visible-only crops; returns it (eval mode) and the
    per-step losses of its encoder and decoder."""
    tiny = build_tiny_autoencoder(vae.config, seed=cfg.seed, channels=cfg.channels or None).to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(tiny.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.05)
    vae.eval()
    tiny.train()
    losses: dict[str, list[float]] = {"encoder": [], "decoder": []}
    for _ in tqdm(range(cfg.steps), desc="distill", disable=not progress):
        x = sample_batch(crops, cfg.batch_size, generator, context,
                         random_mask_probability=cfg.random_mask_probability).masked.to(device)
        with torch.no_grad():
            target = vae_latents(vae, x)
        encoder = F.mse_loss(tiny.encode(x).latents, target)
        recon = tiny.decode(target).sample
        decoder = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        (encoder + decoder).backward()
        opt.step()
        sched.step()
        losses["encoder"].append(encoder.item())
        losses["decoder"].append(decoder.item())
    return tiny.eval(), losses


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "distill-encoder",
        help="distill a model's small autoencoder (vae_tiny/, for DiffSP's --encoder tiny) from its VAE",
        description="Train an AutoencoderTiny (TAESD's layout) to give a model's VAE latents of the "
                    "visible-only ROI crops DiffSP encodes, on a train split's objects, and save it "
                    "(safetensors) as the model folder's vae_tiny/, where DiffSP's encoder 'tiny' loads it.")
    p.add_argument("--model", default="tiny",
                   help="'tiny', 'tiny-high' or a local diffusers model folder (default: tiny)")
    p.add_argument("--ann", required=True, help="train annotation file (any supported amodal format)")
    p.add_argument("--images", required=True, help="folder holding the images the annotations name")
    p.add_argument("--out", type=Path,
                   help=f"output folder (default: the model folder's {TINY_VAE_FOLDER}/); replaced only when "
                        "training ends")
    add_run_arguments(p, DistillConfig)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(func=run)


def output_folder(args: argparse.Namespace) -> Path:
    """Where the autoencoder goes: --out, else the model folder's TINY_VAE_FOLDER (checked: not there yet
    unless --overwrite)."""
    folder = model_folder(args.model)
    if args.out is None and folder is None:
        raise AisdiffError(f"--model {args.model}: not a local model folder; pass --out (and save the result "
                           f"as {TINY_VAE_FOLDER}/ of a local copy of the model).")
    out = args.out or folder / TINY_VAE_FOLDER
    if out.exists() and not args.overwrite:
        raise AisdiffError(f"{out} exists; pass --overwrite to replace it, or choose another --out.")
    return out


def run(args: argparse.Namespace) -> int:
    out = output_folder(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = DistillConfig(**{f.name: getattr(args, f.name) for f in fields(DistillConfig)})
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise AisdiffError("--steps and --batch-size must be at least 1")
    device = torch.device(args.device)
    model = load_model(args.model, device=device)
    # crops as DiffSP makes them (native size, the model's context); the teacher is the VAE whatever the
    # model's default encoder
    native = DiffSPConfig(encoder="vae").resolved(model)
    annotations = AmodalAnnotations(args.ann, images_dir=args.images)
    started = time.time()
    crops = load_object_crops(annotations, native.resolution, native.context)
    tiny, losses = distill(model.pipe.vae, crops, cfg, native.context, device)
    command = command_line(f"aisdiff distill-encoder --model {args.model} --ann {shlex.quote(str(args.ann))}")
    card = {"command": command, "config": asdict(cfg), "model": model.identity,
            "data": {"ann": Path(args.ann).name, "sha256": annotations.sha256(), "crops": len(crops)},
            "resolution": native.resolution, "context": native.context, "device": str(device),
            "minutes": round((time.time() - started) / 60, 1), "weights_sha256": tiny_vae_sha256(tiny),
            "final_loss": {k: round(sum(v[-100:]) / len(v[-100:]), 5) for k, v in losses.items()},
            "losses": {k: [round(x, 5) for x in v] for k, v in losses.items()}}
    with replaced_when_done(out) as tmp:
        tiny.to("cpu").save_pretrained(tmp, safe_serialization=True)
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=1) + "\n")
    print(f"saved {out} ({card['minutes']} min); final loss (mean of the last 100 steps) encoder "
          f"{card['final_loss']['encoder']:.4f}, decoder {card['final_loss']['decoder']:.4f}. DiffSP uses it "
          f"with --encoder tiny (`encoder='tiny'` in configs).")
    return 0
