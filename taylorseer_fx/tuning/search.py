"""Where a run's computes go: placements and the local search over them. Pure arithmetic on step indices
(no models, no tensors), and the golden-section search of a tuned threshold.

A *placement* is the sorted tuple of a run's compute steps (0-based, counted from the run's first step).
Its *pinned* steps (the warm-up and the cooldown) never move; the others move one at a time
(:func:`descend`), never past a neighbour, never leaving a forecast run longer than ``max_run``, so the
number of computes never changes.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

__all__ = ["bracket", "descend", "even_placement", "even_starts", "feasible", "fit_count", "golden", "pinned_steps"]


def pinned_steps(steps: int, warmup: int, cooldown: int) -> frozenset:
    """The steps every placement of a run of ``steps`` computes: the warm-up (at least step 0) and
    the cooldown."""
    return frozenset(range(min(max(warmup, 1), steps))) | frozenset(range(max(steps - cooldown, 0), steps))


def feasible(placement: Iterable[int], steps: int, max_run: int | None) -> bool:
    """True when ``placement`` starts at step 0, increases, stays below ``steps`` and forecasts at most
    ``max_run`` steps in a row (None: no bound), the steps after its last compute included."""
    p = list(placement)
    if not p or p[0] != 0 or p[-1] >= steps or any(b <= a for a, b in zip(p, p[1:])):
        return False
    return max_run is None or all(b - a - 1 <= max_run for a, b in zip(p, p[1:] + [steps]))


def even_placement(steps: int, computes: int, warmup: int, cooldown: int, max_run: int | None,
                   final: bool = False) -> tuple:
    """``computes`` compute steps of a run of ``steps``: the pinned ones, the rest spread evenly over the
    steps between warm-up and cooldown (each forecast run as long as the others, within one). With
    ``final`` the last step is one of them (where the cooldown does not compute it already and a compute
    is left for it) and the others spread evenly before it: the last step's forecast error goes
    straight into the output. ValueError when ``computes`` is fewer than the pinned steps need or more
    than ``steps``, or cannot keep ``max_run``."""
    if final and cooldown == 0 and steps >= 2 and computes > len(pinned_steps(steps, warmup, 0)):
        return even_placement(steps - 1, computes - 1, warmup, 0, max_run) + (steps - 1,)
    pinned = pinned_steps(steps, warmup, cooldown)
    lead = min(max(warmup, 1), steps)
    free = [s for s in range(lead, steps) if s not in pinned]
    k = computes - len(pinned)
    if k < 0 or k > len(free):
        raise ValueError(f"even_placement: {computes} computes of {steps} steps; the warm-up and cooldown "
                         f"need {len(pinned)}, at most {steps}")
    # k computes split the free stretch (and the forecast run after it) into k + 1 runs of equal length
    span = len(free) + 1
    chosen = {free[(i + 1) * span // (k + 1) - 1] for i in range(k)}
    out = tuple(sorted(pinned | chosen))
    if not feasible(out, steps, max_run):
        raise ValueError(f"even_placement: {computes} computes of {steps} steps cannot keep forecast runs "
                         f"<= max_forecast_run={max_run}")
    return out


def even_starts(steps: int, computes: int, warmup: int, cooldown: int, max_run: int | None) -> dict:
    """``{"even": ..., "even, last step": ...}``: the two :func:`even_placement` starts of a search, the
    second only where it keeps ``max_run`` (the first raises as :func:`even_placement` does)."""
    out = {"even": even_placement(steps, computes, warmup, cooldown, max_run)}
    try:
        out["even, last step"] = even_placement(steps, computes, warmup, cooldown, max_run, final=True)
    except ValueError:      # its last forecast run would be too long for max_run: the even one only
        pass
    return out


def fit_count(placement: Iterable[int], count: int, steps: int, pinned: frozenset, max_run: int | None) -> tuple:
    """``placement`` brought to exactly ``count`` computes: the pinned steps added, then computes added
    in the middle of the longest forecast run, or those closing the shortest run removed (never a
    pinned one), until the count is met; ValueError when no feasible placement of ``count`` results
    (``count`` below what ``max_run`` needs, or above ``steps``)."""
    out = sorted(set(placement) | pinned | {0})
    out = [s for s in out if 0 <= s < steps]
    while len(out) < count:
        runs = [(b - a - 1, a) for a, b in zip(out, out[1:] + [steps])]
        length, a = max(runs)
        if length <= 0:
            break
        out = sorted(out + [a + 1 + length // 2])
    while len(out) > count:
        movable = [i for i, s in enumerate(out) if s not in pinned]
        if not movable:
            break
        # remove the compute whose removal leaves the shortest merged run (before + after it)
        def merged(i):
            nxt = out[i + 1] if i + 1 < len(out) else steps
            return nxt - out[i - 1] - 1
        i = min(movable, key=lambda i: (merged(i), i))
        out = out[:i] + out[i + 1:]
    result = tuple(out)
    if len(result) != count or not feasible(result, steps, max_run):
        raise ValueError(f"fit_count: no placement of {count} computes of {steps} steps from {list(placement)} "
                         f"keeps max_forecast_run={max_run}")
    return result


def descend(evaluate: Callable[[tuple], float], start: tuple, steps: int, *, pinned: frozenset,
            max_run: int | None, reach: int = 2, sweeps: int = 2) -> tuple:
    """Coordinate descent from ``start``: each compute not in ``pinned`` in turn moves to the step
    within ``reach`` (between its neighbours, keeping ``max_run``) where ``evaluate`` is lowest, if that
    is lower than where it is; at most ``sweeps`` sweeps, stopping early when a sweep moves nothing.
    Returns ``(placement, its value)``: a local optimum, never worse than ``start``. ``evaluate`` is
    called on tuples; it should memoise (the same placement is asked again across sweeps)."""
    best = tuple(start)
    best_value = evaluate(best)
    for _ in range(sweeps):
        moved = False
        for i in range(len(best)):
            if best[i] in pinned:
                continue
            lo = best[i - 1] + 1 if i > 0 else 0
            hi = best[i + 1] - 1 if i + 1 < len(best) else steps - 1
            for p in range(max(lo, best[i] - reach), min(hi, best[i] + reach) + 1):
                if p == best[i] or p in pinned:
                    continue
                cand = best[:i] + (p,) + best[i + 1:]
                if not feasible(cand, steps, max_run):
                    continue
                value = evaluate(cand)
                if value < best_value:
                    best, best_value, moved = cand, value, True
        if not moved:
            break
    return best, best_value


def bracket(probes: list, count: int) -> tuple:
    """The probes whose counts are the closest at or below and at or above ``count`` (None if none)."""
    below = [f for f in probes if len(f[1]) <= count]
    above = [f for f in probes if len(f[1]) >= count]
    return (max(below, key=lambda f: (len(f[1]), -f[0])) if below else None,
            min(above, key=lambda f: (len(f[1]), -f[0])) if above else None)


def golden(f: Callable[[float], float], lo: float, hi: float, evals: int) -> tuple:
    """``(x, f(x))``: the lowest of a golden-section search of ``f`` on ``[lo, hi]`` (``evals`` calls)."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(max(evals - 2, 0)):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (c, fc) if fc <= fd else (d, fd)
