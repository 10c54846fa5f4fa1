"""DiffSP (paper 3.2.2): a batch of ROIs in, a batch of shape priors out.

Per ROI: the context crop with only the object's visible pixels kept, the inpainting mask (the occluder mask,
or with mask_mode="invisible" everything not visible) and the prompt "a photo of a {category}" go through one
encode (the VAE's; with encoder="tiny" the model's small autoencoder's) and T DDIM steps of a Stable Diffusion
inpainting UNet (with `strength` < 1, the last strength x T steps of that schedule, started from the visible
crop's latent noised to that point, as image-to-image does); the final latent is never decoded, so the final
step runs the UNet only until its last captured attention layer. Self-attention at `self_res` and
cross-attention at `cross_res` (mean over the category's tokens, start token skipped, upsampled to `self_res`)
are averaged over heads, layers and steps, and `M_sp = (A_S)^tau . A_C` is min-max normalized and resampled
onto the ROI box at S x S.

Noise is drawn per ROI on the CPU from the ROI's own seed (`priors.identity`), so a prior does not depend on
the batch it is computed in, on the device, or on how many processes share the job.
"""
from __future__ import annotations

import typing
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F

from . import geometry
from .attention import capture_attention, layer_resolutions
from .errors import AisdiffError

if typing.TYPE_CHECKING:  # (for annotations only: models imports this module)
    from .models import DiffusionModel

MASK_MODES = ("occluder", "invisible")
# what encodes the visible-only crop: the model's VAE ("vae"), or the encoder of its small AutoencoderTiny
# ("tiny": TAESD's layout, `DiffusionModel.tiny_vae`), about a ninth of the VAE's cost on SD-1.5
ENCODERS = ("vae", "tiny")
# how DDIM spreads T steps over the 1000 training timesteps (diffusers' `timestep_spacing`): SD-1.5 ships
# "leading" (T = 1 runs t = 1 only, T = 2 runs 501 and 1), "trailing" starts at t = 999 (T = 1 runs 999: the
# pure noise DiffSP starts from; Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
# Flawed"). Not diffusers' "linspace": DDIMScheduler.step assumes steps 1000 // T apart, which it is not.
TIMESTEP_SPACINGS = ("leading", "trailing")
PROMPT = "a photo of a {category}"  # the paper's prompt template; the tiny model was trained with it
# The paper's settings, for those that neither the caller nor the model's `models.MODEL_DEFAULTS_FILE`
# sets; besides these, `resolution` defaults to the model's native size, `self_res` to latent / 2 and
# `cross_res` to latent / 4 (`paper_defaults`) and `timestep_spacing` to the model's scheduler's.
PAPER_DEFAULTS = {"steps": 10, "tau": 4, "context": 1.2, "prompt": PROMPT, "guidance_scale": 1.0,
                  "mask_mode": "occluder", "strength": 1.0, "encoder": "vae"}
# Named settings (`--preset`, `preset=` in configs): a preset fills the settings the caller leaves unset,
# before the model's and the paper's defaults. "fast" is the cheapest setting of benchmarks/diffsp_steps.py
# whose val prior IoU (trained tiny model, synthetic benchmark) is within 0.01 of T = 10's, overall and in
# every occlusion bucket (benchmarks/results/diffsp_steps/diffsp_steps.json).
# It needs the model's small autoencoder (`encoder="tiny"`: a `vae_tiny/` folder); add `encoder="vae"`
# for a model without one (T = 2 trailing alone: 3.4x cheaper on SD-1.5 instead of 5.3x).
PRESETS = {"default": {}, "fast": {"steps": 2, "timestep_spacing": "trailing", "encoder": "tiny"}}


def paper_defaults(latent: int) -> dict:
    """The paper's settings for a model input whose latent grid is `latent` cells wide."""
    return {**PAPER_DEFAULTS, "self_res": latent // 2, "cross_res": latent // 4}


@dataclass(frozen=True)
class DiffSPConfig:
    """Every setting that changes a prior (all recorded in a prior store's attributes).

    A setting left None takes the model's default (its folder's `models.MODEL_DEFAULTS_FILE`), else the
    paper's (`paper_defaults`): see `resolved`. `prior_size` and `seed` are never None, since callers read
    them before a model is loaded.
    """

    steps: int | None = None  # DDIM steps T
    tau: int | None = None  # self-attention power in (A_S)^tau . A_C
    prior_size: int = 28
    resolution: int | None = None  # model input size in pixels
    self_res: int | None = None  # side of the self-attention token grid averaged
    cross_res: int | None = None  # side of the cross-attention token grid averaged
    context: float | None = None  # crop side = context x the longer box side
    prompt: str | None = None  # text template with {category}
    guidance_scale: float | None = None  # > 1 turns classifier-free guidance on (doubles the UNet cost)
    mask_mode: str | None = None  # one of MASK_MODES
    strength: float | None = None  # run the last strength x steps DDIM steps (1: all, from pure noise)
    timestep_spacing: str | None = None  # one of TIMESTEP_SPACINGS
    encoder: str | None = None  # one of ENCODERS
    seed: int = 0

    def resolved(self, model: DiffusionModel) -> DiffSPConfig:
        """Every setting for `model`, checked: the caller's, else the model's defaults, else the paper's."""
        unset = {f.name for f in fields(self) if getattr(self, f.name) is None}
        cfg = replace(self, **{k: v for k, v in model.diffsp_defaults.items() if k in unset})
        resolution = cfg.resolution or model.resolution
        factor = model.pipe.vae_scale_factor
        if resolution % (factor * 4):
            raise ValueError(f"resolution {resolution} must be a multiple of {factor * 4} for this model")
        latent = resolution // factor
        defaults = {**paper_defaults(latent), "timestep_spacing": scheduler_spacing(model)}
        cfg = replace(cfg, resolution=resolution,
                      **{k: v for k, v in defaults.items() if getattr(cfg, k) is None})
        if cfg.mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, not {cfg.mask_mode!r}")
        if cfg.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {TIMESTEP_SPACINGS}, not "
                             f"{cfg.timestep_spacing!r}")
        if cfg.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, not {cfg.encoder!r}")
        if cfg.encoder == "tiny" and model.tiny_vae is None:
            raise AisdiffError(
                f"encoder 'tiny': the model {model.name} has no small autoencoder. Give one (an "
                "AutoencoderTiny folder or hub id: madebyollin/taesd for Stable Diffusion 1.x) with "
                "--tiny-vae (`tiny_vae=` in a config's test_prior), or put it in a local model folder as "
                "'vae_tiny/' beside 'vae/' (`aisdiff distill-encoder` distills one from the model's VAE); "
                "or use encoder 'vae'.")
        if "{category}" not in cfg.prompt:
            raise ValueError(f"the prompt template {cfg.prompt!r} needs a '{{category}}' placeholder")
        layers = layer_resolutions(model.pipe.unet, latent).values()
        for kind, res in (("self", cfg.self_res), ("cross", cfg.cross_res)):
            present = sorted({r for k, r in layers if k == kind})
            if res not in present:
                raise ValueError(f"{kind}_res {res}: the UNet has {kind}-attention at {present} for input "
                                 f"{resolution} px (latent {latent}); choose among those")
        if cfg.steps < 1 or cfg.tau < 0 or cfg.prior_size < 1 or cfg.context < 1.0:
            raise ValueError("need steps >= 1, tau >= 0, prior_size >= 1 and context >= 1")
        if not 0 < cfg.strength <= 1 or cfg.unet_steps < 1:
            raise ValueError(f"strength {cfg.strength} with steps {cfg.steps} runs no step: need 0 < "
                             "strength <= 1 and strength x steps >= 1")
        return cfg

    @property
    def unet_steps(self) -> int:
        """The DDIM steps that run: the last int(strength x steps) of the T-step schedule (as diffusers'
        image-to-image pipelines count them)."""
        return int(self.steps * (1.0 if self.strength is None else self.strength))

    def attrs(self) -> dict:
        return asdict(self)

    def differences_from_paper(self, model: DiffusionModel) -> dict:
        """This config's settings that differ from the paper's for `model`, in field order: what the model's
        `models.MODEL_DEFAULTS_FILE` holds (with `models.THRESHOLD_KEY`) to make this config its default."""
        cfg = self.resolved(model)
        latent = cfg.resolution // model.pipe.vae_scale_factor
        paper = {**paper_defaults(latent), "resolution": model.resolution,
                 "timestep_spacing": scheduler_spacing(model)}
        return {f.name: getattr(cfg, f.name) for f in fields(cfg)
                if f.name in paper and getattr(cfg, f.name) != paper[f.name]}


def scheduler_spacing(model: DiffusionModel) -> str:
    """The timestep spacing of the model's own scheduler config (diffusers' default: "leading")."""
    return model.pipe.scheduler.config.get("timestep_spacing", "leading")


def preset_config(preset: str | None = None, **settings) -> DiffSPConfig:
    """A DiffSPConfig of `settings`, where `preset` (a PRESETS name) fills those left unset (None)."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown DiffSP preset {preset!r}; choose one of {', '.join(PRESETS)}")
    given = {k: v for k, v in settings.items() if v is not None}
    return DiffSPConfig(**{**PRESETS.get(preset, {}), **given})


@dataclass
class RoiBatch:
    """DiffSP's input: ROI context crops at the model resolution R, all on one device.

    images [N, 3, R, R] in [0, 1]; visible and occluder [N, 1, R, R] in [0, 1]; boxes [N, 4] the ROI box
    in crop pixel coordinates; one category name and one seed per ROI.
    """

    images: torch.Tensor
    visible: torch.Tensor
    occluder: torch.Tensor
    boxes: torch.Tensor
    categories: list[str]
    seeds: list[int]

    def __len__(self) -> int:
        return len(self.categories)

    def __getitem__(self, idx) -> RoiBatch:
        idx = list(range(len(self)))[idx] if isinstance(idx, slice) else list(idx)
        return RoiBatch(self.images[idx], self.visible[idx], self.occluder[idx], self.boxes[idx],
                        [self.categories[i] for i in idx], [self.seeds[i] for i in idx])


def prepare_rois(image: torch.Tensor, boxes, visible: torch.Tensor, occluder: torch.Tensor,
                 categories: list[str], seeds: list[int], resolution: int, context: float) -> RoiBatch:
    """Cut DiffSP's inputs out of one image: `image` [3, H, W] in [0, 1], `boxes` [N, 4] in pixels,
    `visible` / `occluder` [N, H, W] masks. Crops are squares of `context` x the longer box side."""
    boxes = geometry.as_boxes(boxes, image.device)
    crops = geometry.context_boxes(boxes, context)
    masks = torch.stack([visible, occluder], dim=1).to(image.device, torch.float32)
    mask_crops = geometry.roi_resample(masks, crops, resolution)
    return RoiBatch(images=geometry.crop_rois(image.float(), crops, resolution),
                    visible=mask_crops[:, :1], occluder=mask_crops[:, 1:],
                    boxes=geometry.boxes_in_frame(boxes, crops, resolution),
                    categories=list(categories), seeds=list(seeds))


def category_token_positions(tokenizer, prompt: str, category: str) -> list[int]:
    """Positions of the category's tokens in `prompt` ("... {category} ..."; the start token is position 0
    and skipped). Also where a prompt that goes on after the category (a second object named) has them."""
    def tokens(text: str) -> list[int]:
        return tokenizer(text, truncation=True, max_length=tokenizer.model_max_length)["input_ids"]

    prefix, suffix = prompt.split("{category}", 1)
    full = tokens(prompt.format(category=category))
    start = len(tokens(prefix.rstrip())) - 1  # without the end token
    end = len(full) - 1 - (len(tokens(suffix.strip())) - 2)  # before the suffix and end token
    if end <= start:
        raise ValueError(f"category {category!r} has no token of its own in the prompt (truncated?)")
    return list(range(start, end))


def _check_inpainting(model: DiffusionModel) -> None:
    """DiffSP feeds the UNet a noisy latent, the mask and the masked image's latent, as diffusers'
    StableDiffusionInpaintPipeline does: refuse a UNet without those input channels (text-to-image)."""
    latent = model.pipe.vae.config.latent_channels
    channels = model.pipe.unet.config.in_channels
    if channels != 2 * latent + 1:
        raise AisdiffError(
            f"{model.name}: its UNet takes {channels} input channels, but DiffSP needs a Stable Diffusion "
            f"inpainting model, whose UNet takes {2 * latent + 1} ({latent} latent + 1 mask + {latent} "
            "masked-image latent channels). Use an inpainting model (e.g. "
            "stable-diffusion-v1-5/stable-diffusion-inpainting), not a text-to-image one.")


class DiffSP:
    """Shape priors from a Stable Diffusion inpainting model's attention (see the module docstring)."""

    def __init__(self, model: DiffusionModel, config: DiffSPConfig | None = None) -> None:
        from diffusers import DDIMScheduler

        _check_inpainting(model)
        self.model = model
        self.config = (config or DiffSPConfig()).resolved(model)
        self.pipe = model.pipe
        # own copy: set_timesteps mutates
        self.scheduler = DDIMScheduler.from_config(self.pipe.scheduler.config,
                                                   timestep_spacing=self.config.timestep_spacing)
        self.scheduler.set_timesteps(self.config.steps, device=model.device)
        self.latent_size = self.config.resolution // self.pipe.vae_scale_factor
        # category -> (embedding, token weights)
        self._text: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def attrs(self) -> dict:
        """Settings to record with the priors (model identity included, and the small autoencoder's weights
        when it encodes)."""
        attrs = {**self.config.attrs(), "model": self.model.identity, "dtype": self.model.dtype}
        if self.config.encoder == "tiny":
            attrs["tiny_vae_sha256"] = self.model.tiny_vae_sha256
        return attrs

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled latents of images in [-1, 1], by the configured encoder (the VAE's posterior mode, as
        diffusers' inpainting pipeline encodes its masked image; or the small autoencoder's latents, which
        are already scaled)."""
        if self.config.encoder == "tiny":
            tiny = self.model.tiny_vae
            return tiny.encode(images).latents * tiny.config.scaling_factor
        return vae_latents(self.pipe.vae, images)

    # -- text --------------------------------------------------------------------------------------
    def _encode(self, texts: list[str]) -> torch.Tensor:
        tok = self.pipe.tokenizer(texts, padding="max_length", truncation=True,
                                  max_length=self.pipe.tokenizer.model_max_length, return_tensors="pt")
        with torch.no_grad():
            return self.pipe.text_encoder(tok.input_ids.to(self.model.device))[0]

    def category_token_positions(self, category: str) -> list[int]:
        """Positions of the category's tokens in the configured prompt (see `category_token_positions`)."""
        return category_token_positions(self.pipe.tokenizer, self.config.prompt, category)

    def _text_for(self, categories: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings [N, L, D] and token weights [N, L] (1/k on the category's k tokens)."""
        for cat in dict.fromkeys(categories):
            if cat not in self._text:
                weights = torch.zeros(self.pipe.tokenizer.model_max_length, device=self.model.device)
                positions = self.category_token_positions(cat)
                weights[positions] = 1.0 / len(positions)
                self._text[cat] = (self._encode([self.config.prompt.format(category=cat)])[0], weights)
        emb = torch.stack([self._text[c][0] for c in categories])
        return emb, torch.stack([self._text[c][1] for c in categories])

    def unconditional_text(self) -> torch.Tensor:
        """The empty prompt's embedding [L, D] (classifier-free guidance's other half), encoded once."""
        if "" not in self._text:
            self._text[""] = (self._encode([""])[0], torch.zeros(0))
        return self._text[""][0]

    # -- denoising ---------------------------------------------------------------------------------
    def _noise(self, seeds: list[int]) -> torch.Tensor:
        shape = (self.pipe.vae.config.latent_channels, self.latent_size, self.latent_size)
        noise = [torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds]
        return torch.stack(noise).to(self.model.device, self.pipe.unet.dtype)

    def denoise(self, batch: RoiBatch, final_step_until: list[torch.nn.Module] | None = None
                ) -> torch.Tensor | None:
        """One VAE encode of the visible-only crops and the DDIM steps; returns the final latents (not
        decoded). With `final_step_until` (modules the UNet runs once per call), the final step stops as soon
        as all of them have run, and nothing is returned: what follows them only makes the next latent.

        Runs under whatever attention processors the UNet has (DiffSP wraps it in `capture_attention`).
        """
        pipe, dev, dtype = self.pipe, self.model.device, self.pipe.unet.dtype
        visible = (batch.visible.to(dev) >= 0.5).to(dtype)
        hole = (batch.occluder.to(dev) >= 0.5) if self.config.mask_mode == "occluder" else (visible < 0.5)
        # blank (0 in [-1, 1]) all but visible pixels
        masked = (batch.images.to(dev, dtype) * 2 - 1) * visible
        with torch.no_grad():
            masked_latents = self.encode(masked)
            mask_latent = F.interpolate(hole.to(dtype), size=masked_latents.shape[-2:])
            text, _ = self._text_for(batch.categories)
            cfg = self.config.guidance_scale > 1.0
            if cfg:
                text = torch.cat([self.unconditional_text().expand_as(text), text])
            timesteps = self.run_timesteps
            latents = self._start_latents(batch.seeds, masked_latents, timesteps[0])
            for i, t in enumerate(timesteps):
                x = torch.cat([self.scheduler.scale_model_input(latents, t), mask_latent, masked_latents],
                              dim=1)
                if cfg:
                    x = torch.cat([x, x])
                if final_step_until is not None and i == len(timesteps) - 1:
                    run_until(pipe.unet, final_step_until, x, t, encoder_hidden_states=text)
                    return None
                eps = pipe.unet(x, t, encoder_hidden_states=text).sample
                if cfg:
                    uncond, cond = eps.chunk(2)
                    eps = uncond + self.config.guidance_scale * (cond - uncond)
                latents = self.scheduler.step(eps, t, latents).prev_sample
        return latents

    @property
    def run_timesteps(self) -> torch.Tensor:
        """The timesteps the UNet runs at: the last `unet_steps` of the T-step schedule."""
        return self.scheduler.timesteps[len(self.scheduler.timesteps) - self.config.unet_steps:]

    def _start_latents(self, seeds: list[int], masked_latents: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The first step's latents: pure noise (strength 1), else the visible crop's latent noised to `t`."""
        noise = self._noise(seeds)
        if self.config.strength >= 1.0:
            return noise * self.scheduler.init_noise_sigma
        return self.scheduler.add_noise(masked_latents, noise, t.reshape(1))

    def attention(self, batch: RoiBatch, cut_final_step: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Denoise under attention capture: averaged self-attention [N, s*s, s*s], cross-attention [N, c*c, L]
        and the category token weights [N, L]. `cut_final_step=False` runs the final step's whole UNet (the
        same maps, at more cost: for tests and benchmarks)."""
        cfg = self.config
        with capture_attention(self.pipe.unet, self.latent_size, cfg.self_res, cfg.cross_res,
                               cond_only=cfg.guidance_scale > 1.0) as sums:
            capturing = capturing_modules(self.pipe.unet)
            kinds = [m.processor.kind for m in capturing]
            self.denoise(batch, capturing if cut_final_step else None)
        if cut_final_step:  # the cut assumes each capturing layer runs once per UNet call: check it did
            layers = kinds.count("self"), kinds.count("cross")
            if (sums.self_count, sums.cross_count) != tuple(cfg.unet_steps * n for n in layers):
                raise RuntimeError(
                    f"this UNet ran its capturing attention layers {sums.self_count} / {sums.cross_count} "
                    f"times in {cfg.unet_steps} steps, not once per step each ({layers[0]} / {layers[1]} "
                    "layers): the final-step cut does not fit it; use attention(..., cut_final_step=False)")
        a_self, a_cross = sums.means()
        return a_self, a_cross, self.token_weights(batch.categories)

    def token_weights(self, categories: list[str]) -> torch.Tensor:
        """Weights [N, L] that average the cross-attention over each category's own prompt tokens."""
        return self._text_for(categories)[1]

    def __call__(self, batch: RoiBatch) -> torch.Tensor:
        """Priors [N, S, S] in [0, 1] (float32, on the model's device), each covering its ROI box."""
        return self.priors_from_attention(*self.attention(batch), batch.boxes)

    def priors_from_attention(self, a_self: torch.Tensor, a_cross: torch.Tensor, token_weights: torch.Tensor,
                              boxes: torch.Tensor, tau: int | None = None) -> torch.Tensor:
        """`M_sp = (A_S)^tau . A_C` from averaged maps: a_self [N, s*s, s*s], a_cross [N, c*c, L].
        `tau` overrides the configured power (to tune it without recomputing the attention)."""
        cfg, n = self.config, len(boxes)
        a_c = torch.bmm(a_cross, token_weights[:, :, None].to(a_cross))  # [N, c*c, 1]
        a_c = F.interpolate(a_c.view(n, 1, cfg.cross_res, cfg.cross_res), size=(cfg.self_res, cfg.self_res),
                            mode="bilinear", align_corners=False).view(n, -1, 1)
        prior = a_c
        # (A_S)^tau . A_C as tau mat-vec products: no matrix power is formed
        for _ in range(cfg.tau if tau is None else tau):
            prior = torch.bmm(a_self, prior)
        return grid_to_priors(prior.view(n, cfg.self_res, cfg.self_res), boxes, cfg.resolution,
                              cfg.prior_size)


def vae_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """A VAE's scaled latents of images in [-1, 1]: its posterior's mode times its scaling factor."""
    return vae.encode(images).latent_dist.mode() * vae.config.scaling_factor


def grid_to_priors(grid: torch.Tensor, boxes: torch.Tensor, resolution: int, prior_size: int) -> torch.Tensor:
    """Maps [N, s, s] over the model's input crops -> priors [N, S, S] over the ROI boxes (given in crop
    pixels, `resolution` wide): min-max normalized per map, then resampled onto each box."""
    lo = grid.amin(dim=(1, 2), keepdim=True)
    hi = grid.amax(dim=(1, 2), keepdim=True)
    grid = (grid - lo) / (hi - lo).clamp_min(1e-12)
    region = boxes.to(grid.device) * (grid.shape[-1] / resolution)  # box in grid cells
    return geometry.roi_resample(grid[:, None], region, prior_size)[:, 0].clamp_(0, 1)


class _Captured(Exception):
    """Raised inside the UNet once every capturing layer has run in the final step."""


def capturing_modules(unet) -> list[torch.nn.Module]:
    """The UNet's attention modules whose processor captures (`CaptureAttnProcessor`)."""
    from .attention import CaptureAttnProcessor

    return [m for m in unet.modules() if isinstance(getattr(m, "processor", None), CaptureAttnProcessor)]


def run_until(unet, modules: list[torch.nn.Module], *args, **kwargs) -> None:
    """Run `unet(*args, **kwargs)` only until each of `modules` has run once (they run once per call)."""
    left = set(map(id, modules))

    def done(module, _inputs, _output) -> None:
        left.discard(id(module))
        if not left:
            raise _Captured

    hooks = [m.register_forward_hook(done) for m in modules]
    try:
        unet(*args, **kwargs)
    except _Captured:
        return
    finally:
        for hook in hooks:
            hook.remove()
    raise RuntimeError("the UNet finished its final step before every capturing attention layer had run")
