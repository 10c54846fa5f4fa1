"""`aisdiff convert-coco-amodal`: an amodal COCO file + a visible COCO file -> one aistron-format file.

Merges two COCO files of one split, matched by annotation id: --amodal, whose segmentation (and bbox) is each
object's amodal mask, and --visible, whose segmentation is its visible mask. Writes OUT in the aistron
format (amodal_segm, visible_segm, amodal_bbox, visible_bbox), which the configs and `aisdiff precompute`
read. Refused, with nothing written, when the files disagree (images, categories, annotation ids) or a
visible mask lies outside its amodal mask.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from priors.convert import merge_amodal_visible, write_json_atomic
from priors.errors import AisdiffError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert-coco-amodal", description=__doc__.split("\n\n", 1)[1],
                              help="merge a COCO file of amodal masks and one of visible masks into aistron")
    p.add_argument("--amodal", required=True, type=Path, help="COCO file whose masks are the amodal masks")
    p.add_argument("--visible", required=True, type=Path, help="COCO file whose masks are the visible masks")
    p.add_argument("--out", required=True, type=Path, help="the aistron-format file to write")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.out.resolve() in (args.amodal.resolve(), args.visible.resolve()):
        raise AisdiffError(f"--out {args.out} is one of the input files; write the merged file elsewhere.")
    if args.out.exists() and not args.overwrite:
        raise AisdiffError(f"--out {args.out} already exists; choose another path, or pass --overwrite.")
    doc = merge_amodal_visible(args.amodal, args.visible)
    write_json_atomic(doc, args.out)
    print(f"convert-coco-amodal: wrote {args.out} (format aistron: {len(doc['images'])} images, "
          f"{len(doc['annotations'])} annotations, {len(doc['categories'])} categories)")
    print(f"check it against your config with: aisdiff check-data {args.out} --images IMAGES --config CONFIG")
    return 0
