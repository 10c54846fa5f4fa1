"""`aisdiff check-data ANN`: is an annotation file ready to train or test with a config and a checkpoint?

Reads the file as training does (every record validated) and prints its format, its categories (id, class,
instances), the occlusion-rate histogram and every invalid record. With `--config`, refuses file categories
the config does not declare and heads whose `num_classes` differs from the number of classes. With
`--checkpoint` (read weights-only), refuses classes, category ids or a classifier size that differ from the
checkpoint's: training and testing here match classes by name, but the checkpoint's ids are the ones
`aisdiff predict` writes, so another tool scoring them against a file numbered otherwise counts every
prediction as another class (AP 0). Exit status: 0 consistent, 1 invalid records, 2 a disagreement
(printed as one paragraph).
"""
from __future__ import annotations

import argparse
import pickle
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from priors.annotations import FORMAT_NAMES, AmodalAnnotations
from priors.errors import AisdiffError
from priors.occlusion import OCCLUSION_BUCKETS
from priors.synthetic import SplitStats, split_stats

FC_CLS = "roi_head.bbox_head.fc_cls.weight"  # rows: num_classes + 1 (background)
HEADS = ("bbox_head", "mask_head")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from mmengine.config import DictAction

    p = subparsers.add_parser("check-data", description=__doc__,
                              help="check an annotation file (and a config, a checkpoint) before training")
    p.add_argument("ann", type=Path, help="annotation file (KINS 2020 / KINS / COCOA-cls / D2SA / aistron)")
    p.add_argument("--images", type=Path, help="its image folder (also checks that every image file exists)")
    p.add_argument("--format", choices=FORMAT_NAMES, help="annotation format (default: detected)")
    p.add_argument("--config", type=Path, help="the mmdet config to train or test with")
    p.add_argument("--checkpoint", type=Path, help="a checkpoint to test with (read weights-only)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                   help="override config settings, as `aisdiff train` does")
    p.set_defaults(func=run, work_dir=None)


@dataclass
class Findings:
    """What the checks found: disagreements (refused) and warnings (printed)."""

    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# -- the report --------------------------------------------------------------------------------------
def aligned(rows: Sequence[Sequence[object]], right: Sequence[int] = (), indent: str = "  ") -> str:
    """Rows as a table of columns padded to their widest cell; the columns in `right` right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join(indent + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                        for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()
                     for row in cells)


def category_table(ann: AmodalAnnotations, stats: SplitStats) -> str:
    """Per file category: id, class and instances; then the total."""
    rows: list[tuple] = [("id", "class", "instances")]
    rows += [(cid, ann.categories[cid], stats.per_category.get(ann.categories[cid], 0))
             for cid in sorted(ann.categories)]
    rows.append(("", "total", stats.instances))
    return aligned(rows, right=(0, 2))


def occlusion_table(stats: SplitStats) -> str:
    """The occlusion-rate histogram of the valid instances: counts and shares per bucket."""
    total = max(stats.instances, 1)
    counts = [stats.occlusion.get(b.name, 0) for b in OCCLUSION_BUCKETS]
    return aligned([("occlusion rate", *(b.name for b in OCCLUSION_BUCKETS)), ("instances", *counts),
                    ("share", *(f"{n / total:.0%}" for n in counts))], right=range(1, len(counts) + 1))


def report(ann: AmodalAnnotations, stats: SplitStats) -> str:
    """The summary printed for every file: format, sizes, categories, occlusion, invalid records."""
    lines = [f"{ann.path}: format {ann.format}, {len(ann.images)} images, {len(ann)} valid instances, "
             f"{len(ann.invalid)} invalid, {ann.num_crowd} crowd (ignored)",
             "", category_table(ann, stats), "", occlusion_table(stats)]
    if ann.invalid:
        counts = ", ".join(f"{reason} {n}" for reason, n in sorted(ann.invalid_counts().items()))
        lines += ["", f"invalid records ({counts}):"]
        lines += [f"  [{r.reason}] {r.message}" for r in ann.invalid]
    return "\n".join(lines)


def _categories(ann: AmodalAnnotations, names: Sequence[str] | None = None) -> str:
    """Categories of the file as 'name (id)', all or those named."""
    return ", ".join(f"{n} ({c})" for c, n in sorted(ann.categories.items()) if names is None or n in names)


# -- the config ----------------------------------------------------------------------------------------
def configured_classes(cfg) -> tuple[str, ...] | None:
    """The classes a config trains on: its train dataset's metainfo, else its test dataset's (or test
    prior's); None when it names none (AmodalDataset then takes the file's categories in id order)."""
    from .predict import config_classes

    train = (cfg.get("train_dataloader", {}).get("dataset", {}).get("metainfo") or {}).get("classes")
    return tuple(train) if train else config_classes(cfg)


def check_config(cfg, config: Path, ann: AmodalAnnotations, found: Findings) -> tuple[str, ...]:
    """The config's classes (or the file's, where it names none), recording where the file or the heads
    disagree with them."""
    classes = configured_classes(cfg)
    if classes is None:
        found.warnings.append(f"config {config} names no classes: training takes the file's categories in id "
                              f"order {list(ann.classes)}")
        classes = ann.classes
    unknown = [n for n in ann.categories.values() if n not in classes]
    if unknown:
        found.problems.append(
            f"file {ann.path} has categories {_categories(ann, unknown)} that config {config} does not "
            f"declare (its classes: {list(classes)}); add them to the config's classes (and num_classes), or "
            "rename or drop them in the file.")
    heads = cfg.model.get("roi_head", {})
    sizes = {h: heads[h].get("num_classes") for h in HEADS if h in heads}
    wrong = ", ".join(f"model.roi_head.{h}.num_classes={n}" for h, n in sizes.items() if n != len(classes))
    if wrong:
        found.problems.append(
            f"config {config} sets {wrong} "
            f"but declares {len(classes)} classes {list(classes)} (file {ann.path}: {len(ann.categories)} "
            f"categories {_categories(ann)}); set num_classes={len(classes)} in both heads "
            "(num_classes=len(classes), as configs/aisdiff/aisdiff_r50_fpn_custom.py does).")
    return classes


def warn_empty_classes(classes: Sequence[str], config: Path | None, ann: AmodalAnnotations, counts: Counter,
                       found: Findings) -> None:
    """A class (of the config, else of the file) without instances in the file is a warning, not an error
    (KINS 2020 declares `rider` and has none)."""
    declared = f" declared by config {config}" if config else ""
    for name in classes:
        if not counts.get(name):
            what = "instances" if name in ann.categories.values() else "category"
            found.warnings.append(f"class {name!r}{declared} has no {what} in file {ann.path}")


# -- the checkpoint ------------------------------------------------------------------------------------
def read_checkpoint(path: Path) -> dict:
    """A checkpoint's dict, loaded weights-only (tensors and the types mmengine writes; nothing else)."""
    import torch

    from .checkpoint import allow_mmengine_checkpoints, refused_types

    if not path.is_file():
        raise AisdiffError(f"checkpoint {path} not found")
    allow_mmengine_checkpoints()
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise AisdiffError(f"checkpoint {path} holds more than weights and mmengine's types "
                           f"({refused_types(exc)}), and check-data never unpickles anything else, which "
                           "could run code; check a checkpoint written by training.") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise AisdiffError(f"checkpoint {path} could not be read ({type(exc).__name__}: "
                           f"{str(exc).strip()[:200]}): is it a complete .pth file written by "
                           "training?") from None
    if not isinstance(loaded, dict):
        raise AisdiffError(f"checkpoint {path} holds a {type(loaded).__name__}, not a checkpoint dict")
    return loaded


def check_checkpoint(ckpt: dict, path: Path, ann: AmodalAnnotations,
                     config: tuple[Path, tuple[str, ...]] | None, found: Findings) -> None:
    """Record where the checkpoint's classes, category ids or classifier size disagree with the config's
    classes (`config`: its path and classes), else with the file's categories and their ids."""
    meta = (ckpt.get("meta") or {}).get("dataset_meta") or {}
    trained = tuple(meta.get("classes") or ())
    classes = config[1] if config else ann.classes
    if not trained:
        found.warnings.append(f"checkpoint {path} records no meta.dataset_meta.classes: classes and category "
                              "ids cannot be checked")
    elif config and trained != classes:
        found.problems.append(
            f"checkpoint {path} was trained on classes {list(trained)} (meta.dataset_meta), but config "
            f"{config[0]} declares {list(classes)}; use the config the checkpoint was trained with (same "
            "classes, same order).")
    elif not config and set(ann.categories.values()) - set(trained):
        untrained = set(ann.categories.values()) - set(trained)
        found.problems.append(
            f"file {ann.path} has categories {_categories(ann, untrained)} that checkpoint {path} was not "
            f"trained on (its classes: {list(trained)}); test it on data of its classes.")
    if trained:
        _check_category_ids(meta, trained, path, ann, found)
    _check_classifier(ckpt, path, classes if config or not trained else trained, found)


def _check_category_ids(meta: dict, trained: tuple[str, ...], path: Path, ann: AmodalAnnotations,
                        found: Findings) -> None:
    """The file's category id of every class equals the one the checkpoint's training file gave it."""
    recorded = tuple(meta.get("category_ids") or ())
    if len(recorded) != len(trained):
        found.warnings.append(f"checkpoint {path} records no meta.dataset_meta.category_ids: category ids "
                              "cannot be checked (predictions get label + 1)")
        return
    file_ids = {n: c for c, n in ann.categories.items()}
    wrong = [(n, c, file_ids[n]) for n, c in zip(trained, recorded, strict=True)
             if c is not None and n in file_ids and int(c) != file_ids[n]]
    if wrong:
        found.problems.append(
            f"wrong category ids: checkpoint {path} was trained with "
            f"{', '.join(f'{n} = {c}' for n, c, _ in wrong)} (meta.dataset_meta.category_ids), but file "
            f"{ann.path} numbers {', '.join(f'{n} = {f}' for n, _, f in wrong)}; the ids `aisdiff "
            "predict` writes would be scored as other classes against this file (AP 0). Renumber the file's "
            "categories (and their annotations) to the training file's ids.")


def _check_classifier(ckpt: dict, path: Path, classes: Sequence[str], found: Findings) -> None:
    """The box classifier has one row per class plus the background."""
    state = {k.removeprefix("module."): v for k, v in (ckpt.get("state_dict") or {}).items()}
    weight = state.get(FC_CLS)
    if weight is None:
        found.warnings.append(f"checkpoint {path} has no {FC_CLS}: its classifier size cannot be checked")
    elif weight.shape[0] != len(classes) + 1:
        found.problems.append(
            f"checkpoint {path}'s classifier {FC_CLS} has {weight.shape[0]} rows ({weight.shape[0] - 1} "
            f"classes + background), but there are {len(classes)} classes {list(classes)}; use the "
            "checkpoint trained with these classes, or a config whose num_classes is "
            f"{weight.shape[0] - 1}.")


# -- the command ---------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    ann = AmodalAnnotations(args.ann, format=args.format, images_dir=args.images, skip_invalid=True)
    stats = split_stats(ann)
    print(report(ann, stats))
    found = Findings()
    config = None
    if args.config:
        from .cli import load_config

        config = (args.config, check_config(load_config(args), args.config, ann, found))
    warn_empty_classes(config[1] if config else ann.classes, args.config, ann, stats.per_category, found)
    if args.checkpoint:
        check_checkpoint(read_checkpoint(args.checkpoint), args.checkpoint, ann, config, found)
    for warning in found.warnings:
        print(f"warning: {warning}")
    if found.problems:
        raise AisdiffError(" ".join(found.problems))
    if ann.invalid:
        print(f"{len(ann.invalid)} invalid record(s): fix them, or train with skip_invalid=True in the "
              "dataset (precompute: --skip-invalid) to leave them out")
        return 1
    checked = [f"file {ann.path}"] + [f"{what} {path}" for what, path in
                                      (("config", args.config), ("checkpoint", args.checkpoint)) if path]
    print(f"consistent: {', '.join(checked)}")
    return 0
