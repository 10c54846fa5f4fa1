"""Checkpoints load weights-only: a file whose unpickling would run code is refused on every path that
loads one (mmengine's load_checkpoint, Runner.resume, mmdet's tools/test.py, `aisdiff test`), while the
types mmengine writes are allowed; `--trust-checkpoint` is the explicit opt-in."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = REPO / "configs" / "aisdiff" / "aisdiff_r18_fpn_synthetic.py"


class Payload:
    """Unpickling this creates `marker`: a stand-in for code a malicious checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    """A checkpoint in mmengine's layout that also holds a code-running object; and its marker path."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pth"
    torch.save({"meta": {"iter": 1}, "state_dict": {}, "message_hub": Payload(marker)}, path)
    return path, marker


def test_load_checkpoint_refuses_code(evil):
    from mmengine.runner import load_checkpoint

    import segmenter  # noqa: F401  (the allow-list)

    path, marker = evil
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global: GLOBAL pathlib"):
        load_checkpoint(torch.nn.Linear(1, 1), str(path), map_location="cpu")
    assert not marker.exists()


def test_trusted_checkpoints_is_the_explicit_opt_in(evil):
    from mmengine.runner.checkpoint import _load_checkpoint

    from segmenter.checkpoint import TRUST_ENV, trusted_checkpoints

    path, marker = evil
    with trusted_checkpoints(True):
        _load_checkpoint(str(path), map_location="cpu")
    assert marker.exists() and TRUST_ENV not in os.environ


def test_runner_resume_refuses_code(evil, make_benchmark, tmp_path):
    from mmengine.config import Config
    from mmengine.runner import Runner

    import segmenter  # noqa: F401

    path, marker = evil
    cfg = Config.fromfile(str(CONFIG))
    cfg.work_dir = str(tmp_path / "work")
    cfg.train_dataloader.dataset.data_root = str(make_benchmark("kins2020", 4, 2, 3))
    cfg.train_dataloader.num_workers, cfg.train_dataloader.persistent_workers = 0, False
    runner = Runner.from_cfg(cfg)
    with pytest.raises(pickle.UnpicklingError, match="Unsupported global"):
        runner.resume(str(path))
    assert not marker.exists()


def test_mmdet_test_tool_and_aisdiff_test_refuse_code(evil, make_benchmark):
    import mmdet

    path, marker = evil
    root = make_benchmark("kins2020", 4, 2, 3)
    options = ["--cfg-options", f"test_dataloader.dataset.data_root={root}", "test_dataloader.num_workers=0",
               "test_dataloader.persistent_workers=False",
               f"test_evaluator.ann_file={root}/annotations/val.json"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    tool = Path(mmdet.__file__).parent / ".mim" / "tools" / "test.py"
    proc = subprocess.run([sys.executable, str(tool), str(CONFIG), str(path),
                           "--work-dir", str(path.parent / "w"),
                           *options], capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode != 0 and "Unsupported global: GLOBAL pathlib" in proc.stderr
    assert not marker.exists()
    proc = subprocess.run([str(BIN / "aisdiff"), "test", str(CONFIG), str(path),
                           "--work-dir", str(path.parent / "w"),
                           *options], capture_output=True, text=True, cwd=REPO, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "it holds the type pathlib" in proc.stderr and "--trust-checkpoint" in proc.stderr
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1" in proc.stderr
    assert not marker.exists()


def test_the_import_allows_only_mmengine_checkpoint_types():
    import segmenter  # noqa: F401
    from segmenter.checkpoint import history_buffer_method, mmengine_checkpoint_types

    allowed = torch.serialization.get_safe_globals()
    ours = mmengine_checkpoint_types()
    assert all(t in allowed for t in ours)
    plain = {f"{t.__module__}.{t.__qualname__}" for t in ours if not isinstance(t, tuple)}
    assert all(n.startswith(("numpy.", "mmengine.logging.history_buffer.HistoryBuffer"))
               for n in plain), plain
    assert "numpy.dtypes.ObjectDType" not in plain  # object arrays would unpickle their items
    renamed = {name: fn for fn, name in (t for t in ours if isinstance(t, tuple))}
    assert set(renamed) == {"numpy.core.multiarray._reconstruct", "numpy.core.multiarray.scalar",
                            "builtins.getattr"}
    assert renamed["builtins.getattr"] is history_buffer_method


def test_getattr_in_a_checkpoint_reaches_only_history_buffer_statistics(tmp_path):
    from mmengine.logging import HistoryBuffer

    import segmenter  # noqa: F401

    class Reach:
        def __init__(self, name: str) -> None:
            self.name = name

        def __reduce__(self):
            return (getattr, (HistoryBuffer, self.name))

    torch.save({"ok": Reach("mean"), "bad": Reach("__init__")}, tmp_path / "reach.pth")
    with pytest.raises(pickle.UnpicklingError, match=r"getattr\(HistoryBuffer, '__init__'\) refused"):
        torch.load(tmp_path / "reach.pth", weights_only=True)
    torch.save({"ok": Reach("mean")}, tmp_path / "mean.pth")
    assert torch.load(tmp_path / "mean.pth", weights_only=True)["ok"] is HistoryBuffer.mean
