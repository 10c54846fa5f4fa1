"""DiffSP throughput and peak memory: a naive baseline, plain denoising, and ours, side by side.

    python -m benchmarks.diffsp_speed                       # tiny-random model, CPU, batch 16
    python -m benchmarks.diffsp_speed --real-arch --rois 2 --batch-size 1     # SD-1.5-inpaint architecture
    python -m benchmarks.diffsp_speed --real-arch --device cuda --dtype fp16  # on a GPU
    python -m benchmarks.diffsp_speed --real-arch --device cuda --dtype fp16 --preset fast  # the fast preset
    ... --out benchmarks/results/diffsp_speed/MACHINE/NAME.json   # also write the table as a JSON record

(a) naive: one ROI at a time, every attention layer's processor replaced by one that stores every
    probability map of every layer at every step; the maps are aggregated afterwards.
(b) plain: batched denoising with the model's own (SDPA) processors and no capture (the floor).
(c) ours: batched DiffSP (selective capture with running sums).
Each variant runs in its own process, so peak memory (CUDA: max allocated; CPU: peak RSS) is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.records import argument_parser, cpu_machine, record, write_record

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"a": "naive (1 ROI at a time, every map kept)", "b": "plain denoising (SDPA, no capture)",
            "c": "ours (batched DiffSP)"}


class KeepEveryMap:
    """The simple way: explicit attention at every layer, every probability map appended to a list."""

    def __init__(self, log: list, name: str) -> None:
        self.log, self.name = log, name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q, k, v = (attn.head_to_batch_dim(t) for t in (attn.to_q(hidden_states), attn.to_k(context),
                                                       attn.to_v(context)))
        probs = attn.get_attention_scores(q, k, None)
        self.log.append((self.name, probs.view(hidden_states.shape[0], attn.heads, *probs.shape[1:])))
        return attn.to_out[1](attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, v))))


def naive_priors(diffsp, batch) -> torch.Tensor:
    cfg, unet = diffsp.config, diffsp.pipe.unet
    out = []
    for i in range(len(batch)):
        one, log = batch[i:i + 1], []
        original = unet.attn_processors
        unet.set_attn_processor({name: KeepEveryMap(log, name) for name in original})
        try:
            diffsp.denoise(one)
        finally:
            unet.set_attn_processor(dict(original))
        self_maps = [p.float().mean(1) for n, p in log if ".attn1." in n and p.shape[-1] == cfg.self_res ** 2]
        cross_maps = [p.float().mean(1) for n, p in log
                      if ".attn2." in n and p.shape[-2] == cfg.cross_res ** 2]
        _, weights = diffsp._text_for(one.categories)
        out.append(diffsp.priors_from_attention(torch.stack(self_maps).mean(0),
                                                torch.stack(cross_maps).mean(0), weights, one.boxes))
    return torch.cat(out)


def make_model(args):
    from priors.architectures import build_sd15_inpaint_architecture, build_tiny_autoencoder
    from priors.models import DiffusionModel, load_model, weights_sha256

    if not args.real_arch:
        return load_model("tiny-random", dtype=args.dtype, device=args.device)
    from priors.models import DTYPES

    pipe = build_sd15_inpaint_architecture().to(device=args.device, dtype=DTYPES[args.dtype])
    # TAESD's architecture as the small autoencoder (encoder "tiny"; nn.Module's `to`: diffusers' warns)
    tiny_vae = torch.nn.Module.to(build_tiny_autoencoder(pipe.vae.config), args.device, DTYPES[args.dtype])
    return DiffusionModel(pipe, "sd15-inpaint-architecture-random", weights_sha256(pipe), args.dtype,
                          _tiny_vae=tiny_vae)


def make_rois(n: int, resolution: int, device: str):
    from priors.diffsp import RoiBatch

    g = torch.Generator().manual_seed(0)
    visible = (torch.rand(n, 1, resolution, resolution, generator=g) > 0.4).float()
    box = resolution / 12
    return RoiBatch(torch.rand(n, 3, resolution, resolution, generator=g).to(device), visible.to(device),
                    (1 - visible).to(device),
                    torch.tensor([[box, box, resolution - box, resolution - box]] * n),
                    ["car", "ball", "star", "moon"] * (n // 4) + ["box"] * (n % 4), list(range(n)))


def run_variant(args) -> dict:
    """Time one variant in this process; returns ROIs/s and peak memory."""
    from priors.diffsp import DiffSP, preset_config

    torch.set_grad_enabled(False)
    model = make_model(args)
    diffsp = DiffSP(model, preset_config(args.preset, steps=args.steps))
    rois = make_rois(args.rois, diffsp.config.resolution, args.device)
    step = 1 if args.variant == "a" else args.batch_size
    run = {"a": lambda b: naive_priors(diffsp, b), "b": diffsp.denoise, "c": diffsp}[args.variant]
    run(rois[0:1])  # warm-up (kernels, text embeddings)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeat):  # best of `repeat`: the least disturbed run
        sync()
        start = time.perf_counter()
        for i in range(0, args.rois, step):
            run(rois[i:i + step])
        sync()
        times.append(time.perf_counter() - start)
    seconds = min(times)
    if args.device.startswith("cuda"):
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": args.variant, "rois_per_s": args.rois / seconds, "seconds": seconds,
            "peak_mb": peak_mb}


def main() -> None:
    parser = argument_parser(__doc__, __spec__.name)
    parser.add_argument("--real-arch", action="store_true",
                        help="SD-1.5-inpainting architecture (random weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rois", type=int, default=64, help="ROIs per variant (default 64)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per variant and round (default 2)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of all variants; the best run counts (default 3)")
    parser.add_argument("--steps", type=int, help="DDIM steps T (default: the preset's, else 10)")
    parser.add_argument("--preset", choices=("default", "fast"),
                        help="DiffSP's named settings (priors.diffsp.PRESETS) for those not given")
    parser.add_argument("--variants", default=None, help="which of a, b, c (default: all; real arch: b, c)")
    parser.add_argument("--out", type=Path, help="also write the table as a JSON record here")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    chosen = args.variants or ("bc" if args.real_arch else "abc")
    results: dict[str, dict] = {}
    for _ in range(args.rounds):  # variants interleaved, so that a slow spell of the machine hits all of them
        for v in chosen:
            cmd = [sys.executable, "-m", __spec__.name, "--variant", v, *sys.argv[1:]]
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                                 env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
            if out.returncode:
                sys.exit(f"variant {v} failed:\n{out.stderr}")
            r = json.loads(out.stdout.strip().splitlines()[-1])
            if v not in results or r["rois_per_s"] > results[v]["rois_per_s"]:
                results[v] = {**r, "peak_mb": max(r["peak_mb"], results.get(v, {}).get("peak_mb", 0))}
    device = (f"{torch.cuda.get_device_name()}, torch {torch.__version__}" if args.device.startswith("cuda")
              else cpu_machine())
    model = "SD-1.5-inpaint architecture, 512 px" if args.real_arch else "tiny-random model, 64 px"
    settings = f"preset {args.preset or 'default'}" + (f", {args.steps} steps" if args.steps else "")
    lines = [f"DiffSP benchmark: {model}, {args.dtype}, {settings}, {args.rois} ROIs (best of "
             f"{args.rounds} x {args.repeat}), batch {args.batch_size}, on {device}",
             "| variant | ROIs/s | s/ROI | peak memory (MB) | cost vs plain |", "|---|---|---|---|---|"]
    for v, r in results.items():
        rel = f"{results['b']['rois_per_s'] / r['rois_per_s']:.2f}x" if "b" in results else "-"
        lines.append(f"| ({v}) {VARIANTS[v]} | {r['rois_per_s']:.2f} | {1 / r['rois_per_s']:.3f} | "
                     f"{r['peak_mb']:.0f} | {rel} |")
    if "a" in results and "c" in results:
        gain = results["c"]["rois_per_s"] / results["a"]["rois_per_s"]
        lines.append(f"ours vs naive: {gain:.1f}x the ROIs/s")
    print("\n".join(lines))
    if args.out:
        write_record(args.out, record(device, model=model, dtype=args.dtype, settings=settings,
                                      rois=args.rois, batch_size=args.batch_size, results=results,
                                      table="\n".join(lines)))


if __name__ == "__main__":
    main()
