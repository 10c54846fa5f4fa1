"""Prior quality: IoU of DiffSP's priors with the amodal ground truth on the synthetic val split, by
occlusion bucket, beside the visible mask's (the number a prior must beat).

    python -m benchmarks.prior_quality      # -> benchmarks/results/prior_quality/prior_quality.json

Generates the synthetic benchmark the trained `tiny` model came from (`aisdiff demo-data`, seed 0, 500 train
/ 100 val images; its val split is held out), runs `aisdiff precompute` on val once per setting (SETTINGS:
the tuned `tiny`, `tiny` at tau 1, `tiny-random` at the tuned settings) and scores each store as
`aisdiff inspect --ann` does (`priors.prior_quality.gt_ious` and `iou_table`).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from benchmarks.records import RESULTS, argument_parser, cpu_machine, record, write_record
from priors.annotations import AmodalAnnotations
from priors.prior_quality import gt_ious, iou_table
from priors.store import PriorStore

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


class Setting(NamedTuple):
    """One column: a model, the DiffSP options `aisdiff precompute` gets, and the prior threshold."""

    name: str
    model: str
    options: tuple[str, ...]
    threshold: float


SETTINGS = (Setting("tiny, tau 0, t 0.45 (tuned)", "tiny", (), 0.45),
            Setting("tiny, tau 1, t 0.5", "tiny", ("--tau", "1"), 0.5),
            Setting("tiny-random, tau 0, t 0.45", "tiny-random",
                    ("--tau", "0", "--self-res", "16", "--cross-res", "16"), 0.45))


def make_data(data: Path, train_images: int, val_images: int, seed: int, *options: str) -> None:
    """The synthetic benchmark as `aisdiff demo-data` writes it, with `options` (reused when there)."""
    subprocess.run([str(BIN / "aisdiff"), "demo-data", str(data), "--train-images", str(train_images),
                    "--val-images", str(val_images), "--seed", str(seed), *options], check=True,
                   capture_output=True)


def score_setting(setting: Setting, data: Path, work: Path, batch_size: int) -> dict:
    """Precompute the val split's priors with one setting and score them: the store's DiffSP settings, the
    `iou_table` and the seconds it took."""
    store = work / f"{setting.model}{'_'.join(('', *setting.options)).replace('--', '')}.zarr"
    ann_file = data / "annotations" / "val.json"
    start = time.perf_counter()
    subprocess.run([str(BIN / "aisdiff"), "precompute", "--ann", str(ann_file), "--images",
                    str(data / "images"), "--out", str(store), "--model", setting.model, "--batch-size",
                    str(batch_size), "--overwrite", *setting.options], check=True, capture_output=True,
                   cwd=REPO, env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    seconds = time.perf_counter() - start
    ann = AmodalAnnotations(ann_file, images_dir=data / "images", skip_invalid=True)
    opened = PriorStore.open(store)
    table = iou_table(gt_ious(opened, ann, setting.threshold))
    return {**setting._asdict(), "options": list(setting.options), "diffsp": opened.settings, "iou": table,
            "seconds": seconds}


def markdown(columns: list[dict]) -> str:
    """The table: one row per instance group, the visible mask and each setting's prior IoU."""
    groups = [g for g, v in columns[0]["iou"].items() if v["instances"]]
    lines = ["| instances | n | visible mask | " + " | ".join(c["name"] for c in columns) + " |",
             "|---" * (3 + len(columns)) + "|"]
    for g in groups:
        first = columns[0]["iou"][g]
        lines.append(f"| {g} | {first['instances']} | {first['visible_iou']:.3f} | "
                     + " | ".join(f"{c['iou'][g]['prior_iou']:.3f}" for c in columns) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argument_parser(__doc__, __spec__.name)
    parser.add_argument("--data", type=Path, default=REPO / "work_dirs" / "prior_quality" / "shapes",
                        help="the synthetic benchmark's folder (default: work_dirs/prior_quality/shapes)")
    parser.add_argument("--train-images", type=int, default=500)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS / "prior_quality" / "prior_quality.json")
    args = parser.parse_args()
    make_data(args.data, args.train_images, args.val_images, args.seed)
    columns = []
    for setting in SETTINGS:
        columns.append(score_setting(setting, args.data, args.data.parent, args.batch_size))
        print(f"{setting.name}: prior IoU {columns[-1]['iou']['all']['prior_iou']:.3f} "
              f"({columns[-1]['seconds']:.0f} s)", flush=True)
    text = markdown(columns)
    print(text)
    machine = cpu_machine()
    write_record(args.out, record(machine, data={"train_images": args.train_images,
                                                 "val_images": args.val_images, "seed": args.seed},
                                  batch_size=args.batch_size, columns=columns, table=text))


if __name__ == "__main__":
    main()
