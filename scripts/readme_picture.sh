#!/usr/bin/env bash
# The README's opening picture, docs/aisdiff-predict.png: `aisdiff predict --save-priors` on one val image of the
# synthetic benchmark, drawn by the fidelity benchmark's recommended run (README, "With the detector trained
# jointly"): variant (d), the trained tiny model's DiffSP priors, with the recommended head
# (configs/aisdiff/aisdiff_r18_fpn_residual_synthetic.py, `--head recommended`), the detector fine-tuned with
# the mask head (`--detector trained`), seed 0, 300 iterations on 200 train images after the shared
# 2000-iteration detector, CPU kernels pinned at AVX2 as that record's runs were. The shared detector's weights
# depend on the CPU's vendor all the same (AMD EPYC: baef3b6a..., Intel Xeon: 61ac3e65...; the picture's run is
# benchmarks/results/fidelity/detector-61ac3e65/fidelity_trained_head-recommended_d_seed0.json).
#   1. python -m benchmarks.fidelity --cpu-kernels avx2 --work-dir $WORK --detector trained --head recommended
#        --variants d --seeds 0
#      -> $WORK/synthetic/ (the data), $WORK/priors_tiny/ (train priors), $WORK/detector/iter_2000.pth,
#         $WORK/d_seed0_trained_opts-4142a0fa/{iter_300.pth,metrics.json} (the checkpoint and its val AP),
#         and the benchmark's record (benchmarks/results/.../fidelity_trained_head-recommended_d_seed0.json)
#   2. aisdiff predict on $WORK/synthetic/images/$IMAGE with the benchmark's test settings -> $WORK/readme_predict/
#   3. the picture, as a 256-colour PNG (well under 300 KB)                               -> docs/aisdiff-predict.png
# How long, from nothing on 2 CPU cores: the train priors about 20 minutes (959 RoIs at 1.1 to 1.5 s), the
# shared detector's 2000 iterations 40 to 60 minutes on an idle machine (1.2 to 1.7 s each; 8.5 to 10 s when
# other jobs share the cores: 5 hours), (d)'s 300 iterations and val test about 25 minutes (README), so 1.5 to 2
# hours when the machine is otherwise idle. The detector saves only its last iteration: an interrupted run
# starts it again. The benchmark reuses what an earlier run of the same settings left in $WORK (also the
# README's `--variants a b d f` command's runs), so a rerun only predicts (a minute).
# Env: README_PICTURE_WORK_DIR (default work_dirs/fidelity-avx2), README_PICTURE_IMAGE (default below), VENV.
set -euo pipefail

main() {
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  cd "$root"
  local venv="${VENV:-.venv}"
  export PATH="$root/$venv/bin:$PATH"
  export PYTHONUNBUFFERED=1
  local work="${README_PICTURE_WORK_DIR:-work_dirs/fidelity-avx2}"
  # val_000044.png, chosen from val's annotations: the most objects occluded by more than 20 % (4 of its 7: a
  # cross 63 %, a star 27 %, a box 22 %, a ball 23 %, beside two unoccluded moons and a box), large shapes on a
  # plain checkerboard, so the amodal outlines through the occluders read at README size
  local image="${README_PICTURE_IMAGE:-val_000044.png}"
  # the run's folder: variant d, seed 0, `_trained` (--detector trained), `_opts-4142a0fa` (the tag of the
  # recommended head's options, RECOMMENDED_HEAD in benchmarks/fidelity.py)
  local run="$work/d_seed0_trained_opts-4142a0fa"
  local ckpt="$run/iter_300.pth"
  local config=configs/aisdiff/aisdiff_r18_fpn_residual_synthetic.py
  local out="$work/readme_predict"
  local picture=docs/aisdiff-predict.png
  local start=$SECONDS

  echo "== 1/3 the fidelity benchmark's recommended run (d), detector trained, seed 0 -> $ckpt"
  python -m benchmarks.fidelity --cpu-kernels avx2 --work-dir "$work" --detector trained \
      --head recommended --variants d --seeds 0
  [ -f "$ckpt" ] || { echo "no checkpoint at $ckpt: has the benchmark renamed its runs?" >&2; exit 1; }
  python -c "import json, sys; m = json.load(open(sys.argv[1])); print(f'amodal AP on val: {100 * m[\"amodal/AP\"]:.1f}')" \
      "$run/metrics.json"

  echo "== 2/3 aisdiff predict $image -> $out"
  # the benchmark's test settings (benchmarks/fidelity.py: size_options, run_variant, test_prior_options): test
  # scale 256, 300 RPN proposals, DiffSP prompted with the box head's label, the train store's DiffSP settings
  # (the tiny model's defaults), and its CPU kernels (CPU_KERNEL_PINS['avx2'])
  rm -rf "$out"
  ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_CBWR=AVX2 \
  aisdiff predict "$config" "$ckpt" "$work/synthetic/images/$image" --out "$out" --save-priors --score-thr 0.5 \
      --cfg-options "test_dataloader.dataset.pipeline.2.scale=(256,256)" model.test_cfg.rpn.max_per_img=300 \
      model.roi_head.prior_labels=detector "model.roi_head.test_prior.store=$work/priors_tiny/train.zarr"

  echo "== 3/3 $out/vis/$image -> $picture"
  # predict's picture is a full-colour PNG of two panels (prediction, priors): an adaptive 256-colour palette
  # keeps every pixel's place and the README light
  python - "$out/vis/$image" "$picture" <<'EOF'
import sys
from PIL import Image

source, target = sys.argv[1:]
Image.open(source).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
picture = Image.open(target)
print(f"{target}: {picture.size[0]}x{picture.size[1]}, {__import__('os').path.getsize(target) // 1024} KB")
EOF
  echo "done in $((SECONDS - start)) s"
}

# (`exit` on the same line: bash reads no more of this file, which may be edited while a run goes on)
main "$@"; exit
