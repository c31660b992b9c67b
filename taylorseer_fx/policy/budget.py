"""A compute budget: how many of a run's steps compute, and the pacing that places them.

Pure arithmetic on step counts (no policies, no tensors). Units: steps are 0-based indices of a
generation; a budget is a fraction of the run's steps in (0, 1] (``0.25``) or a speed-up ``"4x"``
(a fraction of 1/4).

:func:`target_computes` is ``round(fraction * steps)``, raised to :func:`least_computes` (what warm-up,
cooldown and ``max_forecast_run`` force) when the budget is below it. :func:`computes_needed` says how
many computes a stretch of steps needs at least under ``max_forecast_run``; the budgeted schedule
(``AutoPolicy(budget=...)``) uses it to stay feasible, so the count is met exactly. :class:`Pacer`
places the free computes: a run lasts the spacing the remaining budget affords where the estimate
grows at its usual rate, ends early where it grows faster, lasts longer where it grows slower.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["FINAL_FREE", "GROWTH", "PACINGS", "Pacer", "budget_fraction", "computes_needed", "final_free",
           "least_computes", "longest_run", "reserves_final", "target_computes"]

#: the free computes (after the warm-up) a budget must leave for ``final_compute=None`` to reserve the
#: last step, after a warm-up of one step and after a longer one (:func:`final_free`): with fewer, the
#: runs between them grow too long. Measured 2026-12-07, error with / without the last step reserved at
#: 4 free computes: warm-up 1 (5 computes, even pacing) arena Flux 0.61 / 0.75 / 0.47 / 0.44 at 28 / 50
#: / 20 / 12 steps, the DiT 1.16 / 0.85 / 1.19 / 0.95 (28, 50 steps x shift 1, 3); warm-up 3 (7 computes,
#: estimate pacing) the Flux 1.14 / 1.29 / 0.87 at 28 / 50 / 20. At 3 free after a warm-up of one the
#: models disagree (Flux 0.54-0.80, DiT 1.05-1.34), so it is not reserved there.
FINAL_FREE = (4, 5)


def final_free(warmup: int) -> int:
    """The free computes :data:`FINAL_FREE` asks for after a warm-up of ``warmup`` steps."""
    return FINAL_FREE[0] if warmup <= 1 else FINAL_FREE[1]


def budget_fraction(budget) -> float:
    """The fraction of steps a budget computes: a number in (0, 1], or a string ``"<k>x"`` with
    k >= 1 (a speed-up: 1/k). Raises ValueError naming ``budget`` for anything else."""
    if isinstance(budget, str):
        text = budget.strip().lower()
        try:
            k = float(text[:-1]) if text.endswith("x") else math.nan
        except ValueError:
            k = math.nan
        if not math.isfinite(k) or k < 1:
            raise ValueError(f"budget must be a fraction in (0, 1] or a speed-up '<k>x' with k >= 1 "
                             f"(e.g. 0.25 or '4x'), got {budget!r}")
        return 1.0 / k
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not 0 < budget <= 1:
        raise ValueError(f"budget must be a fraction in (0, 1] or a speed-up '<k>x' with k >= 1 "
                         f"(e.g. 0.25 or '4x'), got {budget!r}")
    return float(budget)


def computes_needed(steps: int, run: int, max_run: int | None) -> int:
    """The fewest computes among ``steps`` coming steps so that no forecast run exceeds ``max_run``,
    when ``run`` forecasts are already in a row (0 right after a compute)."""
    if max_run is None or steps <= 0:
        return 0
    slack = max_run - run                  # forecasts still allowed before a compute must come
    if steps <= slack:
        return 0
    return 1 + (steps - max(slack, 0) - 1) // (max_run + 1)


def least_computes(steps: int, warmup: int, cooldown: int, max_run: int | None) -> int:
    """The computes a run of ``steps`` cannot avoid: the warm-up (at least step 0), the cooldown, and
    what ``max_run`` needs between them."""
    lead = min(max(warmup, 1), steps)
    tail = min(cooldown, steps - lead)
    return lead + tail + computes_needed(steps - lead - tail, 0, max_run)


def target_computes(fraction: float, steps: int, warmup: int, cooldown: int, max_run: int | None) -> int:
    """``round(fraction * steps)`` computes for a run of ``steps``, at least :func:`least_computes` and
    at most ``steps``."""
    want = int(math.floor(fraction * steps + 0.5))
    return min(steps, max(want, least_computes(steps, warmup, cooldown, max_run)))


def reserves_final(final_compute: bool | None, computes: int, steps: int, warmup: int,
                   max_run: int | None) -> bool:
    """Whether a budget of ``computes`` over ``steps`` computes the last step: ``final_compute`` when
    given (and affordable), else when at least :func:`final_free` computes are left after the warm-up
    (and ``max_run`` still holds with one compute fewer elsewhere)."""
    if final_compute is False or steps <= warmup:
        return False
    affordable = least_computes(steps, warmup, 1, max_run) <= computes
    if final_compute is True:
        return affordable
    return affordable and computes - min(max(warmup, 1), steps) >= final_free(warmup)


def longest_run(steps: int, computes: int) -> int:
    """The longest forecast run a budget allows where it can: twice the mean spacing of ``computes``
    over ``steps`` (``2 * steps / computes - 1`` forecasts, rounded up). It keeps an estimate that is
    small early from saving the whole budget for the end, and one that is large early from spending
    it all there: where the estimate grows fastest runs are shorter, never longer than this."""
    return max(1, math.ceil(2 * steps / max(computes, 1)) - 1)


#: where a budget's free computes go (``AutoPolicy.pacing``): at the budget's even spacing, or where
#: the estimate grows fastest (:class:`Pacer`)
PACINGS = ("even", "estimate")

#: how the combined estimate of a forecast run grows with its length k when each step's own estimate
#: grows like k (the pair estimate of order 1): k ("step"), k^1.5 (root of the sum of squares), k^2 (sum)
GROWTH = {"step": 1.0, "rss": 1.5, "sum": 2.0}


class Pacer:
    """Where a budget's free computes go: runs as long as the budget's spacing where the estimate grows
    at its usual rate, shorter where it grows faster, longer where slower.

    Each free step's combined estimate ``value`` of the run (``run`` forecasts with this step) gives a
    growth rate ``a = value / run ** g`` (``g`` = ``GROWTH[rule]``). With ``ā`` the geometric mean of
    the rates seen so far in the generation and ``L`` the forecasts per compute the budget left
    affords (``1 / pace - 1``), the step computes when ``run > L * (ā / a) ** (1 / g)``: every run ends
    at about the same estimated error, the one that spends the budget. Scale-free (no level to
    guess); ``threshold`` (optional) also computes a step whose estimate reaches it. ``+inf`` (the
    forecaster cannot estimate: a non-finite output) computes; ``NaN`` (no estimate yet: fewer computes
    than the estimator needs, e.g. after a warm-up of one) takes the usual rate, so the run lasts the
    budget's even spacing. Neither moves the mean. ``even=True`` places every step so (the estimate
    then only counts against ``threshold``, and +inf still computes): ``AutoPolicy(pacing="even")``."""

    def __init__(self, rule: str = "rss", threshold: float | None = None, even: bool = False):
        self.growth = GROWTH[rule]
        self.threshold = threshold
        self.even = even          # every finite estimate takes the usual rate: the budget's even spacing
        self._log_sum, self._n = 0.0, 0

    def decide(self, value: float, pace: float, run: int) -> bool:
        """``value``: the combined estimate with this step forecast (``run`` >= 1 forecasts in a row);
        ``pace``: the remaining free computes per remaining free step."""
        forecasts = 1.0 / max(pace, 1e-12) - 1.0           # per compute, what the budget affords
        if math.isnan(value):              # no estimate yet: the budget's even spacing
            return run > forecasts
        if value == math.inf:              # none possible (a non-finite output): compute
            return True
        if self.threshold is not None and value >= self.threshold:
            return True
        if self.even:
            return run > forecasts
        a = value / run ** self.growth
        if not a > 0:                      # no growth (or one below float range: 1e-323 / 4 is 0)
            return False
        self._log_sum += math.log(a)
        self._n += 1
        usual = math.exp(self._log_sum / self._n)
        return run > forecasts * (usual / a) ** (1.0 / self.growth)
