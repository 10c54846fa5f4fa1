"""ROI identity: seeds pinned to the values every existing store was computed with, stable and distinct."""
from __future__ import annotations

import numpy as np
import pytest

from priors.identity import box_key, gt_roi_seed, proposal_roi_seed

# Recorded with priors.diffsp.roi_seed / box_key before they moved here: a change breaks every store's resume.
GT_SEEDS = [((0, 1, 2), 5812573272367416248), ((0, 17, 1003), 2056440998734691327),
            ((7, 123456, 0), 4506047545357782426)]
PROPOSAL_SEEDS = [((0, 1, (10.0, 20.5, 30.25, 40.04)), (100, 205, 302, 400), 4917448041239996655),
                  ((3, 42, (0.0, 0.0, 63.96, 64.0)), (0, 0, 640, 640), 2138080504881398201),
                  ((0, 5, (12.34, 5.05, 100.0, 77.777)), (123, 50, 1000, 778), 4170080895693170739),
                  # a store row's float32 box: 5.05 is 5.0500002 in float32, so its key differs
                  ((0, np.int64(5), np.array([12.34, 5.05, 100.0, 77.777], np.float32)), (123, 51, 1000, 778),
                   2121780217254511735)]


@pytest.mark.parametrize(("args", "seed"), GT_SEEDS)
def test_ground_truth_seeds_are_the_recorded_ones(args, seed):
    assert gt_roi_seed(*args) == seed
    job, image_id, ann_id = args
    assert gt_roi_seed(job, np.int64(image_id), np.int64(ann_id)) == seed  # store arrays give numpy ints


@pytest.mark.parametrize(("args", "key", "seed"), PROPOSAL_SEEDS)
def test_proposal_seeds_are_the_recorded_ones(args, key, seed):
    job, image_id, box = args
    assert box_key(box) == key
    assert proposal_roi_seed(job, image_id, box) == seed


def test_seeds_are_distinct_across_ids_sources_and_jobs():
    assert len({gt_roi_seed(0, 1, a) for a in range(1000)}) == 1000
    assert gt_roi_seed(1, 1, 2) != gt_roi_seed(0, 1, 2)
    assert gt_roi_seed(0, 1, 2) != gt_roi_seed(0, 2, 1)
    box = (1.0, 2.0, 3.0, 4.0)
    assert proposal_roi_seed(0, 1, box) != proposal_roi_seed(0, 1, (1.0, 2.0, 3.0, 4.1))
    assert proposal_roi_seed(0, 1, box) == proposal_roi_seed(0, 1, (1.04, 2.0, 3.0, 4.0))  # same tenths
    assert all(0 <= gt_roi_seed(s, 1, 2) < 2**63 for s in range(100))


def test_a_box_needs_four_values():
    with pytest.raises(ValueError, match="got 3 values"):
        proposal_roi_seed(0, 1, (1.0, 2.0, 3.0))


def test_content_image_id_is_the_recorded_one_and_follows_the_pixels():
    import numpy as np

    from priors.identity import CONTENT_ID_BITS, content_image_id

    pixels = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert content_image_id(pixels) == 68972580042194  # pinned: it seeds DiffSP for new images
    assert content_image_id(pixels.copy()) == content_image_id(np.asfortranarray(pixels))  # layout: no matter
    assert content_image_id(pixels[:, ::-1]) != content_image_id(pixels)
    assert content_image_id(pixels.astype(np.uint16)) != content_image_id(pixels)  # dtype is part of it
    assert 0 <= content_image_id(pixels) < 2**CONTENT_ID_BITS
