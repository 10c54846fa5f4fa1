"""Stable Diffusion inpainting models for DiffSP: real ones (hub id or local folder) and tiny offline ones.

`load_model` returns the diffusers `StableDiffusionInpaintPipeline` with a DDIM scheduler, on the asked
device and dtype, plus an identity (name and a sha256 of the weights) that prior stores record, and the
DiffSP defaults the model's folder ships (MODEL_DEFAULTS_FILE, `diffsp_config.json`: `read_model_defaults`).
Weights load from safetensors only: pickle checkpoints are refused.

Tiny models stand in for Stable Diffusion where no weights can be downloaded (`priors.architectures`):
- `tiny`: trained on the synthetic benchmark's train split (`aisdiff train-diffusion`), shipped in
  `priors/weights/tiny-shapes/` with its tuned DiffSP settings and loaded with `from_pretrained` like real
  weights: its attention knows shapes.
- `tiny-high`: the same recipe on the benchmark's `high` variation (`demo-data --variation high`), shipped
  in `priors/weights/tiny-high/` (SHIPPED_MODELS names both).
- `tiny-random`: built from configs with weights drawn from a seed: fast, for speed and mechanics only.
A model may have a small autoencoder, an `AutoencoderTiny` (TAESD for SD-1.x, or one distilled from the
model's VAE by `aisdiff distill-encoder`) whose encoder DiffSP can use in place of the VAE's
(`DiffSPConfig.encoder="tiny"`): its folder's `vae_tiny/`, or any AutoencoderTiny folder or hub id given as
`tiny_vae` (e.g. "madebyollin/taesd" beside a hub id). It loads on first use (`DiffusionModel.tiny_vae`).

A hub id loads through diffusers' `from_pretrained`, from the Hugging Face cache when it holds the snapshot
(with HF_HUB_OFFLINE=1, only from there): that snapshot is then the model's folder, read for its
`diffsp_config.json` and `vae_tiny/` like a local one. A prior store knows a model by its weights' sha256, so
the same weights under a hub id, a local folder or a cache snapshot make and read the same store.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from .architectures import build_tiny_autoencoder, build_tiny_pipeline
from .diffsp import DiffSPConfig
from .errors import AisdiffError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# the trained tiny models shipped in the package, by the name `load_model` takes (each has a model card)
SHIPPED_MODELS = {"tiny": WEIGHTS_DIR / "tiny-shapes", "tiny-high": WEIGHTS_DIR / "tiny-high"}
TINY_MODEL_DIR = SHIPPED_MODELS["tiny"]  # the trained `tiny` model
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
COMPONENTS = ("unet", "vae", "text_encoder")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # a Hugging Face repository id, "org/name"
TINY_VAE_FOLDER = "vae_tiny"  # a model folder's optional AutoencoderTiny (diffusers layout, safetensors)
# A model folder's own DiffSP defaults (`read_model_defaults`): the settings tuned for it that differ from
# the paper's, plus THRESHOLD_KEY, the prior threshold tuning chose (what `aisdiff inspect` uses).
MODEL_DEFAULTS_FILE = "diffsp_config.json"
THRESHOLD_KEY = "threshold"


class _DropNotice(logging.Filter):
    """Drops log records whose message matches `pattern` (from its start): notices about nothing this project
    does."""

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


@functools.cache
def _quiet_notices() -> None:
    """Filter the libraries' log handlers, once per process: transformers announces that its image processors
    fall back from torchvision, which this project does not install and DiffSP never uses (it feeds tensors
    to the UNet); diffusers warns on loading any saved AutoencoderTiny (TAESD included) that the
    `block_out_channels` its own constructor records is not a constructor argument (that key alone: other
    unexpected keys still warn)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    for handler in hf_logging.get_logger().handlers:
        handler.addFilter(_DropNotice(".*requires torchvision"))
    for handler in diffusers_logging.get_logger().handlers:
        handler.addFilter(_DropNotice(r"The config attributes \{'block_out_channels': \[[\d, ]*\]\} "
                                      "were passed to AutoencoderTiny"))


@dataclass
class DiffusionModel:
    """A loaded inpainting pipeline and what identifies it."""

    pipe: object  # diffusers.StableDiffusionInpaintPipeline
    name: str
    weights_sha256: str
    dtype: str
    diffsp_defaults: dict = field(default_factory=dict)  # the folder's diffsp_config.json, checked; or {}
    tiny_vae_source: str | None = None  # where the small autoencoder loads from (folder or hub id), if any
    _tiny_vae: object | None = field(default=None, repr=False)  # (loaded, or given: a built one)

    @property
    def tiny_vae(self):
        """The small autoencoder (diffusers.AutoencoderTiny on the pipeline's device and dtype), loaded from
        `tiny_vae_source` on first use; None without one."""
        if self._tiny_vae is None and self.tiny_vae_source is not None:
            self._tiny_vae = load_tiny_vae(self.tiny_vae_source, self.pipe, self.dtype, self.name)
        return self._tiny_vae

    @property
    def tiny_vae_sha256(self) -> str:
        """sha256 of the small autoencoder's weights (`tiny_vae_sha256`); the model must have one."""
        return tiny_vae_sha256(self.tiny_vae)

    @property
    def identity(self) -> dict[str, str]:
        return {"id": self.name, "weights_sha256": self.weights_sha256}

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    @property
    def resolution(self) -> int:
        """The model's native square input size in pixels."""
        return int(self.pipe.unet.config.sample_size) * self.pipe.vae_scale_factor


def weights_sha256(pipe, components: tuple[str, ...] = COMPONENTS) -> str:
    """sha256 over the weights of `pipe`'s `components` (default: the UNet, VAE and text encoder; names,
    dtypes, shapes and bytes, sorted by name); `components=("",)` digests `pipe` itself (one model)."""
    digest = hashlib.sha256()
    for component in components:
        module = getattr(pipe, component) if component else pipe
        for name, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{component}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tiny_vae_sha256(tiny_vae) -> str:
    """sha256 of a small autoencoder's weights (as `weights_sha256` digests a pipeline's)."""
    return weights_sha256(tiny_vae, ("",))


def _refuse_pickle_weights(folder: Path, components: tuple[str, ...] = COMPONENTS) -> None:
    """A local model folder must hold safetensors weights for each component; pickles can run code."""
    for component in components:
        sub = folder / component
        if not sub.is_dir():
            raise AisdiffError(f"{folder}: no '{component}/' folder; a Stable Diffusion inpainting model "
                               "folder (diffusers layout, as written by save_pretrained) has unet/, vae/, "
                               "text_encoder/, tokenizer/ and scheduler/.")
        if not any(sub.glob("*.safetensors")):
            pickles = sorted(p.name for p in sub.iterdir() if p.suffix in PICKLE_SUFFIXES)
            found = f" (found pickle weights: {', '.join(pickles)})" if pickles else ""
            raise AisdiffError(
                f"{sub}: no .safetensors weights{found}. Pickle checkpoints are refused because loading them "
                "can run arbitrary code; convert the model with diffusers' save_pretrained(..., "
                "safe_serialization=True).")


def _model_path(model: str) -> Path:
    """Where a model name other than 'tiny-random' would be on disk (a shipped model's name: its folder)."""
    return SHIPPED_MODELS[model] if model in SHIPPED_MODELS else Path(model).expanduser()


def shipped_name(folder: Path) -> str:
    """The name `load_model` knows a model folder by: a shipped model's name (SHIPPED_MODELS), else the
    folder."""
    return next((name for name, path in SHIPPED_MODELS.items() if path.resolve() == folder.resolve()),
                str(folder))


def is_hub_id(model: str) -> bool:
    """Whether a model name has the form of a Hugging Face hub id ("org/name") and is not a local path."""
    return bool(HUB_ID.fullmatch(model)) and not Path(model).expanduser().exists()


def hub_snapshot(model: str) -> Path | None:
    """The folder of a hub id's snapshot in the local Hugging Face cache (HF_HOME or HF_HUB_CACHE, the
    revision `refs/main` names, as `hf download` leaves it), or None when the cache does not hold it. Never
    downloads."""
    if not is_hub_id(model):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):  # (not in the cache, or no readable snapshot)
        return None


def model_folder(model: str) -> Path | None:
    """The local folder a model name (as loaded, or as a store records it) loads from: the shipped one for
    a shipped model's name ('tiny', 'tiny-high'), the folder given, or a hub id's snapshot in the local
    cache; None for 'tiny-random' and for hub ids that are not cached."""
    if is_hub_id(model):
        return hub_snapshot(model)
    path = _model_path(model)
    return path if model != "tiny-random" and path.is_dir() else None


def _not_loadable(model: str, exc: Exception) -> AisdiffError:
    """The error for a model diffusers could not load: for a hub id missing from the cache while offline,
    where the cache is and how to fill it."""
    from huggingface_hub import constants

    if is_hub_id(model) and constants.HF_HUB_OFFLINE and hub_snapshot(model) is None:
        return AisdiffError(
            f"the inpainting model {model!r} is neither a local folder ({Path(model).resolve()} does not "
            f"exist) nor in the Hugging Face cache {constants.HF_HUB_CACHE}, and "
            "HF_HUB_OFFLINE=1 forbids downloading it. Fill the cache once where there is network, with the "
            f"same HF_HOME (`hf download {model}`), or pass --model a local diffusers folder "
            "(docs/diffusion_weights.md).")
    return AisdiffError(
        f"could not load the inpainting model {model!r}: {exc}. Pass a local diffusers folder, or a hub id "
        "that is in the Hugging Face cache (HF_HOME) when there is no network.")


def read_model_defaults(folder: Path) -> dict:
    """The DiffSP defaults a model folder ships (MODEL_DEFAULTS_FILE), checked and typed; {} without one.

    Keys: DiffSPConfig's settings that may be None (seed and prior_size are the caller's) and THRESHOLD_KEY.
    """
    path = folder / MODEL_DEFAULTS_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AisdiffError(f"{path}: not valid JSON ({exc}). It holds the model's DiffSP defaults, e.g. "
                           '{"tau": 0, "threshold": 0.45}; fix it, or delete it for the paper\'s.') from None
    if not isinstance(data, dict):
        raise AisdiffError(f"{path}: expected a JSON object of DiffSP settings, e.g. {{\"tau\": 0}}.")
    hints = typing.get_type_hints(DiffSPConfig)
    types = {f.name: typing.get_args(hints[f.name])[0] for f in fields(DiffSPConfig) if f.default is None}
    types[THRESHOLD_KEY] = float
    out = {}
    for key, value in data.items():
        kind = types.get(key)
        if kind is None:
            raise AisdiffError(f"{path}: {key!r} is not a setting a model can default; use "
                               f"{', '.join(types)} (seed and prior_size are the caller's).")
        numeric = kind is float and isinstance(value, int)
        if isinstance(value, bool) or not (isinstance(value, kind) or numeric):
            raise AisdiffError(f"{path}: {key} must be a JSON {kind.__name__}, not {value!r}.")
        out[key] = kind(value)
    return out


def model_defaults(model: str) -> dict:
    """The DiffSP defaults shipped with a model: its folder's diffsp_config.json (checked), a hub id's from
    its cached snapshot; {} for 'tiny-random', hub ids not in the cache and folders without that file."""
    folder = model_folder(model)
    return read_model_defaults(folder) if folder else {}


def load_model(model: str, dtype: str = "fp32", device: str | torch.device = "cpu",
               tiny_vae: str | None = None) -> DiffusionModel:
    """Load an inpainting pipeline by name: 'tiny' or 'tiny-high' (shipped trained models), 'tiny-random'
    (built offline), a local diffusers folder, or a Hugging Face hub id (from the local cache when offline).
    The scheduler becomes DDIM. Its small autoencoder (for `encoder="tiny"`) comes from `tiny_vae` (an
    AutoencoderTiny folder or hub id), else the model folder's TINY_VAE_FOLDER; it loads on first use."""
    _quiet_notices()
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    if dtype not in DTYPES:
        raise AisdiffError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    defaults = model_defaults(model)  # before the weights: a bad file fails fast
    if model == "tiny-random":
        pipe = build_tiny_pipeline(seed=0)
        name = model
    else:
        path = _model_path(model)
        if model in SHIPPED_MODELS and not path.is_dir():
            raise AisdiffError(f"the shipped {model} model is missing ({path}); restore it from git, or "
                               "retrain it with `aisdiff train-diffusion` (see its model card).")
        if path.suffix in PICKLE_SUFFIXES or path.suffix == ".safetensors":
            raise AisdiffError(f"{model}: single-file checkpoints are not supported"
                               + (" (and pickle files are refused)" if path.suffix in PICKLE_SUFFIXES else "")
                               + "; pass a diffusers model folder or a hub id.")
        if path.exists():
            _refuse_pickle_weights(path)
        elif (snapshot := hub_snapshot(model)) is not None:
            _refuse_pickle_weights(snapshot)
        try:
            pipe = StableDiffusionInpaintPipeline.from_pretrained(
                str(path) if path.exists() else model, dtype=DTYPES[dtype], use_safetensors=True,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        except (OSError, ValueError) as exc:
            raise _not_loadable(model, exc) from None
        name = model if model in SHIPPED_MODELS else str(path.resolve()) if path.exists() else model
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if model == "tiny-random" and dtype != "fp32":  # built in fp32; loaded models come in `dtype`
        pipe = pipe.to(dtype=DTYPES[dtype])
    pipe = pipe.to(device=device)
    built = None
    if model == "tiny-random" and tiny_vae is None:  # (fp32, then nn.Module's `to`: diffusers' warns on it)
        built = torch.nn.Module.to(build_tiny_autoencoder(pipe.vae.config, seed=0), device, DTYPES[dtype])
    folder = model_folder(model)
    if tiny_vae is None and folder is not None and (folder / TINY_VAE_FOLDER).is_dir():
        tiny_vae = str(folder / TINY_VAE_FOLDER)
    return DiffusionModel(pipe=pipe, name=name, weights_sha256=weights_sha256(pipe), dtype=dtype,
                          diffsp_defaults=defaults, tiny_vae_source=tiny_vae, _tiny_vae=built)


def load_tiny_vae(source: str, pipe, dtype: str, model: str):
    """An AutoencoderTiny from a folder (safetensors only) or hub id, on the pipeline's device and in `dtype`,
    checked against the pipeline's VAE (`model` names it in errors)."""
    from diffusers import AutoencoderTiny

    path = Path(source).expanduser()
    if path.exists():
        _refuse_pickle_weights(path.parent, (path.name,))
    try:
        tiny = AutoencoderTiny.from_pretrained(str(path) if path.exists() else source, use_safetensors=True,
                                               dtype=DTYPES[dtype])
    except (OSError, ValueError) as exc:
        raise AisdiffError(f"could not load the small autoencoder {source!r} of {model}: {exc}. Pass an "
                           "AutoencoderTiny folder (diffusers layout, safetensors) or a hub id in the "
                           "Hugging Face cache (e.g. madebyollin/taesd for Stable Diffusion 1.x).") from None
    factor = 2 ** (len(tiny.config.encoder_block_out_channels) - 1)
    if (factor, tiny.config.latent_channels) != (pipe.vae_scale_factor, pipe.vae.config.latent_channels):
        raise AisdiffError(
            f"{source}: this small autoencoder encodes by a factor {factor} into "
            f"{tiny.config.latent_channels} channels, the VAE of {model} by {pipe.vae_scale_factor} into "
            f"{pipe.vae.config.latent_channels}: it is not made for this model; distill one with "
            f"`aisdiff distill-encoder --model {model}`.")
    return tiny.to(device=pipe.vae.device).eval()
