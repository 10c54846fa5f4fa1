"""The plugin's mmdet-facing structure: the per-batch prior context, the provider contract, the mask head's
mmdet API, and models built from every config with no dataset on disk (CPU, no prior store needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from priors.errors import AisdiffError

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "aisdiff" / "aisdiff_r18_fpn_synthetic.py"


def _register_recording_provider():
    """A provider that serves both roles like NoPriors and records every context it is handed."""
    from mmdet.registry import TASK_UTILS

    from segmenter.prior_providers import NoPriors

    if "RecordingPriors" in TASK_UTILS.module_dict:
        return TASK_UTILS.get("RecordingPriors")

    @TASK_UTILS.register_module()
    class RecordingPriors(NoPriors):
        needs_images = True
        seen: list = []

        def training_priors(self, sampling_results, batch_gt_instances, context):
            self.seen.append(("train", context))
            return super().training_priors(sampling_results, batch_gt_instances, context)

        def test_priors(self, index, boxes, visible, occluder, labels, img_meta, context):
            self.seen.append(("test", context))
            context.image_id(index, "RecordingPriors")  # as DiffSP's seeds need it
            return super().test_priors(index, boxes, visible, occluder, labels, img_meta, context)

    return RecordingPriors


@pytest.fixture(scope="module")
def setup(make_benchmark):
    """The synthetic config's model with the recording provider, and two training samples (no priors)."""
    from mmdet.registry import DATASETS, MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate

    import segmenter  # noqa: F401

    register_all_modules()
    recording = _register_recording_provider()
    root = make_benchmark("kins2020", 4, 2, 3)
    cfg = Config.fromfile(str(CONFIG))
    cfg.model.roi_head.train_prior = dict(type="RecordingPriors")
    cfg.model.roi_head.test_prior = dict(type="RecordingPriors")
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    dataset = cfg.train_dataloader.dataset
    dataset.update(data_root=str(root), pipeline=cfg.train_pipeline_without_priors)
    batch = pseudo_collate([DATASETS.build(dataset)[i] for i in range(2)])
    return model, batch, recording


def _expected_rgb(batch, index: int, shape) -> torch.Tensor:
    """The loaded (BGR uint8) image as RGB in [0, 1], cut to its unpadded shape: independent of the model."""
    h, w = shape
    return batch["inputs"][index].flip(0)[:, :h, :w].float() / 255


def test_providers_get_the_batch_as_a_context_argument(setup):
    model, batch, recording = setup
    head = model.roi_head
    before = dict(vars(head))
    recording.seen.clear()
    data = model.data_preprocessor(batch, training=True)
    losses = model.loss(data["inputs"], data["data_samples"])
    assert "loss_mask_amodal" in losses
    model.eval()
    with torch.no_grad():
        model.predict(data["inputs"], data["data_samples"])
    model.train()
    after = vars(head)  # the detector set nothing on the head, and the head kept nothing of the batch
    assert set(after) == set(before) and all(after[k] is v for k, v in before.items())
    roles = [role for role, _ in recording.seen]
    assert roles[0] == "train" and roles.count("train") == 1 and "test" in roles
    for _, context in recording.seen:
        assert context.image_ids == tuple(s.metainfo["img_id"] for s in data["data_samples"])
        for i, sample in enumerate(data["data_samples"]):
            assert context.image_shapes[i] == tuple(sample.metainfo["img_shape"][:2])
            torch.testing.assert_close(context.image(i, "test"),
                                       _expected_rgb(batch, i, context.image_shapes[i]), atol=1e-5, rtol=0)


def test_a_provider_without_images_gets_none_and_a_missing_image_id_is_an_error(setup):
    from mmdet.structures import DetDataSample

    from segmenter.prior_context import PriorContext

    model, batch, _ = setup
    data = model.data_preprocessor(batch, training=False)
    plain = PriorContext.from_batch(data["data_samples"])
    with pytest.raises(AisdiffError, match="X needs the input images"):
        plain.image(0, "X")
    samples = []
    for sample in data["data_samples"]:
        bare = DetDataSample(metainfo={k: v for k, v in sample.metainfo.items() if k != "img_id"})
        samples.append(bare)
    model.eval()
    with torch.no_grad(), pytest.raises(AisdiffError, match="RecordingPriors needs each image's id"):
        model.predict(data["inputs"], samples)


@pytest.mark.parametrize(("role", "provider", "message"), [
    ("train", dict(type="OnTheFlyPriors", classes=("ball",)),
     "OnTheFlyPriors gives no train priors \\(it serves as test_prior\\)"),
    ("train", dict(type="ProposalCachePriors", store="x.zarr"), "ProposalCachePriors gives no train priors"),
    ("test", dict(type="CachedPriors"), "CachedPriors gives no test priors \\(it serves as train_prior\\)")])
def test_a_provider_where_it_cannot_serve_is_refused_when_built(role, provider, message):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import segmenter  # noqa: F401

    register_all_modules()
    cfg = Config.fromfile(str(CONFIG))
    cfg.model.roi_head[f"{role}_prior"] = provider
    with pytest.raises(AisdiffError, match=message):
        MODELS.build(cfg.model)


def test_the_provider_base_class_says_what_is_missing():
    from segmenter.prior_providers import PriorProvider

    with pytest.raises(AisdiffError, match="PriorProvider gives no test priors \\(it serves as nothing\\)"):
        PriorProvider().test_priors(0, torch.zeros(0, 4), None, None, torch.zeros(0), {}, None)


def test_on_the_fly_class_names_come_from_the_config_or_the_checkpoint():
    from segmenter.prior_context import PriorContext
    from segmenter.prior_providers import OnTheFlyPriors

    meta = PriorContext(None, ((8, 8),), (1,), classes=("ball", "box"))
    bare = PriorContext(None, ((8, 8),), (1,))
    assert OnTheFlyPriors(classes=("ball", "box")).class_names(bare) == ("ball", "box")
    assert OnTheFlyPriors().class_names(meta) == ("ball", "box")
    with pytest.raises(AisdiffError, match="differ from the model's dataset_meta classes"):
        OnTheFlyPriors(classes=("box", "ball")).class_names(meta)
    with pytest.raises(AisdiffError, match="OnTheFlyPriors needs class names"):
        OnTheFlyPriors().class_names(bare)


@pytest.mark.parametrize(("name", "classes"), [("aisdiff_r50_fpn_kins.py", 8),
                                               ("aisdiff_r50_fpn_cocoa-cls.py", 80),
                                               ("aisdiff_r50_fpn_d2sa.py", 60),
                                               ("aisdiff_r50_fpn_custom.py", 3)])
def test_real_data_configs_build_without_a_dataset_on_disk(name, classes, tmp_path, monkeypatch):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config

    import segmenter  # noqa: F401

    register_all_modules()
    monkeypatch.setenv("AISDIFF_DATA", str(tmp_path))  # an empty folder: no annotation file anywhere
    cfg = Config.fromfile(str(REPO / "configs" / "aisdiff" / name))
    model = MODELS.build(cfg.model)
    provider = model.roi_head.test_prior
    assert type(provider).__name__ == "OnTheFlyPriors" and len(provider.classes) == classes
    assert provider.classes == tuple(cfg.train_dataloader.dataset.metainfo.classes)
    assert list(tmp_path.iterdir()) == []


def test_the_detector_reads_the_channel_order_from_the_preprocessor_config():
    from segmenter.detector import inputs_are_rgb
    from segmenter.prior_context import rgb_unit_images

    assert inputs_are_rgb(dict(type="DetDataPreprocessor", bgr_to_rgb=True))
    assert not inputs_are_rgb(dict(type="DetDataPreprocessor")) and not inputs_are_rgb(None)
    with pytest.raises(AisdiffError, match="as a config dict"):
        inputs_are_rgb(torch.nn.Identity())
    bgr = torch.tensor([[[10.0]], [[20.0]], [[30.0]]])[None]  # one pixel: B 10, G 20, R 30
    mean, std = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1), torch.tensor([2.0, 2.0, 2.0]).view(3, 1, 1)
    normalized = (bgr - mean) / std
    assert rgb_unit_images(normalized, mean, std, inputs_are_rgb=False)[0, :, 0, 0].tolist() == \
        pytest.approx([30 / 255, 20 / 255, 10 / 255])
    assert rgb_unit_images(normalized, mean, std, inputs_are_rgb=True)[0, :, 0, 0].tolist() == \
        pytest.approx([10 / 255, 20 / 255, 30 / 255])


# -- the mask head's mmdet API ---------------------------------------------------------------------
def test_paste_masks_in_chunks_equals_pasting_all_at_once():
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask

    from segmenter.mask_head import AISDiffMaskHead

    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(6, 28, 28, generator=gen)
    boxes = torch.tensor([[3.2, 4.7, 40.1, 33.3], [-10.0, -5.0, 20.0, 12.0], [50.0, 40.0, 90.0, 70.0],
                          [0.0, 0.0, 64.0, 48.0], [30.5, 30.5, 31.5, 31.5], [60.0, 2.0, 120.0, 30.0]])
    out = AISDiffMaskHead.paste_masks(probs, boxes, (48, 64), 0.5)
    whole, _ = _do_paste_mask(probs[:, None], boxes, 48, 64, skip_empty=False)
    assert out.dtype == torch.bool and out.shape == (6, 48, 64)
    assert torch.equal(out, whole >= 0.5)
    assert AISDiffMaskHead.paste_masks(probs[:0], boxes[:0], (48, 64), 0.5).shape == (0, 48, 64)


def test_mask_head_targets_losses_and_pasting_follow_fcn_mask_head():
    from mmdet.structures.mask import BitmapMasks
    from mmengine.config import ConfigDict
    from mmengine.structures import InstanceData

    from segmenter.mask_head import AISDiffMaskHead

    torch.manual_seed(0)
    head = AISDiffMaskHead(num_classes=3, in_channels=16, conv_channels=8)
    assert isinstance(head.occluder_to_input, torch.nn.Conv2d)
    assert isinstance(AISDiffMaskHead(num_classes=3, in_channels=8, conv_channels=8).occluder_to_input,
                      torch.nn.Identity)
    masks = np.zeros((2, 32, 32), np.uint8)
    masks[0, 4:20, 4:20] = 1
    masks[1, 10:30, 2:12] = 1
    gt = InstanceData(masks=BitmapMasks(masks, 32, 32), visible_masks=BitmapMasks(masks[::-1].copy(), 32, 32),
                      occluder_masks=BitmapMasks(np.zeros_like(masks), 32, 32))
    sampling = InstanceData(pos_priors=torch.tensor([[4.0, 4.0, 20.0, 20.0], [2.0, 10.0, 12.0, 30.0]]),
                            pos_assigned_gt_inds=torch.tensor([0, 1]), pos_gt_labels=torch.tensor([2, 0]))
    feats = torch.rand(2, 16, 14, 14)
    preds = head(feats, torch.ones(2, 28, 28), sampling.pos_gt_labels)
    out = head.loss_and_target(preds, [sampling], [gt], ConfigDict(mask_size=28))
    assert set(out["loss_mask"]) == {"loss_mask_amodal", "loss_mask_visible", "loss_mask_occluder",
                                     "loss_cls"}
    targets = out["mask_targets"]
    assert (targets["amodal"] == 1).all() and not targets["occluder"].any()  # each box is its mask's box
    assert torch.equal(targets["visible"],
                       head.get_targets([sampling], [gt], ConfigDict(mask_size=28))["visible"])

    results = [InstanceData(bboxes=torch.tensor([[4.0, 4.0, 20.0, 20.0]]))]
    meta = {"img_shape": (32, 32), "ori_shape": (16, 16), "scale_factor": (2.0, 2.0)}
    probs = {"masks": (torch.ones(1, 28, 28),), "visible_masks": (torch.zeros(1, 28, 28),)}
    pasted = head.predict_by_feat(probs, results, [meta], ConfigDict(mask_thr_binary=0.5), rescale=True)[0]
    assert pasted.masks.shape == (1, 16, 16) and pasted.visible_masks.shape == (1, 16, 16)
    assert pasted.bboxes.tolist() == [[2.0, 2.0, 10.0, 10.0]]
    assert pasted.masks[0, 2:10, 2:10].all() and pasted.masks.sum() == 64 and not pasted.visible_masks.any()


def test_transforms_refuse_an_mmdet_they_were_not_written_for():
    from segmenter.transforms import AmodalResize, check_mmdet_version

    check_mmdet_version("AmodalResize", ("_resize_masks",), version="3.3.0")
    with pytest.raises(AisdiffError, match=r"AmodalResize overrides private methods of mmdet 3\.3\.x "
                                           r"\(_resize_masks\), and mmdet 3\.4\.0 is installed"):
        check_mmdet_version("AmodalResize", ("_resize_masks",), version="3.4.0")
    AmodalResize(scale=(32, 32))  # the installed mmdet is the one they were written for
