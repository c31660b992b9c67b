"""Tuned per step count: the checks of an AutoPolicy's ``placements`` ({N: compute steps}) and
``thresholds`` ({N: threshold}), what :func:`taylorseer_fx.tune` writes. Each returns the field as
sorted, hashable ``(N, value)`` pairs or raises a ValueError naming ``placements[N]`` /
``thresholds[N]``. Steps are 0-based and counted from a run's first step.
"""

from __future__ import annotations

import math

from .budget import budget_fraction, target_computes

__all__ = ["checked_placements", "checked_thresholds"]


def _step_count(owner: str, field: str, key) -> int:
    """A key of ``placements`` / ``thresholds``: a step count, an int >= 1 (TOML gives it as a string)."""
    n = int(key) if isinstance(key, str) and key.strip().isdigit() else key
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{owner}: {field} keys must be step counts (ints >= 1), got {key!r}")
    return n


def checked_thresholds(policy) -> tuple:
    """An AutoPolicy's ``thresholds`` as sorted ``((N, threshold), ...)``; ValueError naming ``thresholds[N]``."""
    n, given = type(policy).__name__, policy.thresholds
    if policy.budget is None:
        raise ValueError(f"{n}: thresholds (tuned per step count) need a budget: the count they keep")
    if not hasattr(given, "items") or not given:
        raise ValueError(f"{n}: thresholds must be a non-empty mapping {{num_steps: threshold}}, got {given!r}")
    out = {}
    for key, tau in given.items():
        N = _step_count(n, "thresholds", key)
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
            raise ValueError(f"{n}: thresholds[{N}] must be a finite number > 0, got {tau!r}")
        if N in dict(policy.placements or ()):
            raise ValueError(f"{n}: {N} steps has both a tuned placement and a tuned threshold")
        out[N] = float(tau)
    return tuple(sorted(out.items()))


def checked_placements(policy) -> tuple:
    """An AutoPolicy's ``placements`` as sorted ``((N, (steps...)), ...)``; ValueError naming ``placements[N]``."""
    n, given = type(policy).__name__, policy.placements
    items = given.items() if hasattr(given, "items") else given
    try:
        items = [(k, v) for k, v in items]
    except (TypeError, ValueError):
        raise ValueError(f"{n}: placements must be a mapping {{num_steps: [compute steps]}}, got {given!r}") from None
    out = {}
    for key, steps in items:
        N = _step_count(n, "placements", key)
        where = f"{n}: placements[{N}]"
        if isinstance(steps, (str, bytes)) or not hasattr(steps, "__iter__"):
            raise ValueError(f"{where} must be a list of compute steps, got {steps!r}")
        steps = tuple(steps)
        if (not steps or any(isinstance(i, bool) or not isinstance(i, int) for i in steps)
                or list(steps) != sorted(set(steps)) or steps[0] != 0 or steps[-1] >= N):
            raise ValueError(f"{where} must be increasing ints in [0, {N}) starting at 0, got {list(steps)!r}")
        must = set(range(min(policy.warmup_steps, N))) | set(range(max(N - policy.cooldown, 0), N))
        if not must <= set(steps):
            raise ValueError(f"{where} must compute every warm-up and cooldown step: misses "
                             f"{sorted(must - set(steps))}")
        gaps = [b - a - 1 for a, b in zip(steps, steps[1:] + (N,))]
        if policy.max_forecast_run is not None and max(gaps) > policy.max_forecast_run:
            raise ValueError(f"{where} forecasts {max(gaps)} steps in a row; max_forecast_run is "
                             f"{policy.max_forecast_run}")
        if policy.budget is not None:
            want = target_computes(budget_fraction(policy.budget), N, policy.warmup_steps, policy.cooldown,
                                   policy.max_forecast_run)
            if len(steps) != want:
                raise ValueError(f"{where} computes {len(steps)} steps; the budget {policy.budget!r} "
                                 f"computes {want} of {N}")
        if N in out:
            raise ValueError(f"{n}: placements has {N} twice")
        out[N] = steps
    if not out:
        raise ValueError(f"{n}: placements is empty (leave it out, or give {{num_steps: [compute steps]}})")
    return tuple(sorted(out.items()))
