"""Occlusion-rate buckets: one definition for the benchmark summary, `aisdiff inspect` and tuning tables.

An instance's occlusion rate is the fraction of its amodal mask that is not visible, in [0, 1]. `none` holds
the unoccluded instances (rate exactly 0); the other buckets are half-open [lo, hi) except that `0-10%`
leaves 0 to `none` and `>50%` includes 1.
"""
from __future__ import annotations

from dataclasses import dataclass

OCCLUDED = 0.1  # "occluded" in tables and the tuning sample: a rate above 10%


@dataclass(frozen=True)
class OcclusionBucket:
    """Rates lo <= r < hi (r == lo when lo == hi; lo excluded with `lo_open`; hi == 1 included)."""

    name: str
    lo: float
    hi: float
    lo_open: bool = False

    def contains(self, rate: float) -> bool:
        """Whether an occlusion rate falls in this bucket."""
        if self.lo == self.hi:
            return rate == self.lo
        above = self.lo < rate if self.lo_open else self.lo <= rate
        return above and (rate < self.hi or rate == self.hi == 1.0)


OCCLUSION_BUCKETS = (OcclusionBucket("none", 0.0, 0.0), OcclusionBucket("0-10%", 0.0, 0.1, lo_open=True),
                     OcclusionBucket("10-30%", 0.1, 0.3), OcclusionBucket("30-50%", 0.3, 0.5),
                     OcclusionBucket(">50%", 0.5, 1.0))


def occlusion_bucket(rate: float) -> str:
    """The name of the bucket of an occlusion rate in [0, 1] (a ValueError for anything else)."""
    for bucket in OCCLUSION_BUCKETS:
        if bucket.contains(rate):
            return bucket.name
    raise ValueError(f"occlusion rate {rate!r} is not in [0, 1]")
