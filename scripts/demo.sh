#!/usr/bin/env bash
# The main job on the embedded synthetic benchmark and the tiny model (what `make demo` runs):
#   1. generate the synthetic amodal benchmark (train + val)        -> $DEMO_DIR/synthetic/
#   2. precompute train priors (accelerate launch; 2 CPU processes) -> $DEMO_DIR/priors_train.zarr
#   3. train the synthetic AISDiff config with the cache provider    -> $DEMO_DIR/iter_$DEMO_ITERS.pth
#   4. test on val with on-the-fly priors, print the AP table        -> $DEMO_DIR/metrics.json
#   5. render the inspection picture of the store                    -> $DEMO_DIR/priors.png
#   6. predict a few val images as a user's photos (aisdiff predict)  -> $DEMO_DIR/predict/vis/*.png
# Every step reuses what a previous run left: rerunning finishes fast. The terminal shows each step's progress
# and tables; every command's full output is in $DEMO_DIR/logs/<step>.log.
set -euo pipefail

step() { printf '\n== %s\n' "$*"; }
# logged NAME PATTERN CMD...: CMD's whole output to $LOGS/NAME.log; its lines matching PATTERN (progress bars
# split at their carriage returns) on the terminal as they come. On failure, the log's last lines and its path.
# Every stage passes each line on at once: tee writes unbuffered, tr goes line-buffered through stdbuf (into a
# pipe it would hold its output until a block of kilobytes fills: a step's progress only at its end), grep and
# sed flush each line.
logged() {
  local log="$LOGS/$1.log" pattern="$2" rc
  shift 2
  set +e
  "$@" 2>&1 | tee "$log" | stdbuf -oL tr '\r' '\n' | grep --line-buffered -E "$pattern"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ]; then
    echo "failed (exit $rc): the last lines of $log"
    tr '\r' '\n' < "$log" | tail -n 30
    [ -n "${HINT:-}" ] && echo "$HINT"
    exit "$rc"
  fi
}
# mmengine's 'Iter(train) [ 50/300] ... eta: 0:07:10 ... loss: 3.1 ...' as '  train iteration 50/300  loss 3.1  eta 0:07:10'
iterations() {
  sed -E -u -e 's/.*Iter\(train\) *\[ *([0-9]+)\/([0-9]+)\].*eta: ([0-9:]+).* loss: ([0-9.]+).*/  train iteration \1\/\2  loss \4  eta \3/' \
            -e 's/.*Iter\(test\) *\[ *([0-9]+)\/([0-9]+)\].*eta: ([0-9:]+).*/  test image \1\/\2  eta \3/' \
            -e 's/.*Iter\(test\) *\[ *([0-9]+)\/([0-9]+)\].*/  test image \1\/\2/'
}
# sourced (as tests/test_demo.py does), the script only defines the functions above
[ "${BASH_SOURCE[0]}" != "$0" ] && return 0

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${DEMO_DIR:-work_dirs/demo}"
TRAIN_IMAGES="${DEMO_TRAIN_IMAGES:-100}"
VAL_IMAGES="${DEMO_VAL_IMAGES:-25}"
ITERS="${DEMO_ITERS:-300}"
VENV="${VENV:-.venv}"
# the precompute step's Accelerate config: 2 CPU processes by default; configs/accelerate/1gpu.yaml on a GPU
ACCELERATE_CONFIG="${DEMO_ACCELERATE_CONFIG:-configs/accelerate/cpu_2proc.yaml}"
export PATH="$ROOT/$VENV/bin:$PATH"   # aisdiff, accelerate and mpirun (for 2 CPU processes)
export AISDIFF_DATA="$OUT"            # the synthetic config reads $AISDIFF_DATA/synthetic/
export PYTHONUNBUFFERED=1             # the commands' prints into the pipes of `logged` as they happen, in order
DATA="$OUT/synthetic"
STORE="$OUT/priors_train.zarr"
CONFIG=configs/aisdiff/aisdiff_r18_fpn_synthetic.py
CKPT="$OUT/iter_$ITERS.pth"
SETTINGS=(train_cfg.max_iters="$ITERS" train_dataloader.dataset.prior_store="$STORE"
          model.roi_head.test_prior.store="$STORE" default_hooks.checkpoint.interval="$ITERS")
LOGS="$OUT/logs"
PREDICT_IMAGES="${DEMO_PREDICT_IMAGES:-4}"
mkdir -p "$LOGS"
start=$(date +%s)

step "1/6 synthetic benchmark ($TRAIN_IMAGES train + $VAL_IMAGES val images)"
HINT="(a demo folder made by an older version of this script: remove $OUT and run it again)" logged demo-data '.' \
  aisdiff demo-data "$DATA" --format kins2020 --train-images "$TRAIN_IMAGES" --val-images "$VAL_IMAGES" --seed 0

where="2 CPU processes"
[ -n "${DEMO_ACCELERATE_CONFIG:-}" ] && where="$ACCELERATE_CONFIG"
step "2/6 train priors with DiffSP (tiny model, $where)"
logged precompute 'DiffSP priors: +(0|25|50|75|100)%|^  [a-zA-Z]|warning|rror' \
  accelerate launch --config_file "$ACCELERATE_CONFIG" -m pipeline precompute \
  --ann "$DATA/annotations/train.json" --images "$DATA/images" --out "$STORE" --model tiny --batch-size 16

step "3/6 train AISDiff R18-FPN, $ITERS iterations, cached priors"
if [ -f "$CKPT" ]; then
  echo "reusing $CKPT"
else
  resume=()
  [ -f "$OUT/last_checkpoint" ] && resume=(--resume)
  logged train 'Iter\(train\)' aisdiff train "$CONFIG" --work-dir "$OUT" "${resume[@]}" \
    --cfg-options "${SETTINGS[@]}" val_cfg=None val_dataloader=None val_evaluator=None \
    default_hooks.logger.interval=50 | iterations
  echo "checkpoint: $CKPT"
fi

step "4/6 test on val with on-the-fly priors"
if [ -f "$OUT/metrics.json" ] && [ "$OUT/metrics.json" -nt "$CKPT" ]; then
  echo "reusing $OUT/metrics.json"
  python -c "import json, sys; from segmenter.cli import format_metrics; print(format_metrics(json.load(open(sys.argv[1]))))" "$OUT/metrics.json"
else
  logged test 'Iter\(test\)|^\||^amodal AP by|^metrics written' \
    aisdiff test "$CONFIG" "$CKPT" --work-dir "$OUT" --metrics-json "$OUT/metrics.json" \
    --cfg-options "${SETTINGS[@]}" default_hooks.logger.interval=5 | iterations
fi

step "5/6 inspection picture of the prior store"
logged inspect '.' \
  aisdiff inspect "$STORE" --ann "$DATA/annotations/train.json" --images "$DATA/images" --png "$OUT/priors.png"

step "6/6 predict $PREDICT_IMAGES val images as new photos (no annotations; DiffSP on the fly)"
if [ -f "$OUT/predict/predictions.json" ] && [ "$OUT/predict/predictions.json" -nt "$CKPT" ]; then
  echo "reusing $OUT/predict"
else
  rm -rf "$OUT/predict"
  mapfile -t photos < <(find "$DATA/images" -name 'val_*' | sort | head -n "$PREDICT_IMAGES")
  logged predict '^ *[0-9]+%\|.*(image/s|s/image)\]|images/s|^pictures in' \
    aisdiff predict "$CONFIG" "$CKPT" "${photos[@]}" --out "$OUT/predict" --save-priors \
    --cfg-options model.roi_head.test_prior.store="$STORE"
fi

echo
echo "demo done in $(( $(date +%s) - start )) s: $OUT/{metrics.json,priors_train.zarr,iter_$ITERS.pth,priors.png}," \
  "$OUT/predict/{vis,predictions.json}; full logs in $LOGS"
