"""Capture of self- and cross-attention probabilities from a diffusers UNet, cheaply.

Only the attention layers at the resolutions DiffSP uses get a capturing processor; every other layer
keeps its own (SDPA) processor. A capturing layer computes explicit probabilities, adds their mean over
heads into a running sum on the device (no list of maps is kept) and, with classifier-free guidance,
computes probabilities for the conditional half of the batch only (the unconditional half stays on SDPA).
`capture_attention` is a context manager that restores the original processors on exit, also after an
exception.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

_LAYER = re.compile(r"^(down_blocks\.(\d+)|mid_block|up_blocks\.(\d+))\..*\.(attn1|attn2)\.processor$")


def layer_resolutions(unet, latent_size: int) -> dict[str, tuple[str, int]]:
    """Map each attention processor name of a UNet2DConditionModel to (kind, side of its square token grid).

    kind is "self" (attn1) or "cross" (attn2); down block i runs at latent / 2^i, the mid block at the
    lowest resolution, and up block i mirrors down block n - 1 - i.
    """
    levels = len(unet.config.block_out_channels)
    out: dict[str, tuple[str, int]] = {}
    for name in unet.attn_processors:
        match = _LAYER.match(name)
        if match is None:
            continue
        down, up, which = match.group(2), match.group(3), match.group(4)
        depth = int(down) if down is not None else (levels - 1 - int(up) if up is not None else levels - 1)
        out[name] = ("self" if which == "attn1" else "cross", latent_size // 2**depth)
    return out


@dataclass
class AttentionSums:
    """Running sums of head-averaged attention probabilities, per ROI, on the model's device."""

    self_res: int
    cross_res: int
    cond_only: bool = False  # with classifier-free guidance the batch is [uncond; cond]: keep cond
    self_sum: torch.Tensor | None = None  # [B, self_res^2, self_res^2]
    cross_sum: torch.Tensor | None = None  # [B, cross_res^2, tokens]
    self_count: int = 0
    cross_count: int = 0

    def add(self, kind: str, probs: torch.Tensor) -> None:
        mean = probs.mean(dim=1, dtype=torch.float32)  # over heads
        if kind == "self":
            self.self_sum = mean if self.self_sum is None else self.self_sum.add_(mean)
            self.self_count += 1
        else:
            self.cross_sum = mean if self.cross_sum is None else self.cross_sum.add_(mean)
            self.cross_count += 1

    def means(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Average self-attention [B, Ns, Ns] and cross-attention [B, Nc, tokens] over layers and steps."""
        if self.self_sum is None or self.cross_sum is None:
            raise RuntimeError(
                f"no attention captured at self {self.self_res}x{self.self_res} / cross {self.cross_res}x"
                f"{self.cross_res}: the UNet has no attention layer at that resolution (check "
                "self_res/cross_res against the model's latent size)")
        return self.self_sum / self.self_count, self.cross_sum / self.cross_count


class AttentionSink(Protocol):
    """Where a capturing processor hands its probabilities [B, heads, queries, keys] (`AttentionSums`, or
    the token maps that train the tiny model's grounding); with `cond_only` it gets the second half only."""

    cond_only: bool

    def add(self, kind: str, probs: torch.Tensor) -> None: ...


class CaptureAttnProcessor:
    """Attention with explicit probabilities, handed to a sink (for UNet transformer blocks)."""

    def __init__(self, sums: AttentionSink, kind: str, name: str) -> None:
        self.sums, self.kind, self.name = sums, kind, name

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args,
                 **kwargs):
        if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            raise NotImplementedError(f"{self.name}: attention capture supports transformer-block attention "
                                      "(3-D tokens, no spatial/group norm) as in Stable Diffusion UNets")
        residual = hidden_states
        batch, _, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        heads = attn.heads
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // heads
        query, key, value = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, heads, -1, attention_mask.shape[-1])

        split = batch // 2 if self.sums.cond_only else 0
        outputs = []
        if split:  # unconditional half: nothing to capture, keep SDPA
            mask_u = attention_mask[:split] if attention_mask is not None else None
            outputs.append(F.scaled_dot_product_attention(  # with the layer's scale, as the conditional half
                query[:split], key[:split], value[:split], attn_mask=mask_u, scale=attn.scale))
        scores = query[split:] @ key[split:].transpose(-1, -2) * attn.scale
        if attention_mask is not None:
            scores = scores + attention_mask[split:]
        probs = scores.float().softmax(dim=-1)  # float32 even for fp16/bf16 models: these maps are the output
        self.sums.add(self.kind, probs)
        outputs.append(probs.to(value.dtype) @ value[split:])
        out = torch.cat(outputs) if len(outputs) > 1 else outputs[0]
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@contextmanager
def capture_attention(unet, latent_size: int, self_res: int, cross_res: int,
                      cond_only: bool = False) -> Iterator[AttentionSums]:
    """Install capturing processors on the UNet's self-attention layers at `self_res` and cross-attention
    layers at `cross_res` (token grid sides); yield the running sums; restore the original processors."""
    sums = AttentionSums(self_res, cross_res, cond_only)
    wanted = {"self": self_res, "cross": cross_res}
    layers = layer_resolutions(unet, latent_size)
    processors = unet.attn_processors
    for name, (kind, res) in layers.items():
        if res == wanted[kind]:
            processors[name] = CaptureAttnProcessor(sums, kind, name)
    for kind, res in wanted.items():
        if not any(k == kind and r == res for k, r in layers.values()):
            present = sorted({r for k, r in layers.values() if k == kind})
            raise ValueError(f"the UNet has no {kind}-attention layer at {res}x{res} for latent size "
                             f"{latent_size} (it has {kind}-attention at {present}); choose {kind}_res among "
                             "those")
    with swapped_processors(unet, processors):
        yield sums


@contextmanager
def swapped_processors(unet, processors: dict) -> Iterator[None]:
    """Give the UNet these attention processors (name -> processor, all layers) and restore its own on exit,
    also after an exception."""
    original = unet.attn_processors
    unet.set_attn_processor(dict(processors))  # (diffusers pops from the dict it is given)
    try:
        yield
    finally:
        unet.set_attn_processor(dict(original))
