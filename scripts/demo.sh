#!/usr/bin/env bash
# The main job on the embedded synthetic benchmark and the tiny model (what `make demo` runs):
#   1. generate the synthetic amodal benchmark (train + val)        -> $DEMO_DIR/synthetic/
#   2. precompute train priors, 2 CPU processes (accelerate launch) -> $DEMO_DIR/priors_train.zarr
#   3. train the synthetic AISDiff config with the cache provider    -> $DEMO_DIR/iter_$DEMO_ITERS.pth
#   4. test on val with on-the-fly priors, print the AP table        -> $DEMO_DIR/metrics.json
#   5. render the inspection picture of the store                    -> $DEMO_DIR/priors.png
# Every step reuses what a previous run left: rerunning finishes fast.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${DEMO_DIR:-work_dirs/demo}"
TRAIN_IMAGES="${DEMO_TRAIN_IMAGES:-100}"
VAL_IMAGES="${DEMO_VAL_IMAGES:-25}"
ITERS="${DEMO_ITERS:-300}"
VENV="${VENV:-.venv}"
export PATH="$ROOT/$VENV/bin:$PATH"   # aisdiff, accelerate and mpirun (for 2 CPU processes)
export AISDIFF_DATA="$OUT"            # the synthetic config reads $AISDIFF_DATA/synthetic/
DATA="$OUT/synthetic"
STORE="$OUT/priors_train.zarr"
CONFIG=configs/aisdiff/aisdiff_r18_fpn_synthetic.py
CKPT="$OUT/iter_$ITERS.pth"
SETTINGS=(train_cfg.max_iters="$ITERS" train_dataloader.dataset.prior_store="$STORE"
          model.roi_head.test_prior.store="$STORE" default_hooks.checkpoint.interval="$ITERS")
step() { printf '\n== %s\n' "$*"; }
start=$(date +%s)

step "1/5 synthetic benchmark ($TRAIN_IMAGES train + $VAL_IMAGES val images)"
aisdiff demo-data "$DATA" --format kins2020 --train-images "$TRAIN_IMAGES" --val-images "$VAL_IMAGES" --seed 0

step "2/5 train priors with DiffSP (tiny model, 2 CPU processes)"
accelerate launch --config_file configs/accelerate/cpu_2proc.yaml -m pipeline precompute \
  --ann "$DATA/annotations/train.json" --images "$DATA/images" --out "$STORE" --model tiny --batch-size 16

step "3/5 train AISDiff R18-FPN, $ITERS iterations, cached priors"
if [ -f "$CKPT" ]; then
  echo "reusing $CKPT"
else
  resume=()
  [ -f "$OUT/last_checkpoint" ] && resume=(--resume)
  aisdiff train "$CONFIG" --work-dir "$OUT" "${resume[@]}" \
    --cfg-options "${SETTINGS[@]}" val_cfg=None val_dataloader=None val_evaluator=None
fi

step "4/5 test on val with on-the-fly priors"
if [ -f "$OUT/metrics.json" ] && [ "$OUT/metrics.json" -nt "$CKPT" ]; then
  echo "reusing $OUT/metrics.json"
  python -c "import json, sys; from segmenter.cli import format_metrics; print(format_metrics(json.load(open(sys.argv[1]))))" "$OUT/metrics.json"
else
  aisdiff test "$CONFIG" "$CKPT" --work-dir "$OUT" --metrics-json "$OUT/metrics.json" --cfg-options "${SETTINGS[@]}"
fi

step "5/5 inspection picture of the prior store"
aisdiff inspect "$STORE" --ann "$DATA/annotations/train.json" --images "$DATA/images" --png "$OUT/priors.png"

echo
echo "demo done in $(( $(date +%s) - start )) s: $OUT/{metrics.json,priors_train.zarr,iter_$ITERS.pth,priors.png}"
