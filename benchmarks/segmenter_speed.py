"""AISDiff head speed, and what the cached priors cost a training iteration.

    python -m benchmarks.segmenter_speed [--rois 64] [--iters 6]
    ... --out benchmarks/results/segmenter_speed/MACHINE/NAME.json   # also write the tables as a JSON record

Prints (1) the mask head's forward pass for a batch of RoIs with cached priors and with the `none` prior
(ms per RoI batch), and (2) the share of a training iteration (synthetic R18 config, batch 2, CPU) spent
fetching priors from the store (`LoadCachedPriors`) and warping them to the positive proposals
(`CachedPriors`) - counted as if both ran on the training process's critical path.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.records import argument_parser, cpu_machine, record, write_record

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def best_ms(fn, repeat: int = 10) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def head_forward(rois: int) -> tuple[float, float]:
    from segmenter.mask_head import AISDiffMaskHead

    head = AISDiffMaskHead(num_classes=7).eval()
    feats = torch.randn(rois, 256, 14, 14)
    priors = torch.rand(rois, 28, 28)
    ones = torch.ones(rois, 28, 28)
    labels = torch.arange(rois) % 7
    with torch.no_grad():
        return best_ms(lambda: head(feats, priors, labels)), best_ms(lambda: head(feats, ones, labels))


def prepare_data(root: Path) -> None:
    syn = root / "synthetic"
    subprocess.run([str(BIN / "aisdiff"), "demo-data", str(syn), "--train-images", "16", "--val-images", "0"],
                   check=True, capture_output=True)
    subprocess.run([str(BIN / "aisdiff"), "precompute", "--ann", str(syn / "annotations" / "train.json"),
                    "--images", str(syn / "images"), "--out", str(syn / "priors_train.zarr")],
                   check=True, capture_output=True)


def training_share(root: Path, iters: int) -> dict[str, float]:
    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.runner import Runner
    from mmengine.structures import InstanceData

    import segmenter  # noqa: F401
    from segmenter.prior_context import PriorContext
    from segmenter.prior_providers import CachedPriors

    register_all_modules()
    os.environ["AISDIFF_DATA"] = str(root)
    cfg = Config.fromfile(str(REPO / "configs" / "aisdiff" / "aisdiff_r18_fpn_synthetic.py"))
    cfg.train_dataloader.num_workers, cfg.train_dataloader.persistent_workers = 0, False
    model = MODELS.build(cfg.model)
    optim = build_optim_wrapper(model, cfg.optim_wrapper)
    loader = Runner.build_dataloader(cfg.train_dataloader)
    batches = iter(loader)
    model.train_step(next(batches), optim)  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        model.train_step(next(batches), optim)
    iteration = 1000 * (time.perf_counter() - start) / iters

    # fetching: the LoadCachedPriors step of the pipeline, per image
    dataset_cfg = cfg.train_dataloader.dataset.copy()
    steps = dataset_cfg.pipeline
    dataset_cfg.pipeline = steps[:2]  # load image and annotations only
    dataset = DATASETS.build(dataset_cfg)
    fetch = segmenter.LoadCachedPriors()
    samples = [dataset[i] for i in range(len(dataset))]
    fetch_ms = best_ms(lambda: [fetch.transform(dict(s)) for s in samples]) / len(samples)

    # warping: 128 positive proposals per image (mmdet's sampler: 512 RoIs, 25% positive), batch 2
    gt_boxes = torch.tensor([[20.0, 30.0, 120.0, 150.0]] * 6)
    gt = InstanceData(shape_priors=torch.rand(6, 28, 28), shape_prior_boxes=gt_boxes, bboxes=gt_boxes)
    sampling = InstanceData(pos_assigned_gt_inds=torch.randint(0, 6, (128,)),
                            pos_priors=gt_boxes[0] + torch.randn(128, 4) * 5)
    context = PriorContext(None, ((200, 200), (200, 200)), (0, 1))
    warp_ms = best_ms(lambda: CachedPriors().training_priors([sampling, sampling], [gt, gt], context))
    batch = cfg.train_dataloader.batch_size
    return {"iteration": iteration, "fetch": fetch_ms * batch, "warp": warp_ms}


def tables(rois: int, iters: int, head: dict[str, float], share: dict[str, float]) -> str:
    """The two printed tables: the head's forward pass, and the parts of a training iteration."""
    total = share["fetch"] + share["warp"]
    percent = {k: 100 * v / share["iteration"] for k, v in {**share, "total": total}.items()}
    return "\n".join([
        f"AISDiff mask head forward, {rois} RoIs of 256x14x14:", "| priors | ms per RoI batch |", "|---|---|",
        f"| cached priors (M_sp given) | {head['with_prior']:.1f} |",
        f"| none (prior = 1) | {head['without']:.1f} |", "",
        f"Training iteration (synthetic R18-FPN, batch 2, {iters} timed iterations):",
        "| part | ms | share of an iteration |", "|---|---|---|",
        f"| whole iteration | {share['iteration']:.0f} | 100% |",
        f"| fetch cached priors (LoadCachedPriors, 2 images) | {share['fetch']:.2f} | "
        f"{percent['fetch']:.2f}% |",
        f"| warp to 2 x 128 positive proposals (CachedPriors) | {share['warp']:.2f} | "
        f"{percent['warp']:.2f}% |",
        f"| fetch + warp | {total:.2f} | {percent['total']:.2f}% (target <= 3%) |"])


def main() -> None:
    parser = argument_parser(__doc__, __spec__.name)
    parser.add_argument("--rois", type=int, default=64)
    parser.add_argument("--iters", type=int, default=6)
    parser.add_argument("--out", type=Path, help="also write the tables as a JSON record here")
    args = parser.parse_args()
    torch.manual_seed(0)
    with_prior, without = head_forward(args.rois)
    head = {"with_prior": with_prior, "without": without}
    root = Path(tempfile.mkdtemp(prefix="aisdiff-seg-bench-"))
    prepare_data(root)
    share = training_share(root, args.iters)
    machine = cpu_machine()
    text = tables(args.rois, args.iters, head, share)
    print(f"on {machine}:\n{text}")
    if args.out:
        write_record(args.out, record(machine, rois=args.rois, iters=args.iters, head_ms=head,
                                      iteration_ms=share, table=text))

if __name__ == "__main__":
    main()
