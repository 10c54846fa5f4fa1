"""`aisdiff demo-data`: write the synthetic amodal benchmark in one of the real datasets' formats."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from priors import synthetic
from priors.annotations import FORMAT_NAMES, load_annotations, read_json
from priors.errors import AisdiffError

SPLITS = ("train", "val")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo-data", help="generate the synthetic amodal benchmark (images + train/val annotations)",
        description="Write OUT/images/ and OUT/annotations/{train,val}.json: textured shapes of "
                    f"{len(synthetic.CATEGORIES)} categories with a depth order and exact amodal/visible "
                    "masks. Byte-identical for the same seed; rerunning with the same settings reuses what "
                    "is there.")
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--format", default="kins2020", choices=FORMAT_NAMES,
                   help="annotation format (default: kins2020)")
    p.add_argument("--train-images", type=int, default=100, help="number of train images (default: 100)")
    p.add_argument("--val-images", type=int, default=25, help="number of val images (default: 25)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--visible-masks", choices=synthetic.VISIBLE_ENCODINGS, default=None,
                   help="how visible masks are stored (default: as the format's real files do: polygons for "
                        "kins2020 and kins, RLE for cocoa and d2sa)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing benchmark made with other settings")
    p.set_defaults(func=run)


def _existing_infos(out: Path) -> dict[str, dict]:
    """The `info` of each split's annotation file that exists in `out`."""
    files = {s: out / "annotations" / f"{s}.json" for s in SPLITS}
    return {s: (read_json(f).get("info") or {}) for s, f in files.items() if f.is_file()}


def _stats_from_files(out: Path) -> dict[str, synthetic.SplitStats]:
    return {s: synthetic.split_stats(load_annotations(out / "annotations" / f"{s}.json")) for s in SPLITS}


def run(args: argparse.Namespace) -> int:
    if args.train_images < 0 or args.val_images < 0:
        raise AisdiffError("--train-images and --val-images must be >= 0")
    out: Path = args.out
    wanted = synthetic.data_settings(args.format, args.seed, args.train_images, args.val_images,
                                     args.visible_masks)
    infos = _existing_infos(out)
    if len(infos) == len(SPLITS) and all(info.get("settings") == wanted for info in infos.values()):
        print(f"demo-data: {out} already holds this benchmark (same settings); reusing it")
        print(synthetic.summary(_stats_from_files(out)))
        return 0
    if out.exists() and any(out.iterdir()):
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ("images", "annotations"))
        other = [s for s, info in infos.items() if "settings" not in info or info["settings"] != wanted]
        if (foreign or other) and not args.overwrite:
            raise AisdiffError(
                f"{out} already holds other data "
                f"({', '.join(foreign + [f'annotations/{s}.json' for s in other])}), not a benchmark made "
                f"with these settings ({wanted}). Choose another folder, or pass --overwrite to replace its "
                "images/ and annotations/.")
        for sub in ("images", "annotations"):  # ours, or an interrupted run: start over
            shutil.rmtree(out / sub, ignore_errors=True)
    stats = synthetic.generate(out, fmt=args.format, train_images=args.train_images,
                               val_images=args.val_images, seed=args.seed, settings=wanted,
                               visible_masks=args.visible_masks)
    print(f"demo-data: wrote {out} (format {args.format}, seed {args.seed})")
    print(synthetic.summary(stats))
    return 0
