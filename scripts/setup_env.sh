#!/usr/bin/env bash
# Create (or update) a Python environment with everything AISDiff needs. Idempotent.
#
# Used by `make setup` (VENV=.venv) and by the Docker images (VENV unset: installs into the
# current interpreter), so that every install path runs the same commands.
#
# mmcv 2.1.0 ships no wheel for current torch releases, so it is built from its sdist once
# (~10 min on 2 cores) and cached under $AISDIFF_CACHE/wheels (default ~/.cache/aisdiff/wheels),
# keyed by mmcv, torch, Python and CUDA/CPU flavour; later runs install it in seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV-}"
PYTHON="${PYTHON:-python3}"
MMCV_VERSION="2.1.0"
TORCH_VERSION="2.13.0"
CACHE_DIR="${AISDIFF_CACHE:-$HOME/.cache/aisdiff}/wheels"
EXTRAS="${AISDIFF_EXTRAS:-dev,s3}"

log() { printf '[setup] %s\n' "$*"; }

if [ -n "$VENV" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtual environment $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  PY="$VENV/bin/python"
else
  PY="$(command -v "$PYTHON")"
fi
PIP=("$PY" -m pip --disable-pip-version-check)

# Build tooling first: setuptools<82 still has pkg_resources (mmcv's build and mmengine need it).
"${PIP[@]}" install -q "setuptools==80.9.0" "wheel==0.45.1"
"${PIP[@]}" install -q "torch==${TORCH_VERSION}"

if "$PY" -c "import mmcv, sys; sys.exit(mmcv.__version__ != '${MMCV_VERSION}')" 2>/dev/null \
   && "$PY" -c "import mmcv.ops" 2>/dev/null; then
  log "mmcv ${MMCV_VERSION} with ops already installed"
else
  FLAVOUR="$("$PY" - <<'PY'
import shutil, sys, torch
cuda = torch.version.cuda if (torch.version.cuda and shutil.which("nvcc")) else None
print(f"torch{torch.__version__.split('+')[0]}-py{sys.version_info.major}{sys.version_info.minor}-" + (f"cu{cuda}" if cuda else "cpu"))
PY
)"
  KEY_DIR="$CACHE_DIR/mmcv-${MMCV_VERSION}-${FLAVOUR}"
  WHEEL="$(ls "$KEY_DIR"/mmcv-"${MMCV_VERSION}"-*.whl 2>/dev/null | head -n 1 || true)"
  if [ -z "$WHEEL" ]; then
    log "building mmcv ${MMCV_VERSION} with ops for ${FLAVOUR} (one-off, ~10 min on 2 cores)"
    BUILD="$(mktemp -d)"
    trap 'rm -rf "$BUILD"' EXIT
    FORCE_CUDA=0
    case "$FLAVOUR" in *-cu*) FORCE_CUDA=1 ;; esac
    MMCV_WITH_OPS=1 FORCE_CUDA="$FORCE_CUDA" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "${PIP[@]}" wheel "mmcv==${MMCV_VERSION}" --no-deps --no-binary mmcv \
      --no-build-isolation --no-cache-dir -w "$BUILD/dist"
    # Strip debug symbols from the compiled ops (32 MB -> ~1.4 MB), then repack the wheel.
    "$PY" -m wheel unpack -d "$BUILD/unpacked" "$BUILD"/dist/mmcv-*.whl
    find "$BUILD/unpacked" -name '*.so' -exec strip --strip-debug {} +
    mkdir -p "$KEY_DIR"
    "$PY" -m wheel pack -d "$KEY_DIR" "$BUILD"/unpacked/mmcv-*
    WHEEL="$(ls "$KEY_DIR"/mmcv-"${MMCV_VERSION}"-*.whl | head -n 1)"
    log "cached $WHEEL"
  fi
  log "installing mmcv from $WHEEL"
  "${PIP[@]}" install -q --no-deps --force-reinstall "$WHEEL"
fi

log "installing aisdiff[${EXTRAS}] (editable) and its pinned dependencies"
"${PIP[@]}" install -q -e "${ROOT}[${EXTRAS}]"
"$PY" -c "import mmcv.ops, mmdet, diffusers, zarr, dask.array, pycocotools, accelerate; print('[setup] environment ready:', 'mmdet', mmdet.__version__, 'mmcv', mmcv.__version__, 'diffusers', diffusers.__version__, 'zarr', zarr.__version__)"
