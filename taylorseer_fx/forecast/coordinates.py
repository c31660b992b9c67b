"""The forecaster's coordinate: validation, the merge distance of nearly coincident nodes, and the
unit of the divided differences. Units: a coordinate is a Python float in the caller's unit (timestep,
sigma or step index)."""

from __future__ import annotations

import math
import numbers

__all__ = ["NEAR", "UNIT_RANGE", "as_coordinate", "unit_for"]

#: a node closer to the newest one than this fraction of the run's own spacing (the gap before it, or
#: the gap to the new coordinate) is merged with it: the newer value replaces the older (KDPM2's two
#: stages, 1e-5 apart on a spacing of ~35, would make a divided difference of garbage). Small enough
#: that no real schedule's uneven computes (warm-up steps, then an interval of 64 on 1000 steps) merge
NEAR = 1.0 / 1024
UNIT_RANGE = (2.0 ** -20, 2.0 ** 20)   # first gaps outside it set a power-of-two coordinate unit


def unit_for(gap: float) -> float:
    """The coordinate unit for a table whose first gap is ``gap``: 1, or for a gap outside
    ``UNIT_RANGE`` (coordinates near the denormal range, or huge) the power of two nearest it, so that
    the divided differences stay in float32's range. A power of two scales exactly: within the range
    nothing changes."""
    if gap == 0 or not math.isfinite(gap) or UNIT_RANGE[0] <= gap <= UNIT_RANGE[1]:
        return 1.0
    return 2.0 ** round(math.log2(gap))



def as_coordinate(t) -> float:
    """The coordinate as a Python float; ValueError naming ``t`` for anything else (tensors included:
    converting one would sync with the host)."""
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t):
        raise ValueError(f"coordinate t must be a finite Python float, got {t!r}")
    return float(t)
