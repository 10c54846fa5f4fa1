"""`aisdiff inspect STORE`: what a prior store holds, how good its priors are, and what they look like.

- Summary: settings, rows by source and category, done / missing rows, bytes on disk and per row, chunking.
- Statistics computed with dask over the whole store (only per-row numbers are ever in memory): per
  category the mean prior, its entropy and its sharpness.
- With `--ann`: for ground-truth rows, IoU of the thresholded prior with the amodal ground truth beside
  the IoU of the visible mask with it (the number a prior must beat), overall and by occlusion rate,
  compared in the box frame (S x S) where priors live; for proposal rows (a detector's test-time
  priors), the same prior IoU for each ground truth found by a proposal of its class (box IoU >= 0.5, the
  best-overlapping one), in the proposal's box: what the amodal head meets at test.
- `--png`: one row per sampled ROI: the image inside the box, visible mask, occluder mask, prior heat map
  and amodal ground truth; sampled by category or occlusion rate, deterministic with `--seed`.
- `--verify`: read every chunk of every array and list the damaged ones (checksum mismatch, unreadable
  bytes) by rows, with the command that recomputes them; exit status 1 when there are any.
Works on a store that is still being written (reports progress); a damaged store is an error. The store may
be a local folder or a URL (`s3://...`).
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from priors import geometry, masks
from priors.annotations import AmodalAnnotations
from priors.errors import AisdiffError
from priors.images import read_image
from priors.models import MODEL_DEFAULTS_FILE, THRESHOLD_KEY
from priors.occlusion import occlusion_bucket
from priors.prior_quality import DEFAULT_THRESHOLD, gt_ious, iou_table, match_ground_truths, model_threshold
from priors.store import ARRAYS, RECOMPUTE_FLAG, SETTINGS_ADDED_LATER, SOURCE_GT, SOURCE_PROPOSAL, PriorStore

EPS = 1e-6


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("inspect",
                              help="summarize a prior store: settings, counts, statistics, pictures",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("store", help="a prior store made by `aisdiff precompute` (a .zarr folder or a URL)")
    p.add_argument("--ann", type=Path, help="the annotation file the store was made from (IoU, pictures)")
    p.add_argument("--images", type=Path, help="its image folder (needed for the pictures' image crops)")
    p.add_argument("--png", type=Path, help="write a picture grid of sampled ROIs here")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    p.add_argument("--samples", type=int, default=8, help="ROIs in the picture (default: 8)")
    p.add_argument("--sample-by", choices=["category", "occlusion", "random"], default="category",
                   help="how to pick the pictured ROIs (occlusion needs --ann; default: category)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--verify", action="store_true",
                   help="read every chunk and list the damaged ones (exit status 1 if any)")
    p.add_argument("--threshold", type=float,
                   help=f"prior threshold for IoU (default: the store's model's {THRESHOLD_KEY!r} in its "
                        f"{MODEL_DEFAULTS_FILE}, else {DEFAULT_THRESHOLD})")
    p.set_defaults(func=run)


# -- summary and statistics --------------------------------------------------------------------------
def summary(store: PriorStore, names: dict[int, str]) -> dict:
    rows, done = store.rows(), store.done()
    chunks_done = sum(bool(done[store.chunk_slice(c)].all()) for c in range(store.num_chunks))
    size = store.size_bytes()
    return {
        "store": str(store.path),
        "settings": store.settings,
        "rows": len(store), "done": int(done.sum()), "missing": int((~done).sum()),
        "complete": bool(done.all()),
        "by_source": {"ground truth": int((rows.source == SOURCE_GT).sum()),
                      "proposal": int((rows.source == SOURCE_PROPOSAL).sum())},
        "by_category": {names.get(int(c), str(int(c))): int(n)
                        for c, n in sorted(Counter(rows.category_id.tolist()).items())},
        "chunking": {"chunk_rows": store.chunk_rows, "chunks": store.num_chunks, "chunks_done": chunks_done},
        "bytes": size, "bytes_per_row": size / max(len(store), 1),
    }


def row_statistics(store: PriorStore) -> dict[str, np.ndarray]:
    """Per-row mean, entropy (bits, mean over cells) and sharpness (mean |2p - 1|), computed with dask."""
    import dask.array as da

    prior = store.dask_priors().astype(np.float32)
    p = da.clip(prior, EPS, 1 - EPS)
    entropy = -(p * da.log2(p) + (1 - p) * da.log2(1 - p))
    mean, ent, sharp = da.compute(prior.mean(axis=(1, 2)), entropy.mean(axis=(1, 2)),
                                  da.fabs(2 * prior - 1).mean(axis=(1, 2)))
    return {"mean": mean, "entropy": ent, "sharpness": sharp}


def category_statistics(store: PriorStore, names: dict[int, str], stats: dict[str, np.ndarray]) -> dict:
    rows, done = store.rows(), store.done()
    out = {}
    for cat in sorted(set(rows.category_id[done].tolist())):
        sel = done & (rows.category_id == cat)
        out[names.get(int(cat), str(int(cat)))] = {"rows": int(sel.sum()),
                                                   **{k: float(v[sel].mean()) for k, v in stats.items()}}
    return out


# -- IoU against the ground truth ------------------------------------------------------------------
def proposal_ious(store: PriorStore, ann: AmodalAnnotations, threshold: float) -> list[dict]:
    """For every ground truth found by a done proposal row of its class: occlusion rate and
    IoU(prior > t, amodal) in the proposal's box."""
    rows, done = store.rows(), store.done()
    proposal = np.flatnonzero(done & (rows.source == SOURCE_PROPOSAL))
    out = []
    for image_id in sorted(set(rows.image_id[proposal].tolist())):
        idx = proposal[rows.image_id[proposal] == image_id]
        gts = ann.by_image(int(image_id))
        found = match_ground_truths([g.amodal_box for g in gts], [g.category_id for g in gts], rows.box[idx],
                                    rows.category_id[idx])
        for gt, k in zip(gts, found.tolist(), strict=True):
            if k < 0:
                continue
            prior = torch.from_numpy(store.priors([int(idx[k])])[0])
            amodal = geometry.masks_in_box(gt.amodal_mask()[None], rows.box[idx[k]], store.prior_size)[0]
            out.append({"row": int(idx[k]), "ann_id": gt.ann_id, "occlusion": gt.occlusion_rate,
                        "prior_iou": geometry.mask_iou(prior > threshold, amodal)})
    return out


# -- pictures --------------------------------------------------------------------------------------
def sample_rows(candidates: np.ndarray, keys: list, count: int, seed: int) -> list[int]:
    """Pick up to `count` rows, round-robin over the groups of `keys`, shuffled by `seed`."""
    rng = np.random.default_rng(seed)
    groups: dict = {}
    for r, k in zip(candidates.tolist(), keys, strict=True):
        groups.setdefault(k, []).append(r)
    for members in groups.values():
        rng.shuffle(members)
    order = sorted(groups, key=str)
    picked: list[int] = []
    while len(picked) < count and any(groups.values()):
        for k in order:
            if groups[k] and len(picked) < count:
                picked.append(groups[k].pop())
    return picked


def render(store: PriorStore, picked: list[int], ann: AmodalAnnotations | None, images: Path | None,
           out: Path, names: dict[int, str]) -> tuple[int, int]:
    """The picture grid: one row per ROI; returns (rows, columns)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = store.rows(np.asarray(picked, dtype=np.int64)) if picked else None
    priors = store.priors(picked) if picked else np.zeros((0, store.prior_size, store.prior_size))
    with_gt = ann is not None
    columns = ["image in box", "visible", "occluder", "prior", "amodal GT"] if with_gt else ["prior"]
    fig, axes = plt.subplots(max(len(picked), 1), len(columns),
                             figsize=(2.1 * len(columns), 2.1 * max(len(picked), 1)), squeeze=False)
    for i in range(len(picked)):
        box, source = rows.box[i], int(rows.source[i])
        label = f"{names.get(int(rows.category_id[i]), rows.category_id[i])}, image {rows.image_id[i]}"
        panels = {"prior": priors[i]}
        if with_gt:
            panels.update(_gt_panels(ann, images, int(rows.image_id[i]), int(rows.ann_id[i]), source, box,
                                     store.prior_size))
            label += f", occl. {panels.pop('occlusion'):.0%}" if "occlusion" in panels else ", proposal"
        for j, col in enumerate(columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if col in panels and panels[col] is not None:
                kw = {"cmap": "magma", "vmin": 0, "vmax": 1} if col == "prior" else (
                    {} if col == "image in box" else {"cmap": "gray", "vmin": 0, "vmax": 1})
                ax.imshow(panels[col], interpolation="nearest", **kw)
            if i == 0:
                ax.set_title(col, fontsize=9)
            if j == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle(f"{store.path.name}: {len(picked)} sampled ROIs", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return len(picked), len(columns)


def _gt_panels(ann: AmodalAnnotations, images: Path | None, image_id: int, ann_id: int, source: int, box,
               size: int) -> dict:
    panels: dict = {}
    info = ann.images[image_id]
    if images is not None:
        image = read_image(images / info.file_name, (info.height, info.width)).float()[None] / 255
        crop = geometry.roi_resample(image, geometry.as_boxes(box), 4 * size)[0]
        panels["image in box"] = crop.permute(1, 2, 0).clamp(0, 1).numpy()
    inst = ann.get(ann_id) if source == SOURCE_GT else None
    if inst is not None:
        occ = masks.decode(ann.occluder_rles(image_id)[ann_id])
        framed = geometry.masks_in_box(np.stack([inst.visible_mask(), occ, inst.amodal_mask()]), box,
                                       4 * size)
        panels.update({"visible": framed[0].numpy(), "occluder": framed[1].numpy(),
                       "amodal GT": framed[2].numpy(), "occlusion": inst.occlusion_rate})
    return panels


# -- the command -----------------------------------------------------------------------------------
def _text(report: dict) -> str:
    s = report["summary"]
    st = {**SETTINGS_ADDED_LATER, **s["settings"]}  # (a store older than a setting was made with its default)
    model = st.get("model", {})
    lines = [f"prior store {s['store']}",
             f"  model        {model.get('id')} (weights sha256 {str(model.get('weights_sha256'))[:12]}), "
             f"{st.get('dtype')}",
             f"  DiffSP       steps {st.get('steps')} ({st.get('timestep_spacing')}), encoder "
             f"{st.get('encoder')}, strength {st.get('strength')}, tau "
             f"{st.get('tau')}, prior "
             f"{report['prior_size']}x{report['prior_size']}, resolution {st.get('resolution')}, self "
             f"{st.get('self_res')}, cross {st.get('cross_res')}, context {st.get('context')}, guidance "
             f"{st.get('guidance_scale')}, mask {st.get('mask_mode')}, seed {st.get('seed')}",
             f"  prompt       {st.get('prompt')!r}",
             f"  rows         {s['rows']} ({s['by_source']['ground truth']} ground truth, "
             f"{s['by_source']['proposal']} proposals); done {s['done']}, missing {s['missing']}"
             + ("" if s["complete"]
                else f"  -- in progress: {100 * s['done'] / max(s['rows'], 1):.1f}% done"),
             f"  chunking     {s['chunking']['chunks']} chunks of {s['chunking']['chunk_rows']} rows, "
             f"{s['chunking']['chunks_done']} done",
             f"  on disk      {s['bytes'] / 2**20:.2f} MB ({s['bytes_per_row']:.0f} B/row)",
             *([f"  verified     {report['verify']['chunks']} chunks, none damaged ("
                + ("crc32c checksums" if report["verify"]["checksums"] else "no checksums") + ")"]
               if "verify" in report else []),
             "  by category  " + ", ".join(f"{k} {v}" for k, v in s["by_category"].items()),
             "", "per-category statistics of done rows (dask):",
             "| category | rows | mean prior | entropy (bits) | sharpness |", "|---|---|---|---|---|"]
    for cat, v in report["categories"].items():
        lines.append(f"| {cat} | {v['rows']} | {v['mean']:.3f} | {v['entropy']:.3f} | {v['sharpness']:.3f} |")
    if "iou" in report:
        lines += ["", f"IoU with the amodal ground truth (ground-truth rows, prior > {report['threshold']}):",
                  "| instances | n | prior IoU | visible-mask IoU |", "|---|---|---|---|"]
        for name, v in report["iou"].items():
            if v["instances"]:
                lines.append(f"| {name} | {v['instances']} | {v['prior_iou']:.3f} | {v['visible_iou']:.3f} |")
    if "proposal_iou" in report:
        lines += ["", "IoU with the amodal ground truth of the ground truths found by proposal rows (box IoU "
                  ">= "
                  f"0.5, in the proposal's box, prior > {report['threshold']}):",
                  "| instances | n | prior IoU |", "|---|---|---|"]
        lines += [f"| {name} | {v['instances']} | {v['prior_iou']:.3f} |"
                  for name, v in report["proposal_iou"].items() if v["instances"]]
    if "png" in report:
        lines += ["",
                  f"picture: {report['png']} ({report['png_rows']} ROIs x {report['png_columns']} panels)"]
    return "\n".join(lines)


def verification(store: PriorStore) -> dict:
    """Every chunk of the store read back: how many, whether they carry checksums, the damaged ones."""
    from tqdm import tqdm

    chunks = tqdm(range(store.num_chunks), desc="verifying chunks", unit="chunk", leave=False,
                  disable=store.num_chunks < 8)
    damaged = [{"chunk": c, "rows": [store.chunk_slice(c).start, store.chunk_slice(c).stop - 1],
                "problems": problems} for c, problems in store.verify(list(chunks))]
    return {"chunks": store.num_chunks, "arrays": len(ARRAYS), "checksums": store.has_checksums,
            "damaged": damaged}


def _verification_text(store: PriorStore, report: dict) -> str:
    how = "crc32c checksums" if report["checksums"] else "no checksums (made before they were added): " \
        "only undecodable chunks show"
    head = f"verified {report['chunks']} chunks x {report['arrays']} arrays of {store.path} ({how}): "
    if not report["damaged"]:
        return head + "no damaged chunk"
    lines = [head + f"{len(report['damaged'])} damaged chunk(s)"]
    lines += [f"  chunk {d['chunk']} (rows {d['rows'][0]}-{d['rows'][1]}): " + "; ".join(d["problems"])
              for d in report["damaged"]]
    return "\n".join(lines + [f"Recompute them: {store.precompute_command(RECOMPUTE_FLAG)}."])


def run(args: argparse.Namespace) -> int:
    store = PriorStore.open(args.store)  # a damaged store raises StoreError: reported, exit status 2
    if args.verify:
        checked = verification(store)
        if checked["damaged"]:  # nothing else can be read safely: the list, and exit status 1
            print(json.dumps({"verify": checked}, indent=2) if args.json
                  else _verification_text(store, checked))
            return 1
    if args.images and not args.ann:
        raise AisdiffError("--images needs --ann (the annotation file names the images)")
    if args.sample_by == "occlusion" and not args.ann:
        raise AisdiffError("--sample-by occlusion needs --ann (occlusion rates come from the annotations)")
    ann = AmodalAnnotations(args.ann, images_dir=args.images, skip_invalid=True) if args.ann else None
    names = dict(ann.categories) if ann else {}
    threshold = args.threshold
    if threshold is None:  # the threshold tuned with the store's model, if its folder records one
        threshold = model_threshold(store.settings["model"]["id"])
    report = {"summary": summary(store, names), "prior_size": store.prior_size, "threshold": threshold}
    if args.verify:
        report["verify"] = checked
    report["categories"] = category_statistics(store, names, row_statistics(store))
    if ann is not None:
        report["iou"] = iou_table(gt_ious(store, ann, threshold))
        if (store.rows().source == SOURCE_PROPOSAL).any():
            report["proposal_iou"] = iou_table(proposal_ious(store, ann, threshold), ("prior_iou",))
    if args.png:
        rows, done = store.rows(), store.done()
        candidates = np.flatnonzero(done)
        if args.sample_by == "category":
            keys = rows.category_id[candidates].tolist()
        elif args.sample_by == "occlusion":
            candidates = candidates[rows.source[candidates] == SOURCE_GT]
            keys = [occlusion_bucket(ann.instance(int(rows.ann_id[r])).occlusion_rate) for r in candidates]
        else:
            keys = [0] * len(candidates)
        picked = sample_rows(candidates, keys, args.samples, args.seed)
        report["png_rows"], report["png_columns"] = render(store, picked, ann, args.images, args.png, names)
        report["png"] = str(args.png)
    print(json.dumps(report, indent=2, default=float) if args.json else _text(report))
    return 0
