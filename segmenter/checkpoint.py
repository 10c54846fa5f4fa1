"""Loading of mmengine checkpoint files that the user names (`load_from`, `--resume`, `aisdiff test CKPT`).

torch >= 2.6 unpickles with `weights_only=True` by default, but mmengine 0.10.7 saves its message hub
(`HistoryBuffer`) and numpy scalars in every checkpoint, so `load_checkpoint` and `Runner.resume` fail on
files mmengine wrote itself. Allow-listing globals is no fix (the pickles reach `getattr`).

Trust boundary: only mmengine's *local-file* checkpoint loader is replaced, by one that unpickles fully.
A checkpoint file can run code when loaded, exactly as with torch < 2.6: load only checkpoints you made
or trust. Remote loaders (http, open-mmlab://, torchvision://) keep torch's safe default, nothing patches
`torch.load` globally, and diffusion weights load from safetensors only.
"""
from __future__ import annotations

import os.path as osp

import torch
from mmengine.runner.checkpoint import CheckpointLoader


def load_from_local_trusted(filename: str, map_location=None):
    """mmengine's local loader, with full unpickling of the file the user named (see the module docstring)."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f"{filename} can not be found.")
    return torch.load(filename, map_location=map_location, weights_only=False)


CheckpointLoader.register_scheme(prefixes="", loader=load_from_local_trusted, force=True)
