"""The real path, rehearsed offline: docs/train_test.md's command block, run verbatim on the synthetic
benchmark written in the KINS layout, with the trained `tiny` model in a Hugging Face cache under the real
hub id."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from helpers import BIN, hub_cache

from priors import synthetic
from priors.layouts import LAYOUTS
from priors.models import TINY_MODEL_DIR

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "train_test.md"
HUB_ID = "stable-diffusion-v1-5/stable-diffusion-inpainting"
# what a CPU needs, as --cfg-options (the page says so): 2 iterations, no backbone download, fp32 test priors,
# small images, no dataloader workers
CPU_OPTIONS = ["train_cfg.max_iters=2", "model.backbone.init_cfg=None",
               "model.roi_head.test_prior.dtype=fp32",
               "train_dataloader.dataset.pipeline.3.scale=(512,256)",
               "test_dataloader.dataset.pipeline.2.scale=(512,256)",
               "val_dataloader.dataset.pipeline.2.scale=(512,256)", "default_hooks.logger.interval=1",
               *(f"{loader}.{key}" for loader in ("train_dataloader", "val_dataloader", "test_dataloader")
                 for key in ("num_workers=0", "persistent_workers=False"))]


def marked_block(text: str, mark: str) -> str:
    """The bash block that follows `<!-- rehearsal: MARK -->` in a docs page."""
    found = re.search(rf"<!-- rehearsal: {mark} -->\s*```bash\n(.*?)```", text, re.S)
    assert found, f"{DOC}: no bash block marked 'rehearsal: {mark}'"
    return found.group(1)


def test_the_page_names_the_real_settings():
    settings = marked_block(DOC.read_text(), "settings")
    assert f"MODEL={HUB_ID}" in settings and "DTYPE=fp16" in settings and "HF_HUB_OFFLINE=1" in settings
    assert "configs/accelerate/8gpu.yaml" in settings


@pytest.mark.slow
def test_the_documented_kins_commands_run_end_to_end_offline(tmp_path):
    data, hf, work = tmp_path / "data", tmp_path / "hf", tmp_path / "work"
    synthetic.generate(data, train_images=4, val_images=2, seed=3, layout=LAYOUTS["kins"])
    hub_cache(TINY_MODEL_DIR, HUB_ID, hf)
    options = "--cfg-options " + " ".join(CPU_OPTIONS)  # (no value holds a space or a glob character)
    settings = (f"export AISDIFF_DATA={data} HF_HOME={hf} HF_HUB_OFFLINE=1\nMODEL={HUB_ID}\nDTYPE=fp32\n"
                "ACCELERATE_CONFIG=configs/accelerate/cpu_2proc.yaml\nGPUS=2\n"
                f"WORK={work}\nOPTIONS=\"{options}\"\n"
                'MMDET_TOOLS=$(python -c "import mmdet, os; print(os.path.dirname(mmdet.__file__))")'
                "/.mim/tools\n")
    script = "set -euo pipefail\n" + settings + marked_block(DOC.read_text(), "commands")
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONWARNINGS": "ignore",
           "CUDA_VISIBLE_DEVICES": ""}  # (CPU processes over gloo, also on a machine with one GPU)
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-5000:])
    out = proc.stdout
    assert "precompute summary:" in out and "2 process(es)" in out  # two Accelerate processes
    assert "prior store" in out and (work / "kins_priors.png").is_file()
    assert (work / "iter_2.pth").is_file() and "loss_mask_amodal" in out + proc.stderr
    assert out.count("| amodal |") == 1  # the 2-process test: one table, from the main process
    metrics = json.loads((work / "metrics.json").read_text())
    assert {"amodal/AP", "visible/AP"} <= set(metrics)
    predictions = json.loads((work / "predict" / "predictions.json").read_text())
    assert isinstance(predictions, list)
    assert len(list((work / "predict" / "vis").iterdir())) == 2
