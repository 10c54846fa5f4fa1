"""The fidelity benchmark's config digest (which decides whether a stored run is reused): it changes with what
changes the numbers, not with the visualizer or the ContentImageId transform."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from benchmarks import fidelity as bench

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "aisdiff" / "aisdiff_r18_fpn_synthetic.py"


def test_digest_ignores_visualizer_and_content_ids_but_not_the_pipeline(tmp_path):
    cfg = bench.load_config(CONFIG)
    assert cfg.visualizer.type == "AmodalLocalVisualizer"
    assert any(step.type == "ContentImageId" for step in cfg.test_dataloader.dataset.pipeline)

    def digest_of(edit) -> str:
        changed = copy.deepcopy(bench.load_config(CONFIG))
        edit(changed)
        path = tmp_path / f"c{len(list(tmp_path.iterdir()))}.py"
        changed.dump(str(path))
        return bench.config_digest(path)

    def without_ids(c):  # the config as it was before ContentImageId and the amodal visualizer
        c.visualizer.type = "DetLocalVisualizer"
        c.test_pipeline = [s for s in c.test_pipeline if s.type != "ContentImageId"]
        c.test_dataloader.dataset.pipeline = [s for s in c.test_dataloader.dataset.pipeline
                                              if s.type != "ContentImageId"]
        c.val_dataloader.dataset.pipeline = c.test_dataloader.dataset.pipeline

    def other_scale(c):
        c.test_dataloader.dataset.pipeline[2].scale = (256, 256)

    same = digest_of(lambda c: None)
    assert digest_of(without_ids) == same
    assert digest_of(other_scale) != same


def test_digest_leaves_the_parsed_config_as_training_reads_it():
    """The digest's normalization works on a copy: the benchmark's --cfg-options indices (found in the same
    cached config) must still see ContentImageId, or they would set the image scale on the wrong transform."""
    resize = bench.pipeline_index(CONFIG, "test_dataloader", "AmodalResize")
    bench.config_digest(CONFIG)
    assert bench.pipeline_index(CONFIG, "test_dataloader", "AmodalResize") == resize == 2
    assert bench.load_config(CONFIG).visualizer.type == "AmodalLocalVisualizer"


def test_a_test_preset_variant_gives_its_priors_the_preset_unchecked():
    import argparse

    from priors.diffsp import PRESETS

    args = argparse.Namespace(steps=10, tau=0, self_res=16, cross_res=16)
    prefix = "model.roi_head.test_prior."
    assert bench.test_prior_options(args, "d", Path("s.zarr")) == [
        f"{prefix}store=s.zarr", f"{prefix}steps=10", f"{prefix}tau=0", f"{prefix}self_res=16",
        f"{prefix}cross_res=16"]
    fast = bench.test_prior_options(args, "j", Path("s.zarr"))
    assert fast[:2] == [f"{prefix}store=None", f"{prefix}preset=fast"]
    assert not any(option.startswith(f"{prefix}{key}=") for key in PRESETS["fast"] for option in fast)
    assert f"{prefix}tau=0" in fast  # the benchmark's settings the preset leaves alone stay


def test_test_options_tag_the_test_only_runs_and_not_their_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AISDIFF_DATA", str(tmp_path))  # (parse_args sets it: restored after the test)
    options = ["--work-dir", str(tmp_path), "--test-options", "model.test_cfg.rcnn.prior_mask_thr=0.2"]
    args = bench.parse_args(["--variants", "k", "h", "--seeds", "1", *options])
    tag = bench.test_tag(args)
    assert tag.startswith("_test-") and len(tag) == len("_test-") + 8
    assert bench.run_name(args, "k", 1) == f"k_seed1{tag}" and bench.run_name(args, "d", 1) == "d_seed1"
    assert bench.record_name(args) == f"fidelity{tag}_k-h_seed1.json"
    plain = bench.parse_args(["--variants", "k", "--work-dir", str(tmp_path)])
    assert bench.test_tag(plain) == "" and bench.run_name(plain, "k", 0) == "k_seed0"
    with pytest.raises(SystemExit):
        bench.parse_args(["--variants", "d", "k", *options])
    assert "--test-options applies to the test-only variants (h, j, k), not to d" in capsys.readouterr().err


def test_a_dump_with_options_gets_its_own_detections_folder(tmp_path, monkeypatch):
    """(l) dumps (d)'s train detections with their masks at 0.3: a folder apart from (i)'s, whose name (and
    so its stored detections and priors) stays as it was."""
    monkeypatch.setenv("AISDIFF_DATA", str(tmp_path))
    args = bench.parse_args(["--variants", "i", "l", "--work-dir", str(tmp_path)])
    at_05, at_03 = bench.VARIANTS["i"], bench.VARIANTS["l"]  # (the masks their train priors are made from)
    assert at_03.trained_on_detections_of == at_05.trained_on_detections_of == "d"
    assert bench.detections_name(args, "d", 2, list(at_05.dump_options)) == "detections_d_seed2"
    dumped = bench.detections_name(args, "d", 2, list(at_03.dump_options))
    options = ["model.test_cfg.rcnn.mask_thr_binary=0.3"]
    assert dumped == "detections_d_seed2_dump-" + bench.options_digest(options)
    masks_at_03 = ("model.test_cfg.rcnn.prior_mask_thr=0.3",)
    assert at_03.test_options == bench.VARIANTS["k"].test_options == masks_at_03


def test_the_record_names_the_cpu_and_the_kernels_torch_picks():
    import torch

    env = bench.environment()
    assert env["torch"] == torch.__version__
    assert env["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(env["cpu"], str) and env["cpu"]
    assert env["cpu_isa"] in ("AVX512", "AVX2", "older")
    assert env["gpu"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else None)


def test_the_record_names_the_gpu_when_there_is_one(monkeypatch):
    """mmengine runs on a GPU whenever one is there, so the record must name it (None without one)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU 80GB")
    assert bench.environment()["gpu"] == "Test GPU 80GB"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.environment()["gpu"] is None


def test_cpuinfo_fields_are_read_exactly(tmp_path):
    """The first CPU's fields by exact name: `flags` is not taken for `vmx flags`, a missing field is None."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nvmx flags\t: ept\n"
                       "flags\t\t: fpu avx2 sse4_1\n\n"
                       "processor\t: 1\nmodel name\t: Other\nflags\t\t: avx512f\n")
    assert bench.cpuinfo_field("model name", cpuinfo) == "Test CPU 9000"
    assert bench.cpuinfo_field("flags", cpuinfo) == "fpu avx2 sse4_1"
    assert bench.cpuinfo_field("bogomips", cpuinfo) is None
    assert bench.cpuinfo_field("flags", tmp_path / "absent") is None


def test_pinned_kernels_reach_every_step_and_keep_their_runs_apart(tmp_path, monkeypatch):
    """`--cpu-kernels avx2` caps ATen, oneDNN and MKL at AVX2 for the `aisdiff` steps it starts (a child
    process reports AVX2 on any x86 CPU with it) and is part of what the detector, stores and runs share;
    `native` adds nothing, so runs made before the option still match."""
    import subprocess
    import sys

    monkeypatch.setenv("AISDIFF_DATA", str(tmp_path))
    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR"):
        # parse_args sets them; delenv alone records nothing for an unset variable, so setenv first makes
        # monkeypatch restore (unset) it after the test and the pins cannot leak into later tests.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    native = bench.parse_args(["--variants", "a", "--work-dir", str(tmp_path)])
    assert "ATEN_CPU_CAPABILITY" not in bench.os.environ
    assert "cpu_kernels" not in bench.shared_settings(native)
    pinned = bench.parse_args(["--variants", "a", "--work-dir", str(tmp_path), "--cpu-kernels", "avx2"])
    assert bench.shared_settings(pinned) == {**bench.shared_settings(native), "cpu_kernels": "avx2"}
    probe = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    child = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert child.stdout.strip() == ("DEFAULT" if bench.cpu_isa() == "older" else "AVX2")
    assert {bench.os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "MKL_CBWR")} == {"AVX2"}


def test_the_recommended_head_goes_to_the_aisdiff_variants_under_its_options_tag(tmp_path, monkeypatch):
    """`--head recommended` gives (b) to (l) the recommended head and leaves (a) Mask R-CNN; its AISDiff runs
    are those of `--cfg-options` with the same options (the committed records' tag 4142a0fa), so one command
    reuses them, and its record is named apart."""
    import json

    monkeypatch.setenv("AISDIFF_DATA", str(tmp_path))
    record = bench.RESULTS / "fidelity" / "detector-baef3b6a" / "fidelity_opts-4142a0fa_d_seed0.json"
    assert json.loads(record.read_text())["settings"]["cfg_options"] == bench.RECOMMENDED_HEAD
    common = ["--work-dir", str(tmp_path), "--detector", "trained"]
    args = bench.parse_args(["--variants", "a", "b", "d", "--head", "recommended", *common])
    options = bench.parse_args(["--variants", "b", "d", "--cfg-options", *bench.RECOMMENDED_HEAD, *common])
    assert bench.variant_options(args, "a") == [] and bench.run_name(args, "a", 2) == "a_seed2_trained"
    for variant in "bd":
        assert bench.variant_options(args, variant) == bench.RECOMMENDED_HEAD
        assert bench.run_name(args, variant, 2) == bench.run_name(options, variant, 2)
    assert bench.run_name(args, "d", 2) == "d_seed2_trained_opts-4142a0fa"
    assert bench.record_name(args) == "fidelity_trained_head-recommended_a-b-d.json"
    assert bench.record_name(options) == "fidelity_trained_opts-4142a0fa_b-d.json"
    extra = bench.parse_args(["--variants", "a", "d", "--head", "recommended", "--cfg-options", "x=1",
                              *common])
    assert bench.variant_options(extra, "a") == ["x=1"]
    assert bench.variant_options(extra, "d") == [*bench.RECOMMENDED_HEAD, "x=1"]
    tag = bench.options_digest(["x=1"])
    assert bench.record_name(extra) == f"fidelity_trained_opts-{tag}_head-recommended_a-d.json"


def test_the_high_variation_gives_every_config_its_classes_and_tiny_high(tmp_path, monkeypatch):
    """`--variation high`: its data, the variation's class names wherever a config names classes (datasets,
    DiffSP's prompts; the template and Mask R-CNN have none), `tiny-high` for the trained tiny model, and its
    runs and records kept apart from the low benchmark's."""
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules

    import segmenter  # noqa: F401
    from priors import synthetic
    from priors.annotations import AmodalAnnotations
    from priors.shapes import VARIATIONS

    monkeypatch.setenv("AISDIFF_DATA", str(tmp_path))
    low = bench.parse_args(["--work-dir", str(tmp_path / "low")])
    args = bench.parse_args(["--variation", "high", "--detector", "trained", "--work-dir", str(tmp_path)])
    classes = tuple(name for _, name in VARIATIONS["high"].categories)
    assert classes == ("arc", "star", "cross", "chevron", "crescent", "bolt", "arrow")
    assert [bench.variant_prior_model(args, v) for v in "acdh"] == [None, "tiny-random", "tiny-high",
                                                                     "tiny-high"]
    assert [bench.variant_prior_model(low, v) for v in "acd"] == [None, "tiny-random", "tiny"]
    d = bench.load_config(bench.variant_config(args, "d"))
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        assert d[loader].dataset.metainfo.classes == classes
    prior = d.model.roi_head.test_prior
    assert prior.classes == classes and prior.type == "OnTheFlyPriors"
    assert "classes" not in bench.load_config(bench.variant_config(args, "f")).model.roi_head.test_prior
    assert "test_prior" not in bench.load_config(bench.variant_config(args, "a")).model.roi_head
    assert bench.load_config(bench.variant_config(low, "d")).model.roi_head.test_prior.classes[0] == "ball"
    options = bench.run_options(args, "d", 0, bench.variant_config(args, "d"), {"tiny-high": Path("s.zarr")},
                                None)
    assert {"model.roi_head.test_prior.model=tiny-high", "train_dataloader.dataset.prior_store=s.zarr",
            "model.roi_head.test_prior.store=s.zarr"} <= set(options)
    assert bench.shared_settings(args)["variation"] == "high"
    assert "variation" not in bench.shared_settings(low)
    assert bench.record_name(args) == "fidelity_trained_variation-high_" + "-".join(bench.VARIANTS) + ".json"
    # the child config reads the high data: each instance gets its own category's label
    synthetic.generate(tmp_path / "synthetic", train_images=2, val_images=1, seed=0, variation="high")
    register_all_modules()
    dataset = DATASETS.build(d.test_dataloader.dataset)
    truth = AmodalAnnotations(tmp_path / "synthetic" / "annotations" / "val.json")
    labels = [classes[i["bbox_label"]] for i in dataset.get_data_info(0)["instances"]]
    assert len(dataset) == 1 and sorted(labels) == sorted(i.category for i in truth) and labels
