"""Training the small inpainting model: examples, the `aisdiff train-diffusion` command end to end, tuning."""
from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import aisdiff

from priors.annotations import AmodalAnnotations
from priors.training.crops import (
    MIN_VISIBLE_FRACTION,
    box_masks,
    extra_masks,
    load_object_crops,
    sample_batch,
)
from priors.training.train import PAIR_PROMPT, PROMPT, grounding_loss, object_token_weights


@pytest.fixture(scope="module")
def crops(make_benchmark):
    root = make_benchmark("kins2020", train_images=6, val_images=2, seed=0)
    ann = AmodalAnnotations(root / "annotations" / "train.json", images_dir=root / "images")
    return ann, load_object_crops(ann, 64, progress=False)


def test_crops_are_the_unoccluded_instances(crops):
    ann, c = crops
    whole = [i for i in ann if i.occlusion_rate == 0]
    assert len(c) == len(whole) > 0
    assert c.images.shape == (len(whole), 3, 64, 64) and c.amodal.shape == (len(whole), 1, 64, 64)
    assert c.categories == sorted(set(ann.categories.values()))
    # DiffSP's crop: the box's longer side spans 64 / 1.2 pixels, centred
    side = (c.boxes[:, 2:] - c.boxes[:, :2]).amax(1)
    assert torch.allclose(side, torch.full_like(side, 64 / 1.2), atol=1e-3)
    # every amodal mask lies in its box
    assert (c.amodal * (1 - box_masks(c.boxes, 64))).sum() == 0


def test_examples_are_consistent_and_reproducible(crops):
    _, c = crops
    first = sample_batch(c, 64, torch.Generator().manual_seed(3))
    again = sample_batch(c, 64, torch.Generator().manual_seed(3))
    assert torch.equal(first.masked, again.masked) and torch.equal(first.hole, again.hole)
    amodal = (first.target != 0).any(1, keepdim=True).float()
    visible = (first.masked != 0).any(1, keepdim=True).float()
    assert (visible * (1 - amodal)).sum() == 0  # visible pixels are object pixels
    assert (first.hole * visible).sum() == 0  # the hole never covers a visible pixel
    kept = visible.sum((1, 2, 3)) / amodal.sum((1, 2, 3))
    # (a few object pixels are exactly black: 0 in [-1, 1])
    assert (kept >= MIN_VISIBLE_FRACTION - 0.02).all()
    assert (kept < 0.99).any() and (first.hole.sum((1, 2, 3)) > 0).float().mean() > 0.5  # occluders happen


def test_extra_masks_follow_stable_diffusion_inpainting(crops):
    """Full masks hide everything; random rectangles join the hole and hide the object pixels they cover."""
    _, c = crops
    base = sample_batch(c, 64, torch.Generator().manual_seed(5))
    visible = (base.masked != 0).any(1, keepdim=True).float()
    full_vis, full_hole = extra_masks(visible, base.hole, 1.0, 0.0, torch.Generator().manual_seed(0))
    assert full_vis.sum() == 0 and (full_hole == 1).all()
    vis, hole = extra_masks(visible, base.hole, 0.0, 1.0, torch.Generator().manual_seed(0))
    assert (hole >= base.hole).all() and (hole.sum((1, 2, 3)) >= 12 * 12).all()  # holds a 0.2 x 64 px square
    assert torch.equal(vis, visible * (1 - hole)) and (vis * hole).sum() == 0
    side = (hole - base.hole).sum((1, 2, 3)).sqrt() / 64  # (where the rectangle adds to the hole)
    assert (side <= 0.6 + 1e-6).all()
    same_vis, same_hole = extra_masks(visible, base.hole, 0.0, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(same_vis, visible) and torch.equal(same_hole, base.hole)


def test_companions_stand_behind_the_object(crops):
    """A companion is a second whole object behind the object: in the target and, outside the hole, in the
    input; never over the object. Without companions the batch is the plain one."""
    _, c = crops
    plain = sample_batch(c, 64, torch.Generator().manual_seed(7))
    assert (plain.companions == -1).all()
    both = sample_batch(c, 64, torch.Generator().manual_seed(7), companion_probability=1.0)
    assert torch.equal(both.labels, plain.labels) and (both.companions >= 0).all()
    drawn = (both.target != 0).any(1, keepdim=True) & (plain.target == 0).all(1, keepdim=True)
    assert drawn.any(), "companions must show in the crops"
    obj = (plain.target != 0).any(1, keepdim=True)
    assert torch.equal(both.target[obj.expand_as(both.target)], plain.target[obj.expand_as(plain.target)])
    shown = (both.masked != 0).any(1, keepdim=True)
    assert (shown & drawn).any() and not (shown & both.hole.bool()).any()


def test_object_token_weights_pick_the_named_object(tiny_model):
    """The object's category token (the first named, position 5 after the start token and 'a photo of a'),
    in single and pair prompts; nothing for the empty prompt."""
    tok = tiny_model.pipe.tokenizer
    prompts = [(PROMPT.format(category="star"), "star"), ("", None),
               (PAIR_PROMPT.format(category="heart", other="ball"), "heart")]
    weights = object_token_weights(tok, prompts)
    assert weights.shape == (3, tok.model_max_length)
    assert weights[0].nonzero().flatten().tolist() == [5] and weights[0, 5] == 1
    assert tok(prompts[0][0])["input_ids"][5] == tok("star")["input_ids"][1]
    assert weights[1].sum() == 0
    assert weights[2].nonzero().flatten().tolist() == [5] and tok(prompts[2][0])["input_ids"][5] == \
        tok("heart")["input_ids"][1]


def test_grounding_loss_values():
    """Zero for attention exactly on the mask; (1 - share inside)^2 + ln 2 for a flat 0.5 map; examples
    without a named object are left out."""
    amodal = torch.zeros(2, 1, 8, 8)
    amodal[:, :, 2:6, 2:6] = 1  # a quarter of the crop
    on_mask = [amodal.flatten(1)]
    keep = torch.tensor([True, True])
    assert grounding_loss(on_mask, amodal, keep).item() == pytest.approx(0.0, abs=1e-4)
    flat = [torch.full((2, 64), 0.5)]
    assert grounding_loss(flat, amodal, keep).item() == pytest.approx(0.75**2 + math.log(2), abs=1e-6)
    # a 4 x 4 layer sees the mask area-resampled: the same quarter, now 2 x 2 cells
    assert grounding_loss([torch.full((2, 16), 0.5)], amodal, keep).item() == pytest.approx(
        0.75**2 + math.log(2), abs=1e-6)
    mixed = [torch.stack([amodal[0].flatten(), torch.full((64,), 0.5)])]
    assert grounding_loss(mixed, amodal, torch.tensor([True, False])).item() == pytest.approx(0.0, abs=1e-4)
    assert grounding_loss(mixed, amodal, torch.tensor([False, False])).item() == 0


def test_train_diffusion_end_to_end(make_benchmark, tmp_path):
    """A few steps at 32 px: the saved folder is a diffusers model that load_model and DiffSP use."""
    from priors.diffsp import DiffSP, DiffSPConfig, prepare_rois
    from priors.models import load_model

    root = make_benchmark("kins2020", train_images=6, val_images=2, seed=0)
    out = tmp_path / "model"
    proc = aisdiff("train-diffusion", "--ann", str(root / "annotations" / "train.json"), "--images",
                   str(root / "images"), "--out", str(out), "--resolution", "32", "--vae-steps", "2",
                   "--unet-steps", "3", "--text-to-image-steps", "1", "--full-mask-probability", "0.25",
                   "--random-mask-probability", "0.25", "--companion-probability", "0.5", "--batch-size", "4",
                   "--grounding-weight", "0.1", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    for name in ("model_index.json", "README.md", "loss.png", "losses.json", "train_config.json",
                 "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        assert (out / name).is_file(), name
    losses = json.loads((out / "losses.json").read_text())
    assert len(losses["vae"]) == 2 and len(losses["unet"]) == len(losses["grounding"]) == 3
    card = (out / "README.md").read_text()
    assert "0.1 x a token grounding loss" in card and "grounding" in card.split("Final losses")[1]
    assert "a photo of a {category}" in card and "The first 1 steps mask every crop whole" in card
    assert "a photo of a {category} and a {other}" in card
    assert f"or `aisdiff precompute --model {out}`." in card  # (a shipped model's card names it)
    model = load_model(str(out))
    assert model.resolution == 32 and model.pipe.unet.config.in_channels == 9
    diffsp = DiffSP(model, DiffSPConfig(steps=2, self_res=8, cross_res=4))
    image = torch.rand(3, 40, 40)
    vis = torch.zeros(1, 40, 40, dtype=torch.bool)
    vis[0, 10:30, 10:20] = True
    batch = prepare_rois(image, [[8, 8, 32, 32]], vis, ~vis, ["star"], [1], 32, 1.2)
    prior = diffsp(batch)
    assert prior.shape == (1, 28, 28) and torch.isfinite(prior).all()

    again = aisdiff("train-diffusion", "--ann", str(root / "annotations" / "train.json"), "--images",
                    str(root / "images"), "--out", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    bad = aisdiff("train-diffusion", "--ann", str(root / "annotations" / "train.json"), "--images",
                  str(root / "images"), "--out", str(tmp_path / "other"), "--unet-steps", "3",
                  "--text-to-image-steps", "5")
    assert bad.returncode == 2 and "--text-to-image-steps 5" in bad.stderr


def test_tune_diffsp_reports_the_visible_baseline(make_benchmark, tmp_path):
    root = make_benchmark("kins2020", train_images=6, val_images=2, seed=0)
    report = tmp_path / "tune.json"
    proc = aisdiff("tune-diffsp", "--ann", str(root / "annotations" / "train.json"),
                   "--images", str(root / "images"),
                   "--model", "tiny-random", "--tau", "1", "2", "--thresholds", "0.3", "0.5", "--limit", "6",
                   "--timestep-spacing", "leading", "trailing", "--encoder", "vae", "tiny", "--json",
                   str(report))
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    assert len(data["results"]) == 16  # 2 spacings x 2 encoders x 2 taus x 2 thresholds
    assert {r["settings"]["tau"] for r in data["results"]} == {1, 2}
    assert {r["settings"]["timestep_spacing"] for r in data["results"]} == {"leading", "trailing"}
    assert {r["settings"]["encoder"] for r in data["results"]} == {"vae", "tiny"}
    assert 0 < data["baseline"]["prior_iou"] < 1 and "visible mask" in proc.stdout
    scores = [r["prior_iou"] for r in data["results"]]
    assert scores == sorted(scores, reverse=True)
    (ceiling,) = data["ceilings"]  # one self_res tried: its grid's ceiling
    assert (ceiling["settings"]["amodal mask on the grid (ceiling)"]
            == data["results"][0]["settings"]["self_res"])
    assert "(ceiling)" in proc.stdout
    best = data["results"][0]["settings"]  # tau 1 or 2 differs from the paper's 4; the rest is the paper's
    # (tiny-random's scheduler spaces "leading": only trailing differs from its default)
    spacing = {"timestep_spacing": "trailing"} if best["timestep_spacing"] == "trailing" else {}
    encoder = {"encoder": "tiny"} if best["encoder"] == "tiny" else {}
    record = json.dumps({"tau": best["tau"], **spacing, **encoder, "threshold": best["threshold"]})
    small = (", and its small autoencoder as FOLDER/vae_tiny with model.tiny_vae.save_pretrained" if encoder
             else "")
    assert ("To make the best setting above the defaults of tiny-random, save the model to a folder "
            f"(save_pretrained{small}; tiny-random itself takes no defaults) and write into its "
            f"diffsp_config.json:\n{record}\n") in proc.stdout


def test_grid_ceiling_is_what_a_perfect_prior_scores(make_benchmark):
    """The amodal mask through a grid as fine as the crop comes back whole; coarser grids lose its outline."""
    from priors.diffsp import PAPER_DEFAULTS, DiffSPConfig
    from priors.training.tune import grid_ceiling, sample_instances, visible_baseline

    root = make_benchmark("kins2020", train_images=6, val_images=2, seed=0)
    ann = AmodalAnnotations(root / "annotations" / "train.json", images_dir=root / "images")
    instances = sample_instances(ann, 0.1, None, 0)
    config = DiffSPConfig(resolution=64, self_res=8, cross_res=8, context=PAPER_DEFAULTS["context"])
    scores = {g: grid_ceiling(instances, g, config, [0.3, 0.5]).prior_iou for g in (4, 8, 16, 64)}
    assert scores[64] > 0.95
    assert scores[4] < scores[8] < scores[16] < scores[64]
    assert scores[16] > visible_baseline(instances, config.prior_size).prior_iou


def test_tune_diffsp_checks_every_setting_before_scoring_any(make_benchmark):
    """A small autoencoder that cannot be loaded stops the command before the VAE half of the grid runs."""
    root = make_benchmark("kins2020", train_images=6, val_images=2, seed=0)
    proc = aisdiff("tune-diffsp", "--ann", str(root / "annotations" / "train.json"), "--images",
                   str(root / "images"), "--model", "tiny-random", "--encoder", "vae", "tiny",
                   "--tiny-vae", "org/no-such-taesd", "--tau", "1", "--limit", "2")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "could not load the small autoencoder 'org/no-such-taesd' of tiny-random" in proc.stderr
    assert "instances of" not in proc.stdout  # (nothing was scored)
