"""Which forecaster a tuned preset uses: the candidates :func:`~taylorseer_fx.tune` tries beside the
policy's own, their labels, and the ranking of their starts.

A placement is only as good as the forecast between its computes, and the best forecast depends on
how far apart the computes are: on the arena's Flux at a quarter of 28 steps, HiCache's scaled Hermite
basis of order 2 from a warm-up of one step reached about half the error of the auto policy's own
forecaster, each on the best placement a search found for it (docs/tuning.md); on the DiT of
``benchmarks/quality.py`` the policy's own stays best. So the tuner ranks every candidate by its best
start (the even placements and the budget's own, on the calibration cases), searches the best
:data:`KEEP` in full, and keeps the one that validates better. Units: steps are 0-based step
indices; errors are mean relative L2 over the calibration cases.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

from ..policy.auto import AutoPolicy

__all__ = ["FIELDS", "FORECASTS", "KEEP", "candidates", "geomean", "label", "ranked"]

#: the AutoPolicy fields a candidate may set: how it forecasts, and the warm-up it needs for that
FIELDS = ("form", "order", "warmup", "select_order", "max_order", "order_margin", "coordinate",
          "derivatives_from")

#: the candidates tried beside the policy's own forecaster: HiCache's scaled Hermite basis and the
#: official Taylor series, orders 2 and 1, each at a fixed order from one point (the step-recursion
#: forms forecast from one compute, so the warm-up's computes go where the search puts them)
FORECASTS = (
    {"form": "hermite", "order": 2, "warmup": 1, "select_order": False},
    {"form": "hermite", "order": 1, "warmup": 1, "select_order": False},
    {"form": "taylor", "order": 2, "warmup": 1, "select_order": False},
    {"form": "taylor", "order": 1, "warmup": 1, "select_order": False},
)

#: how many candidates, the best starts first, are searched in full (placement and threshold)
KEEP = 2


def label(policy: AutoPolicy) -> str:
    """A candidate's name in progress lines, tables and checkpoints: ``"hermite 2, warm-up 1"``, with
    ``", order chosen"`` where the order is chosen per run."""
    chosen = ", order chosen" if policy.select_order else ""
    return f"{policy.form} {policy.order}, warm-up {policy.warmup_steps}{chosen}"


def candidates(base: AutoPolicy, forecasts) -> dict:
    """``{label: policy}``: ``base`` first, then ``base`` with each of ``forecasts`` (a sequence of
    dicts of :data:`FIELDS`; ``None`` or empty: ``base`` alone). Duplicates are dropped. ValueError
    naming ``forecasts`` for anything but a sequence of such dicts, and naming the field for a value
    the policy refuses."""
    if forecasts is None:
        forecasts = ()
    if isinstance(forecasts, (str, bytes, Mapping)) or not isinstance(forecasts, Sequence):
        raise ValueError(f"tune: forecasts must be a sequence of dicts of {list(FIELDS)} (or None: the policy's "
                         f"own forecaster only), got {forecasts!r}")
    out = {label(base): base}
    for i, fields in enumerate(forecasts):
        if not isinstance(fields, Mapping) or not fields:
            raise ValueError(f"tune: forecasts[{i}] must be a non-empty dict of {list(FIELDS)}, got {fields!r}")
        unknown = sorted(set(fields) - set(FIELDS))
        if unknown:
            raise ValueError(f"tune: forecasts[{i}] sets {unknown}; a candidate may set only {list(FIELDS)}")
        try:
            policy = dataclasses.replace(base, **fields)
        except ValueError as e:
            raise ValueError(f"tune: forecasts[{i}] = {dict(fields)!r}: {e}") from None
        out.setdefault(label(policy), policy)
    return out


def geomean(values: Sequence[float]) -> float:
    """The geometric mean of errors (inf when one is not finite; a zero counts as 1e-300)."""
    if not values or any(not math.isfinite(v) for v in values):
        return math.inf
    return math.exp(sum(math.log(max(v, 1e-300)) for v in values) / len(values))


def ranked(scores: Mapping[str, Sequence[float]], keep: int = KEEP) -> list:
    """The labels of the ``keep`` candidates with the lowest :func:`geomean` of their start errors (one
    per step count), best first; ties keep the given order."""
    return sorted(scores, key=lambda k: geomean(scores[k]))[:keep]
