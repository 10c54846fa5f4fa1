"""Command-line flags the training commands share (`train-diffusion`, `distill-encoder`)."""
from __future__ import annotations

import argparse
from dataclasses import fields

import torch


def add_run_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """--device, --threads, and one flag per field of `config_class` (a dataclass whose defaults are the
    flags' defaults; `--some-field` for `some_field`)."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    defaults = config_class()
    for f in fields(config_class):
        value = getattr(defaults, f.name)
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(value), default=value,
                            help=f"(default: {value})")
