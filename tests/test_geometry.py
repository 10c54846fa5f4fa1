"""ROI geometry: crops, box frames, warps and pastes on exact cases."""
from __future__ import annotations

import torch

from priors import geometry


def test_context_boxes_are_centred_squares():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    crop = geometry.context_boxes(boxes, 1.5)
    torch.testing.assert_close(crop, torch.tensor([[-10.0, 10.0, 50.0, 70.0]]))


def test_roi_resample_of_an_aligned_box_is_slicing():
    image = torch.arange(3 * 12 * 16, dtype=torch.float32).reshape(1, 3, 12, 16)
    out = geometry.roi_resample(image, torch.tensor([[4.0, 2.0, 12.0, 10.0]]), (8, 8))
    torch.testing.assert_close(out, image[:, :, 2:10, 4:12])
    # outside the image reads as zero
    out = geometry.roi_resample(image, torch.tensor([[-4.0, 0.0, 4.0, 8.0]]), (8, 8))
    assert (out[..., :4] == 0).all()
    torch.testing.assert_close(out[..., 4:], image[:, :, 0:8, 0:4])


def test_crop_rois_and_box_frames_agree():
    image = torch.rand(3, 40, 50)
    boxes = torch.tensor([[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 50.0, 40.0]])
    crops = geometry.context_boxes(boxes, 1.0)
    out = geometry.crop_rois(image, crops, 20)
    torch.testing.assert_close(out[0], image[:, 5:25, 10:30])
    inner = geometry.boxes_in_frame(boxes, crops, 20)
    torch.testing.assert_close(inner[0], torch.tensor([0.0, 0.0, 20.0, 20.0]))
    # the second box is 50x40 in a 50x50 square crop: it spans the full width, 16 of 20 rows, centred
    torch.testing.assert_close(inner[1], torch.tensor([0.0, 2.0, 20.0, 18.0]))


def test_warp_to_the_same_box_is_the_identity():
    priors = torch.rand(5, 28, 28)
    boxes = torch.tensor([[3.0, 4.0, 50.0, 90.0]] * 5) + torch.arange(5.0)[:, None]
    torch.testing.assert_close(geometry.warp_priors(priors, boxes, boxes), priors, atol=1e-6, rtol=0)


def test_warp_to_a_shifted_box_moves_the_prior_by_the_shift():
    priors = torch.rand(2, 28, 28)
    src = torch.tensor([[0.0, 0.0, 56.0, 28.0], [10.0, 10.0, 38.0, 66.0]])  # cells of 2x1 and 1x2 pixels
    dst = src + torch.tensor([[6.0, 0.0, 6.0, 0.0], [0.0, -4.0, 0.0, -4.0]])  # 3 cells right; 2 cells up
    out = geometry.warp_priors(priors, src, dst)
    torch.testing.assert_close(out[0, :, :25], priors[0, :, 3:], atol=1e-6, rtol=0)
    assert (out[0, :, 25:] == 0).all()
    torch.testing.assert_close(out[1, 2:], priors[1, :26], atol=1e-6, rtol=0)
    assert (out[1, :2] == 0).all()


def test_warp_to_a_box_of_double_size_halves_the_prior():
    prior = torch.zeros(1, 4, 4)
    prior[0, :2, :2] = 1.0  # top-left quarter
    out = geometry.warp_priors(prior, torch.tensor([[0.0, 0.0, 4.0, 4.0]]),
                               torch.tensor([[0.0, 0.0, 8.0, 8.0]]))
    assert (out[0, 2:, :] == 0).all() and (out[0, :, 2:] == 0).all()
    assert out[0, 0, 0] == 1.0


def test_paste_puts_a_prior_exactly_on_its_box():
    prior = torch.ones(1, 7, 7)
    full = geometry.paste_priors(prior, torch.tensor([[4.0, 2.0, 18.0, 16.0]]), 20, 24)
    expected = torch.zeros(20, 24)
    expected[2:16, 4:18] = 1.0
    # pixels whose centre lies inside the box get the prior; the half-cell border interpolates towards 0
    torch.testing.assert_close(full[0, 3:15, 5:17], expected[3:15, 5:17])
    assert full[0][expected == 0].abs().max() == 0
    grid = torch.arange(49.0).reshape(1, 7, 7)
    pasted = geometry.paste_priors(grid, torch.tensor([[0.0, 0.0, 7.0, 7.0]]), 7, 7)
    torch.testing.assert_close(pasted, grid)
