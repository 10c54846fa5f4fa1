"""Stable Diffusion inpainting pipelines built offline from configs, with weights drawn from a seed.

Both builders use Stable Diffusion's classes and block layout (a 9-channel UNet2DConditionModel with
cross-attention, AutoencoderKL, CLIPTextModel) and a CLIPTokenizer whose byte-level BPE vocabulary is
generated here, so that category names tokenize without downloading CLIP's:
- `build_tiny_pipeline`: `tiny-random`, and the untrained start of `aisdiff train-diffusion`'s model;
- `build_sd15_inpaint_architecture`: Stable Diffusion 1.5 inpainting's published sizes (speed and memory).
`build_tiny_autoencoder` builds the small `AutoencoderTiny` (TAESD's class and layout) that stands in for a
model's VAE encoder in DiffSP's cheap setting (`encoder="tiny"`): TAESD's own sizes for SD-1.5, narrower
ones for the tiny models.
"""
from __future__ import annotations

import itertools

import torch

# Words the tiny tokenizer knows as single tokens: the prompt, the synthetic benchmark's categories and
# the categories of KINS and COCO(A-cls). Any other text still tokenizes, byte by byte.
TINY_WORDS = (
    "a an the photo of on in with and "
    "ball box triangle star cross heart moon "
    "cyclist pedestrian person sitting car tram truck van misc "
    "bicycle motorcycle airplane bus train boat traffic light fire hydrant stop sign parking meter bench "
    "bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella handbag tie suitcase frisbee "
    "skis snowboard sports kite baseball bat glove skateboard surfboard tennis racket bottle wine glass cup "
    "fork knife spoon bowl banana apple sandwich orange broccoli carrot hot pizza donut cake chair couch "
    "potted plant bed dining table toilet tv laptop mouse remote keyboard cell phone microwave oven toaster "
    "sink refrigerator book clock vase scissors teddy hair drier toothbrush"
).split()

# Gain of the tiny random model's tied query/key projections (see `_tie_self_attention`).
TINY_QK_GAIN = 2.5

SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                        beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                        steps_offset=1, prediction_type="epsilon")


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of byte-level BPE (as used by GPT-2 and CLIP)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
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


def _inpaint_pipeline(seed: int, tokenizer, unet: dict, vae: dict, text: dict, qk_gain: float | None = None):
    """An inpainting pipeline in Stable Diffusion's layout; `unet`, `vae` and `text` hold the sizes that
    differ between models. Weights are drawn from `seed` (UNet, VAE, then text encoder), leaving the global
    generator untouched; `qk_gain` ties the UNet's self-attention (see `_tie_self_attention`)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    levels = len(vae["block_out_channels"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet_model = UNet2DConditionModel(  # cross-attention in all down/up blocks but the lowest resolution
            in_channels=9, out_channels=4, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, **unet)
        if qk_gain is not None:
            _tie_self_attention(unet_model, qk_gain)
        vae_model = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels, latent_channels=4, **vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **text))
    return StableDiffusionInpaintPipeline(
        vae=vae_model, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet_model,
        scheduler=DDIMScheduler(**SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def build_tiny_pipeline(seed: int = 0, *, sample_size: int = 16,
                        unet_channels: tuple[int, ...] = (16, 16, 32, 32), heads: int = 1,
                        text_width: int = 32, vae_channels: tuple[int, ...] = (16, 32, 32),
                        words: tuple[str, ...] = TINY_WORDS, qk_gain: float | None = TINY_QK_GAIN,
                        scaling_factor: float = 0.18215):
    """A small inpainting pipeline in Stable Diffusion's layout with weights drawn from `seed`.

    The defaults are `tiny-random`: 64 px input, VAE factor 4, latent 16x16, attention at latent, latent/2
    and latent/4 (none at latent/8), so DiffSP's defaults carry over (self 8, cross 4), with tied
    self-attention (`qk_gain`); sized for speed, not for its priors. `aisdiff train-diffusion` trains a
    wider one (untied, `qk_gain=None`) from the same builder.
    """
    tokenizer = tiny_tokenizer(words)
    return _inpaint_pipeline(
        seed, tokenizer, qk_gain=qk_gain,
        unet=dict(sample_size=sample_size, layers_per_block=1, block_out_channels=unet_channels,
                  cross_attention_dim=text_width, attention_head_dim=heads, norm_num_groups=16),
        vae=dict(block_out_channels=vae_channels, layers_per_block=1, norm_num_groups=16,
                 sample_size=sample_size * 4, scaling_factor=scaling_factor),
        text=dict(vocab_size=len(tokenizer), hidden_size=text_width, intermediate_size=2 * text_width,
                  num_hidden_layers=2, num_attention_heads=2))


def build_sd15_inpaint_architecture(seed: int = 0):
    """Stable Diffusion 1.5 inpainting's published architecture (UNet, VAE, CLIP ViT-L/14 text encoder
    config dimensions) with random weights, built offline: for speed and memory measurements only.
    Uses the tiny tokenizer (CLIP's real vocabulary cannot be downloaded here)."""
    return _inpaint_pipeline(
        seed, tiny_tokenizer(),
        unet=dict(sample_size=64, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
                  cross_attention_dim=768, attention_head_dim=8),
        vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512,
                 scaling_factor=0.18215),
        text=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                  num_attention_heads=12, hidden_act="quick_gelu", projection_dim=768))


# TAESD's sizes (madebyollin/taesd, the AutoencoderTiny of Stable Diffusion 1.x/2.x): VAE factor 8
TAESD_CHANNELS, TAESD_ENCODER_BLOCKS, TAESD_DECODER_BLOCKS = 64, (1, 3, 3, 3), (3, 3, 3, 1)


def build_tiny_autoencoder(vae_config, seed: int = 0, channels: int | None = None):
    """An untrained `AutoencoderTiny` for a VAE of config `vae_config` (same latent channels and factor):
    TAESD's sizes for a factor-8 VAE, else one block per level at `channels` (default: the VAE's first
    block width). Its latents are the VAE's scaled latents (`scaling_factor` 1), as TAESD's are."""
    from diffusers import AutoencoderTiny

    levels = len(vae_config.block_out_channels)
    taesd = levels == len(TAESD_ENCODER_BLOCKS)
    width = channels or (TAESD_CHANNELS if taesd else vae_config.block_out_channels[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderTiny(
            encoder_block_out_channels=(width,) * levels, decoder_block_out_channels=(width,) * levels,
            num_encoder_blocks=TAESD_ENCODER_BLOCKS if taesd else (1,) * levels,
            num_decoder_blocks=TAESD_DECODER_BLOCKS if taesd else (1,) * levels,
            latent_channels=vae_config.latent_channels, scaling_factor=1.0)
