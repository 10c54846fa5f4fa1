"""Occlusion-rate buckets: names, order, exact membership at every boundary, one bucket per rate."""
from __future__ import annotations

import math

import numpy as np
import pytest

from priors.occlusion import OCCLUDED, OCCLUSION_BUCKETS, OcclusionBucket, occlusion_bucket

# rate -> bucket, as the synthetic summary and `aisdiff inspect` have always counted them
BOUNDARIES = {0.0: "none", 1e-9: "0-10%", 0.05: "0-10%", 0.0999: "0-10%", 0.1: "10-30%", 0.2999: "10-30%",
              0.3: "30-50%", 0.4999: "30-50%", 0.5: ">50%", 0.9: ">50%", 1.0: ">50%"}


def test_bucket_names_and_order():
    assert [b.name for b in OCCLUSION_BUCKETS] == ["none", "0-10%", "10-30%", "30-50%", ">50%"]
    assert OCCLUDED == 0.1


@pytest.mark.parametrize(("rate", "name"), BOUNDARIES.items())
def test_every_boundary_falls_in_its_bucket(rate, name):
    assert occlusion_bucket(rate) == name
    assert [b.name for b in OCCLUSION_BUCKETS if b.contains(rate)] == [name]


def test_every_rate_is_in_exactly_one_bucket():
    rates = np.concatenate([np.linspace(0, 1, 10001), np.nextafter([0.1, 0.3, 0.5], 0)])
    for rate in rates:
        assert sum(b.contains(float(rate)) for b in OCCLUSION_BUCKETS) == 1, rate


@pytest.mark.parametrize("rate", [-1e-9, 1.0 + 1e-9, math.nan])
def test_a_rate_outside_0_1_is_an_error(rate):
    with pytest.raises(ValueError, match="not in \\[0, 1\\]"):
        occlusion_bucket(rate)


def test_a_bucket_with_a_closed_lower_bound_holds_it():
    assert OcclusionBucket("0%-10%", 0.0, 0.1).contains(0.0)  # a first bucket that holds the unoccluded
    assert not OcclusionBucket("10%-30%", 0.1, 0.3).contains(0.3)
