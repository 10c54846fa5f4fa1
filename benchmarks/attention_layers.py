"""Which attention layers of an inpainting model carry the object's shape? A per-layer DiffSP diagnostic.

    python -m benchmarks.attention_layers --ann VAL.json --images DIR [--model tiny] [--limit 60]
    ... --out benchmarks/results/attention_layers/MODEL.json   # also write the table as a JSON record

For occluded ground-truth ROIs, DiffSP runs as configured with every self- and cross-attention layer
captured on its own (averaged over heads and the T steps), and each layer is scored on the ROI's pixels
at that layer's resolution: object pixels split into visible and hidden (amodal minus visible), the rest
background. Self-attention: lift = the share of a hidden pixel's attention that lands on object pixels,
divided by the object's share of the grid (1 = no preference; a shape prior needs > 1). Cross-attention
(the category's tokens): mean attention on hidden and on visible object pixels, each divided by the mean
on background pixels (a shape prior needs both > 1). The table says which layers and resolutions DiffSP
should average, and why a model's priors do or do not follow the amodal shape.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.records import argument_parser, cpu_machine, record, write_record
from priors import geometry
from priors.annotations import AmodalAnnotations
from priors.attention import AttentionSums, CaptureAttnProcessor, layer_resolutions
from priors.diffsp import DiffSP, DiffSPConfig
from priors.models import load_model
from priors.training.tune import roi_batches, sample_instances

SCORES = ("self lift", "cross hidden/bg", "cross visible/bg")  # a layer's scores, in table order


class PerLayerCapture:
    """Capturing processors on every attention layer of a UNet, one `AttentionSums` each."""

    def __init__(self, unet, latent_size: int) -> None:
        self.unet = unet
        self.layers = layer_resolutions(unet, latent_size)
        self.sums = {name: AttentionSums(res, res) for name, (_, res) in self.layers.items()}

    def __enter__(self) -> PerLayerCapture:
        self.original = self.unet.attn_processors
        processors = dict(self.original)
        for name, (kind, _) in self.layers.items():
            processors[name] = CaptureAttnProcessor(self.sums[name], kind, name)
        self.unet.set_attn_processor(processors)
        return self

    def __exit__(self, *exc) -> None:
        self.unet.set_attn_processor(dict(self.original))

    def reset(self) -> None:
        """Forget what was captured (before the next batch); the processors keep their sums objects."""
        for s in self.sums.values():
            s.self_sum = s.cross_sum = None
            s.self_count = s.cross_count = 0

    def maps(self) -> dict[str, torch.Tensor]:
        """Per layer: self-attention [N, s*s, s*s] or cross-attention [N, s*s, L], averaged over steps."""
        out = {}
        for name, (kind, _) in self.layers.items():
            s = self.sums[name]
            out[name] = s.self_sum / s.self_count if kind == "self" else s.cross_sum / s.cross_count
        return out


def region_masks(instances, resolution: int, context: float, side: int):
    """Amodal and visible masks of each ROI in its DiffSP crop, pooled to a side x side grid
    (bool [N, side^2])."""
    crops = geometry.context_boxes(geometry.as_boxes([i.amodal_box for i in instances]), context)
    masks = torch.from_numpy(np.stack([np.stack([i.amodal_mask(), i.visible_mask()])
                                       for i in instances])).float()
    pooled = F.adaptive_avg_pool2d(geometry.roi_resample(masks, crops, resolution), side) > 0.5
    return pooled[:, 0].flatten(1), pooled[:, 1].flatten(1)


def score_layer(kind: str, attn: torch.Tensor, amodal: torch.Tensor, visible: torch.Tensor,
                token_weights: torch.Tensor) -> dict[str, list[float]]:
    """Per-ROI scores of one layer (see the module docstring); ROIs without the needed pixels are skipped."""
    hidden, background = amodal & ~visible, ~amodal
    out: dict[str, list[float]] = defaultdict(list)
    for i in range(len(attn)):
        if not hidden[i].any() or not background[i].any():
            continue
        if kind == "self":
            share = attn[i][hidden[i]][:, amodal[i]].sum(1).mean()
            out["self lift"].append(float(share / amodal[i].float().mean()))
        else:
            cat = attn[i] @ token_weights[i].to(attn)
            bg = cat[background[i]].mean()
            out["cross hidden/bg"].append(float(cat[hidden[i]].mean() / bg))
            if visible[i].any():
                out["cross visible/bg"].append(float(cat[visible[i]].mean() / bg))
    return out


def main() -> None:
    parser = argument_parser(__doc__, __spec__.name)
    parser.add_argument("--ann", required=True,
                        help="annotation file (val, to diagnose; train, to choose layers)")
    parser.add_argument("--images", required=True)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--min-occlusion", type=float, default=0.2)
    parser.add_argument("--limit", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the table as a JSON record here")
    args = parser.parse_args()

    ann = AmodalAnnotations(args.ann, images_dir=args.images)
    instances = sample_instances(ann, args.min_occlusion, args.limit, args.seed)
    model = load_model(args.model)
    diffsp = DiffSP(model, DiffSPConfig(steps=args.steps, seed=args.seed))
    cfg = diffsp.config
    scores: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with PerLayerCapture(model.pipe.unet, diffsp.latent_size) as capture:
        for part, batch in roi_batches(diffsp, ann, instances, args.batch_size):
            capture.reset()
            diffsp.denoise(batch)
            weights = diffsp.token_weights(batch.categories)
            for name, attn in capture.maps().items():
                kind, side = capture.layers[name]
                amodal, visible = region_masks(part, cfg.resolution, cfg.context, side)
                for key, values in score_layer(kind, attn, amodal, visible, weights).items():
                    scores[name][key] += values
        layers = capture.layers

    rows = [{"layer": name.removesuffix(".processor").replace(".transformer_blocks.0", ""), "grid": side,
             **{k: float(np.mean(v)) for k, v in scores[name].items() if v}}
            for name, (_, side) in layers.items()]
    title = (f"{len(instances)} ROIs of {args.ann} with occlusion > {args.min_occlusion:.0%}; model "
             f"{args.model}, T {args.steps}; mean over ROIs (1.00 = no preference)")
    print(title)
    print(f"{'layer':<58} {'grid':>5} {'self lift':>10} {'cross hidden/bg':>16} {'cross visible/bg':>17}")
    for row in rows:
        cells = [f"{row[k]:.2f}" if k in row else "-" for k in SCORES]
        print(f"{row['layer']:<58} {row['grid']:>5} {cells[0]:>10} {cells[1]:>16} {cells[2]:>17}")
    if args.out:
        machine = cpu_machine()
        write_record(args.out, record(machine, model=args.model, steps=args.steps, rois=len(instances),
                                      min_occlusion=args.min_occlusion, seed=args.seed, title=title,
                                      layers=rows))


if __name__ == "__main__":
    main()
