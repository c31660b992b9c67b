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

__all__ = ["FIELDS", "FORECASTS", "KEEP", "candidates", "fields", "geomean", "label", "ranked"]

#: the AutoPolicy fields a candidate may set: how it forecasts, and the warm-up it needs for that
FIELDS = ("form", "order", "warmup", "select_order", "max_order", "order_margin", "coordinate",
          "derivatives_from")

#: the candidates tried beside the policy's own forecaster: HiCache's scaled Hermite basis and the
#: official Taylor series, orders 2 and 1, each at a fixed order from one point (the step-recursion
#: forms forecast from one compute, so the warm-up's computes go where the search puts them)
FORECASTS = tuple({"form": f, "order": o, "warmup": 1, "select_order": False, "max_order": None,
                   "coordinate": "step"} for f, o in (("hermite", 2), ("hermite", 1), ("taylor", 2), ("taylor", 1)))

#: how many candidates, the best starts first, are searched in full (placement and threshold)
KEEP = 2


def fields(policy: AutoPolicy) -> dict:
    """The candidate's :data:`FIELDS` as the policy resolves them (every ``None`` replaced by what it
    means: what tells two forecasters apart)."""
    return {**dataclasses.asdict(policy.forecast), "warmup": policy.warmup_steps,
            "derivatives_from": policy.derivatives_from}


def label(policy: AutoPolicy) -> str:
    """A candidate's name in progress lines, tables and checkpoints: ``"hermite 2, warm-up 1"``, with
    ``", order chosen"`` where the order is chosen per run, and every other field of :data:`FIELDS`
    that differs from what the policy would resolve from those alone (``", coordinate timestep"``), so
    two different forecasters never share a name."""
    mine = fields(policy)
    core = {k: mine[k] for k in ("form", "order", "warmup", "select_order")}
    try:
        plain = fields(AutoPolicy(threshold=1.0, **core))
    except ValueError:             # the core alone is refused (e.g. a coordinate its form needs): name all
        plain = {}
    extra = "".join(f", {k} {v}" for k, v in mine.items() if k not in core and plain.get(k, object()) != v)
    chosen = ", order chosen" if core["select_order"] else ""
    return f"{core['form']} {core['order']}, warm-up {core['warmup']}{chosen}{extra}"


def candidates(base: AutoPolicy, forecasts, say=None) -> dict:
    """``{label: policy}``: ``base`` first, then ``base`` with each of ``forecasts`` (a sequence of
    dicts of :data:`FIELDS`; ``None`` or empty: ``base`` alone). Duplicates are dropped. ValueError
    naming ``forecasts`` for anything but a sequence of such dicts, and naming the field for a value
    the policy refuses -- except for the default :data:`FORECASTS`, where a candidate ``base`` cannot
    take (its other fields rule it out) is left out and ``say`` (a callable) is told why."""
    if forecasts is None:
        forecasts = ()
    if isinstance(forecasts, (str, bytes, Mapping)) or not isinstance(forecasts, Sequence):
        raise ValueError(f"tune: forecasts must be a sequence of dicts of {list(FIELDS)} (or None: the policy's "
                         f"own forecaster only), got {forecasts!r}")
    out = {label(base): base}
    for i, given in enumerate(forecasts):
        if not isinstance(given, Mapping) or not given:
            raise ValueError(f"tune: forecasts[{i}] must be a non-empty dict of {list(FIELDS)}, got {given!r}")
        unknown = sorted(set(given) - set(FIELDS))
        if unknown:
            raise ValueError(f"tune: forecasts[{i}] sets {unknown}; a candidate may set only {list(FIELDS)}")
        try:
            policy = dataclasses.replace(base, **given)
        except ValueError as e:
            if forecasts is not FORECASTS:
                raise ValueError(f"tune: forecasts[{i}] = {dict(given)!r}: {e}") from None
            if say is not None:
                say(f"[tune] forecaster {dict(given)} left out: with the policy's other fields, {e}")
            continue
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
