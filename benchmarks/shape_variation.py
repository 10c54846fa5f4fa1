"""How much the category alone says about an object's shape, on each synthetic benchmark variation: the IoU
with the amodal mask of the class template (the mean training amodal mask of the category in the box, no
diffusion model) beside the visible mask's, on the val split, overall and by occlusion bucket; with
`--model`, the DiffSP priors of that model too (ground-truth inputs).

A benchmark on which a template beats the visible mask cannot tell a shape prior that looks at the instance
from one that only knows the category. Scored as `aisdiff inspect --ann` scores priors (each mask resampled
onto the amodal box's 28 x 28 cells; `priors.prior_quality`). The template is scored at the threshold that
suits it best on val (of 0.3 to 0.7), so a template that loses loses at its best.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.prior_quality import Setting, make_data, score_setting
from benchmarks.records import RESULTS, argument_parser, cpu_machine, record, write_record
from priors import geometry
from priors.annotations import AmodalAnnotations
from priors.occlusion import OCCLUDED
from priors.prior_quality import iou_table, model_threshold

REPO = Path(__file__).resolve().parents[1]
PRIOR_SIZE = 28
TEMPLATE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
OCCLUDED_GROUP = f"occluded > {OCCLUDED:.0%}"


def template_ious(data: Path) -> dict[float, list[dict]]:
    """Per template threshold, one record per val instance: occlusion rate, the template's IoU with the
    amodal mask (`prior_iou`) and the visible mask's (`visible_iou`)."""
    from segmenter.prior_controls import ClassTemplatePriors

    train = data / "annotations" / "train.json"
    # not mirrored: val images are not flipped, and the plain template is the better one there
    templates = ClassTemplatePriors(str(train), PRIOR_SIZE, symmetric=False).templates(torch.device("cpu"))
    label = {name: i for i, name in enumerate(AmodalAnnotations(train).classes)}
    ann = AmodalAnnotations(data / "annotations" / "val.json", images_dir=data / "images", skip_invalid=True)
    out: dict[float, list[dict]] = {t: [] for t in TEMPLATE_THRESHOLDS}
    for inst in ann:
        amodal, visible = geometry.masks_in_box(np.stack([inst.amodal_mask(), inst.visible_mask()]),
                                                inst.amodal_box, PRIOR_SIZE)
        template = templates[label[inst.category]]
        for t in TEMPLATE_THRESHOLDS:
            out[t].append({"category": inst.category, "occlusion": inst.occlusion_rate,
                           "prior_iou": geometry.mask_iou(template > t, amodal),
                           "visible_iou": geometry.mask_iou(visible, amodal)})
    return out


def measure(variation: str, data: Path, model: str | None, batch_size: int) -> dict:
    """One variation's column: the template at its best threshold (on occluded instances), the visible
    mask, and the model's DiffSP priors when `model` is given."""
    by_threshold = {t: iou_table(records) for t, records in template_ious(data).items()}
    best = max(TEMPLATE_THRESHOLDS, key=lambda t: by_threshold[t][OCCLUDED_GROUP]["prior_iou"])
    column = {"variation": variation, "template_threshold": best, "template": by_threshold[best],
              "template_by_threshold": {str(t): v[OCCLUDED_GROUP]["prior_iou"]
                                        for t, v in by_threshold.items()}}
    if model:
        # at the model's own threshold, as `aisdiff inspect` scores it
        setting = Setting(f"DiffSP, {model}", model, (), threshold=model_threshold(model))
        column["diffsp"] = score_setting(setting, data, data.parent, batch_size)
    return column


def markdown(columns: list[dict]) -> str:
    """One row per variation and instance group: the visible mask, the template and (when measured) DiffSP."""
    with_diffsp = any("diffsp" in c for c in columns)
    lines = ["| variation | instances | n | visible mask | class template (t) |"
             + (" DiffSP |" if with_diffsp else ""),
             "|---" * (5 + with_diffsp) + "|"]
    for c in columns:
        for group, v in c["template"].items():
            if not v["instances"]:
                continue
            diffsp = (f" {c['diffsp']['iou'][group]['prior_iou']:.3f} |" if "diffsp" in c
                      else " - |" if with_diffsp else "")
            lines.append(f"| {c['variation']} | {group} | {v['instances']} | {v['visible_iou']:.3f} | "
                         f"{v['prior_iou']:.3f} ({c['template_threshold']:g}) |{diffsp}")
    return "\n".join(lines)


def main() -> None:
    parser = argument_parser(__doc__, __spec__.name)
    parser.add_argument("--variations", nargs="+", default=["low", "high"])
    parser.add_argument("--work", type=Path, default=REPO / "work_dirs" / "shape_variation",
                        help="where the benchmarks are written, one folder per variation")
    parser.add_argument("--train-images", type=int, default=500)
    parser.add_argument("--val-images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", action="append", default=[], metavar="VARIATION=MODEL",
                        help="also score a model's DiffSP priors on a variation (e.g. high=tiny-high)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS / "shape_variation" / "shape_variation.json")
    args = parser.parse_args()
    models = dict(m.split("=", 1) for m in args.model)
    columns = []
    for variation in args.variations:
        data = args.work / variation
        make_data(data, args.train_images, args.val_images, args.seed, "--variation", variation)
        columns.append(measure(variation, data, models.get(variation), args.batch_size))
        occluded = columns[-1]["template"][OCCLUDED_GROUP]
        print(f"{variation}: {OCCLUDED_GROUP}: visible {occluded['visible_iou']:.3f}, class template "
              f"{occluded['prior_iou']:.3f}", flush=True)
    text = markdown(columns)
    print(text)
    write_record(args.out, record(cpu_machine(), data={"train_images": args.train_images,
                                                       "val_images": args.val_images, "seed": args.seed},
                                  prior_size=PRIOR_SIZE, columns=columns, table=text))


if __name__ == "__main__":
    main()
