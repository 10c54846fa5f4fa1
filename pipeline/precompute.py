"""`aisdiff precompute`: DiffSP priors for every ground-truth (and proposal) ROI of a dataset, into a store.

Runs as one process, or under `accelerate launch` as many (CPU processes, GPUs, nodes). The store's rows
are split into whole Zarr chunks and the pending chunks are dealt round-robin to the processes; each
process streams its chunks' images through DataLoader workers, runs DiffSP in batches, and writes each
chunk (then marks it done) as soon as it is complete. Rerunning the same command resumes; a store made
with other settings is refused; `--overwrite` starts over. A process that fails leaves a marker beside the
store, so that the main process stops with its error instead of waiting for it (`pipeline.ranks`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from priors.annotations import AmodalAnnotations
from priors.diffsp import (
    ENCODERS,
    MASK_MODES,
    PAPER_DEFAULTS,
    PRESETS,
    TIMESTEP_SPACINGS,
    DiffSP,
    preset_config,
)
from priors.errors import AisdiffError
from priors.location import Location
from priors.models import DTYPES, MODEL_DEFAULTS_FILE, load_model
from priors.proposals import Proposals
from priors.store import RECOMPUTE_FLAG, PriorStore, StoreFullError, human_bytes, row_bytes
from priors.store_settings import dataset_settings

from .loader import ChunkRois, roi_loader
from .ranks import agreed, clear_failures, failure_recorded, launched_as_many, wait_for_ranks
from .rois import RoiTable, enumerate_rois

if TYPE_CHECKING:  # imported when the command runs: `aisdiff --help` stays fast
    from accelerate import Accelerator

PROGRESS_POLL_SECONDS = 2.0


def _model_default(paper: object) -> str:
    """The help text's default for a DiffSP setting that the model may set (else the paper's `paper`)."""
    return f"(default: the model's, from its {MODEL_DEFAULTS_FILE}, else {paper})"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "precompute", help="compute DiffSP shape priors for a dataset's ROIs into a Zarr prior store",
        description="Compute DiffSP priors for every ground-truth instance (and, with --proposals, every "
                    "proposal) into a Zarr prior store. Resumes by default. DiffSP settings not given take "
                    f"the model's defaults (its folder's {MODEL_DEFAULTS_FILE}), else the paper's. Same "
                    "arguments under `accelerate launch [...] -m pipeline precompute`.")
    p.add_argument("--ann", required=True, type=Path,
                   help="annotation file (KINS 2020 / KINS / COCOA-cls / D2SA / aistron)")
    p.add_argument("--images", required=True, type=Path, help="folder of the annotation file's images")
    p.add_argument("--out", required=True,
                   help="prior store to create or resume: a .zarr folder, or a URL such as "
                        "s3://BUCKET/PATH.zarr (credentials from the standard AWS environment; "
                        "docs/precompute.md)")
    p.add_argument("--proposals", type=Path,
                   help="COCO results JSON of detector proposals (docs/precompute.md, 'Proposals')")
    p.add_argument("--proposals-only", action="store_true",
                   help="with --proposals, no ground-truth rows: e.g. a model's detections of its train "
                        "split, for LoadCachedPriors(source='detections', detections=STORE)")
    p.add_argument("--format", choices=["kins2020", "kins", "cocoa", "d2sa", "aistron"],
                   help="annotation format (default: detected from the keys)")
    p.add_argument("--model", default="tiny",
                   help="'tiny', 'tiny-high', a local diffusers folder or a hub id (default: tiny)")
    p.add_argument("--preset", choices=list(PRESETS),
                   help="named DiffSP settings for those not given: 'fast' = " + json.dumps(PRESETS["fast"])
                        + " (cheapest within 0.01 prior IoU of T = 10; docs/diffusion_weights.md)")
    p.add_argument("--steps", type=int, help="DDIM steps T " + _model_default(PAPER_DEFAULTS["steps"]))
    p.add_argument("--tau", type=int, help="self-attention power " + _model_default(PAPER_DEFAULTS["tau"]))
    p.add_argument("--strength", type=float,
                   help="run the last strength x T DDIM steps, from the visible crop's noised latent "
                        + _model_default(PAPER_DEFAULTS["strength"]))
    p.add_argument("--timestep-spacing", choices=TIMESTEP_SPACINGS,
                   help="how the T DDIM steps spread over the training timesteps ('trailing' starts at "
                        "t = 999) " + _model_default("its scheduler's"))
    p.add_argument("--encoder", choices=ENCODERS,
                   help="what encodes the visible-only crop: the model's VAE, or the encoder of its small "
                        "autoencoder (its folder's vae_tiny/, `aisdiff distill-encoder`) "
                        + _model_default(PAPER_DEFAULTS["encoder"]))
    p.add_argument("--tiny-vae",
                   help="the small autoencoder for --encoder tiny: an AutoencoderTiny folder or hub id (e.g. "
                        "madebyollin/taesd for SD-1.x; default: the model folder's vae_tiny/)")
    p.add_argument("--self-res", type=int,
                   help="self-attention token grid side " + _model_default("latent / 2"))
    p.add_argument("--cross-res", type=int,
                   help="cross-attention token grid side " + _model_default("latent / 4"))
    p.add_argument("--resolution", type=int,
                   help="model input size in pixels " + _model_default("its native size"))
    p.add_argument("--prior-size", type=int, default=28, help="stored prior size S (default: 28)")
    p.add_argument("--context", type=float,
                   help="crop side / longer box side " + _model_default(PAPER_DEFAULTS["context"]))
    p.add_argument("--prompt",
                   help="text template with {category} " + _model_default(repr(PAPER_DEFAULTS["prompt"])))
    p.add_argument("--guidance-scale", type=float, help="> 1 turns classifier-free guidance on "
                   + _model_default(PAPER_DEFAULTS["guidance_scale"]))
    p.add_argument("--mask-mode", choices=MASK_MODES,
                   help="inpainting mask " + _model_default(PAPER_DEFAULTS["mask_mode"]))
    p.add_argument("--batch-size", type=int, default=16, help="ROIs per DiffSP batch (default: 16)")
    p.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="model dtype (default: fp32)")
    p.add_argument("--seed", type=int, default=0,
                   help="job seed; each ROI's noise derives from it (default: 0)")
    p.add_argument("--chunk-rows", type=int, default=128,
                   help="rows per Zarr chunk, the unit of work (default: 128)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="image-decoding DataLoader workers per process (default: 2)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="skip and count invalid records instead of stopping")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing store instead of resuming it")
    p.add_argument(RECOMPUTE_FLAG, action="store_true",
                   help="read every chunk of the store being resumed and recompute the rows of those that "
                        "are damaged (`aisdiff inspect --verify` lists them)")
    p.add_argument("--ignore-free-space", action="store_true",
                   help="start even where the store's file system seems to have too little free space")
    p.add_argument("--limit", type=int, help="only the first N ROIs (in row order)")
    p.add_argument("--wait-timeout", type=float, default=1800,
                   help="seconds the main process waits for the others without any chunk finishing before it "
                        "stops with an error (default: 1800)")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    for name in ("steps", "prior_size", "batch_size", "chunk_rows"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise AisdiffError(f"--{name.replace('_', '-')} must be >= 1")
    if args.limit is not None and args.limit < 1:
        raise AisdiffError("--limit must be >= 1")
    if args.workers < 0:
        raise AisdiffError("--workers must be >= 0")
    if not args.wait_timeout > 0:
        raise AisdiffError("--wait-timeout must be > 0 seconds")
    if args.proposals_only and not args.proposals:
        raise AisdiffError("--proposals-only needs --proposals (the proposals file whose rows to compute)")
    if not args.images.is_dir():
        raise AisdiffError(f"--images {args.images} is not a folder; point it at the dataset's image folder.")
    Location(args.out)  # a URL whose protocol cannot be opened: said now, not after the model loaded


def check_free_space(where: Location, rows: int, per_row: float) -> None:
    """Stop before computing when `rows` rows of `per_row` bytes will not fit on the file system that holds
    the store `where` (where it says: object stores do not)."""
    free, need = where.free_bytes(), rows * per_row
    if free is not None and need > free:
        raise StoreFullError(
            f"{where}: the store will not fit: its {rows} rows left need about {human_bytes(need)}, and its "
            f"file system has {human_bytes(free)} free. Free space or choose another --out (pass "
            "--ignore-free-space to start all the same; a full disk stops the job, and rerunning it "
            "resumes).")


def _warn_single_cpu_process() -> None:
    """`accelerate launch --cpu --num_processes N` without MPI starts one process: say so instead of hiding
    it."""
    launched_for_many = (os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
                         and "MASTER_ADDR" in os.environ)
    if launched_for_many and not launched_as_many():
        print("aisdiff precompute: warning: running ONE process. Accelerate starts several CPU processes "
              "through MPI only: use --config_file configs/accelerate/cpu_2proc.yaml, or add "
              "--mpirun_hostfile configs/accelerate/hostfile (with the venv's bin/ on PATH for mpirun).",
              file=sys.stderr)


def _diffsp(args: argparse.Namespace, device: torch.device) -> DiffSP:
    """The model and DiffSP at the requested settings; invalid settings are an AisdiffError."""
    model = load_model(args.model, dtype=args.dtype, device=device, tiny_vae=args.tiny_vae)
    try:
        config = preset_config(args.preset, steps=args.steps, tau=args.tau, prior_size=args.prior_size,
                               resolution=args.resolution, self_res=args.self_res, cross_res=args.cross_res,
                               context=args.context, prompt=args.prompt, guidance_scale=args.guidance_scale,
                               mask_mode=args.mask_mode, strength=args.strength,
                               timestep_spacing=args.timestep_spacing, encoder=args.encoder, seed=args.seed)
        return DiffSP(model, config)
    except ValueError as exc:
        raise AisdiffError(f"DiffSP settings for {args.model}: {exc}") from None


def open_store(args: argparse.Namespace, settings: dict, table: RoiTable,
               accelerator: Accelerator) -> tuple[PriorStore, bool]:
    """The main process creates or resumes the store (recomputing damaged chunks if asked), clears stale
    failure markers and checks the free space; the others open the store once it exists. A failure on any
    rank ends every rank (`agreed`). Returns (store, resumed)."""
    resumed, out = False, Location(args.out)
    with agreed(accelerator, f"creating {out}"):
        if accelerator.is_main_process:
            if not args.ignore_free_space and (args.overwrite or not out.exists()):
                check_free_space(out, len(table.rows), row_bytes(args.prior_size))
            store, resumed = PriorStore.open_or_create(
                out, settings, table.rows, args.prior_size, args.chunk_rows, overwrite=args.overwrite,
                recompute_damaged=args.recompute_damaged)
            clear_failures(out)
            if not args.ignore_free_space:
                check_free_space(out, int((~store.done()).sum()), store.bytes_per_row())
    with agreed(accelerator, f"opening {out}"):
        if not accelerator.is_main_process:
            store = PriorStore.open(args.out, settings, mode="r+")
    return store, resumed


class Progress:
    """The main process's bar: rows done by every process (read from the store at most every
    PROGRESS_POLL_SECONDS) plus the rows this process computed but has not written yet."""

    def __init__(self, store: PriorStore, done_at_start: int, main: bool) -> None:
        from tqdm import tqdm

        self.store, self.done_at_start = store, done_at_start
        self.to_compute = len(store) - done_at_start
        self.bar = tqdm(total=self.to_compute, unit="ROI", disable=not main or self.to_compute == 0,
                        desc="DiffSP priors", dynamic_ncols=True)
        self.unwritten, self.last_poll = 0, 0.0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the bar before any error is said, so the error is the last thing on the terminal."""
        self.bar.close()

    def poll(self) -> None:
        """Show the store's progress if the last look is older than PROGRESS_POLL_SECONDS."""
        if not self.bar.disable and time.perf_counter() - self.last_poll > PROGRESS_POLL_SECONDS:
            self.show(int(self.store.done().sum()))

    def show(self, done: int) -> None:
        """Show `done` rows of the store as done, plus this process's unwritten ones."""
        self.last_poll = time.perf_counter()
        self.bar.n = min(self.to_compute, done - self.done_at_start + self.unwritten)
        self.bar.refresh()


def compute_chunks(store: PriorStore, diffsp: DiffSP, dataset: ChunkRois, workers: int,
                   progress: Progress) -> None:
    """DiffSP over this process's chunks; each chunk is written, then marked done, once complete."""
    size = store.prior_size
    buffers: dict[int, tuple[np.ndarray, int]] = {}  # chunk -> (priors, rows still missing)
    with torch.inference_mode():
        for chunk, rows, batch in roi_loader(dataset, workers):
            sl = store.chunk_slice(chunk)
            buf, missing = buffers.get(chunk) or (np.zeros((sl.stop - sl.start, size, size), np.float32),
                                                  sl.stop - sl.start)
            buf[rows - sl.start] = diffsp(batch).float().cpu().numpy()
            missing -= len(rows)
            progress.unwritten += len(rows)
            if missing:
                buffers[chunk] = (buf, missing)
            else:
                buffers.pop(chunk, None)
                store.write_chunk(chunk, buf)
                progress.unwritten -= sl.stop - sl.start
            progress.poll()


def summary(store: PriorStore, resumed: bool, processes: int, done_at_start: int, seconds: float,
            invalid: Counter) -> str:
    """The table the main process prints at the end: rows computed now and before, skipped, speed, size."""
    done_now = int(store.done().sum())
    size = store.size_bytes()
    skipped = f"{sum(invalid.values())}" + (f" ({', '.join(f'{k} {v}' for k, v in sorted(invalid.items()))})"
                                            if invalid else "")
    rows = [("store", f"{store.path} ({'resumed' if resumed else 'new'}, {len(store)} rows, "
                      f"{store.num_chunks} chunks of {store.chunk_rows}, {processes} process(es))"),
            *([("damaged, recomputed", f"{len(store.reset)} chunk(s): {', '.join(map(str, store.reset))}")]
              if store.reset else []),
            ("computed now", str(done_now - done_at_start)),
            ("already done", str(done_at_start)),
            ("skipped invalid", skipped),
            ("time", f"{seconds:.1f} s"),
            ("ROIs/s", f"{(done_now - done_at_start) / seconds:.2f}"),
            ("store size", f"{human_bytes(size)} ({human_bytes(size / max(len(store), 1))}/row)")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(["precompute summary:"] + [f"  {k.ljust(width)}  {v}" for k, v in rows])


def run(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    _check_args(args)
    _warn_single_cpu_process()
    # collectives give up after --wait-timeout (a rank that died without a word)
    timeout = InitProcessGroupKwargs(timeout=timedelta(seconds=args.wait_timeout))
    # processes started by torch.distributed.run (or Slurm's srun) on machines without a GPU: Accelerate joins
    # them (over gloo) only when told that the job runs on CPUs; unjoined, each would compute the whole store
    cpu = launched_as_many() and not torch.cuda.is_available()
    accelerator = Accelerator(cpu=cpu, kwargs_handlers=[timeout])
    try:
        return _run(args, accelerator)
    finally:
        accelerator.end_training()


def _run(args: argparse.Namespace, accelerator: Accelerator) -> int:
    rank, main = accelerator.process_index, accelerator.is_main_process
    # share the cores, don't oversubscribe
    if accelerator.device.type == "cpu" and accelerator.num_processes > 1:
        local = int(os.environ.get("LOCAL_WORLD_SIZE") or accelerator.num_processes)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    started = time.perf_counter()

    with agreed(accelerator, "loading the annotations and the model"):
        annotations = AmodalAnnotations(args.ann, format=args.format, images_dir=args.images,
                                        skip_invalid=args.skip_invalid)
        proposals = Proposals(args.proposals, annotations, args.skip_invalid) if args.proposals else None
        table = enumerate_rois(annotations, proposals, args.seed, args.limit,
                               ground_truth=not args.proposals_only)
        if len(table) == 0:
            raise AisdiffError(f"{args.ann}: no valid ROI to compute (all records invalid, or an empty "
                               "file).")
        diffsp = _diffsp(args, accelerator.device)
    settings = {**diffsp.attrs, **dataset_settings(annotations, args.proposals, args.proposals_only)}
    store, resumed = open_store(args, settings, table, accelerator)

    done_at_start, pending = int(store.done().sum()), store.pending_chunks()
    accelerator.wait_for_everyone()  # all deal the same pending chunks: none is written before this
    owners = {chunk: i % accelerator.num_processes for i, chunk in enumerate(pending)}
    mine = [(chunk, store.chunk_slice(chunk)) for chunk, owner in owners.items() if owner == rank]
    dataset = ChunkRois(annotations, proposals, table, mine, diffsp.config.resolution, diffsp.config.context,
                        args.batch_size)
    with Progress(store, done_at_start, main) as progress:
        with failure_recorded(args.out, rank):
            compute_chunks(store, diffsp, dataset, args.workers, progress)
        if main:  # keep the bar moving while the other processes finish; stop if one failed or stalled
            wait_for_ranks(store, owners, args.wait_timeout, on_poll=progress.show)
    accelerator.wait_for_everyone()
    if main:
        invalid = Counter(annotations.invalid_counts())
        if proposals is not None:
            invalid.update(r.reason for r in proposals.invalid)
        print(summary(store, resumed, accelerator.num_processes, done_at_start, time.perf_counter() - started,
                      invalid))
    return 0
