"""The adaptive policy: :class:`AutoPolicy` and its per-generation schedule.

Per step it forecasts while the estimated relative error of the current forecast run stays under
``threshold``, or, with a ``budget``, computes exactly ``round(budget * N)`` of the run's N steps
(placed by :class:`~taylorseer_fx.policy.budget.Pacer`, or by a tuned placement or threshold per step
count: ``placements`` / ``thresholds``, checked in :mod:`taylorseer_fx.policy.tuned`). Knows nothing of
graphs or tensors; units: steps are 0-based step indices of a generation.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from ..forecast.estimates import ESTIMATORS
from .base import Policy, Schedule, _check_int
from .budget import (PACINGS, Pacer, budget_fraction, computes_needed, least_computes, longest_run, reserves_final,
                     target_computes)
from .tuned import checked_placements, checked_thresholds

__all__ = ["ACCUMULATE", "AutoPolicy"]

#: how AutoPolicy combines the estimates of one forecast run (``accumulate``)
ACCUMULATE = ("step", "sum", "rss")


class _AutoSchedule(Schedule):
    def __init__(self, policy, num_steps, end):
        super().__init__(policy, num_steps, end)
        self.rule = policy.rule
        self.total = 0.0  # over the current forecast run: the sum of the estimates ("sum") or of their squares ("rss")
        self.target = None   # a budget's computes over the steps from first_step (set at the first decision)
        self.spent = 0
        self.pacer = None
        self.soft = None     # the run bound the budget reserves computes for (longest_run), when it can
        self.placed = None   # a tuned placement for this run's step count: its compute steps from first_step
        self.tau = None      # a tuned threshold for this run's step count (with the budget: the count stays exact)

    def _add(self, value: float) -> float:
        return self.total + (value * value if self.rule == "rss" else value)

    def _combined(self, value: float) -> float:
        """The estimate of the forecast run so far with this step's ``value`` (the rule's combination)."""
        if self.rule == "step":
            return value
        total = self._add(value)
        return math.sqrt(total) if self.rule == "rss" else total

    def _decide(self, step, estimate):
        if self._step is None and (self.policy.placements or self.policy.thresholds):
            self.placed, self.tau = self._tuned()
        if self.placed is not None:             # a tuned placement: no estimate read at all
            decision = self._forced(step) or step - self.first_step in self.placed \
                or step - self.first_step >= self.num_steps - self.first_step
        elif self._too_short():
            decision = True
        elif self.policy.budget is not None:
            decision = self._budgeted(step, estimate)
        else:
            decision = self._threshold(step, estimate)
        self.spent += decision
        return decision

    def _count_compute(self) -> None:
        self.spent += 1          # a budget's count includes it: the free steps after it re-pace
        self.total = 0.0

    def _too_short(self) -> bool:
        """True (and a warning, once per length) when the run, counted from first_step, has fewer
        than ``min_steps`` steps: too few to forecast well, so every step computes."""
        p = self.policy
        if self.num_steps is None or self.num_steps - self.first_step >= p.min_steps:
            return False
        if self._step is None:
            warnings.warn(f"AutoPolicy: a run of {self.num_steps - self.first_step} steps is shorter than "
                          f"min_steps={p.min_steps}: every step computes (too few steps to forecast well; "
                          "pass min_steps=0 to forecast anyway)", UserWarning, stacklevel=3)
        return True

    def _tuned(self) -> tuple:
        """``(placement, threshold)`` tuned for this run's length (counted from first_step), one of
        them None; ``(None, None)`` with a warning naming what decides instead (once per length)."""
        p = self.policy
        steps = None if self.num_steps is None else self.num_steps - self.first_step
        placed, tau = dict(p.placements or ()).get(steps), dict(p.thresholds or ()).get(steps)
        if placed is None and tau is None:
            tuned = sorted(dict(p.placements or ()) | dict(p.thresholds or ()))
            rule = "the budget places the computes" if p.budget is not None else "the threshold rule decides"
            warnings.warn(f"AutoPolicy: no tuned placement or threshold for a run of {steps} steps (tuned: "
                          f"{tuned}); {rule}", UserWarning, stacklevel=2)
        return (None if placed is None else frozenset(placed)), tau

    def _threshold(self, step, estimate):
        p = self.policy
        if self._forced(step):
            self.total = 0.0
            return True
        in_min_run = step - self.last_compute - 1 < p.min_forecast_run
        if in_min_run and self.rule == "step":
            return False
        value = None if estimate is None else estimate()
        value = math.nan if value is None else float(value)
        if in_min_run:
            if math.isfinite(value):         # a step with no estimate (NaN, +inf) adds nothing to the total
                self.total = self._add(value)
            return False
        return self._rule(value)

    def _rule(self, value: float) -> bool:
        """The decision: compute when the estimated error of this step ("step"), the sum over the
        forecast run ("sum") or the root of the sum of squares over the run ("rss") exceeds the
        threshold. NaN (no estimate available) computes."""
        total = value if self.rule == "step" else self._add(value)
        bound = self._combined(value)
        if bound <= self.policy.threshold:
            self.total = total
            return False
        self.total = 0.0
        return True

    def _reads(self) -> bool:
        """Whether this run's budgeted decisions read the estimate (a threshold tuned for its length
        counts; ``AutoPolicy.reads_estimate`` asks the same of any length)."""
        return self.policy._budget_reads(tuned_threshold=self.tau is not None)

    def _budgeted(self, step, estimate):
        """Exactly ``target`` computes over steps first_step..num_steps-1: forced steps compute; a free
        step computes when the budget left must be spent on every free step left, forecasts when none
        is left (or a compute now would leave too few for the run bound), computes when a forecast
        would leave too few, else when the run's estimate reaches the pacer's level. The run bound is
        ``max_forecast_run`` and, where the budget can afford it, :func:`longest_run` (twice the
        budget's mean spacing)."""
        p = self.policy
        if self.target is None:
            steps = self.num_steps - self.first_step
            self.target = target_computes(budget_fraction(p.budget), steps, p.warmup_steps, p.cooldown,
                                          p.max_forecast_run)
            self.pacer = Pacer(self.rule, p.threshold, even=p.pacing == "even")
            if p.cooldown == 0 and self.end is None and reserves_final(p.final_compute, self.target, steps,
                                                                       p.warmup_steps, p.max_forecast_run):
                self.end = self.num_steps - 1       # the final step computes, as a cooldown of 1 would
            longest = longest_run(steps, self.target)
            soft = longest if p.max_forecast_run is None else min(longest, p.max_forecast_run)
            # the budget's longest run is reserved for like max_forecast_run where the budget allows it
            self.soft = soft if least_computes(steps, p.warmup_steps, p.cooldown, soft) <= self.target else None
        if self._forced(step):
            self.total = 0.0
            return True
        end = self.end if self.end is not None else self.num_steps
        free_left = end - step                       # this step and the free ones after it
        if free_left <= 0:                           # past the run it was told: when in doubt, compute
            self.total = 0.0
            return True
        free_budget = self.target - self.spent - (self.num_steps - end)   # the cooldown is reserved
        run = step - self.last_compute - 1
        m = p.max_forecast_run if self.soft is None else self.soft
        can_forecast = (free_budget <= free_left - 1 and (m is None or run + 1 <= m)
                        and free_budget >= computes_needed(free_left - 1, run + 1, m))
        can_compute = free_budget >= 1 and free_budget - 1 >= computes_needed(free_left - 1, 0, m)
        if can_forecast != can_compute:
            must = can_compute
        elif not can_compute:            # only where the soft bound cannot be kept: spend what is left
            must = free_budget > 0
        elif run < p.min_forecast_run:
            must = False
        elif not self._reads():
            return self.pacer.decide(math.nan, free_budget / free_left, run + 1)    # no estimate read
        else:
            value = None if estimate is None else estimate()
            value = math.nan if value is None else float(value)
            combined = self._combined(value) if math.isfinite(value) else value
            if self.tau is not None and not math.isnan(combined):   # a tuned threshold: the rule's own
                compute = combined == math.inf or combined > self.tau     # decision, the count kept above
            else:
                compute = self.pacer.decide(combined, free_budget / free_left, run + 1)
            self.total = 0.0 if compute else self._add(value) if math.isfinite(value) else self.total
            return compute
        if not must and self._reads():
            value = None if estimate is None else estimate()
            if value is not None and math.isfinite(float(value)):   # as in _threshold
                self.total = self._add(float(value))
        else:
            self.total = 0.0
        return must


@dataclass(frozen=True, kw_only=True, repr=False)
class AutoPolicy(Policy):
    """Adaptive: forecast while the estimated relative errors of the forecast run, combined, stay <=
    ``threshold``; else compute.

    The estimate is the estimated relative error ``||forecast - output|| / ||output||`` of the region
    output at this step (max over regions unless ``per_region``), formed from the stored factors
    without a host sync (``Forecaster.error_estimate``):

    * ``estimator="pair"`` (default): the embedded pair -- the difference between the forecast of the
      stored order and that of one order less (the last term of the series). Measured best on the demo
      model (``docs/auto.md``, ``benchmarks/quality.py``).
    * ``estimator="remainder"``: the next term of the series, from the (order+1)-th difference of the
      last order + 2 computes.

    ``accumulate`` -- how the estimates ``e_1..e_k`` of the current forecast run (since the last
    compute) are combined before the threshold: ``"rss"`` (default) ``sqrt(sum e_i^2)``, errors that
    add in quadrature; ``"sum"`` (or ``True``) ``sum e_i``; ``"step"`` (or ``False``) the step's own
    ``e_k``, i.e. the largest tolerated relative error of any forecast step. With an estimate that grows
    with the distance ``d`` from the last compute (``e ~ r d``) a run lasts ``~ tau / r`` steps
    (``step``), ``~ (3 tau^2 / r^2)^(1/3)`` (``rss``) or ``~ sqrt(2 tau / r)`` (``sum``): ``rss``
    spreads the computes more evenly than ``step`` and less than ``sum``. Measured best over both
    shipped models (``docs/auto.md``). The ``rss`` and ``sum`` combinations are never below the step's
    own estimate, so under all three every forecast step's own estimate is <= ``threshold``.

    ``select_order=True`` (default with the pair; the remainder estimates the term after the stored
    order, so it defaults to False): the forecast order is chosen per forecast run, per region, among
    ``0..max_order`` (default ``order + 1``): at each compute the forecasts of every order from the
    points before it are compared with the computed output (a back-test over the distance the last
    run actually had) and the next run uses the order with the smallest error when it is below
    ``order_margin`` times the error of ``order``, else ``order``. The estimate stays the pair of
    ``order``. The choice stays on the device (no host read). Default form: ``heun`` in the step
    index (newton's divided differences through the newest computes, whatever their spacing, with
    the quadratic term of a BDF2 predictor / Heun corrector: exact for lines, a damped quadratic;
    :mod:`taylorseer_fx.forecast.forms`). It won over ``newton`` on both shipped models (docs/auto.md).

    ``budget`` (instead of, or with, ``threshold``): a fraction of the run's steps in (0, 1] or a
    speed-up ``"4x"``. The run computes exactly ``round(budget * N)`` (halves up: ``floor(budget * N + 0.5)``)
    of its N steps (counted from the
    schedule's first step; raised to what warm-up, cooldown and ``max_forecast_run`` force), so N must
    be known (``num_steps``; the runtime is told it by ``compile_pipeline`` and sessions). Where the
    free steps' computes go is ``pacing``: ``"even"`` (default) at the budget's even spacing (the free
    computes left spread evenly over the free steps left), reading no estimate; ``"estimate"`` by
    :class:`~taylorseer_fx.policy.budget.Pacer`: runs as long as the remaining budget affords where
    the estimate grows at its usual rate, shorter where faster. Measured on both shipped models, even
    spacing places them better (arena Flux: 0.61x the best peer against 0.77x, geomean of six cells;
    DiT: 0.46x the best fixed schedule against 0.59x, 32 rows; docs/auto.md). With a ``threshold`` too,
    an estimate reaching it also computes (the count stays exact), under either pacing.

    ``placements`` (what :func:`taylorseer_fx.tune` writes): ``{N: [compute steps]}``, the tuned
    placement of a run of N steps (steps counted from the schedule's first step; every warm-up and
    cooldown step included, no forecast run longer than ``max_forecast_run``, exactly the budget's
    count with a budget). A run of a tuned length computes exactly those steps and reads no estimate;
    any other length is decided by the budget (or threshold), with a warning naming the length once.
    A TOML table ``[placements]`` with keys ``28 = [0, 1, 2, ...]``. Stored as sorted ``(N, steps)``
    pairs (hashable). ``thresholds`` (with a budget; also written by the tuner): ``{N: threshold}``, a
    tuned threshold for runs of N steps: a free step computes when the run's estimate exceeds it,
    the budget's count kept exact as always (table ``[thresholds]``).

    ``final_compute`` (budgets only): the run's last step computes, spent from the budget. ``None``
    (default): where the budget leaves at least :func:`~taylorseer_fx.policy.budget.final_free`
    free computes after the warm-up (4 after a warm-up of one step, 5 after a longer one; the final
    step's forecast error goes straight into the output; measured on both shipped models,
    docs/auto.md); ``True``: always; ``False``: never.
    A ``cooldown`` already computes it.

    ``min_steps`` (default 8): a run shorter than this (its steps counted from the schedule's first
    step: an img2img run at strength 0.3 of 20 steps has 6) is too short to forecast well -- distilled
    4-step models, img2img at low strength -- so every step computes, and a warning says so once per
    length. ``min_steps=0`` forecasts anyway; a tuned placement for that length is used as tuned.
    Unknown step counts (a bare loop without ``num_steps``) are not checked.

    Warm-up (default ``max(order + 1, 3)``, with a budget 1; any ``warmup >= 1``, also below
    ``order + 1`` for the divided forms), cooldown and ``max_forecast_run`` force computes; after a
    compute at least ``min_forecast_run`` steps are forecast (outside warm-up/cooldown). No
    estimator, or an estimate of None/NaN, computes -- except under a budget, where a step with no
    estimate yet (fewer computes stored than the estimator needs, after a warm-up below that) is
    placed at the budget's even spacing, forecasting from the computes there are (one: the last
    output repeated). An estimate of +inf (a non-finite output) computes wherever the estimate is
    read. ``per_region``: the runtime keeps one schedule per region instead of one shared.
    """

    threshold: float | None = None
    budget: float | str | None = None
    placements: tuple | None = None
    thresholds: tuple | None = None
    form: str = "heun"
    estimator: str = "pair"
    min_forecast_run: int = 0
    accumulate: bool | str = "rss"
    per_region: bool = False
    min_steps: int = 8
    final_compute: bool | None = None
    pacing: str = "even"

    @property
    def decides_per_region(self) -> bool:
        return self.per_region

    @property
    def reads_estimate(self) -> bool:
        """False for a budget at even spacing with no threshold (given or tuned): its decisions follow
        from the step count alone, so nothing is read and a replay is the schedule that ran."""
        return self.budget is None or self._budget_reads(tuned_threshold=bool(self.thresholds))

    def _budget_reads(self, tuned_threshold: bool) -> bool:
        """Whether a budget's decisions read the estimate: estimate pacing, or a threshold (given, or
        ``tuned_threshold``) that an estimate can reach."""
        return self.pacing == "estimate" or self.threshold is not None or tuned_threshold

    @property
    def error_estimator(self) -> str:
        return self.estimator

    def _default_coordinate(self) -> str:
        return "step"

    def _least_warmup(self) -> int:
        return 1        # the estimate gates the first forecasts: none before the estimator has its computes

    def _default_warmup(self) -> int:
        if self.budget is not None:        # a budget paces what it cannot estimate: one compute, then
            return 1                       # its even spacing until the estimate has its points
        return max(self.order + 1, 3)      # the first steps change fastest: compute them

    def _default_select_order(self) -> bool:
        return self.estimator == "pair"

    def _validate(self) -> None:
        n = type(self).__name__
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"{n}: estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        super()._validate()
        t = self.threshold
        if t is None and self.budget is None:
            raise ValueError(f"{n}: give a threshold (the largest estimated error of a forecast run) or a "
                             "budget (a fraction of the steps to compute, e.g. 0.25, or a speed-up '4x')")
        if t is not None and (isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t)
                              or t <= 0):
            raise ValueError(f"{n}: threshold must be a finite number > 0, got {t!r}")
        if self.budget is not None:
            try:
                budget_fraction(self.budget)
            except ValueError as e:
                raise ValueError(f"{n}: {e}") from None
        _check_int(n, "min_forecast_run", self.min_forecast_run, 0)
        _check_int(n, "min_steps", self.min_steps, 0)
        if self.pacing not in PACINGS:
            raise ValueError(f"{n}: pacing must be one of {PACINGS} (where a budget's computes go), "
                             f"got {self.pacing!r}")
        if self.final_compute is not None and not isinstance(self.final_compute, bool):
            raise ValueError(f"{n}: final_compute must be None (where the budget affords it), True or False, "
                             f"got {self.final_compute!r}")
        if self.budget is None and (self.pacing != "even" or self.final_compute is not None):
            field, value = ("pacing", self.pacing) if self.pacing != "even" else ("final_compute", self.final_compute)
            raise ValueError(f"{n}: {field}={value!r} applies to a budget's computes; give a budget too "
                             "(without one the threshold rule decides every step, and it would do nothing)")
        if self.max_forecast_run is not None and self.min_forecast_run > self.max_forecast_run:
            raise ValueError(f"{n}: min_forecast_run ({self.min_forecast_run}) must be <= "
                             f"max_forecast_run ({self.max_forecast_run})")
        a = self.accumulate
        if not isinstance(a, bool) and a not in ACCUMULATE:
            raise ValueError(f"{n}: accumulate must be one of {ACCUMULATE} (or False = 'step', True = 'sum'), "
                             f"got {a!r}")
        if not isinstance(self.per_region, bool):
            raise ValueError(f"{n}: per_region must be a bool, got {self.per_region!r}")
        if self.placements is not None:
            object.__setattr__(self, "placements", checked_placements(self))
        if self.thresholds is not None:
            object.__setattr__(self, "thresholds", checked_thresholds(self))

    def needs_num_steps(self) -> bool:
        return self.cooldown > 0 or self.budget is not None or self.placements is not None \
            or self.thresholds is not None

    @property
    def compute_fraction(self) -> float | None:
        """The share of a run's steps a budget computes (``budget`` resolved: ``"4x"`` is 0.25), or None
        without a budget."""
        return None if self.budget is None else budget_fraction(self.budget)

    @property
    def rule(self) -> str:
        """How the estimates of a forecast run are combined before the threshold: ``"step"`` (each
        step's own), ``"sum"`` or ``"rss"`` (root of the sum of squares); ``accumulate`` resolved."""
        a = self.accumulate
        return ("sum" if a else "step") if isinstance(a, bool) else a

    def _schedule(self, num_steps, end):
        return _AutoSchedule(self, num_steps, end)
