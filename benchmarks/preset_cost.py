"""What testing costs with on-the-fly DiffSP priors, per preset: seconds per image and DiffSP's share.

    python -m benchmarks.preset_cost --checkpoint work_dirs/demo/iter_300.pth --data work_dirs/demo
    python -m benchmarks.preset_cost --checkpoint work_dirs/fidelity/d_seed2/iter_300.pth \
        --data work_dirs/fidelity --cfg-options ...   # a fidelity run, at the benchmark's test settings

Runs `aisdiff test` on the synthetic config's val split (the `make demo` data and checkpoint) once per preset
(`priors.diffsp.PRESETS`), one after the other, and reads each run's `test cost:` line and amodal AP. The
test priors skip the check against the training store (its settings are the default preset's). Writes
benchmarks/results/preset_cost/preset_cost.json (command, machine, date, rows). Times are this machine's:
compare the presets' ratio, measured in one run, across machines.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from benchmarks.records import RESULTS, argument_parser, record
from priors.diffsp import PRESETS

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "aisdiff" / "aisdiff_r18_fpn_synthetic.py"
COST = re.compile(r"test cost: (\d+) images in ([\d.]+) s, ([\d.]+) s per image, (\d+)% of it in DiffSP")


def run_preset(args: argparse.Namespace, preset: str) -> dict:
    work = args.work_dir / preset
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "aisdiff"), "test", str(CONFIG), str(args.checkpoint),
         "--work-dir", str(work), "--cfg-options", "model.roi_head.test_prior.store=None",
         f"model.roi_head.test_prior.preset={preset}", *args.cfg_options],
        capture_output=True, text=True, env={**os.environ, "AISDIFF_DATA": str(args.data)}, cwd=REPO)
    if proc.returncode:
        sys.exit(f"aisdiff test with preset {preset} failed:\n{proc.stderr[-3000:]}")
    match = COST.search(proc.stdout)
    if match is None:
        sys.exit(f"aisdiff test with preset {preset} printed no 'test cost:' line:\n{proc.stdout[-2000:]}")
    metrics = json.loads((work / "metrics.json").read_text())
    return {"preset": preset, "images": int(match[1]), "seconds": float(match[2]),
            "s_per_image": float(match[3]), "diffsp_share": int(match[4]) / 100,
            "amodal_AP": metrics["amodal/AP"]}


def main() -> None:
    parser = argument_parser(__doc__, __spec__.name)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True,
                        help="the folder holding synthetic/ ($AISDIFF_DATA)")
    parser.add_argument("--work-dir", type=Path, default=REPO / "work_dirs" / "preset_cost")
    parser.add_argument("--out", type=Path, default=RESULTS / "preset_cost" / "preset_cost.json")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="more config overrides for both runs (e.g. a fidelity run's test settings)")
    args = parser.parse_args()
    rows = [run_preset(args, preset) for preset in PRESETS]
    lines = ["| preset | settings | images | s per image | DiffSP share | amodal AP |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {json.dumps(PRESETS[r['preset']]) if PRESETS[r['preset']] else 'T = 10'} | "
              f"{r['images']} | {r['s_per_image']:.2f} | {100 * r['diffsp_share']:.0f}% | "
              f"{100 * r['amodal_AP']:.1f} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, aisdiff test's default device"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record(machine, checkpoint=str(args.checkpoint), rows=rows, table=table),
                                   indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
