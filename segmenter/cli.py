"""`aisdiff train CONFIG` and `aisdiff test CONFIG CKPT`: thin wrappers over mmengine's Runner.

The same configs run with mmdet's own tools/train.py and tools/test.py (they import `segmenter` through
`custom_imports`). This module stays light at import: mmdet is imported only when a command runs.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from priors.errors import AisdiffError

LAUNCHERS = ("none", "pytorch", "slurm", "mpi")  # mmdet's tools/train.py and tools/test.py take the same


def _common(p: argparse.ArgumentParser) -> None:
    from mmengine.config import DictAction

    p.add_argument("config", type=Path,
                   help="an mmdet config (e.g. configs/aisdiff/aisdiff_r18_fpn_synthetic.py)")
    p.add_argument("--work-dir", type=Path,
                   help="where logs and checkpoints go (default: work_dirs/CONFIG_NAME)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                   help="override config settings, e.g. train_cfg.max_iters=10 train_dataloader.batch_size=4")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load checkpoints with full unpickling, which can run code stored in the file: only "
                        "for files you made or trust (default: torch's weights-only loading, mmengine's "
                        "types allowed)")
    p.add_argument("--launcher", choices=LAUNCHERS, default="none",
                   help="job launcher, as mmdet's tools take it: 'pytorch' under `python -m "
                        "torch.distributed.run --nproc_per_node N -m pipeline train|test ...` (one process "
                        "per GPU; without CUDA, CPU processes over gloo) (default: none, one process)")


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a segmenter config (mmengine Runner)",
                              description="Train an mmdet config of this project with mmengine's Runner.")
    _common(p)
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from the latest checkpoint in the work dir, or from the given checkpoint")
    p.add_argument("--auto-scale-lr", action="store_true",
                   help="scale the learning rate by the total batch (processes x batch_size) over the "
                        "config's auto_scale_lr.base_batch_size, as mmdet's tools/train.py --auto-scale-lr "
                        "does (the real-data schedules do so already)")
    p.set_defaults(func=run_train)


def add_test_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("test", help="test a checkpoint and print amodal / visible AP",
                              description="Evaluate a checkpoint: amodal and visible AP/AR (pycocotools), AP "
                                          "by occlusion rate; optionally write the predictions as a "
                                          "proposals file.")
    _common(p)
    p.add_argument("checkpoint", type=Path,
                   help="checkpoint file (.pth), loaded weights-only (see --trust-checkpoint)")
    p.add_argument("--dump-proposals", type=Path,
                   help="write the detections as a proposals file (docs/precompute.md, 'Proposals')")
    p.add_argument("--out-prefix", type=Path,
                   help="also write COCO results JSON: PREFIX.{amodal,visible}.segm.json")
    p.add_argument("--metrics-json", type=Path,
                   help="write the metrics as JSON (default: WORK_DIR/metrics.json)")
    p.add_argument("--show-dir", type=Path,
                   help="also draw each test image's predictions (the config's visualizer: amodal outline, "
                        "visible fill, hatched occluders) into this folder, as mmdet's tools/test.py does")
    p.set_defaults(func=run_test)


def load_config(args: argparse.Namespace):
    from mmengine.config import Config

    if not args.config.is_file():
        raise AisdiffError(f"config {args.config} not found (configs live in configs/aisdiff/).")
    cfg = Config.fromfile(str(args.config))
    cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = str(args.work_dir or Path("work_dirs") / args.config.stem)
    cfg.launcher = getattr(args, "launcher", "none")
    if cfg.launcher != "none":
        start_cpu_processes(cfg)
    return cfg


def start_cpu_processes(cfg) -> None:
    """Without CUDA, make the distributed launch work on CPU processes: mmengine's launchers call
    `torch.cuda.set_device` and wrap the model with this process's GPU, so start the gloo process group here
    (the Runner then leaves it alone) and wrap the model without a device. With CUDA, nothing changes."""
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        return
    if cfg.launcher != "pytorch":
        raise AisdiffError(f"--launcher {cfg.launcher} needs GPUs; on CPU processes use --launcher pytorch "
                           "under `python -m torch.distributed.run`.")
    if "RANK" not in os.environ:
        raise AisdiffError("--launcher pytorch: no RANK in the environment; start the command under `python "
                           "-m torch.distributed.run --nproc_per_node N -m pipeline ...` (or mmdet's "
                           "dist_*.sh).")
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    cfg.model_wrapper_cfg = {"type": "MMDistributedDataParallel", "device_ids": None,
                             "broadcast_buffers": False,  # (as mmengine wraps a model on GPUs)
                             "find_unused_parameters": cfg.get("find_unused_parameters", False),
                             **(cfg.get("model_wrapper_cfg") or {})}


def run_runner(args: argparse.Namespace, cfg, action: str):
    """Build mmengine's Runner from `cfg` and run `action` ("train" / "test"): (runner, what it returned); a
    checkpoint that torch's weights-only unpickler refuses becomes a one-paragraph error with the opt-in."""
    import pickle

    from mmengine.runner import Runner

    from .checkpoint import refused_checkpoint, trusted_checkpoints

    try:
        with trusted_checkpoints(args.trust_checkpoint):
            runner = Runner.from_cfg(cfg)
            return runner, getattr(runner, action)()
    except pickle.UnpicklingError as exc:
        raise refused_checkpoint(exc) from None


def run_train(args: argparse.Namespace) -> int:
    import segmenter  # noqa: F401  (registers the modules)

    cfg = load_config(args)
    if args.auto_scale_lr:
        if "base_batch_size" not in cfg.get("auto_scale_lr", {}):
            raise AisdiffError(f"--auto-scale-lr: {args.config} sets no auto_scale_lr.base_batch_size (the "
                               "total batch its learning rate is for); add auto_scale_lr = "
                               "dict(base_batch_size=N).")
        cfg.auto_scale_lr.enable = True
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        if not Path(args.resume).is_file():
            raise AisdiffError(f"--resume {args.resume}: no such checkpoint file")
        cfg.resume, cfg.load_from = True, args.resume
    run_runner(args, cfg, "train")
    return 0


def format_metrics(metrics: dict[str, float]) -> str:
    """The amodal / visible table `aisdiff test` prints (and class-agnostic amodal AP, without AR)."""
    rows = [("amodal", "amodal/", ""), ("visible", "visible/", ""),
            ("amodal, any class", "amodal/", "_agnostic")]
    cols = ("AP", "AP50", "AP75", "AR")
    lines = ["| masks | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, prefix, suffix in rows:
        if f"{prefix}AP{suffix}" in metrics:
            keys = (prefix + c + suffix for c in cols)
            cells = (f"{100 * metrics[k]:.2f}" if k in metrics else "-" for k in keys)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    buckets = [k for k in metrics if k.startswith("amodal/AP_occ_")]
    if buckets:
        lines.append("amodal AP by occlusion rate: " + ", ".join(
            f"{k.removeprefix('amodal/AP_occ_')} {100 * metrics[k]:.2f}" for k in buckets))
    return "\n".join(lines)


def show_predictions(cfg, folder: Path) -> None:
    """Turn on the config's visualization hook to draw the test predictions into `folder` (mmdet's
    tools/test.py --show-dir)."""
    hook = cfg.get("default_hooks", {}).get("visualization")
    if not hook:
        raise AisdiffError("--show-dir needs default_hooks.visualization (mmdet's DetVisualizationHook, in "
                           "mmdet's default runtime) in the config")
    hook.draw, hook.test_out_dir = True, str(folder.resolve())


def run_test(args: argparse.Namespace) -> int:
    import segmenter  # noqa: F401

    if not args.checkpoint.is_file():
        raise AisdiffError(f"checkpoint {args.checkpoint} not found")
    cfg = load_config(args)
    cfg.load_from = str(args.checkpoint)
    if args.dump_proposals or args.out_prefix:
        if cfg.test_evaluator.get("type") != "AmodalMetric":
            raise AisdiffError("--dump-proposals / --out-prefix need test_evaluator = AmodalMetric")
        if args.dump_proposals:
            cfg.test_evaluator.proposals_file = str(args.dump_proposals)
        if args.out_prefix:
            cfg.test_evaluator.outfile_prefix = str(args.out_prefix)
    if args.show_dir:
        show_predictions(cfg, args.show_dir)
    cfg.custom_hooks = [*cfg.get("custom_hooks", []), dict(type="TestCostHook")]
    runner, metrics = run_runner(args, cfg, "test")
    if runner.rank != 0:  # (every process gets the metrics; the main one reports them)
        return 0
    out = args.metrics_json or Path(cfg.work_dir) / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2))
    print(format_metrics(metrics))
    print(next(hook.cost.line() for hook in runner.hooks if type(hook).__name__ == "TestCostHook"))
    print(f"metrics written to {out}")
    return 0


def add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    from mmengine.config import DictAction

    p = subparsers.add_parser(
        "predict", help="amodal segmentation of your own images: pictures and a COCO results file",
        description="Run a checkpoint on images without annotations (DiffSP priors on the fly) and write, "
                    "per image, OUT/vis/<name>.png (amodal outline, visible fill, hatched occluders, label "
                    "and score) and, for all, OUT/predictions.json (COCO results: amodal RLE as "
                    "segmentation, visible_segmentation, occluder_segmentation).")
    p.add_argument("config", type=Path, help="the AISDiff config the checkpoint was trained with")
    p.add_argument("checkpoint", type=Path,
                   help="checkpoint file (.pth), loaded weights-only (see --trust-checkpoint)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files, folders (searched recursively) or glob patterns (quote them)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (refused when it already holds predictions)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--score-thr", type=float, default=0.3,
                   help="keep instances scoring above this (default 0.3)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="images per forward pass; a batch holds images of one size (default 1)")
    p.add_argument("--save-priors", action="store_true",
                   help="add a second panel to each picture: each instance's shape prior as a heat map")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                   help="override config settings, e.g. model.test_cfg.rcnn.max_per_img=20")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load the checkpoint with full unpickling (only for files you made or trust)")
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    import segmenter  # noqa: F401

    from .predict import collect_images, load_model, predict_images, resolve_device

    images = collect_images(args.inputs)
    device = resolve_device(args.device)
    model = load_model(args.config, args.checkpoint, device, args.cfg_options, args.trust_checkpoint)
    summary = predict_images(model, images, args.out, score_thr=args.score_thr, batch_size=args.batch_size,
                             save_priors=args.save_priors)
    print(summary.line())
    print(f"pictures in {args.out / 'vis'}, results in {args.out / 'predictions.json'}")
    return 0
