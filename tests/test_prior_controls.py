"""The fidelity benchmark's prior controls: degraded training priors, class templates, the shape-only oracle
and DiffSP fed the ground truth's masks (mmdet's own structures; the tiny model on the CPU)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from priors import geometry, masks
from priors.annotations import FORMATS, AmodalAnnotations
from priors.errors import AisdiffError

S = 28
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "aisdiff"


def _square(side: int, size: int = S) -> torch.Tensor:
    """A prior [size, size] of 0 with a centred square of 1 of `side` cells."""
    prior = torch.zeros(size, size)
    start = (size - side) // 2
    prior[start:start + side, start:start + side] = 1
    return prior


def _cached_batch(priors: torch.Tensor):
    """One image whose ground truths carry cached `priors` [n, S, S], with one positive proposal each on
    its ground truth's box (so that CachedPriors gives the cached priors as they are)."""
    from mmdet.structures.bbox import HorizontalBoxes
    from mmengine.structures import InstanceData

    n = len(priors)
    boxes = torch.tensor([[10.0 * i, 5.0, 10.0 * i + 56, 61.0] for i in range(n)])
    gt = InstanceData(shape_priors=priors, shape_prior_boxes=boxes, bboxes=HorizontalBoxes(boxes),
                      labels=torch.zeros(n, dtype=torch.long))
    sampling = InstanceData(pos_assigned_gt_inds=torch.arange(n), pos_priors=boxes.clone(),
                            pos_gt_labels=torch.zeros(n, dtype=torch.long))
    return [sampling], [gt]


def _context(image_id: int | None = 1, shape=(100, 100), images=None, classes=None):
    from segmenter.prior_context import PriorContext

    return PriorContext(images, (shape,), (image_id,), classes)


# -- DegradedPriors --------------------------------------------------------------------------------
def test_degraded_priors_without_degradation_are_the_wrapped_providers():
    from segmenter.prior_controls import DegradedPriors
    from segmenter.prior_providers import CachedPriors

    torch.manual_seed(0)
    sampling, gts = _cached_batch(torch.rand(3, S, S))
    expected = CachedPriors().training_priors(sampling, gts, _context())
    assert torch.equal(DegradedPriors().training_priors(sampling, gts, _context()), expected)
    torch.manual_seed(0)
    dropped = DegradedPriors(drop=1.0).training_priors(sampling, gts, _context())
    assert torch.equal(dropped, torch.ones(3, S, S))


def test_degraded_priors_erode_or_dilate_by_whole_cells():
    """morph=1: each square prior becomes the square eroded or dilated by k = 1..3 cells on each side; both
    happen (seeded)."""
    from segmenter.prior_controls import DegradedPriors

    side = 10
    sampling, gts = _cached_batch(_square(side)[None].repeat(12, 1, 1))
    torch.manual_seed(0)
    out = DegradedPriors(morph=1.0, morph_cells=3).training_priors(sampling, gts, _context())
    sides = []
    for prior in out:
        k = (int(prior.sum().item() ** 0.5) - side) // 2  # negative: eroded
        assert k != 0 and abs(k) <= 3 and torch.equal(prior, _square(side + 2 * k))
        sides.append(side + 2 * k)
    assert min(sides) < side < max(sides)  # eroded ones (smaller) and dilated ones (larger)


def test_degraded_priors_shift_by_whole_cells_with_zeros_coming_in():
    """shift=1: a prior moves by up to int(0.15 * 28) = 4 cells in x and y (its centroid moves with it),
    and the cells it leaves are 0."""
    from segmenter.prior_controls import DegradedPriors

    square = _square(4)
    sampling, gts = _cached_batch(torch.stack([square] * 8 + [torch.ones(S, S)] * 4))
    torch.manual_seed(0)
    out = DegradedPriors(shift=1.0).training_priors(sampling, gts, _context())
    grid = torch.arange(S, dtype=torch.float32)

    def centroid(prior):
        return tuple(((prior.sum(axis) * grid).sum() / prior.sum()).item() for axis in (0, 1))  # (x, y)

    moves = []
    for prior in out[:8]:
        (x, y), (x0, y0) = centroid(prior), centroid(square)
        dx, dy = round(x - x0), round(y - y0)
        assert (x - x0, y - y0) == (dx, dy) and max(abs(dx), abs(dy)) <= 4
        assert torch.equal(prior, torch.roll(square, (dy, dx), (0, 1)))
        moves.append((dx, dy))
    assert any(m != (0, 0) for m in moves) and len(set(moves)) > 1
    for prior in out[8:]:  # ones: what is left of the box is 1, the rows and columns shifted in are 0
        rows, cols = int((prior.sum(1) > 0).sum()), int((prior.sum(0) > 0).sum())
        assert prior.sum() == rows * cols and rows >= S - 4 and cols >= S - 4


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(drop=1.5), r"drop=1.5: probabilities must lie in \[0, 1\]"),
    (dict(morph=-0.1, shift=2), r"morph=-0.1, shift=2: probabilities must lie in \[0, 1\]"),
    (dict(morph_cells=0), "use morph_cells >= 1"),
    (dict(provider=dict(type="OnTheFlyPriors", classes=("ball",))),
     "DegradedPriors degrades training priors, and provider=.*OnTheFlyPriors.* gives none")])
def test_degraded_priors_refuse_bad_settings(kwargs, message):
    import segmenter  # noqa: F401
    from segmenter.prior_controls import DegradedPriors

    with pytest.raises(AisdiffError, match=message):
        DegradedPriors(**kwargs)


def test_degraded_priors_serve_training_and_forward_needs_images():
    import segmenter  # noqa: F401
    from segmenter.prior_controls import DegradedPriors

    plain = DegradedPriors(drop=0.5)
    computing = DegradedPriors(provider=dict(type="CachedPriors",
                                             diffsp=dict(model="tiny", classes=("ball",))))
    assert (plain.needs_images, computing.needs_images) == (False, True)
    assert plain.serves("train") and not plain.serves("test")


# -- ClassTemplatePriors ---------------------------------------------------------------------------
def _blocks(cells: list[list[int]], at: tuple[int, int], size: int = 24) -> np.ndarray:
    """A size x size mask with a 4 x 4 pattern of 2 x 2-pixel blocks at pixel (x, y) `at`."""
    mask = np.zeros((size, size), bool)
    x, y = at
    mask[y:y + 8, x:x + 8] = np.kron(np.array(cells), np.ones((2, 2))).astype(bool)
    return mask


# (category id, 4 x 4 cell pattern, top-left pixel): masks whose box is their 8 x 8 pixel square
HAND_MADE = [(1, [[1] * 4] * 4, (0, 0)),  # ball: the full square
             (1, [[1] * 4, [1] * 4, [1, 1, 0, 0], [1, 1, 0, 0]], (10, 10)),  # ball: an L
             (2, [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]], (0, 16))]  # box: a staircase
TEMPLATES = torch.tensor([[[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0.5, 0.5], [1, 1, 0.5, 0.5]],  # ball: the mean
                          [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]],  # box: its one instance
                          [[1] * 4] * 4])  # moon: no instance, no information


@pytest.fixture()
def hand_made(tmp_path):
    """A KINS 2020 file of one 24 x 24 image: two balls, a box and no moon (categories listed out of id
    order: labels follow the ids)."""
    spec, anns = FORMATS["kins2020"], []
    for i, (category, cells, (x, y)) in enumerate(HAND_MADE):
        mask = _blocks(cells, (x, y))
        segm = masks.rle_to_json(masks.encode(mask))
        anns.append(spec.encode(i + 1, 1, category, segm, segm, (x, y, 8, 8), (x, y, 8, 8), int(mask.sum()),
                                int(mask.sum()), 0.0))
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 24, "height": 24}], "annotations": anns,
            "categories": [{"id": 3, "name": "moon"}, {"id": 1, "name": "ball"}, {"id": 2, "name": "box"}]}
    path = tmp_path / "train.json"
    path.write_text(json.dumps(data))
    assert AmodalAnnotations(path).classes == ("ball", "box", "moon")
    return str(path)


def test_class_templates_are_the_mean_amodal_mask_of_each_class(hand_made):
    from segmenter.prior_controls import ClassTemplatePriors

    provider = ClassTemplatePriors(ann_file=hand_made, prior_size=4, symmetric=False)
    assert torch.equal(provider.templates(torch.device("cpu")), TEMPLATES)
    # by default averaged with the mirror (training flips images; the template cannot know which were)
    symmetric = ClassTemplatePriors(ann_file=hand_made, prior_size=4).templates(torch.device("cpu"))
    torch.testing.assert_close(symmetric, (TEMPLATES + TEMPLATES.flip(-1)) / 2)
    assert not torch.equal(symmetric, TEMPLATES)
    boxes = torch.tensor([[0.0, 0.0, 30.0, 10.0]] * 3)
    out = provider.test_priors(0, boxes, None, None, torch.tensor([1, 0, 2]), {}, _context())
    assert torch.equal(out, TEMPLATES[[1, 0, 2]])  # the label's template, as it is, on any box


def test_class_templates_in_training_are_warped_from_the_ground_truth_box(hand_made):
    from mmdet.structures.bbox import HorizontalBoxes
    from mmengine.structures import InstanceData

    from segmenter.prior_controls import ClassTemplatePriors

    gt_boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [50.0, 20.0, 90.0, 60.0]])
    gt = InstanceData(bboxes=HorizontalBoxes(gt_boxes), labels=torch.tensor([1, 0]))
    proposals = torch.cat([gt_boxes, gt_boxes[:1] + torch.tensor([10.0, 0.0, 10.0, 0.0])])  # 1 cell right
    sampling = InstanceData(pos_assigned_gt_inds=torch.tensor([0, 1, 0]), pos_priors=proposals,
                            pos_gt_labels=torch.tensor([1, 0, 1]))
    out = ClassTemplatePriors(ann_file=hand_made, prior_size=4,
                              symmetric=False).training_priors([sampling], [gt], _context())
    assert torch.equal(out[:2], TEMPLATES[[1, 0]])  # a proposal on its ground truth's box: the template
    assert torch.equal(out[2, :, :3], TEMPLATES[1, :, 1:]) and not out[2, :, 3].any()


# -- OraclePriors(frame=...) -----------------------------------------------------------------------
def test_shape_oracle_in_training_stretches_the_mask_in_its_own_box_over_the_proposal():
    from mmdet.structures.bbox import HorizontalBoxes
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    from segmenter.prior_providers import OraclePriors

    full = np.zeros((1, 64, 64), np.uint8)
    full[0, 10:40, 20:50] = 1
    gt = InstanceData(masks=BitmapMasks(full, 64, 64),
                      bboxes=HorizontalBoxes(torch.tensor([[20.0, 10.0, 50.0, 40.0]])))
    wide, shifted = [20.0, 10.0, 80.0, 40.0], [26.0, 10.0, 56.0, 40.0]
    sampling = InstanceData(pos_assigned_gt_inds=torch.tensor([0, 0]),
                            pos_priors=torch.tensor([wide, shifted]))
    image = OraclePriors().training_priors([sampling], [gt], _context(None, (64, 64)))
    box = OraclePriors(frame="box").training_priors([sampling], [gt], _context(None, (64, 64)))
    assert image[0, :, 16:].max() == 0 and image[1, :, 24:].max() == 0  # where the mask lies in the image
    assert (box == 1).all()  # its shape (its whole box) over each proposal


def test_shape_oracle_at_test_ignores_where_the_detection_box_lies(make_benchmark):
    from segmenter.prior_providers import OraclePriors

    val = make_benchmark("kins2020", 6, 2, 0) / "annotations" / "val.json"
    ann = AmodalAnnotations(val)
    inst = max(ann, key=lambda i: i.amodal_area)
    label = ann.classes.index(inst.category)
    shifted = torch.tensor([inst.amodal_box]) + torch.tensor([6.0, -4.0, 6.0, -4.0])
    meta, context = {"scale_factor": (2.0, 2.0)}, _context(inst.image_id, (1000, 1000))
    detections = shifted * 2  # in a 2x network input
    image = OraclePriors(ann_file=str(val)).test_priors(0, detections, None, None, torch.tensor([label]),
                                                       meta, context)
    box = OraclePriors(ann_file=str(val), frame="box").test_priors(0, detections, None, None,
                                                                  torch.tensor([label]), meta, context)
    amodal = inst.amodal_mask()
    expected_image = geometry.roi_resample(torch.from_numpy(amodal.astype(np.float32))[None, None],
                                           shifted.double(), S)[0, 0]
    torch.testing.assert_close(image[0], expected_image)  # the image frame: as before
    assert torch.equal(box[0], geometry.masks_in_box(amodal[None], inst.amodal_box, S)[0].float())
    assert (image[0].round() != box[0]).sum() > 20  # (the two frames differ on this box)


def test_oracle_refuses_an_unknown_frame():
    from segmenter.prior_providers import OraclePriors

    with pytest.raises(AisdiffError, match="frame='mask'; use 'image' .* or 'box'"):
        OraclePriors(frame="mask")


# -- OracleInputPriors -----------------------------------------------------------------------------
def test_masks_in_input_resize_nearest_then_crop_or_pad():
    from segmenter.prior_controls import masks_in_input

    mask = np.array([[[1, 0, 0], [0, 1, 1], [0, 0, 1]]], bool)
    out = masks_in_input(mask, (2.0, 2.0), 5, 8)  # 6 x 6 resized: one row cut, two columns padded
    expected = np.zeros((1, 5, 8), bool)
    expected[0, :, :6] = np.kron(mask[0], np.ones((2, 2), bool))[:5]
    np.testing.assert_array_equal(out, expected)


def test_oracle_input_feeds_diffsp_the_matched_ground_truths_masks(make_benchmark):
    """A detection matched to a ground truth: the prior OnTheFlyPriors computes from that ground truth's
    visible and occluder masks; an unmatched one (a class absent from the image): from the predicted masks.
    Same boxes, same seeds, exactly."""
    from priors.synthetic import CATEGORIES
    from segmenter.prior_controls import OracleInputPriors
    from segmenter.prior_providers import OnTheFlyPriors

    val = make_benchmark("kins2020", 6, 2, 0) / "annotations" / "val.json"
    ann = AmodalAnnotations(val)
    inst = max(ann, key=lambda i: i.occlusion_rate)  # (an occluder to feed)
    present = {g.category for g in ann.by_image(inst.image_id)}
    absent = next(i for i, name in enumerate(ann.classes) if name not in present)
    h, w = 2 * inst.image.height, 2 * inst.image.width  # a 2x network input
    torch.manual_seed(0)
    image = torch.rand(1, 3, h, w)
    predicted = torch.rand(2, 2, h, w) > 0.7  # [visible / occluder, detection, h, w]
    box = torch.tensor([inst.amodal_box]) * 2 + torch.tensor([4.0, 2.0, 4.0, 2.0])  # the detected box
    boxes, labels = torch.cat([box, box]), torch.tensor([ann.classes.index(inst.category), absent])
    meta, context = {"scale_factor": (2.0, 2.0)}, _context(inst.image_id, (h, w), image)
    classes = tuple(name for _, name in CATEGORIES)

    def upsampled(mask: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.kron(mask, np.ones((2, 2), bool)))

    truth = [upsampled(inst.visible_mask()), upsampled(ann.occluder_mask(inst))]
    assert truth[1].any()
    fed = [torch.stack([t, p[1]]) for t, p in zip(truth, predicted, strict=True)]
    settings = dict(model="tiny", classes=classes, steps=1)  # (one step: fast)
    out = OracleInputPriors(ann_file=str(val), **settings).test_priors(0, boxes, *predicted, labels, meta,
                                                                       context)
    on_the_fly = OnTheFlyPriors(**settings)
    expected = on_the_fly.test_priors(0, boxes, *fed, labels, meta, context)
    assert torch.equal(out, expected)
    assert not torch.equal(out[0], on_the_fly.test_priors(0, boxes, *predicted, labels, meta, context)[0])


# -- in the model ----------------------------------------------------------------------------------
def test_the_template_config_trains_on_degraded_templates_and_predicts_templates(make_benchmark):
    """The template config's model, its training prior wrapped in DegradedPriors: one loss on two real
    samples (mmdet's boxes and sampling) and a prediction whose priors are the templates of its labels."""
    from helpers import trained_one_step
    from mmengine.config import Config

    root = make_benchmark("kins2020", 6, 2, 0)
    cfg = Config.fromfile(str(CONFIGS / "aisdiff_r18_fpn_template_synthetic.py"))
    template = dict(type="ClassTemplatePriors", ann_file=str(root / "annotations" / "train.json"))
    cfg.model.roi_head.train_prior = dict(type="DegradedPriors", provider=template, drop=0.3, morph=0.3,
                                          shift=0.3)
    cfg.model.roi_head.test_prior = template
    model, data, losses = trained_one_step(cfg, root)
    assert torch.isfinite(losses["loss_mask_amodal"])
    model.eval()
    with torch.no_grad():
        pred = model.predict(data["inputs"], data["data_samples"])[0].pred_instances
    templates = model.roi_head.test_prior.templates(torch.device("cpu"))
    assert len(pred) and torch.equal(pred.shape_priors, templates[pred.prior_labels])
