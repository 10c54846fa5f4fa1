"""Prior-precompute job: peak memory for N and 4N ROIs (it must stay flat: the job streams), and ROIs/s
for 1 and 2 processes.

    python -m benchmarks.precompute_speed [--images 16] [--model tiny-random] [--batch-size 16]
    ... --out benchmarks/results/precompute_speed/MACHINE/NAME.json   # also write the table as a JSON record

Generates synthetic benchmarks of `--images` and 4x that many train images, runs `aisdiff precompute`
on each (and `accelerate launch` with 2 CPU processes on the larger one), and prints a table. Peak RSS is
the largest process of each run (the job, a DataLoader worker or an MPI rank), read from the kernel.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.records import argument_parser, cpu_machine, record, write_record

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed_run(cmd: list[str]) -> tuple[float, float, str]:
    """Run a command; (seconds, peak RSS in MB of its largest process, stdout). Each run in a fresh child
    (`python -c`) so that RUSAGE_CHILDREN covers only this run."""
    probe = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
             f"p = subprocess.run({cmd!r}, capture_output=True, text=True); "
             "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr); "
             "print('@@', time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
             "sys.exit(p.returncode)")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, env=env)
    if out.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
    seconds, rss_kb = re.search(r"@@ (\S+) (\d+)", out.stdout).groups()
    return float(seconds), int(rss_kb) / 1024, out.stdout


def main() -> None:
    parser = argument_parser(__doc__, __spec__.name)
    parser.add_argument("--images", type=int, default=16, help="train images of the small run (default 16)")
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, help="also write the table as a JSON record here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="aisdiff-bench-"))
    rows = []
    for scale in (1, 4):
        data = work / f"data{scale}"
        subprocess.run([str(BIN / "aisdiff"), "demo-data", str(data),
                        "--train-images", str(args.images * scale),
                        "--val-images", "0", "--seed", "0"], check=True, capture_output=True)
        job = ["precompute", "--ann", str(data / "annotations" / "train.json"),
               "--images", str(data / "images"),
               "--model", args.model, "--batch-size", str(args.batch_size), "--chunk-rows", "64"]
        launches = [("1 process", [str(BIN / "aisdiff")])]
        if scale == 4:
            launches.append(("2 processes", [str(BIN / "accelerate"), "launch", "--config_file",
                                             "configs/accelerate/cpu_2proc.yaml", "-m", "pipeline"]))
        for label, launcher in launches:
            out = work / f"store{scale}-{label[0]}.zarr"
            seconds, rss, stdout = timed_run([*launcher, *job, "--out", str(out)])
            rois = int(re.search(r"computed now\s+(\d+)", stdout).group(1))
            job_rate = float(re.search(r"ROIs/s\s+(\S+)", stdout).group(1))
            rows.append({"scale": "N" if scale == 1 else "4N", "rois": rois, "launch": label,
                         "wall_rois_per_s": rois / seconds, "job_rois_per_s": job_rate, "peak_rss_mb": rss})
    machine = cpu_machine()
    lines = [f"precompute benchmark: model {args.model}, batch {args.batch_size}, synthetic benchmark, on "
             f"{machine} (start-up included in the wall-clock rate)",
             "| ROIs | launch | ROIs/s (wall clock) | ROIs/s (job's summary) | peak RSS of a process (MB) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['scale']} = {r['rois']} ROIs | {r['launch']} | {r['wall_rois_per_s']:.1f} | "
              f"{r['job_rois_per_s']:.1f} | {r['peak_rss_mb']:.0f} |" for r in rows]
    print("\n".join(lines))
    if args.out:
        write_record(args.out, record(machine, model=args.model, images=args.images,
                                      batch_size=args.batch_size, rows=rows, table="\n".join(lines)))


if __name__ == "__main__":
    main()
