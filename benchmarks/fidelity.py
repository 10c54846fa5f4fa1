"""Fidelity benchmark: does the diffusion shape prior help the amodal head?

    python -m benchmarks.fidelity [--seeds 0 1 2] [--iters 300] [--pretrain-iters 2000] [--detector frozen]
                                  [--variants a b c d e] [--work-dir DIR] [--cfg-options KEY=VALUE ...]
                                  [--head paper|recommended] [--cpu-kernels native|avx2] [--variation high]

On the synthetic benchmark (generated into WORK_DIR/synthetic/ if absent), all variants start from one
shared detector (variant a's Mask R-CNN R18-FPN without its mask head, trained `--pretrain-iters`
iterations on the amodal boxes, standing in for the pretrained backbone a real run would have: from
scratch, 300 CPU iterations detect almost nothing, so no mask head could show a difference). Each variant
then trains `--iters` more with the same schedule and seed, its mask head from scratch (none has a head
start), and is tested on val. With `--detector frozen` (the default) the shared detector stays fixed
(`FreezeModulesHook` on backbone, neck, RPN and box head): every variant detects the same boxes and only the
mask heads, where the variants differ, train; `--detector trained` fine-tunes it with the mask head.
The variants, (a) to (l), are the registry benchmarks/fidelity_variants.py (VARIANTS: each one's
config, priors and how it trains and tests; `--help` lists them).
(c) and (d) train on cached priors (`aisdiff precompute` on train) and test with on-the-fly DiffSP, with the
DiffSP settings given here; those not given are the trained model's defaults (tuned on train, shipped in
priors/weights/tiny-shapes/diffsp_config.json, see the README), for both models. Every AISDiff variant takes
the class of a detection (its DiffSP prompt, the oracle's ground truth, a per-category head's amodal channel)
from the same source, the box head's label by default (`--prior-labels detector`, what Mask R-CNN picks its
mask channel by): after a short schedule the mask head's own classifier, the paper's source, is near chance.
Beside AP, each AISDiff run reports what its amodal path was given (`prior/...` of the metric: the IoU of the
thresholded test prior and of the predicted visible mask with the amodal ground truth of the ground truths
it found), and the IoU of each ground-truth train prior store's priors with the train ground truth.
Every step goes through the `aisdiff` commands and reuses what an earlier run with the same settings left in
WORK_DIR (a finished run's metrics.json; the settings, the parsed config's sha256 and the prior model
identity included, are in each run's settings.json; a train prior store's, in WORK_DIR/priors_MODEL/
settings.json), so an interrupted benchmark resumes and an edited config, a retrained model or other DiffSP
settings are never mixed with old results. Code is not tracked: after changing the packages, use a new
WORK_DIR.
`--cfg-options` adds config options to every chosen variant's training and test (an ablation, e.g.
`--variants b d --cfg-options model.roi_head.mask_head.num_amodal_convs=4`); such runs and their tables are
kept apart from the plain ones by a tag derived from the options, so both can share WORK_DIR and its detector;
so are runs with an `--iters` other than the default (tag `_iters{N}`) or with `--detector trained`
(`_trained`). `--head recommended` gives every AISDiff variant (all but a) the recommended head
(configs/aisdiff/aisdiff_r18_fpn_residual_synthetic.py's options over its base, RECOMMENDED_HEAD) while (a)
stays plain Mask R-CNN: the recommended AISDiff against Mask R-CNN in one command and one record
(`_head-recommended`); its AISDiff runs are those of `--cfg-options` with the same options (one tag), so
either command reuses the other's run folders (their records differ in settings: fidelity_table.py does not
combine the two kinds). `--test-options` adds config options to the test of the test-only variants (h, j,
k) on the plain checkpoints (tag `_test-` and 8 hex digits, on their runs only). Other sizes (images, scale,
proposals, RoIs, `--pretrain-iters`) change the data or the detector: use a new WORK_DIR for them. So does
`--cpu-kernels avx2`, which caps the kernels ATen, oneDNN and MKL pick at AVX2 for every step: with the
CPU's own (`native`, the default), a machine with AVX-512 and one without retrain the shared detector to
different weights; pinned, they agree (an AMD EPYC with AVX-512 and one without retrained it to the same
sha256, 2026-12-04; each record keeps the CPU's widest extension and the detector's sha256).
Prints a table of mean and spread over seeds and writes WORK_DIR/fidelity[_TAG].{json,md} and
benchmarks/results/fidelity/fidelity[_TAG]_VARIANTS[_seedS-S].json (the command, machine, date, table, every
run's metrics and settings.json, and the shared detector's weights sha256; `_seed...` unless the seeds are 0 1
2; benchmarks/results/README.md indexes the committed ones).
Records of several sessions combine into one table with `python -m benchmarks.fidelity_table`.
`--variation high` runs it all on the benchmark's high variation (`aisdiff demo-data --variation high`,
priors/shapes.py: categories whose shape varies within the category), in WORK_DIR work_dirs/fidelity-high
by default: every config gets the variation's class names (a child config in WORK_DIR/configs/), and the
variants of the trained `tiny` model take `tiny-high` (trained on that variation's train split) in its
place, for their priors, their DiffSP defaults and the prior threshold; its records are tagged
`_variation-high`.
"""
from __future__ import annotations

import argparse
import copy
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.fidelity_variants import TEST_ONLY, VARIANTS, listing
from benchmarks.records import RESULTS, argument_parser, command
from priors.occlusion import OCCLUSION_BUCKETS

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIGS = REPO / "configs" / "aisdiff"
DETECTOR = ("backbone", "neck", "rpn_head", "roi_head.bbox_head")  # what `--detector frozen` keeps fixed
DEFAULT_ITERS = 300  # each variant's schedule; runs of another length are kept apart (`ablation_tag`)
# `--cpu-kernels avx2`: environment variables that cap the kernels ATen, oneDNN (convolutions) and MKL pick at
# AVX2, so that an AVX-512 CPU computes the floats an AVX2 one does (with `native`, AVX2 and AVX-512 machines
# retrain the shared detector to other weights). They do not carry it across CPU vendors: an Intel Xeon and an
# AMD EPYC retrain it to other weights at the same pins (benchmarks/results/README.md, detector-61ac3e65)
CPU_KERNEL_PINS = {"native": {},
                   "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}}
# the recommended config's head (aisdiff_r18_fpn_residual_synthetic.py over aisdiff_r18_fpn_synthetic.py, a
# test checks they agree) as --cfg-options, in the order the benchmark first measured them (tag 4142a0fa)
RECOMMENDED_HEAD = [f"model.roi_head.mask_head.{option}" for option in (
    "num_amodal_convs=4", "conv_channels=256", "class_agnostic_amodal=False", "num_attention_convs=0",
    "prior_fusion=residual", "logits_init=kaiming")]
DIFFSP_SETTINGS = ("steps", "tau", "self_res", "cross_res")  # what both prior models are given alike
# the benchmark's variations (`aisdiff demo-data --variation`, priors/shapes.py) and, per variation, the prior
# models that take the place of the registry's: the trained `tiny` knows the low variation's shapes only
# (`tiny-random`, random weights, stays)
VARIATION_MODELS = {"low": {}, "high": {"tiny": "tiny-high"}}
# the table's metrics ("AP_agnostic": any category counts; "-" in records from before it was measured)
COLUMNS = (("amodal", "AP"), ("amodal", "AP50"), ("amodal", "AP75"), ("amodal", "AR"),
           ("amodal", "AP_agnostic"), ("visible", "AP"), ("prior", "IoU_occluded"),
           ("prior", "visible_IoU_occluded"))


def aisdiff(*args: str, log: Path | None = None) -> None:
    """Run an `aisdiff` command; its output goes to `log` (and the tail is shown if it fails)."""
    cmd = [str(BIN / "aisdiff"), *args]
    with open(log or os.devnull, "w") as out:
        proc = subprocess.run(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = log.read_text()[-3000:] if log else ""
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")


def diffsp_flags(args: argparse.Namespace) -> dict[str, int]:
    return {key: getattr(args, key) for key in DIFFSP_SETTINGS}


def prior_model(variation: str, model: str) -> str:
    """The diffusion model a registry's prior model name stands for on the benchmark's variation."""
    return VARIATION_MODELS[variation].get(model, model)


def variant_prior_model(args: argparse.Namespace, variant: str) -> str | None:
    """The diffusion model of a variant's DiffSP priors on the benchmark's variation (None: no DiffSP)."""
    model = VARIANTS[variant].prior_model
    return None if model is None else prior_model(args.variation, model)


def fill_diffsp_flags(args: argparse.Namespace) -> None:
    """Give the DiffSP settings left unset the trained tiny model's values (its shipped defaults, else the
    paper's; `tiny-high` on the high variation), for both prior models: (c) and (d) then differ in their
    weights alone."""
    from priors.diffsp import DiffSPConfig
    from priors.models import load_model

    config = DiffSPConfig(**diffsp_flags(args)).resolved(load_model(prior_model(args.variation, "tiny")))
    for key in DIFFSP_SETTINGS:
        setattr(args, key, getattr(config, key))


def prepare(args: argparse.Namespace) -> dict[str, Path]:
    """The benchmark data and, per diffusion model used, the train prior store."""
    from priors.models import load_model

    data = args.work_dir / "synthetic"
    # RLE visible masks, as this benchmark's data was first written (polygons decode to the same masks but for
    # a few hole pixels, and a new file would make every stored run stale)
    variation = ["--variation", args.variation] if args.variation != "low" else []
    aisdiff("demo-data", str(data), "--train-images", str(args.train_images),
            "--val-images", str(args.val_images), "--seed", "0", "--visible-masks", "rle", *variation,
            log=args.work_dir / "demo-data.log")
    stores = {}
    for model in sorted({variant_prior_model(args, v) for v in args.variants} - {None}):
        # one folder per model, emptied when the model's weights or the settings change (as runs are), so a
        # store of an earlier benchmark is resumed when it matches and never refused when it does not
        folder = args.work_dir / f"priors_{model}"
        reuse(folder, {"model": load_model(model).identity, **diffsp_flags(args), **shared_settings(args)})
        stores[model] = folder / "train.zarr"
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in diffsp_flags(args).items()]
        print(f"train priors with {model} -> {stores[model]}", flush=True)
        aisdiff("precompute", "--ann", str(data / "annotations" / "train.json"),
                "--images", str(data / "images"),
                "--out", str(stores[model]), "--model", model, "--batch-size", "32", *flags,
                log=args.work_dir / f"precompute_{model}.log")
    return stores


@functools.cache
def load_config(config: Path):
    """A config, parsed (with its `_base_` files) as `aisdiff train` will."""
    from mmengine.config import Config
    from mmengine.logging import MMLogger

    MMLogger.get_current_instance().setLevel("WARNING")  # (parsing prints the $AISDIFF_DATA notice)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Config.fromfile(str(config))


# What a config may hold that changes no number this benchmark reports, as the digest sees it: the pictures'
# visualizer (as mmdet's default), and no ContentImageId (it ids images without a dataset record; a dataset's
# images keep theirs). So adding them leaves earlier runs valid.
DIGEST_VISUALIZER = "DetLocalVisualizer"
DIGEST_SKIPS_TRANSFORMS = ("ContentImageId",)


def config_digest(config: Path) -> str:
    """sha256 of the parsed config: an edited config (or one of its bases) makes earlier runs stale."""
    cfg = copy.deepcopy(load_config(config))  # the cached config stays as `aisdiff train` will read it
    if "visualizer" in cfg:
        cfg.visualizer.type = DIGEST_VISUALIZER
    for holder, key in ((cfg, "test_pipeline"), *((cfg[loader].dataset, "pipeline") for loader in
                                                  ("train_dataloader", "val_dataloader", "test_dataloader")
                                                  if cfg.get(loader) and "dataset" in cfg[loader])):
        if holder.get(key):
            holder[key] = [step for step in holder[key] if step.get("type") not in DIGEST_SKIPS_TRANSFORMS]
    return hashlib.sha256(cfg.pretty_text.encode()).hexdigest()


def size_options(config: Path, args: argparse.Namespace) -> list[str]:
    """--cfg-options for the benchmark's size: image scale, RPN proposals and sampled RoIs per image."""
    out = []
    for key in ("train_dataloader", "test_dataloader"):
        i = pipeline_index(config, key, "AmodalResize")
        out.append(f"{key}.dataset.pipeline.{i}.scale=({args.scale},{args.scale})")
    return out + [f"model.train_cfg.rpn_proposal.max_per_img={args.proposals}",
                  f"model.test_cfg.rpn.max_per_img={args.proposals}",
                  f"model.train_cfg.rcnn.sampler.num={args.rois}"]


def reuse(work: Path, settings: dict) -> bool:
    """Whether `work` holds a run (or a store) of exactly these settings; otherwise empty it and record them
    (work of other settings, a retrained model say, is never reused)."""
    path = work / "settings.json"
    text = json.dumps(settings, indent=1, sort_keys=True, default=str)
    if path.is_file() and path.read_text() == text:
        return True
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    path.write_text(text)
    return False


def shared_settings(args: argparse.Namespace) -> dict:
    """What the detector, the train prior stores and every run depend on alike: the sizes and, when pinned,
    the CPU kernels (left out when native, as every earlier run was made)."""
    pin = {} if args.cpu_kernels == "native" else {"cpu_kernels": args.cpu_kernels}
    variation = {} if args.variation == "low" else {"variation": args.variation}  # (as pin)
    return {**{k: getattr(args, k) for k in ("scale", "proposals", "rois", "train_images", "val_images")},
            **pin, **variation}


def variation_config(args: argparse.Namespace, config: Path) -> Path:
    """`config` on the benchmark's variation: itself on `low` (the configs' own classes); otherwise its child
    (in WORK_DIR/configs/) that names the variation's classes wherever the config names classes: the
    datasets' metainfo and, where it has them, the test prior's (its DiffSP prompts)."""
    if args.variation == "low":
        return config
    from priors.shapes import VARIATIONS

    classes = tuple(name for _, name in VARIATIONS[args.variation].categories)
    dataset = f"dict(dataset=dict(metainfo=dict(classes={classes!r})))"
    lines = [f"_base_ = [{str(config)!r}]", *(f"{loader} = {dataset}" for loader in
                                              ("train_dataloader", "val_dataloader", "test_dataloader"))]
    if "classes" in load_config(config).model.roi_head.get("test_prior", {}):
        lines.append(f"model = dict(roi_head=dict(test_prior=dict(classes={classes!r})))")
    child = args.work_dir / "configs" / f"{args.variation}_{config.name}"
    child.parent.mkdir(exist_ok=True)
    child.write_text("\n".join(lines) + "\n")
    return child


def variant_config(args: argparse.Namespace, variant: str) -> Path:
    """A variant's config (on the benchmark's variation: `variation_config`); with `--detector frozen`, its
    child (in WORK_DIR/configs/) that adds the FreezeModulesHook on the detector, so that only the mask head
    trains."""
    config = variation_config(args, CONFIGS / VARIANTS[variant].config)
    if args.detector == "trained":
        return config
    child = args.work_dir / "configs" / f"frozen_{config.name}"
    child.parent.mkdir(exist_ok=True)
    child.write_text(f"_base_ = [{str(config)!r}]\n"
                     f"custom_hooks = [dict(type='FreezeModulesHook', modules={list(DETECTOR)!r})]\n")
    return child


def schedule_options(iters: int) -> list[str]:
    """--cfg-options for an `iters`-iteration schedule: the config's warm-up, lr / 10 at 80 %, one
    checkpoint."""
    return [f"train_cfg.max_iters={iters}", f"default_hooks.checkpoint.interval={iters}",
            f"param_scheduler.1.end={iters}", f"param_scheduler.1.milestones=[{int(iters * 0.8)}]"]


def pretrain_detector(args: argparse.Namespace) -> Path:
    """The shared starting point: variant a's Mask R-CNN without the mask head (a box detector, so that no
    variant's mask head starts ahead) trained `--pretrain-iters` iterations."""
    work = args.work_dir / "detector"
    ckpt = work / f"iter_{args.pretrain_iters}.pth"
    config = variation_config(args, CONFIGS / VARIANTS["a"].config)
    settings = {"config_sha256": config_digest(config), "iters": args.pretrain_iters, "mask_head": None,
                **shared_settings(args)}
    if not reuse(work, settings) or not ckpt.is_file():
        print(f"shared detector: training {args.pretrain_iters} iterations -> {work}", flush=True)
        aisdiff("train", str(config), "--work-dir", str(work), "--cfg-options", "randomness.seed=0",
                *schedule_options(args.pretrain_iters), "val_cfg=None", "val_dataloader=None",
                "val_evaluator=None",
                "model.roi_head.mask_head=None", "model.roi_head.mask_roi_extractor=None",
                *size_options(config, args), log=work.with_suffix(".train.log"))
    return ckpt


def weights_digest(checkpoint: Path) -> str:
    """sha256 of a checkpoint's weights (names and tensor bytes, not its timestamps): records that runs of
    different sessions, each retraining the shared detector, started from the same one."""
    import torch

    import segmenter  # noqa: F401  (mmengine's checkpoint types on torch's weights-only allow-list)

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].contiguous()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


# the packages whose versions can change a run's numbers (image decoding and resizing among them)
ENVIRONMENT_PACKAGES = ("torch", "mmcv", "mmdet", "mmengine", "numpy", "opencv-python", "pillow",
                        "pycocotools", "diffusers")


def environment() -> dict[str, str | None]:
    """Versions of ENVIRONMENT_PACKAGES (None: not installed), the CPU's model and the kernels torch picks for
    it, for the record: one machine retrains the shared detector bit for bit, another CPU does not."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {**{name: installed(name) for name in ENVIRONMENT_PACKAGES}, "cpu": cpu_model(),
            "cpu_isa": cpu_isa(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def cpuinfo_field(name: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The first CPU's value of a /proc/cpuinfo field (`model name`, `flags`), None off Linux or if absent."""
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    fields = (line.split(":", 1) for line in lines if ":" in line)
    return next((value.strip() for key, value in fields if key.strip() == name), None)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo's, else the platform's)."""
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The widest x86 vector extension the CPU has (AVX512, AVX2 or older), whatever kernels are pinned."""
    flags = (cpuinfo_field("flags") or "").split()
    return "AVX512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "older"


def options_digest(options: list[str]) -> str:
    """8 hex digits naming a list of config options (in run and record names)."""
    return hashlib.sha256("\n".join(options).encode()).hexdigest()[:8]


def variant_options(args: argparse.Namespace, variant: str) -> list[str]:
    """The config options a variant trains and tests with: with `--head recommended`, RECOMMENDED_HEAD for
    an AISDiff variant (not for a, the Mask R-CNN baseline), then `--cfg-options`."""
    head = RECOMMENDED_HEAD if args.head == "recommended" and VARIANTS[variant].aisdiff else []
    return [*head, *args.cfg_options]


def schedule_tag(args: argparse.Namespace) -> str:
    """`_iters{N}` (another schedule) and `_trained` (`--detector trained`), "" for neither."""
    return (f"_iters{args.iters}" if args.iters != DEFAULT_ITERS else "") + (
        "_trained" if args.detector == "trained" else "")


def options_tag(options: list[str]) -> str:
    """`_opts-` and 8 hex digits of a list of config options, "" for none."""
    return "_opts-" + options_digest(options) if options else ""


def ablation_tag(args: argparse.Namespace, variant: str) -> str:
    """"" for a plain run, else what it does differently on the same detector, for its folder name: the
    schedule tag and that of its config options (`variant_options`). An ablation never overwrites the plain
    runs."""
    return schedule_tag(args) + options_tag(variant_options(args, variant))


def record_tag(args: argparse.Namespace) -> str:
    """What a record's variants do differently, for its file name: the schedule tag, that of
    `--cfg-options`, `_head-recommended`, the test tag and `_variation-NAME` (but for the default, low)."""
    head = "_head-recommended" if args.head == "recommended" else ""
    variation = "" if args.variation == "low" else f"_variation-{args.variation}"
    return schedule_tag(args) + options_tag(args.cfg_options) + head + test_tag(args) + variation


def variant_test_options(args: argparse.Namespace, variant: str) -> list[str]:
    """The config options a variant's test adds to its training's: its own, then, for a test-only variant,
    `--test-options`."""
    v = VARIANTS[variant]
    return [*v.test_options, *(args.test_options if v.test_only_of else ())]


def variant_settings(args: argparse.Namespace, variant: str, config: Path, stores: dict[str, Path],
                     detector: Path) -> dict:
    """What a run's numbers depend on (its settings.json, but for the checkpoint or detections it takes from
    another variant's run): an edit of any of them makes the stored run stale."""
    v = VARIANTS[variant]
    # the detector by its settings, not its path: a detector retrained differently makes every run stale
    settings = {"config": config.name, "config_sha256": config_digest(config), "iters": args.iters,
                "detector": json.loads((detector.parent / "settings.json").read_text()),
                "detector_mode": args.detector, **shared_settings(args)}
    model = variant_prior_model(args, variant)
    if model is not None:  # its prior model's weights sha256 and DiffSP settings, from its store
        from priors.store import PriorStore

        settings["priors"] = PriorStore.open(stores[model]).settings
    if v.aisdiff:
        settings["prior_labels"] = args.prior_labels
    if v.test_preset:
        from priors.diffsp import PRESETS

        settings["test_preset"] = PRESETS[v.test_preset]
    test_options, own_options = variant_test_options(args, variant), variant_options(args, variant)
    if test_options:
        settings["test_options"] = test_options
    if own_options:
        settings["cfg_options"] = own_options
    return settings


def run_options(args: argparse.Namespace, variant: str, seed: int, config: Path, stores: dict[str, Path],
                detections: Path | None) -> list[str]:
    """The config options of a run's training and test: seed, sizes, its priors, prior labels, then the
    variant's own options."""
    v = VARIANTS[variant]
    options = [f"randomness.seed={seed}", *size_options(config, args)]
    if detections is not None:
        load = pipeline_index(config, "train_dataloader", "LoadCachedPriors")
        options += [f"train_dataloader.dataset.pipeline.{load}.source=detections",
                    f"train_dataloader.dataset.pipeline.{load}.detections={detections}"]
    model = variant_prior_model(args, variant)
    if model is not None:
        options += [f"train_dataloader.dataset.prior_store={stores[model]}",
                    f"model.roi_head.test_prior.model={model}"]
        options += test_prior_options(args, variant, stores[model])
    if v.aisdiff:
        options += [f"model.roi_head.prior_labels={args.prior_labels}",
                    f"test_evaluator.prior_threshold={prior_threshold(args.variation)}"]
    return options + variant_options(args, variant)


def run_variant(args: argparse.Namespace, variant: str, seed: int, stores: dict[str, Path],
                detector: Path) -> dict:
    """Train and test one variant with one seed (or read the metrics of an earlier run); a test-only variant
    tests the checkpoint of the variant it names, trained (or reused) first."""
    v = VARIANTS[variant]
    config = variant_config(args, variant)
    work = args.work_dir / run_name(args, variant, seed)
    settings = variant_settings(args, variant, config, stores, detector)
    if v.test_only_of:  # (its own settings change with the checkpoint's: it is trained first)
        run_variant(args, v.test_only_of, seed, stores, detector)
        settings["checkpoint_of"] = json.loads((work.parent / run_name(args, v.test_only_of, seed)
                                                / "settings.json").read_text())
    detections = None
    if v.trained_on_detections_of:
        detections = detection_store(args, v.trained_on_detections_of, seed, stores, detector,
                                     list(v.dump_options))
        settings["detections"] = json.loads((detections.parent / "settings.json").read_text())
    if reuse(work, settings) and (work / "metrics.json").is_file():
        return json.loads((work / "metrics.json").read_text())
    options = run_options(args, variant, seed, config, stores, detections)
    return train_and_test(args, variant, seed, config, work, options, detector)


def train_and_test(args: argparse.Namespace, variant: str, seed: int, config: Path, work: Path,
                   options: list[str], detector: Path) -> dict:
    """Train a run in `work` from the shared detector (a test-only variant: take its checkpoint) and test it;
    its metrics."""
    trained_by = VARIANTS[variant].test_only_of
    metrics = work / "metrics.json"
    start = time.time()
    checkpoint = work.parent / run_name(args, trained_by or variant, seed) / f"iter_{args.iters}.pth"
    if trained_by and not checkpoint.is_file():
        sys.exit(f"({variant}) tests ({trained_by})'s checkpoint {checkpoint}, which is gone: delete "
                 f"{checkpoint.parent} to retrain it")
    if not checkpoint.is_file():
        print(f"({variant}) seed {seed}: training {args.iters} iterations -> {work}", flush=True)
        aisdiff("train", str(config), "--work-dir", str(work), "--cfg-options", f"load_from={detector}",
                *schedule_options(args.iters), "val_cfg=None", "val_dataloader=None", "val_evaluator=None",
                *options, log=work.with_suffix(".train.log"))
    print(f"({variant}) seed {seed}: testing {checkpoint}", flush=True)
    aisdiff("test", str(config), str(checkpoint), "--work-dir", str(work), "--metrics-json", str(metrics),
            "--cfg-options", *options, *variant_test_options(args, variant),
            log=work.with_suffix(".test.log"))
    print(f"({variant}) seed {seed}: done in {time.time() - start:.0f} s", flush=True)
    return json.loads(metrics.read_text())


def test_prior_options(args: argparse.Namespace, variant: str, store: Path) -> list[str]:
    """--cfg-options for the test priors' DiffSP: the benchmark's settings, checked against the training
    store; for a variant with a test preset, the preset's settings in place of those, unchecked."""
    flags = diffsp_flags(args)
    preset = VARIANTS[variant].test_preset
    if preset is None:
        return [f"model.roi_head.test_prior.store={store}",
                *(f"model.roi_head.test_prior.{k}={v}" for k, v in flags.items())]
    from priors.diffsp import PRESETS

    return ["model.roi_head.test_prior.store=None", f"model.roi_head.test_prior.preset={preset}",
            *(f"model.roi_head.test_prior.{k}={v}" for k, v in flags.items() if k not in PRESETS[preset])]


def detection_store(args: argparse.Namespace, of: str, seed: int, stores: dict[str, Path],
                    detector: Path, dump_options: list[str]) -> Path:
    """The priors of variant `of`'s detections of the train split (seed `seed`; trained first if need be):
    its checkpoint tested on train (no test priors: the detections and their visible and occluder masks do
    not depend on them; `dump_options` added, e.g. another mask threshold), the best-overlapping detection
    of each ground truth's class kept (IoU >= 0.5, what LoadCachedPriors(source='detections') takes),
    DiffSP on them into a proposals-only store."""
    run_variant(args, of, seed, stores, detector)
    trained = args.work_dir / run_name(args, of, seed)
    work = args.work_dir / detections_name(args, of, seed, dump_options)
    store = work / "train.zarr"
    settings = {"of": json.loads((trained / "settings.json").read_text())}
    if dump_options:
        settings["dump_options"] = dump_options
    if reuse(work, settings) and (work / "done").is_file():
        return store
    data = args.work_dir / "synthetic"
    train = data / "annotations" / "train.json"
    if not (work / "detections.json").is_file():  # (else an interrupted build resumes its precompute)
        dump_detections(args, of, seed, trained, work, train, dump_options)
    print(f"({of}) seed {seed}: the priors of its train detections ->", store, flush=True)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in diffsp_flags(args).items()]
    aisdiff("precompute", "--ann", str(train), "--images", str(data / "images"), "--proposals",
            str(work / "detections.json"), "--proposals-only", "--out", str(store), "--model",
            variant_prior_model(args, of), "--batch-size", "32", *flags, log=work / "precompute.log")
    (work / "done").touch()
    return store


def detections_name(args: argparse.Namespace, of: str, seed: int, dump_options: list[str]) -> str:
    """The folder of `of`'s train detections and their priors; a dump with options is tagged `_dump-`."""
    tag = "_dump-" + options_digest(dump_options) if dump_options else ""
    return f"detections_{run_name(args, of, seed)}{tag}"


def dump_detections(args: argparse.Namespace, of: str, seed: int, trained: Path, work: Path,
                    train: Path, dump_options: list[str]) -> None:
    """`trained`'s detections of the train split that find a ground truth -> work/detections.json."""
    from priors.annotations import AmodalAnnotations
    from priors.prior_quality import match_ground_truths

    config = work / "dump_train.py"
    config.write_text(f"_base_ = [{str(variant_config(args, of))!r}]\n"
                      "model = dict(roi_head=dict(test_prior=dict(_delete_=True, type='NoPriors')))\n"
                      "test_dataloader = dict(dataset=dict(ann_file='annotations/train.json'))\n"
                      f"test_evaluator = dict(ann_file={str(train)!r})\n")
    print(f"({of}) seed {seed}: detecting the train split -> {work}", flush=True)
    aisdiff("test", str(config), str(trained / f"iter_{args.iters}.pth"), "--work-dir", str(work),
            "--dump-proposals", str(work / "all.json"), "--cfg-options", f"randomness.seed={seed}",
            *size_options(config, args), f"model.roi_head.prior_labels={args.prior_labels}",
            *variant_options(args, of), *dump_options, log=work / "dump.log")
    ann, records = AmodalAnnotations(train), json.loads((work / "all.json").read_text())
    kept = []
    for image_id in ann.image_ids():
        gts, dets = ann.by_image(image_id), [r for r in records if r["image_id"] == image_id]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in dets)]
        found = match_ground_truths([g.amodal_box for g in gts], [g.category_id for g in gts], boxes,
                                    [r["category_id"] for r in dets])
        kept += [dets[k] for k in sorted(set(found.tolist()) - {-1})]
    if not kept:
        sys.exit(f"({of}) seed {seed} finds none of the {len(ann)} train ground truths (IoU >= 0.5, its "
                 f"class): no priors to train on; see {work / 'dump.log'}")
    (work / "detections.json").write_text(json.dumps(kept))
    print(f"({of}) seed {seed}: {len(kept)} of {len(records)} detections find one of {len(ann)} ground "
          "truths", flush=True)


def pipeline_index(config: Path, loader: str, transform: str) -> int:
    """The position of `transform` in a config's `loader` pipeline (for --cfg-options)."""
    pipeline = load_config(config)[loader].dataset.pipeline
    return next(i for i, t in enumerate(pipeline) if t["type"] == transform)


def test_tag(args: argparse.Namespace) -> str:
    """`_test-` and 8 hex digits of `--test-options` ("" without): names the test-only variants' runs."""
    if not args.test_options:
        return ""
    return "_test-" + options_digest(args.test_options)


def run_name(args: argparse.Namespace, variant: str, seed: int) -> str:
    """A run's folder name; a test-only variant's carries the `--test-options` tag (its checkpoint's not)."""
    test = test_tag(args) if VARIANTS[variant].test_only_of else ""
    return f"{variant}_seed{seed}{ablation_tag(args, variant)}{test}"


def record_name(args: argparse.Namespace) -> str:
    """The committed record's file name: the record tag, the variants and, unless the default three,
    the seeds (so that a run of other seeds never overwrites the record of these)."""
    seeds = "" if args.seeds == [0, 1, 2] else "_seed" + "-".join(map(str, args.seeds))
    return f"fidelity{record_tag(args)}_{'-'.join(args.variants)}{seeds}.json"


@functools.cache
def prior_threshold(variation: str) -> float:
    """The threshold at which a test prior counts as "in the object" (prior/IoU): the variation's trained tiny
    model's tuned one, as `aisdiff inspect` uses for its store."""
    from priors.prior_quality import model_threshold

    return model_threshold(prior_model(variation, "tiny"))


def store_ious(stores: dict[str, Path], ann: Path, threshold: float) -> str:
    """Markdown table: IoU of each train prior store's priors (> `threshold`) with the train ground truth, by
    occlusion rate: what training gives the head, beside what it meets at test (prior/IoU)."""
    from priors.annotations import AmodalAnnotations
    from priors.prior_quality import gt_ious, iou_table
    from priors.store import PriorStore

    groups = ("all", "occluded > 10%", *(b.name for b in OCCLUSION_BUCKETS))
    lines = ["| train priors of | " + " | ".join(groups) + " |", "|" + "---|" * (len(groups) + 1)]
    for model, path in sorted(stores.items()):
        table = iou_table(gt_ious(PriorStore.open(path), AmodalAnnotations(ann), threshold))
        lines.append(f"| {model} | " + " | ".join("-" if table[g]["prior_iou"] is None
                                                   else f"{100 * table[g]['prior_iou']:.1f}" for g in groups)
                     + " |")
    return "\n".join(lines)


def value(metrics: dict, part: str, name: str) -> float | None:
    v = metrics.get(f"{part}/{name}")  # (the metrics.json of `aisdiff test`: flat "amodal/AP" keys)
    return None if v is None or v < 0 else float(v)


def table(results: dict[str, list[dict]], seeds: list[int]) -> str:
    """Markdown table: mean ± std over seeds (std only with more than one seed), in percent."""
    head = "| variant | " + " | ".join(f"{p} {n}" for p, n in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for variant, runs in results.items():
        cells = []
        for part, name in COLUMNS:
            vals = [v for v in (value(r, part, name) for r in runs) if v is not None]
            if not vals:
                cells.append("-")
            elif len(vals) > 1:
                cells.append(f"{100 * np.mean(vals):.1f} ± {100 * np.std(vals, ddof=1):.1f}")
            else:
                cells.append(f"{100 * vals[0]:.1f}")
        lines.append(f"| ({variant}) {VARIANTS[variant].name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bucket_table(results: dict[str, list[dict]], prefix: str = "amodal/AP_occ_") -> str:
    """Markdown table: a metric by occlusion rate (amodal AP; `prefix` "prior/IoU_occ_": the test priors'
    IoU), mean over seeds, in percent; variants without it are left out."""
    found = {k for runs in results.values() for r in runs for k in r if k.startswith(prefix)}
    if not found:
        return "(none of these variants reports it)"
    order = [f"{prefix}{bucket.name}" for bucket in OCCLUSION_BUCKETS]
    # (runs of older bucket names last)
    buckets = [k for k in order if k in found] + sorted(found - set(order))
    lines = ["| variant | " + " | ".join(k.removeprefix(prefix) for k in buckets) + " |",
             "|" + "---|" * (len(buckets) + 1)]
    part = prefix.split("/")[0]
    for variant, runs in results.items():
        cells = []
        for key in buckets:
            vals = [v for v in (value(r, part, key.removeprefix(f"{part}/")) for r in runs) if v is not None]
            cells.append(f"{100 * np.mean(vals):.1f}" if vals else "-")
        if any(c != "-" for c in cells):
            lines.append(f"| ({variant}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the DiffSP settings filled in and the work folder made."""
    parser = argument_parser(__doc__, __spec__.name, epilog="variants:\n" + listing(),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path,
                        help="where the data, stores and runs go (default: work_dirs/fidelity, "
                             "work_dirs/fidelity-VARIATION for another variation)")
    parser.add_argument("--variation", choices=list(VARIATION_MODELS), default="low",
                        help="the synthetic benchmark's variation (`aisdiff demo-data --variation`): low, "
                             "the default, or high (shapes that vary within their category, prior model "
                             "tiny-high)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=DEFAULT_ITERS,
                        help="training iterations of each variant")
    parser.add_argument("--detector", choices=("frozen", "trained"), default="frozen",
                        help="keep the shared detector fixed while the mask heads train (default), or "
                             "fine-tune it")
    parser.add_argument("--pretrain-iters", type=int, default=2000, help="iterations of the shared detector")
    parser.add_argument("--scale", type=int, default=256, help="longer image side for training and testing")
    parser.add_argument("--proposals", type=int, default=300, help="RPN proposals per image")
    parser.add_argument("--rois", type=int, default=128, help="RoIs sampled per image for the heads")
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--val-images", type=int, default=50)
    tiny_default = "(default: the variation's trained tiny model's, for both models)"
    parser.add_argument("--steps", type=int, help="DiffSP steps T " + tiny_default)
    parser.add_argument("--tau", type=int, help=tiny_default)
    parser.add_argument("--prior-labels", choices=("head", "detector"), default="detector",
                        help="the class test priors are computed for: the mask head's category (the paper's) "
                             "or the box head's label (default: at this schedule the head's classifier is "
                             "near chance)")
    parser.add_argument("--self-res", type=int, help=tiny_default)
    parser.add_argument("--cross-res", type=int, help=tiny_default)
    parser.add_argument("--cpu-kernels", choices=list(CPU_KERNEL_PINS), default="native",
                        help="the CPU kernels every step runs with: the CPU's own (default), or capped at "
                             "AVX2, so that AVX2 and AVX-512 machines compute alike (use a new "
                             "WORK_DIR)")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config options for every chosen variant (an ablation; its runs are kept apart)")
    parser.add_argument("--head", choices=("paper", "recommended"), default="paper",
                        help="the AISDiff variants' head: each config's own (the paper's design, default) or "
                             "the recommended one (RECOMMENDED_HEAD; (a) stays Mask R-CNN)")
    parser.add_argument("--test-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config options for the test of the test-only variants ("
                             + ", ".join(TEST_ONLY) + "), after their own: a test-time ablation on the "
                             "plain checkpoints (its runs and records are kept apart)")
    args = parser.parse_args(argv)
    # before any kernel runs here (torch reads them at its first) and for every `aisdiff` step it starts
    os.environ.update(CPU_KERNEL_PINS[args.cpu_kernels])
    trained = [v for v in args.variants if v not in TEST_ONLY]
    if args.test_options and trained:
        parser.error(f"--test-options applies to the test-only variants ({', '.join(TEST_ONLY)}), not to "
                     f"{', '.join(trained)}: use --cfg-options for an ablation of those")
    fill_diffsp_flags(args)
    args.work_dir = (args.work_dir or REPO / "work_dirs" / (
        "fidelity" if args.variation == "low" else f"fidelity-{args.variation}")).resolve()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    os.environ["AISDIFF_DATA"] = str(args.work_dir)  # the synthetic configs read $AISDIFF_DATA/synthetic/
    return args


def main() -> None:
    args = parse_args()
    start = time.time()
    stores = prepare(args)
    detector = pretrain_detector(args)
    results = {v: [run_variant(args, v, s, stores, detector) for s in args.seeds] for v in args.variants}
    text = (table(results, args.seeds) + "\n\nAmodal AP by occlusion rate (mean over seeds):\n\n"
            + bucket_table(results)
            + "\n\nWhat the amodal path is given at test: IoU of the test prior (> "
            f"{prior_threshold(args.variation)}) with the amodal ground truth, found ground truths by "
            "occlusion rate (mean over seeds):\n\n" + bucket_table(results, "prior/IoU_occ_"))
    if stores:
        text += ("\n\n... and in training: IoU of the train prior stores' priors with the train ground truth "
                 "(in the ground-truth box):\n\n"
                 + store_ious(stores, args.work_dir / "synthetic" / "annotations" / "train.json",
                              prior_threshold(args.variation)))
    env = environment()
    gpu = env["gpu"]  # mmengine trains and tests on the GPU when there is one
    machine = (f"{platform.machine()}, {os.cpu_count()} CPU cores, torch threads per run: default, "
               f"CPU kernels: {args.cpu_kernels}" + (f", GPU: {gpu}" if gpu else ""))
    header = (f"Synthetic benchmark{'' if args.variation == 'low' else f', variation {args.variation}'} "
              f"({args.train_images} train / {args.val_images} val images, scale "
              f"{args.scale}, {args.proposals} proposals, {args.rois} sampled RoIs), "
              f"R18-FPN from a shared {args.pretrain_iters}-iteration detector ({args.detector}) + "
              f"{args.iters} iterations, batch 2, "
              f"seeds {args.seeds}; DiffSP {diffsp_flags(args)}; "
              + (f"AISDiff head: recommended ({' '.join(RECOMMENDED_HEAD)}); " if args.head == "recommended"
                 else "")
              + (f"options {' '.join(args.cfg_options)}; " if args.cfg_options else "")
              + (f"test options {' '.join(args.test_options)}; " if args.test_options else "")
              + f"{machine}; "
              f"{(time.time() - start) / 60:.0f} min.")
    print("\n" + header + "\n\n" + text)
    # each run's settings.json (its config's sha256 among them: fidelity_table.py checks runs compare)
    run_settings = {v: [json.loads((args.work_dir / run_name(args, v, seed) / "settings.json").read_text())
                        for seed in args.seeds] for v in args.variants}
    out = args.work_dir / f"fidelity{record_tag(args)}"
    out.with_suffix(".md").write_text(header + "\n\n" + text + "\n")
    record = json.dumps(
        {"command": command(),
         "machine": machine, "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
         "detector_weights_sha256": weights_digest(detector), "environment": env,
         "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
         "table": header + "\n\n" + text, "results": results, "run_settings": run_settings}, indent=1)
    out.with_suffix(".json").write_text(record)
    # (the committed copy, what the README's numbers come from)
    (RESULTS / "fidelity").mkdir(parents=True, exist_ok=True)
    (RESULTS / "fidelity" / record_name(args)).write_text(record)


if __name__ == "__main__":
    main()
