#!/usr/bin/env bash
# What the CPU machines this project is built on cannot measure, on one CUDA GPU with the project's
# environment installed. Usage: bash scripts/gpu_check.sh OUT_DIR [diffsp] [precompute] [demo]  (default: all)
#   diffsp  DiffSP throughput and peak memory on SD-1.5-inpainting's architecture (random weights, 512 px),
#           fp16, 64 ROIs in batches of 16, default and fast presets  -> OUT_DIR/diffsp_sd15_fp16{,_fast}.json
#   precompute  the prior job on the GPU (configs/accelerate/1gpu.yaml), the tiny model on the demo's
#           synthetic train split, fp32 and fp16, and `aisdiff inspect` of each store -> OUT_DIR/precompute.log
#   demo    `make demo` with its precompute on the GPU (configs/accelerate/1gpu.yaml); training and testing
#           need mmcv built with CUDA ops                              -> OUT_DIR/demo.log, OUT_DIR/demo/
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT_DIR="${1:?usage: bash scripts/gpu_check.sh OUT_DIR [diffsp] [precompute] [demo]}"
shift
STEPS="${*:-diffsp precompute demo}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT_DIR"
failed=0

for step in $STEPS; do
  case "$step" in
    diffsp)
      for preset in default fast; do
        suffix=""
        [ "$preset" = fast ] && suffix="_fast"
        echo "== $(date -u +%T) DiffSP on SD-1.5's architecture, fp16, preset $preset"
        "$PY" -m benchmarks.diffsp_speed --real-arch --device cuda --dtype fp16 --preset "$preset" --rois 64 \
          --batch-size 16 --rounds 1 --repeat 3 --out "$OUT_DIR/diffsp_sd15_fp16$suffix.json" || failed=1
      done ;;
    precompute)
      echo "== $(date -u +%T) the prior job on the GPU"
      data="$OUT_DIR/precompute/synthetic"
      {
        aisdiff demo-data "$data" --format kins2020 --train-images 100 --val-images 25 --seed 0 \
          && for dtype in fp32 fp16; do
            start=$(date +%s)
            accelerate launch --config_file configs/accelerate/1gpu.yaml -m pipeline precompute \
              --ann "$data/annotations/train.json" --images "$data/images" --model tiny --dtype "$dtype" \
              --batch-size 64 --out "$OUT_DIR/precompute/priors_$dtype.zarr" --overwrite \
              && echo "precompute $dtype: $(( $(date +%s) - start )) s with start-up" \
              && aisdiff inspect "$OUT_DIR/precompute/priors_$dtype.zarr" --ann "$data/annotations/train.json"
          done
      } > "$OUT_DIR/precompute.log" 2>&1 || failed=1
      tr '\r' '\n' < "$OUT_DIR/precompute.log" | grep -v -E '^\s*$|it/s\]$' | tail -n 60 ;;
    demo)
      echo "== $(date -u +%T) make demo on the GPU"
      start=$(date +%s)
      DEMO_DIR="$OUT_DIR/demo" DEMO_ACCELERATE_CONFIG=configs/accelerate/1gpu.yaml bash scripts/demo.sh \
        > "$OUT_DIR/demo.log" 2>&1 || failed=1
      tail -n 40 "$OUT_DIR/demo.log"
      echo "demo: $(( $(date +%s) - start )) s" ;;
    *) echo "unknown step '$step' (diffsp, precompute, demo)"; exit 2 ;;
  esac
done
exit "$failed"
