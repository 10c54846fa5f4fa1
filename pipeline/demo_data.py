"""`aisdiff demo-data`: write the synthetic amodal benchmark in one of the real datasets' formats, or in a
real dataset's whole folder layout under a data root (`--layout`), so that its config runs unchanged."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from priors import synthetic
from priors.annotations import FORMAT_NAMES, load_annotations, read_json
from priors.errors import AisdiffError
from priors.layouts import LAYOUT_NAMES, LAYOUTS, DatasetLayout
from priors.shapes import VARIATIONS

SPLITS = ("train", "val")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo-data", help="generate the synthetic amodal benchmark (images + train/val annotations)",
        description="Write OUT/images/ and OUT/annotations/{train,val}.json: textured shapes of "
                    f"{len(synthetic.CATEGORIES)} categories with a depth order and exact amodal/visible "
                    "masks. Byte-identical for the same seed; rerunning with the same settings reuses what "
                    "is there.")
    p.add_argument("out", type=Path, help="output folder; with --layout, the data root ($AISDIFF_DATA)")
    p.add_argument("--format", choices=FORMAT_NAMES, help="annotation format (default: kins2020)")
    p.add_argument("--layout", choices=LAYOUT_NAMES,
                   help="write the train and val splits as that dataset's train and test splits under "
                        "OUT/<dataset>/: its folders, file names, format and declared categories (each shape "
                        "standing for one of them), for rehearsing the real configs offline")
    p.add_argument("--train-images", type=int, default=100, help="number of train images (default: 100)")
    p.add_argument("--val-images", type=int, default=25, help="number of val images (default: 25)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--variation", choices=tuple(VARIATIONS), default="low",
                   help="how shapes vary within a category: low (default: rigid outlines that barely rotate, "
                        "the demo's and the tiny model's benchmark) or high (parametric families at any "
                        "rotation, stretched and sheared, with articulated parts: another 7 categories)")
    p.add_argument("--visible-masks", choices=synthetic.VISIBLE_ENCODINGS, default=None,
                   help="how visible masks are stored (default: as the format's real files do: polygons for "
                        "kins2020 and kins, RLE for cocoa and d2sa)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing benchmark made with other settings")
    p.set_defaults(func=run)


def _existing_infos(out: Path, layout: DatasetLayout | None = None) -> dict[str, dict]:
    """The `info` of each split's annotation file that exists in `out`."""
    files = {s: synthetic.split_paths(out, s, layout)[0] for s in SPLITS}
    return {s: (read_json(f).get("info") or {}) for s, f in files.items() if f.is_file()}


def _stats_from_files(out: Path, layout: DatasetLayout | None = None) -> dict[str, synthetic.SplitStats]:
    return {s: synthetic.split_stats(load_annotations(synthetic.split_paths(out, s, layout)[0]))
            for s in SPLITS}


def _listed_images(out: Path, layout: DatasetLayout, split: str) -> set[Path]:
    """The image files a synthetic split's annotation file lists (the only images demo-data may remove)."""
    annotations, images = synthetic.split_paths(out, split, layout)
    return {images / image["file_name"] for image in read_json(annotations).get("images", [])}


def _clear_layout(out: Path, layout: DatasetLayout, infos: dict[str, dict], wanted: dict,
                  overwrite: bool) -> None:
    """Make room for a synthetic dataset in `layout` under the data root `out`: remove the files of an
    earlier synthetic one (with --overwrite if it was made with other settings; an interrupted run with these
    settings is redone as it is), and nothing else: a file that no synthetic annotation file lists (a real
    image, say) is never touched, and its presence is refused."""
    written = {s for s, info in infos.items() if "settings" in info}
    ours = {path for s in written for path in _listed_images(out, layout, s)}
    foreign = [str(synthetic.split_paths(out, s, layout)[0]) for s in infos if s not in written]
    for folder in {synthetic.split_paths(out, s, layout)[1] for s in SPLITS}:
        if folder.is_dir():
            foreign += [str(f) for f in sorted(folder.iterdir()) if f not in ours][:3]
    if foreign:
        raise AisdiffError(
            f"{out / layout.folder} holds files this command did not write ({', '.join(sorted(set(foreign)))}"
            f"{', ...' if len(foreign) > 3 else ''}): perhaps the real {layout.name} dataset. Rehearse under "
            "another data root (e.g. /tmp/rehearsal): demo-data never writes over it (if an interrupted "
            "demo-data run left those images, delete them).")
    if any(infos[s]["settings"] != wanted for s in written) and not overwrite:
        raise AisdiffError(
            f"{out / layout.folder} holds a synthetic {layout.name} dataset made with other settings; pass "
            "--overwrite to replace it, or choose another data root.")
    for split in written:
        synthetic.split_paths(out, split, layout)[0].unlink()
    for path in ours:
        path.unlink(missing_ok=True)


def _clear_folder(out: Path, infos: dict[str, dict], wanted: dict, overwrite: bool) -> None:
    """Make room for the benchmark in `out`: refuse other data without --overwrite, then remove images/ and
    annotations/ (ours, or an interrupted run's)."""
    if out.exists() and any(out.iterdir()):
        foreign = sorted(p.name for p in out.iterdir() if p.name not in ("images", "annotations"))
        other = [s for s, info in infos.items() if "settings" not in info or info["settings"] != wanted]
        if (foreign or other) and not overwrite:
            raise AisdiffError(
                f"{out} already holds other data "
                f"({', '.join(foreign + [f'annotations/{s}.json' for s in other])}), not a benchmark made "
                f"with these settings ({wanted}). Choose another folder, or pass --overwrite to replace its "
                "images/ and annotations/.")
        for sub in ("images", "annotations"):  # ours, or an interrupted run: start over
            shutil.rmtree(out / sub, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    if args.train_images < 0 or args.val_images < 0:
        raise AisdiffError("--train-images and --val-images must be >= 0")
    layout = LAYOUTS[args.layout] if args.layout else None
    if layout and args.variation != "low":
        raise AisdiffError(f"--layout {layout.name} writes the default shapes as {layout.name}'s categories; "
                           f"drop --variation {args.variation} or --layout.")
    if layout and args.format not in (None, layout.format):
        raise AisdiffError(f"--layout {layout.name} writes the {layout.format} format; drop --format "
                           f"{args.format}.")
    fmt = layout.format if layout else args.format or "kins2020"
    out: Path = args.out
    wanted = synthetic.data_settings(fmt, args.seed, args.train_images, args.val_images, args.visible_masks,
                                     layout, args.variation)
    where = out / layout.folder if layout else out
    infos = _existing_infos(out, layout)
    if len(infos) == len(SPLITS) and all(info.get("settings") == wanted for info in infos.values()):
        print(f"demo-data: {where} already holds this benchmark (same settings); reusing it")
        print(synthetic.summary(_stats_from_files(out, layout), layout, args.variation))
        return 0
    if layout:
        _clear_layout(out, layout, infos, wanted, args.overwrite)
    else:
        _clear_folder(out, infos, wanted, args.overwrite)
    stats = synthetic.generate(out, fmt=fmt, train_images=args.train_images, val_images=args.val_images,
                               seed=args.seed, settings=wanted, visible_masks=args.visible_masks,
                               layout=layout, variation=args.variation)
    print(f"demo-data: wrote {where} (format {fmt}{f', {layout.name} layout' if layout else ''}, "
          f"seed {args.seed}{f', variation {args.variation}' if args.variation != 'low' else ''})")
    print(synthetic.summary(stats, layout, args.variation))
    return 0
