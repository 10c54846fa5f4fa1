"""`aisdiff predict`: amodal segmentation of images nobody annotated, as pictures and a COCO results file.

The model is an AISDiff config whose test priors serve new images (DiffSP on the fly, or no prior), loaded
weights-only from a checkpoint. Images pass through the config's test pipeline, where `ContentImageId` gives
each one an id derived from its pixels (it seeds DiffSP's noise): the same image gives the same result on
every run and in every batch. Batches hold images of one input size only, so padding never changes a result.
Outputs are written to a hidden folder inside `--out` and moved into place when every image is done:
`vis/<name>.png` per image and `predictions.json`; a folder that already holds them is refused.
"""
from __future__ import annotations

import glob
import json
import shutil
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from priors import masks as mask_utils
from priors.errors import AisdiffError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PARTIAL = ".predict-partial"  # the run's folder inside --out until every image is done
GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputImage:
    """An image to predict: its file and its name in the outputs (relative to the folder it was found in)."""

    path: Path
    name: str


def collect_images(inputs: list[str]) -> list[InputImage]:
    """Image files from files, folders (recursively, IMAGE_EXTENSIONS) and glob patterns, in the order given
    (each folder and pattern sorted); a path listed twice counts once."""
    found: dict[Path, InputImage] = {}
    for text in inputs:
        for image in _expand(text):
            found.setdefault(image.path.resolve(), image)
    by_name: dict[str, InputImage] = {}
    for image in found.values():
        other = by_name.setdefault(image.name, image)
        if other is not image:
            raise AisdiffError(f"{other.path} and {image.path} would both be written as "
                               f"vis/{image.name}.png: predict them in separate runs, or pass their folder "
                               "(names then keep the sub-folders)")
    return list(found.values())


def _expand(text: str) -> list[InputImage]:
    """The images one INPUT argument names."""
    path = Path(text)
    if path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise AisdiffError(f"folder {path} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)}, "
                               "in sub-folders too)")
        return [InputImage(f, f.relative_to(path).with_suffix("").as_posix()) for f in files]
    if path.is_file():
        return [InputImage(path, path.stem)]
    if GLOB_CHARS & set(text):
        files = sorted(Path(f) for f in glob.glob(text, recursive=True)
                       if Path(f).is_file() and Path(f).suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise AisdiffError(f"pattern {text!r} matches no image file ({', '.join(IMAGE_EXTENSIONS)})")
        return [InputImage(f, f.stem) for f in files]
    raise AisdiffError(f"{text}: no such file or folder (INPUT is image files, folders or glob patterns)")


def config_classes(cfg) -> tuple[str, ...] | None:
    """The class names a config declares: its test dataset's metainfo, else its test prior's `classes`."""
    dataset = cfg.get("test_dataloader", {}).get("dataset", {})
    classes = (dataset.get("metainfo") or {}).get("classes")
    if not classes:
        classes = cfg.model.get("roi_head", {}).get("test_prior", {}).get("classes")
    return tuple(classes) if classes else None


def model_classes(config: Path, checkpoint: Path, cfg, meta: dict) -> tuple[str, ...]:
    """The class names of a checkpoint (its `dataset_meta`) and a config; both, where given, must agree."""
    from_ckpt = (meta.get("dataset_meta") or {}).get("classes")
    from_ckpt = tuple(from_ckpt) if from_ckpt else None
    from_cfg = config_classes(cfg)
    if from_ckpt and from_cfg and from_ckpt != from_cfg:
        raise AisdiffError(f"checkpoint {checkpoint} was trained on classes {list(from_ckpt)}, but config "
                           f"{config} declares {list(from_cfg)}: use the config the checkpoint was trained "
                           "with")
    if not (from_ckpt or from_cfg):
        raise AisdiffError(f"neither checkpoint {checkpoint} (meta.dataset_meta) nor config {config} "
                           "(test_dataloader.dataset.metainfo) names the classes: add metainfo=dict(classes="
                           "(...)) to the config's test dataset")
    return from_ckpt or from_cfg


def resolve_device(name: str | None) -> str:
    """The torch device to run on: `name`, checked to exist here, or cuda when available, else cpu."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AisdiffError(f"--device {name}: not a torch device (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AisdiffError(f"--device {name}: this torch {torch.__version__} sees no CUDA device; use "
                           "--device cpu, or install a CUDA build of torch")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise AisdiffError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return name


def load_model(config: Path, checkpoint: Path, device: str, cfg_options: dict, trust_checkpoint: bool):
    """The AISDiff model of `config` with `checkpoint`'s weights, in eval mode on `device`, with its
    `dataset_meta` and `cfg` set (as mmdet's `init_detector` sets them); refused when it cannot serve new
    images."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    from .roi_head import AISDiffRoIHead

    for path, what in ((config, "config"), (checkpoint, "checkpoint")):
        if not path.is_file():
            raise AisdiffError(f"{what} {path} not found")
    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(str(config))
    cfg.merge_from_dict(cfg_options)
    if cfg.model.get("backbone", {}).get("init_cfg"):
        cfg.model.backbone.init_cfg = None  # (the checkpoint gives every weight: nothing to fetch)
    model = MODELS.build(cfg.model)
    if not isinstance(getattr(model, "roi_head", None), AISDiffRoIHead):
        raise AisdiffError(f"config {config} builds a {type(model).__name__} without the AISDiff RoI head; "
                           "predict draws the amodal, visible and occluder masks that head predicts")
    provider = model.roi_head.test_prior
    if not provider.serves_new_images:
        raise AisdiffError(
            f"config {config}: its test priors ({type(provider).__name__}) come from a dataset (annotations "
            "or a cache of its images), which new images do not have. Use a config with on-the-fly priors, "
            "test_prior=dict(type='OnTheFlyPriors', model=..., classes=...) as in "
            "configs/aisdiff/aisdiff_r18_fpn_synthetic.py, or pass --cfg-options model.roi_head.test_prior."
            "type=OnTheFlyPriors ...")
    store = cfg.model.roi_head.get("test_prior", {}).get("store")
    if store and not (Path(store) / "zarr.json").is_file():
        raise AisdiffError(
            f"config {config}: test_prior checks its DiffSP settings against the training prior store "
            f"{store}, which is not here. Point it at that store (--cfg-options "
            "model.roi_head.test_prior.store=PATH), or skip the check with --cfg-options "
            "model.roi_head.test_prior.store=None (the settings then come from the config and the model, as "
            "in training if neither changed)")
    meta = load_weights(model, config, checkpoint, trust_checkpoint)
    classes = model_classes(config, checkpoint, cfg, meta)
    model.dataset_meta = {"classes": classes, "category_ids": category_ids(meta, classes)}
    model.cfg = cfg
    return model.to(device).eval()


def load_weights(model, config: Path, checkpoint: Path, trust_checkpoint: bool) -> dict:
    """Load `checkpoint`'s weights into `model`, every one (a checkpoint of another architecture is refused,
    not half-loaded); returns the checkpoint's `meta`."""
    import pickle

    from mmengine.runner.checkpoint import CheckpointLoader, load_state_dict

    from .checkpoint import refused_checkpoint, trusted_checkpoints

    try:
        with trusted_checkpoints(trust_checkpoint):
            loaded = CheckpointLoader.load_checkpoint(str(checkpoint), map_location="cpu")
    except pickle.UnpicklingError as exc:
        raise refused_checkpoint(exc) from None
    except (RuntimeError, EOFError, OSError) as exc:  # (torch's errors for a truncated or foreign file)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "no message"
        raise AisdiffError(f"checkpoint {checkpoint} could not be read ({type(exc).__name__}: {first_line}): "
                           "is it a complete .pth file written by training?") from None
    if not isinstance(loaded, dict):
        raise AisdiffError(f"checkpoint {checkpoint} holds a {type(loaded).__name__}, not a checkpoint dict")
    state = loaded.get("state_dict", loaded)
    state = {key.removeprefix("module."): value for key, value in state.items()}  # (DDP-wrapped weights)
    missing = sorted(key for key in set(model.state_dict()) - set(state)
                     if not key.endswith("num_batches_tracked"))  # (mmengine does not require these either)
    unexpected = sorted(set(state) - set(model.state_dict()))
    if missing or unexpected:
        listed = [f"{len(keys)} {what} weights ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                  for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise AisdiffError(f"checkpoint {checkpoint} does not fit the model of config {config}: "
                           f"{'; '.join(listed)}. Use the config (and --cfg-options) the checkpoint was "
                           "trained with")
    try:
        load_state_dict(model, state, strict=True)
    except RuntimeError as exc:  # (a weight of another shape)
        raise AisdiffError(f"checkpoint {checkpoint} does not fit the model of config {config}: "
                           f"{str(exc).strip().splitlines()[-1]}. Use the config the checkpoint was trained "
                           "with") from None
    return loaded.get("meta") or {}


def category_ids(meta: dict, classes: tuple[str, ...]) -> tuple[int, ...]:
    """Each label's category id in the training annotation file (checkpoint `meta.dataset_meta.category_ids`,
    written by `AmodalDataset`); label + 1 for all when the checkpoint records none, and ids after the
    largest recorded one for classes the file lacked (never an id another class has)."""
    recorded = (meta.get("dataset_meta") or {}).get("category_ids") or ()
    if len(recorded) != len(classes) or all(cid is None for cid in recorded):
        return tuple(range(1, len(classes) + 1))
    spare = max(int(cid) for cid in recorded if cid is not None) + 1
    ids = []
    for cid in recorded:
        if cid is None:
            cid, spare = spare, spare + 1
        ids.append(int(cid))
    return tuple(ids)


def inference_pipeline(cfg):
    """The config's test pipeline, with `ContentImageId` after the loader when the config lacks it."""
    from mmcv.transforms import Compose
    from mmdet.utils import get_test_pipeline_cfg

    steps = list(get_test_pipeline_cfg(cfg))
    if not any(step.get("type") == "ContentImageId" for step in steps):
        steps.insert(1, dict(type="ContentImageId"))
    return Compose(steps)


def load_inputs(images: list[InputImage], pipeline) -> Iterator[tuple[InputImage, dict]]:
    """Each image through the test pipeline; an image that cannot be read is an error naming it."""
    for image in images:
        try:
            data = pipeline(dict(img_path=str(image.path)))
        except AisdiffError:  # (a transform's own message names the fix)
            raise
        except Exception as exc:  # (mmcv raises several kinds for a missing or undecodable file)
            raise AisdiffError(f"image {image.path} could not be read ({type(exc).__name__}: {exc}); remove "
                               "it from the inputs or replace it with a readable image") from None
        if data is None:
            raise AisdiffError(f"image {image.path}: the test pipeline dropped it")
        yield image, data


def same_size_batches(items: Iterator[tuple[InputImage, dict]], batch_size: int,
                      max_waiting: int | None = None) -> Iterator[list]:
    """Batches of at most `batch_size` items whose network inputs have one shape (no padding between
    them, which would change GroupNorm statistics and so the results): a group goes out when full, or, oldest
    first, when more than `max_waiting` items (default 4 x batch_size) wait, so memory stays bounded whatever
    the mix of sizes; the rest at the end."""
    max_waiting = 4 * batch_size if max_waiting is None else max_waiting
    groups: OrderedDict[tuple, list] = OrderedDict()
    waiting = 0
    for item in items:
        shape = tuple(item[1]["inputs"].shape)
        groups.setdefault(shape, []).append(item)
        waiting += 1
        if len(groups[shape]) == batch_size:
            waiting -= batch_size
            yield groups.pop(shape)
        elif waiting > max_waiting:
            oldest = groups.popitem(last=False)[1]
            waiting -= len(oldest)
            yield oldest
    yield from groups.values()


def rle(mask: np.ndarray) -> dict:
    """A binary mask as COCO's compressed RLE, JSON-ready (counts as text)."""
    return mask_utils.rle_to_json(mask_utils.encode(np.asarray(mask, dtype=np.uint8)))


def image_predictions(image: InputImage, sample, dataset_meta: dict, score_thr: float) -> list[dict]:
    """COCO results records of one image's instances scoring above `score_thr` (category ids and names from
    `dataset_meta`, as `load_model` sets it)."""
    classes = dataset_meta["classes"]
    ids = dataset_meta.get("category_ids") or category_ids({"dataset_meta": dataset_meta}, classes)
    pred = sample.pred_instances
    keep = pred.scores > score_thr
    records = []
    for i in torch.nonzero(keep).flatten().tolist():
        x1, y1, x2, y2 = (float(v) for v in pred.bboxes[i])
        label = int(pred.labels[i])
        records.append({
            "image_id": int(sample.metainfo["img_id"]), "file_name": str(image.path),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(float(pred.scores[i]), 5), "category_id": ids[label],
            "category_name": classes[label],
            "segmentation": rle(pred.masks[i].cpu().numpy()),
            "visible_segmentation": rle(pred.visible_masks[i].cpu().numpy()),
            "occluder_segmentation": rle(pred.occluder_masks[i].cpu().numpy()),
        })
    return records


def draw(visualizer, image: InputImage, sample, score_thr: float, out_file: Path) -> None:
    """The picture of one image's predictions (`AmodalLocalVisualizer`), written to `out_file`."""
    import mmcv

    picture = mmcv.imread(str(image.path), channel_order="rgb")
    out_file.parent.mkdir(parents=True, exist_ok=True)
    visualizer.add_datasample(image.name, picture, sample.cpu(), draw_gt=False, pred_score_thr=score_thr,
                              out_file=str(out_file))


def prepare_out(out: Path) -> Path:
    """The hidden folder this run writes into (a stale one from an interrupted run is removed); refuses an
    `--out` that holds another run's outputs."""
    taken = [name for name in ("predictions.json", "vis") if (out / name).exists()]
    if taken:
        raise AisdiffError(f"{out} already holds predictions ({', '.join(taken)}): predict never mixes two "
                           "runs in one folder; choose another --out or remove those")
    partial = out / PARTIAL
    if partial.exists():
        shutil.rmtree(partial)
    (partial / "vis").mkdir(parents=True)
    return partial


def finish_out(partial: Path, out: Path, records: list[dict]) -> None:
    """Move a completed run's outputs into place: pictures first, the results file last."""
    (partial / "predictions.json").write_text(json.dumps(records))
    (partial / "vis").rename(out / "vis")
    (partial / "predictions.json").rename(out / "predictions.json")
    partial.rmdir()


@dataclass
class PredictSummary:
    """What a predict run did: images, instances written, seconds in all and in DiffSP."""

    images: int
    instances: int
    seconds: float
    diffsp_seconds: float

    def line(self) -> str:
        share = self.diffsp_seconds / self.seconds if self.seconds else 0.0
        return (f"{self.images} images, {self.instances} instances in {self.seconds:.1f} s: "
                f"{self.images / max(self.seconds, 1e-9):.2f} images/s, {100 * share:.0f}% of the time in "
                "DiffSP")


def predict_images(model, images: list[InputImage], out: Path, score_thr: float = 0.3, batch_size: int = 1,
                   save_priors: bool = False, progress: bool = True) -> PredictSummary:
    """Predict every image, write `out/vis/<name>.png` and `out/predictions.json` (records in input order);
    nothing lands in `out` unless every image is done."""
    if batch_size < 1:
        raise AisdiffError(f"--batch-size must be at least 1, not {batch_size}")
    if out.exists() and not out.is_dir():
        raise AisdiffError(f"--out {out} is a file: give a folder (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    partial = prepare_out(out)
    try:
        records, summary = predict_into(model, images, partial / "vis", score_thr, batch_size, save_priors,
                                        progress)
        finish_out(partial, out, records)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return summary


def predict_into(model, images: list[InputImage], vis: Path, score_thr: float, batch_size: int,
                 save_priors: bool, progress: bool) -> tuple[list[dict], PredictSummary]:
    """Predict every image, drawing `vis/<name>.png`: the COCO records in input order, and the summary."""
    from tqdm import tqdm

    from .visualization import AmodalLocalVisualizer

    visualizer = AmodalLocalVisualizer(name=f"aisdiff-predict-{id(vis)}", show_priors=save_priors)
    visualizer.dataset_meta = model.dataset_meta
    order = {image.name: i for i, image in enumerate(images)}
    records: list[list[dict]] = [[] for _ in images]
    provider = model.roi_head.test_prior
    diffsp_start, start = provider.diffsp_seconds(), time.perf_counter()
    with tqdm(total=len(images), unit="image", disable=not progress) as bar:
        for batch in same_size_batches(load_inputs(images, inference_pipeline(model.cfg)), batch_size):
            with torch.no_grad():
                samples = model.test_step({"inputs": [d["inputs"] for _, d in batch],
                                           "data_samples": [d["data_samples"] for _, d in batch]})
            for (image, _), sample in zip(batch, samples, strict=True):
                records[order[image.name]] = image_predictions(image, sample, model.dataset_meta, score_thr)
                draw(visualizer, image, sample, score_thr, vis / f"{image.name}.png")
            bar.update(len(batch))
    flat = [record for image_records in records for record in image_records]
    return flat, PredictSummary(len(images), len(flat), time.perf_counter() - start,
                                provider.diffsp_seconds() - diffsp_start)
