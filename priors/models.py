"""Stable Diffusion inpainting models for DiffSP: real pipelines (hub id or local folder) and a tiny offline one.

`load_model` returns the diffusers `StableDiffusionInpaintPipeline` with a DDIM scheduler, on the asked
device and dtype, plus an identity (name and a sha256 of the weights) that prior stores record.
Weights load from safetensors only: pickle checkpoints are refused.

Two tiny models stand in for Stable Diffusion where no weights can be downloaded; both use its classes
(UNet2DConditionModel with 9 input channels and cross-attention, AutoencoderKL, CLIPTextModel,
CLIPTokenizer with a byte-level BPE vocabulary generated here so that category names tokenize):
- `tiny`: trained on the synthetic benchmark's train split (`aisdiff train-diffusion`), shipped in
  `priors/weights/tiny-shapes/` and loaded with `from_pretrained` like real weights: its attention knows shapes.
- `tiny-random`: built from configs with weights drawn from a seed: fast, for speed and mechanics only.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import AisdiffError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TINY_MODEL_DIR = Path(__file__).resolve().parent / "weights" / "tiny-shapes"  # the trained `tiny` model
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
COMPONENTS = ("unet", "vae", "text_encoder")

# Words the tiny tokenizer knows as single tokens: the prompt, the synthetic benchmark's categories and
# the categories of KINS and COCO(A-cls). Any other text still tokenizes, byte by byte.
TINY_WORDS = (
    "a an the photo of on in with and "
    "ball box triangle star cross heart moon "
    "cyclist pedestrian person sitting car tram truck van misc "
    "bicycle motorcycle airplane bus train boat traffic light fire hydrant stop sign parking meter bench bird cat "
    "dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee skis "
    "snowboard sports kite baseball bat glove skateboard surfboard tennis racket bottle wine glass cup fork "
    "knife spoon bowl banana apple sandwich orange broccoli carrot hot pizza donut cake chair couch potted "
    "plant bed dining table toilet tv laptop mouse remote keyboard cell phone microwave oven toaster sink "
    "refrigerator book clock vase scissors teddy hair drier toothbrush"
).split()

# Gain of the tiny random model's tied query/key projections (see `_tie_self_attention`).
TINY_QK_GAIN = 2.5

SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


class _NoTorchvisionNotice(logging.Filter):
    """transformers announces that its image processors fall back from torchvision, which this project does
    not install and DiffSP never uses (it feeds tensors to the UNet, no image processor): drop that notice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision" not in record.getMessage()


def _quiet_torchvision_notice() -> None:
    from transformers.utils import logging as hf_logging

    for handler in hf_logging.get_logger().handlers:
        if not any(isinstance(f, _NoTorchvisionNotice) for f in handler.filters):
            handler.addFilter(_NoTorchvisionNotice())


@dataclass
class DiffusionModel:
    """A loaded inpainting pipeline and what identifies it."""

    pipe: object  # diffusers.StableDiffusionInpaintPipeline
    name: str
    weights_sha256: str
    dtype: str

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


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE (as used by GPT-2 and CLIP)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return dict(sorted(table.items()))


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges (lowest rank first) to one word's symbols."""
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(itertools.pairwise(symbols))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        symbols = [*symbols[:i], symbols[i] + symbols[i + 1], *symbols[i + 2:]]
    return symbols


def tiny_tokenizer(words: tuple[str, ...] = TINY_WORDS):
    """A CLIPTokenizer over all 256 byte symbols plus merges that make each of `words` one token.

    Each word gets merges appended (lowest priority) until BPE, with all merges so far, yields a single
    token; merges added later never outrank an earlier word's, so earlier words stay whole.
    """
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    known = set(vocab)
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(words):
        while len(parts := _bpe([*word[:-1], word[-1] + "</w>"], ranks)) > 1:
            ranks[(parts[0], parts[1])] = len(ranks)
            if parts[0] + parts[1] not in known:
                known.add(parts[0] + parts[1])
                vocab.append(parts[0] + parts[1])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=list(ranks))
    tokenizer.model_max_length = 77
    return tokenizer


def _tie_self_attention(unet, gain: float) -> None:
    """Make a random UNet's self-attention a sharp feature-similarity kernel, as in trained models.

    Freshly initialized attention is nearly uniform, so (A_S)^tau . A_C is flat to rounding error and
    min-max normalization would only amplify float noise. Tying each self-attention layer's key projection
    to its (scaled) query projection makes similar pixels attend to each other: the prior then follows the
    image content and is numerically well conditioned. Cross-attention is left as drawn.
    """
    with torch.no_grad():
        for name, module in unet.named_modules():
            if name.endswith("attn1"):
                module.to_q.weight.mul_(gain)
                module.to_k.weight.copy_(module.to_q.weight)


def build_tiny_pipeline(seed: int = 0, *, sample_size: int = 16, unet_channels: tuple[int, ...] = (16, 16, 32, 32),
                        heads: int = 1, text_width: int = 32, vae_channels: tuple[int, ...] = (16, 32, 32),
                        words: tuple[str, ...] = TINY_WORDS, qk_gain: float | None = TINY_QK_GAIN,
                        scaling_factor: float = 0.18215):
    """A small inpainting pipeline in Stable Diffusion's layout with weights drawn from `seed`.

    The defaults are `tiny-random`: 64 px input, VAE factor 4, latent 16x16, attention at latent, latent/2
    and latent/4 (none at latent/8), so DiffSP's defaults carry over (self 8, cross 4), with tied
    self-attention (`qk_gain`); sized for speed, not for its priors. `aisdiff train-diffusion` trains a
    wider one (untied, `qk_gain=None`) from the same builder.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer(words)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(  # Stable Diffusion's layout, narrower, one layer per block
            sample_size=sample_size, in_channels=9, out_channels=4, layers_per_block=1,
            block_out_channels=unet_channels, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=text_width, attention_head_dim=heads, norm_num_groups=16)
        if qk_gain is not None:
            _tie_self_attention(unet, qk_gain)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=vae_channels, latent_channels=4,
            layers_per_block=1, norm_num_groups=16, sample_size=sample_size * 4, scaling_factor=scaling_factor)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    return StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def build_sd15_inpaint_architecture(seed: int = 0):
    """Stable Diffusion 1.5 inpainting's published architecture (UNet, VAE, CLIP ViT-L/14 text encoder
    config dimensions) with random weights, built offline: for speed and memory measurements only.
    Uses the tiny tokenizer (CLIP's real vocabulary cannot be downloaded here)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=9, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
            latent_channels=4, layers_per_block=2, sample_size=512, scaling_factor=0.18215)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
            num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    return StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def weights_sha256(pipe) -> str:
    """sha256 over the UNet, VAE and text encoder weights (names, dtypes, shapes and bytes, sorted by name)."""
    digest = hashlib.sha256()
    for component in COMPONENTS:
        for name, tensor in sorted(getattr(pipe, component).state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{component}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _refuse_pickle_weights(folder: Path) -> None:
    """A local model folder must hold safetensors weights for each component; pickles can run code."""
    for component in COMPONENTS:
        sub = folder / component
        if not sub.is_dir():
            raise AisdiffError(f"{folder}: no '{component}/' folder; a Stable Diffusion inpainting model folder "
                               "(diffusers layout, as written by save_pretrained) has unet/, vae/, text_encoder/, "
                               "tokenizer/ and scheduler/.")
        if not any(sub.glob("*.safetensors")):
            pickles = sorted(p.name for p in sub.iterdir() if p.suffix in PICKLE_SUFFIXES)
            found = f" (found pickle weights: {', '.join(pickles)})" if pickles else ""
            raise AisdiffError(
                f"{sub}: no .safetensors weights{found}. Pickle checkpoints are refused because loading them can "
                "run arbitrary code; convert the model with diffusers' save_pretrained(..., safe_serialization=True).")


def load_model(model: str, dtype: str = "fp32", device: str | torch.device = "cpu") -> DiffusionModel:
    """Load an inpainting pipeline by name: 'tiny' (the shipped trained model), 'tiny-random' (built offline),
    a local diffusers folder, or a Hugging Face hub id (from the local cache when offline). The scheduler
    becomes DDIM."""
    _quiet_torchvision_notice()
    from diffusers import DDIMScheduler, StableDiffusionInpaintPipeline

    if dtype not in DTYPES:
        raise AisdiffError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if model == "tiny-random":
        pipe = build_tiny_pipeline(seed=0)
        name = model
    else:
        path = TINY_MODEL_DIR if model == "tiny" else Path(model).expanduser()
        if model == "tiny" and not path.is_dir():
            raise AisdiffError(f"the shipped tiny model is missing ({path}); restore it from git, or retrain it "
                               "with `aisdiff train-diffusion` (see its model card).")
        if path.suffix in PICKLE_SUFFIXES or path.suffix == ".safetensors":
            raise AisdiffError(f"{model}: single-file checkpoints are not supported"
                               + (" (and pickle files are refused)" if path.suffix in PICKLE_SUFFIXES else "")
                               + "; pass a diffusers model folder or a hub id.")
        if path.exists():
            _refuse_pickle_weights(path)
        try:
            pipe = StableDiffusionInpaintPipeline.from_pretrained(
                str(path) if path.exists() else model, dtype=DTYPES[dtype], use_safetensors=True,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        except (OSError, ValueError) as exc:
            raise AisdiffError(
                f"could not load the inpainting model {model!r}: {exc}. Pass a local diffusers folder, or a hub id "
                "that is in the Hugging Face cache (HF_HOME) when there is no network.") from None
        name = model if model == "tiny" else str(path.resolve()) if path.exists() else model
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if model == "tiny-random" and dtype != "fp32":  # built in fp32; loaded models come in `dtype`
        pipe = pipe.to(dtype=DTYPES[dtype])
    pipe = pipe.to(device=device)
    return DiffusionModel(pipe=pipe, name=name, weights_sha256=weights_sha256(pipe), dtype=dtype)
