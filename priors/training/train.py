"""Train a small Stable Diffusion inpainting model on ROI crops (`aisdiff train-diffusion`).

Two stages, as Stable Diffusion was built: an AutoencoderKL learns to encode crops (reconstruction plus
a small KL term), then the 9-channel UNet and the CLIP text encoder learn to denoise the VAE latent of
the whole object given the hole mask and the latent of the visible-only crop (epsilon prediction, the
scaled-linear DDPM schedule of Stable Diffusion, 10% empty prompts for classifier-free guidance).
The result is saved with `save_pretrained` (safetensors) plus a model card and the loss curve.
"""
from __future__ import annotations

import json
import math
import platform
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..architectures import SCHEDULER_CONFIG, TINY_WORDS, build_tiny_pipeline
from ..attention import CaptureAttnProcessor, layer_resolutions, swapped_processors
from ..diffsp import PROMPT, category_token_positions
from ..models import SHIPPED_MODELS
from .crops import ObjectCrops, sample_batch

PAIR_PROMPT = PROMPT + " and a {other}"  # an object and its companion


@dataclass
class TrainConfig:
    """Everything that determines the trained weights (recorded in the model card)."""

    resolution: int = 64
    context: float = 1.2
    vae_steps: int = 1500
    unet_steps: int = 6000
    text_to_image_steps: int = 0  # the first UNet steps mask everything (SD inpainting starts from txt2img)
    batch_size: int = 32
    vae_lr: float = 1e-3
    unet_lr: float = 5e-4
    kl_weight: float = 1e-6
    uncond_probability: float = 0.1
    full_mask_probability: float = 0.0  # SD inpainting's recipe: 0.25 (tried, no help)
    random_mask_probability: float = 0.25  # SD inpainting's random rectangles, on top of the occluders
    # a second object behind, named in the prompt: token-specific attention
    companion_probability: float = 0.5
    grounding_weight: float = 0.0  # token grounding loss (TokenCompose-style) on the object's cross-attention
    seed: int = 0


def build_architecture(resolution: int, categories: list[str], seed: int):
    """The untrained pipeline: VAE factor 4 (latent R/4), a UNet in Stable Diffusion's block layout
    (cross-attention at latent, /2, /4; none at /8) with 4 heads, and a 2-layer CLIP text encoder whose
    tokenizer knows the dataset's category words."""
    words = tuple(dict.fromkeys([*TINY_WORDS, *(w for c in categories for w in c.lower().split())]))
    return build_tiny_pipeline(seed, sample_size=resolution // 4, unet_channels=(32, 64, 64, 64), heads=4,
                               text_width=64, vae_channels=(32, 64, 64), words=words, qk_gain=None,
                               scaling_factor=1.0)


def _lr_lambda(steps: int, warmup: int = 100):
    """Linear warm-up, then cosine decay to 10%."""
    import math

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) / max(steps - warmup, 1)))
    return factor


def object_token_weights(tokenizer, prompts: list[tuple[str, str | None]]) -> torch.Tensor:
    """Weights [P, L] that average each prompt's cross-attention over its object's category tokens (1/k on
    the k tokens of the category named first, found as DiffSP finds them; zeros for a prompt naming none)."""
    weights = torch.zeros(len(prompts), tokenizer.model_max_length)
    for row, (_, category) in enumerate(prompts):
        if category is not None:
            positions = category_token_positions(tokenizer, PROMPT, category)  # pair prompts start alike
            weights[row, positions] = 1.0 / len(positions)
    return weights


@dataclass
class TokenMaps:
    """An attention sink that keeps, per cross-attention layer, each example's head-averaged attention to its
    object's tokens [B, queries] with gradients: the grounding loss's input."""

    weights: torch.Tensor  # [B, L]: `object_token_weights` rows of this batch's prompts
    maps: list[torch.Tensor] = field(default_factory=list)
    cond_only: bool = False

    def add(self, kind: str, probs: torch.Tensor) -> None:
        self.maps.append(torch.bmm(probs.mean(dim=1), self.weights[:, :, None].to(probs))[..., 0])


def grounding_loss(maps: list[torch.Tensor], amodal: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """TokenCompose's token and pixel losses (Wang et al., CVPR 2024), averaged over layers: the share of the
    object token's attention that falls outside the object's mask, squared, plus the binary cross-entropy of
    its attention against the mask (area-resampled to the layer's grid). `keep`: examples with a named object.

    Stable Diffusion's cross-attention ties a category word to the object's pixels from web-scale captions;
    a few thousand crops are too few for that, so this loss supplies it from the train split's masks.
    """
    if not keep.any():
        return amodal.new_zeros(())
    losses = []
    for a in maps:
        side = math.isqrt(a.shape[1])
        target = F.interpolate(amodal, size=(side, side), mode="area").flatten(1).to(a)
        a, target = a[keep], target[keep]
        inside = (a * target).sum(1) / a.sum(1).clamp_min(1e-8)
        losses.append((1 - inside).pow(2).mean() + F.binary_cross_entropy(a.clamp(1e-6, 1 - 1e-6), target))
    return torch.stack(losses).mean()


def cross_attention_to(unet, sink: TokenMaps) -> dict:
    """The UNet's attention processors with every cross-attention layer handing its probabilities to
    `sink`."""
    kinds = layer_resolutions(unet, unet.config.sample_size)
    return {name: CaptureAttnProcessor(sink, "cross", name) if kinds.get(name, ("self",))[0] == "cross"
            else proc
            for name, proc in unet.attn_processors.items()}


def train_vae(vae, crops: ObjectCrops, cfg: TrainConfig, generator: torch.Generator, device: torch.device,
              progress: bool = True) -> list[float]:
    """Reconstruction (L1 + MSE) and KL on whole-object and visible-only crops; returns per-step losses.
    Afterwards the latent scaling factor is set to 1 / std of the latents, as Stable Diffusion's was."""
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.vae_steps))
    losses = []
    for _ in tqdm(range(cfg.vae_steps), desc="vae", disable=not progress):
        batch = sample_batch(crops, cfg.batch_size // 2, generator, cfg.context)
        x = torch.cat([batch.target, batch.masked]).to(device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=None)).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + cfg.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    vae.eval()
    with torch.no_grad():
        batch = sample_batch(crops, 256, generator, cfg.context)
        std = vae.encode(batch.target.to(device)).latent_dist.mode().std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    return losses


def train_unet(pipe, crops: ObjectCrops, cfg: TrainConfig, generator: torch.Generator, device: torch.device,
               progress: bool = True) -> dict[str, list[float]]:
    """Epsilon-prediction training of the inpainting UNet and the text encoder; returns per-step losses
    ("unet": the denoising loss; "grounding": the token grounding loss, when `cfg.grounding_weight` is set).

    Stable Diffusion inpainting was fine-tuned from the text-to-image model, whose cross-attention already
    ties category tokens to object pixels; the first `text_to_image_steps` steps play that part (the whole
    crop masked, the prompt alone says what to draw), the rest mix occluders with SD's extra masks."""
    from diffusers import DDPMScheduler

    noise_scheduler = DDPMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items()
                                       if k not in ("set_alpha_to_one", "steps_offset")})
    unet, text_encoder, vae, tokenizer = pipe.unet, pipe.text_encoder, pipe.vae, pipe.tokenizer
    n = len(crops.categories)
    prompts = [(PROMPT.format(category=c), c) for c in crops.categories] + [("", None)]
    prompts += [(PAIR_PROMPT.format(category=c, other=o), c) for c in crops.categories
                for o in crops.categories]
    tokens = tokenizer([p for p, _ in prompts], padding="max_length", max_length=tokenizer.model_max_length,
                       truncation=True, return_tensors="pt").input_ids.to(device)
    token_weights = object_token_weights(tokenizer, prompts).to(device)
    sink = TokenMaps(token_weights[:0])
    params = [*unet.parameters(), *text_encoder.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.unet_steps))
    unet.train()
    text_encoder.train()
    scale = vae.config.scaling_factor
    losses: dict[str, list[float]] = {"unet": [], **({"grounding": []} if cfg.grounding_weight else {})}
    with swapped_processors(unet, cross_attention_to(unet, sink)) if cfg.grounding_weight else nullcontext():
        for step in tqdm(range(cfg.unet_steps), desc="unet", disable=not progress):
            text_to_image = step < cfg.text_to_image_steps
            batch = sample_batch(crops, cfg.batch_size, generator, cfg.context,
                                 1.0 if text_to_image else cfg.full_mask_probability,
                                 cfg.random_mask_probability, cfg.companion_probability)
            with torch.no_grad():
                both = (vae.encode(torch.cat([batch.target, batch.masked]).to(device)).latent_dist.mode()
                        * scale)
                latents, masked_latents = both.chunk(2)
            hole = F.interpolate(batch.hole.to(device), size=latents.shape[-2:])
            noise = torch.randn(latents.shape, generator=generator).to(device)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(latents),),
                              generator=generator)
            noisy = noise_scheduler.add_noise(latents, noise, t.to(device))
            labels = torch.where(batch.companions < 0, batch.labels,
                                 n + 1 + batch.labels * n + batch.companions)
            # the empty prompt
            labels[torch.rand(len(labels), generator=generator) < cfg.uncond_probability] = n
            labels = labels.to(device)
            sink.weights, sink.maps = token_weights[labels], []
            text = text_encoder(tokens[labels])[0]
            eps = unet(torch.cat([noisy, hole, masked_latents], 1), t.to(device),
                       encoder_hidden_states=text).sample
            loss = F.mse_loss(eps, noise)
            losses["unet"].append(loss.item())
            if cfg.grounding_weight:
                ground = grounding_loss(sink.maps, batch.amodal.to(device), labels != n)
                losses["grounding"].append(ground.item())
                loss = loss + cfg.grounding_weight * ground
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
    unet.eval()
    text_encoder.eval()
    return losses


def smooth(values: list[float], window: int = 50) -> list[float]:
    """Trailing moving average (what the loss curve and card report)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_losses(losses: dict[str, list[float]], path: Path) -> None:
    """Loss curves (raw and moving average), one panel per stage, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(losses), figsize=(5 * len(losses), 3.4))
    for ax, (name, values) in zip(axes, losses.items(), strict=True):
        ax.plot(values, color="0.8", linewidth=0.6, label="per step")
        ax.plot(smooth(values), color="C0", linewidth=1.4, label="moving average (50)")
        ax.set(title=f"{name} loss", xlabel="step", yscale="log")
        ax.legend(frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_card(out: Path, cfg: TrainConfig, crops: ObjectCrops, data: dict, losses: dict[str, list[float]],
               seconds: float, device: str, command: str, save_dtype: str) -> None:
    """The model card: what the model is, the data (`data`, with the name the model loads by), the settings,
    the losses and how to reproduce it."""
    final = {k: round(smooth(v)[-1], 4) for k, v in losses.items()}
    lines = [
        "# Tiny shape-aware Stable Diffusion inpainting model (AISDiff)",
        "",
        "A small inpainting diffusion model with Stable Diffusion inpainting's classes and interface "
        "(`UNet2DConditionModel` with 9 input channels and cross-attention, `AutoencoderKL`, `CLIPTextModel` "
        "+ `CLIPTokenizer`, DDIM scheduler), trained from scratch on ROI crops of the AISDiff synthetic "
        "amodal benchmark so that DiffSP's attention priors can be measured offline. It is not a general "
        "image model.",
        "",
        "Load it like any diffusers folder: `StableDiffusionInpaintPipeline.from_pretrained(this_folder)`, "
        f"or `aisdiff precompute --model {data['name']}`"
        + (" (the project's name for it)." if data["name"] in SHIPPED_MODELS else "."),
        "",
        "## Data",
        f"- Annotations: `{data['ann']}` (sha256 `{data['sha256']}`), {data['images']} images, "
        f"{data['instances']} instances; the train split only.",
        f"- Examples: the {len(crops)} instances with no occlusion, cropped as DiffSP crops a ROI "
        f"(square, {cfg.context} x the longer box side, {cfg.resolution} px). Each step lays up to two other "
        "training objects' shapes next to each object, in front (hiding part of it, at least 30% stays "
        "visible) or behind, and flips at random. Input: the visible pixels only and the occluders' visible "
        "region (cut to the object's box) as the inpainting mask; target: the whole object on a blank "
        f"background; prompt: `{PROMPT}` (10% empty)." + (
            f" As Stable Diffusion inpainting was trained, {cfg.full_mask_probability:.0%} of the examples "
            "mask the whole crop." if cfg.full_mask_probability else "") + (
            f" {cfg.random_mask_probability:.0%} of the examples add a random rectangle to the mask, as in "
            "Stable Diffusion inpainting's training." if cfg.random_mask_probability else "") + (
            f" In {cfg.companion_probability:.0%} of the examples a second whole training object stands "
            f"behind the object, in the input and the target, and the prompt names both: `{PAIR_PROMPT}`."
            if cfg.companion_probability else ""),
        f"- Categories: {', '.join(crops.categories)}.",
        "",
        "## Training",
        f"- VAE: {cfg.vae_steps} steps, batch {cfg.batch_size}, AdamW lr {cfg.vae_lr}, L1 + MSE + "
        f"{cfg.kl_weight} x KL; latent scaling factor 1/std = {data['scaling_factor']}.",
        f"- UNet + text encoder: {cfg.unet_steps} steps, batch {cfg.batch_size}, AdamW lr {cfg.unet_lr} "
        "(warm-up, cosine to 10%), epsilon prediction, Stable Diffusion's scaled-linear schedule (1000 "
        "steps)." + (
            f" Plus {cfg.grounding_weight} x a token grounding loss on every cross-attention layer "
            "(TokenCompose's token and pixel losses, Wang et al., CVPR 2024): the attention of the object's "
            "category token should lie on the object's whole (amodal) mask in the target. Stable Diffusion "
            f"learned that tie of word to pixels from web-scale captions; {len(crops)} crops are too few to "
            "learn it from denoising alone."
            if cfg.grounding_weight else "") + (
            f" The first {cfg.text_to_image_steps} steps mask every crop whole (text-to-image, the stage SD "
            "inpainting was fine-tuned from)." if cfg.text_to_image_steps else ""),
        f"- Seed {cfg.seed}; {seconds / 60:.1f} min on {device} "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads).",
        f"- Final losses (moving average of 50 steps): VAE {final['vae']}, UNet {final['unet']}"
        + (f", grounding {final['grounding']}." if "grounding" in final else "."),
        f"- Weights saved in {save_dtype} (safetensors); `from_pretrained(..., torch_dtype=...)` casts them.",
        "",
        "![loss curves](loss.png)",
        "",
        "## Reproduce",
        "```bash",
        command,
        "```",
        "",
        "## Settings (`train_config.json`)",
        "```json",
        json.dumps(asdict(cfg), indent=2),
        "```",
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
