"""Policies: per step, compute the model (region) or forecast it. Knows nothing of graphs or tensors.

A :class:`Policy` is an immutable config (a frozen dataclass: readable ``repr``, equality, hashable,
``dataclasses.replace``). Its fields hold what was given (``None`` stays ``None``); what a ``None``
resolves to is read from properties (:attr:`Policy.warmup_steps`, :attr:`Policy.forecast`), so
``replace(AutoPolicy(threshold=0.1), order=2) == AutoPolicy(threshold=0.1, order=2)``.

A policy has two parts: *when* (which steps compute: the schedule, the subclass's own fields plus
warmup / cooldown / max_forecast_run / num_steps / derivatives_from) and *how* (the :class:`Forecast`:
form, order, coordinate and order choice, fields of every policy). Any schedule takes any forecast:
``MaskPolicy(...).with_forecast(AutoPolicy(threshold=0.1).forecast)``.

``policy.start(num_steps)`` returns a fresh per-generation :class:`Schedule`; its
``decide(step, estimate=None)`` answers True (compute) or False (forecast) for 0-based steps called in
increasing order (a repeated step returns the same answer; a smaller step raises).

Every policy computes step 0, the ``warmup`` first steps, the ``cooldown`` last steps (needs the step
count) and never forecasts more than ``max_forecast_run`` steps in a row.

- :class:`FixedPolicy` -- one compute every ``interval`` steps, counted from the last compute. The first
  gap after warm-up is ``phase`` (0 means ``interval``), and every step from ``compute_from`` on is
  computed. Those four numbers express every public schedule exactly; the anchor classmethods
  (:meth:`~FixedPolicy.official`, :meth:`~FixedPolicy.openvino`, :meth:`~FixedPolicy.diffusers`,
  :meth:`~FixedPolicy.seed`) take the anchors' own parameter names.
- :class:`MaskPolicy` -- an explicit list of compute steps; steps beyond the mask are computed.
- :class:`AutoPolicy` -- forecast while the estimated relative errors of the region output over the
  current forecast run (embedded pair; combined as the root of their sum of squares by default,
  ``accumulate``) stay <= ``threshold``.

Presets (``policies/*.toml``) load by name with :func:`taylorseer_fx.policy.presets.load_policy`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields

from ..forecast.forms import DIVIDED
from ..forecast.estimates import ESTIMATORS
from .base import Policy, Schedule, _check_int
from .budget import Pacer, budget_fraction, computes_needed, least_computes, longest_run, target_computes

__all__ = ["ACCUMULATE", "ANCHOR_OVERRIDES", "FixedPolicy", "MaskPolicy", "AutoPolicy"]

#: how AutoPolicy combines the estimates of one forecast run (``accumulate``)
ACCUMULATE = ("step", "sum", "rss")

#: fields every anchor classmethod (official, openvino, ...) also accepts, besides its own names
ANCHOR_OVERRIDES = ("form", "coordinate", "max_forecast_run", "num_steps")


class _FixedSchedule(Schedule):
    def _decide(self, step, estimate):
        if self._forced(step):
            return True
        p = self.policy
        gap = (p.phase or p.interval) if self.last_compute - self.first_step < p.warmup_steps else p.interval
        return step - self.last_compute >= gap


@dataclass(frozen=True, kw_only=True, repr=False)
class FixedPolicy(Policy):
    """Compute every ``interval`` steps after warm-up (interval=1: never forecast).

    ``phase`` (0 <= phase < interval; 0 means interval) is the gap from the last warm-up step to the
    first compute after it; later computes are ``interval`` apart. Every step >= ``compute_from`` and
    every step in the last ``cooldown`` is computed.
    """

    interval: int = 1
    phase: int = 0
    compute_from: int | None = None

    @property
    def never_forecasts(self) -> bool:
        return self.interval == 1

    def _validate(self) -> None:
        super()._validate()
        n = type(self).__name__
        _check_int(n, "interval", self.interval, 1)
        _check_int(n, "phase", self.phase, 0)
        if self.phase >= self.interval:
            raise ValueError(f"{n}: phase must be an int in [0, interval={self.interval}), got {self.phase!r}")
        _check_int(n, "compute_from", self.compute_from, 0, optional=True)

    def _schedule(self, num_steps, end):
        if self.compute_from is not None:
            end = self.compute_from if end is None else min(end, self.compute_from)
        return _FixedSchedule(self, num_steps, end)

    # ---- anchors: the public schedules, with their own parameter names ----

    @staticmethod
    def _anchor(what: str, taylor_fields: dict, common: dict, **kw) -> "FixedPolicy":
        unknown = sorted(set(common) - set(ANCHOR_OVERRIDES))
        if unknown:
            raise ValueError(f"FixedPolicy.{what}: unknown field {unknown[0]!r}; allowed overrides: "
                             f"{ANCHOR_OVERRIDES}")
        kw.update(form="taylor")
        kw.update(common)
        if kw["form"] not in DIVIDED:  # the derivative gating belongs to the step recursion (taylor, hermite)
            kw.update(taylor_fields)
        return FixedPolicy(**kw)

    @classmethod
    def official(cls, first_enhance: int = 3, fresh_threshold: int = 6, max_order: int = 1,
                 **common) -> "FixedPolicy":
        """Official TaylorSeer (``cal_type``): full while step < first_enhance, then a counter that
        computes when it reaches fresh_threshold - 1. Derivatives from step first_enhance - 1."""
        _check_int("FixedPolicy.official", "first_enhance", first_enhance, 1)
        _check_int("FixedPolicy.official", "fresh_threshold", fresh_threshold, 1)
        _check_int("FixedPolicy.official", "max_order", max_order, 0)
        return cls._anchor("official", {"derivatives_from": first_enhance - 1}, common,
                           interval=fresh_threshold, warmup=first_enhance, order=max_order)

    @classmethod
    def openvino(cls, cache_interval: int = 3, disable_cache_before_step: int = 6,
                 disable_cache_after_step: int = -2, **common) -> "FixedPolicy":
        """OpenVINO GenAI TaylorSeer Lite (``TaylorSeerState::should_compute_at_step``): compute when
        step < b = max(before, 2), or step >= after (negative: num_steps + after), or
        step - b >= cache_interval - 1 with (step - b - cache_interval + 1) % cache_interval == 0.
        All steps compute when the resolved after <= before (inactive). Order 1."""
        w = "FixedPolicy.openvino"
        _check_int(w, "cache_interval", cache_interval, 2)
        _check_int(w, "disable_cache_before_step", disable_cache_before_step, 0)
        _check_int(w, "disable_cache_after_step", disable_cache_after_step, None)
        after = disable_cache_after_step
        return cls._anchor("openvino", {}, common, interval=cache_interval, order=1,
                           warmup=max(disable_cache_before_step, 2),
                           compute_from=after if after >= 0 else None,
                           cooldown=-after if after < 0 else 0)

    @classmethod
    def diffusers(cls, cache_interval: int = 5, disable_cache_before_step: int = 3,
                  disable_cache_after_step: int | None = None, max_order: int = 1,
                  **common) -> "FixedPolicy":
        """diffusers ``TaylorSeerCacheHook``: compute if step < before, or
        (step - before - 1) % cache_interval == 0, or step >= after. (before=0 would forecast step 0
        in diffusers, which fails there; here step 0 is computed and the rest of the grid kept.)"""
        w = "FixedPolicy.diffusers"
        _check_int(w, "cache_interval", cache_interval, 1)
        _check_int(w, "disable_cache_before_step", disable_cache_before_step, 0)
        _check_int(w, "disable_cache_after_step", disable_cache_after_step, None, optional=True)
        _check_int(w, "max_order", max_order, 0)
        warmup = max(disable_cache_before_step, 1)
        phase = (disable_cache_before_step + 2 - warmup) % cache_interval  # grid: before + 1 + k*interval
        after = disable_cache_after_step
        return cls._anchor("diffusers", {}, common, interval=cache_interval, warmup=warmup, phase=phase,
                           order=max_order, compute_from=None if after is None else max(after, 0))

    @classmethod
    def seed(cls, warmup_steps: int = 4, skip_interval_steps: int = 2, n_derivatives: int = 1,
             **common) -> "FixedPolicy":
        """The seed decorator: step < warmup_steps or (step - warmup_steps + 1) % skip_interval_steps == 0.
        Derivatives from step 2 (``current_step > 1``) in the taylor form."""
        _check_int("FixedPolicy.seed", "warmup_steps", warmup_steps, 1)
        _check_int("FixedPolicy.seed", "skip_interval_steps", skip_interval_steps, 1)
        _check_int("FixedPolicy.seed", "n_derivatives", n_derivatives, 0)
        return cls._anchor("seed", {"derivatives_from": 2}, common, interval=skip_interval_steps,
                           warmup=warmup_steps, order=n_derivatives)


class _MaskSchedule(Schedule):
    def _decide(self, step, estimate):
        mask = self.policy.mask
        return self._forced(step) or step >= len(mask) or mask[step]


@dataclass(frozen=True, kw_only=True, repr=False, init=False)
class MaskPolicy(Policy):
    """An explicit schedule: ``compute_steps`` (0-based) or ``mask`` (one bool per step, True = compute).

    With ``compute_steps`` the mask covers ``num_steps`` steps (default: up to the last compute step);
    steps beyond the mask are always computed (the safe choice). Step 0 must be computed, and for
    form='newton' the first order + 1 steps. The warm-up defaults to the run of leading computes;
    ``num_steps`` is the mask's length.
    Every common field (the forecast's, ``cooldown``, ``max_forecast_run`` ...) is accepted.
    """

    mask: tuple[bool, ...] = ()

    def __init__(self, compute_steps=None, *, mask=None, num_steps=None, **common):
        n = type(self).__name__
        _check_int(n, "num_steps", num_steps, 1, optional=True)
        allowed = {f.name for f in fields(Policy)}
        unknown = sorted(set(common) - allowed)
        if unknown:
            raise ValueError(f"{n}: unknown field {unknown[0]!r}; allowed: compute_steps, mask, "
                             f"{sorted(allowed)}")
        if (compute_steps is None) == (mask is None):
            raise ValueError(f"{n}: give exactly one of compute_steps (list of steps) or mask (list of bools)")
        if mask is None:
            if isinstance(compute_steps, (str, bytes)) or not hasattr(compute_steps, "__iter__"):
                raise ValueError(f"{n}: compute_steps must be a list of increasing ints >= 0, got {compute_steps!r}")
            steps = list(compute_steps)
            if (not steps or any(isinstance(i, bool) or not isinstance(i, int) for i in steps)
                    or steps != sorted(set(steps)) or steps[0] < 0):
                raise ValueError(f"{n}: compute_steps must be increasing ints >= 0, got {compute_steps!r}")
            if num_steps is not None and steps[-1] >= num_steps:
                raise ValueError(f"{n}: compute_steps has step {steps[-1]} >= num_steps={num_steps}")
            mask = [i in set(steps) for i in range(steps[-1] + 1 if num_steps is None else num_steps)]
        if isinstance(mask, (str, bytes)) or not hasattr(mask, "__iter__"):
            raise ValueError(f"{n}: mask must be a list of bools, got {mask!r}")
        mask = tuple(mask)
        if not mask or not all(isinstance(c, bool) for c in mask) or len(mask) != (num_steps or len(mask)):
            raise ValueError(f"{n}: mask must be a list of bools (num_steps={num_steps} long), got {mask!r}")
        if not mask[0]:
            raise ValueError(f"{n}: step 0 must be computed (compute_steps/mask start with a forecast)")
        order, form = common.get("order", 1), common.get("form", "newton")
        if form in DIVIDED and isinstance(order, int) and common.get("warmup") is None \
                and self._lead(mask) < order + 1:
            raise ValueError(f"{n}: compute_steps/mask must compute the first order + 1 = {order + 1} steps "
                             f"for form={form!r} (the warmup), got {self._lead(mask)}")
        for f in fields(self):
            value = {"mask": mask, "num_steps": len(mask)}.get(f.name, common.get(f.name, f.default))
            object.__setattr__(self, f.name, value)
        self._validate()

    @staticmethod
    def _lead(mask) -> int:
        return next((i for i, b in enumerate(mask) if not b), len(mask))

    def _default_warmup(self) -> int:
        return self._lead(self.mask)

    @property
    def never_forecasts(self) -> bool:
        return all(self.mask)              # steps beyond the mask are computed too

    def __repr__(self) -> str:
        steps = [i for i, b in enumerate(self.mask) if b]
        parts = [f"compute_steps={steps!r}"] + [p for p in self._repr_parts() if not p.startswith("mask=")]
        return f"MaskPolicy({', '.join(parts)})"

    def _schedule(self, num_steps, end):
        return _MaskSchedule(self, num_steps, end)


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
            if not math.isnan(value):
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
            self.pacer = Pacer(self.rule, p.threshold)
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
        else:
            value = None if estimate is None else estimate()
            value = math.nan if value is None else float(value)
            combined = self._combined(value) if not math.isnan(value) else value
            if self.tau is not None:         # a tuned threshold: the rule's own decision, the count kept above
                compute = math.isnan(combined) or combined > self.tau
            else:
                compute = self.pacer.decide(combined, free_budget / free_left, run + 1)
            self.total = 0.0 if compute else self._add(value)
            return compute
        if not must:
            value = None if estimate is None else estimate()
            if value is not None and not math.isnan(float(value)):
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
    speed-up ``"4x"``. The run computes exactly ``round(budget * N)`` of its N steps (counted from the
    schedule's first step; raised to what warm-up, cooldown and ``max_forecast_run`` force), so N must
    be known (``num_steps``; the runtime is told it by ``compile_pipeline`` and sessions). Free steps
    are placed by :class:`~taylorseer_fx.policy.budget.Pacer`: runs as long as the remaining budget
    affords where the estimate grows at its usual rate, shorter where faster; with a ``threshold``
    too, an estimate reaching it also computes (the count stays exact).

    ``placements`` (what :func:`taylorseer_fx.tune` writes): ``{N: [compute steps]}``, the tuned
    placement of a run of N steps (steps counted from the schedule's first step; every warm-up and
    cooldown step included, no forecast run longer than ``max_forecast_run``, exactly the budget's
    count with a budget). A run of a tuned length computes exactly those steps and reads no estimate;
    any other length is decided by the budget (or threshold), with a warning naming the length once.
    A TOML table ``[placements]`` with keys ``28 = [0, 1, 2, ...]``. Stored as sorted ``(N, steps)``
    pairs (hashable). ``thresholds`` (with a budget; also written by the tuner): ``{N: threshold}``, a
    tuned threshold for runs of N steps: a free step computes when the run's estimate exceeds it,
    the budget's count kept exact as always (table ``[thresholds]``).

    ``min_steps`` (default 8): a run shorter than this (its steps counted from the schedule's first
    step: an img2img run at strength 0.3 of 20 steps has 6) is too short to forecast well -- distilled
    4-step models, img2img at low strength -- so every step computes, and a warning says so once per
    length. ``min_steps=0`` forecasts anyway; a tuned placement for that length is used as tuned.
    Unknown step counts (a bare loop without ``num_steps``) are not checked.

    Warm-up (default ``max(order + 1, 3)``), cooldown and ``max_forecast_run`` force computes; after a
    compute at least ``min_forecast_run`` steps are forecast (outside warm-up/cooldown). No estimator,
    or an estimate of None/NaN, computes. ``per_region``: the runtime keeps one schedule per region
    instead of one shared.
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

    @property
    def decides_per_region(self) -> bool:
        return self.per_region

    @property
    def reads_estimate(self) -> bool:
        return True

    @property
    def error_estimator(self) -> str:
        return self.estimator

    def _default_coordinate(self) -> str:
        return "step"

    def _default_warmup(self) -> int:
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
            object.__setattr__(self, "placements", self._checked_placements())
        if self.thresholds is not None:
            object.__setattr__(self, "thresholds", self._checked_thresholds())

    def _checked_thresholds(self) -> tuple:
        """``thresholds`` as sorted ``((N, threshold), ...)``; ValueError naming ``thresholds[N]``."""
        n, given = type(self).__name__, self.thresholds
        if self.budget is None:
            raise ValueError(f"{n}: thresholds (tuned per step count) need a budget: the count they keep")
        if not hasattr(given, "items") or not given:
            raise ValueError(f"{n}: thresholds must be a non-empty mapping {{num_steps: threshold}}, got {given!r}")
        out = {}
        for key, tau in given.items():
            N = int(key) if isinstance(key, str) and key.strip().isdigit() else key
            if isinstance(N, bool) or not isinstance(N, int) or N < 1:
                raise ValueError(f"{n}: thresholds keys must be step counts (ints >= 1), got {key!r}")
            if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
                raise ValueError(f"{n}: thresholds[{N}] must be a finite number > 0, got {tau!r}")
            if N in dict(self.placements or ()):
                raise ValueError(f"{n}: {N} steps has both a tuned placement and a tuned threshold")
            out[N] = float(tau)
        return tuple(sorted(out.items()))

    def _checked_placements(self) -> tuple:
        """``placements`` as sorted ``((N, (steps...)), ...)``; ValueError naming ``placements[N]``."""
        n, given = type(self).__name__, self.placements
        items = given.items() if hasattr(given, "items") else given
        try:
            items = [(k, v) for k, v in items]
        except (TypeError, ValueError):
            raise ValueError(f"{n}: placements must be a mapping {{num_steps: [compute steps]}}, got {given!r}") from None
        out = {}
        for key, steps in items:
            N = int(key) if isinstance(key, str) and key.strip().isdigit() else key
            if isinstance(N, bool) or not isinstance(N, int) or N < 1:
                raise ValueError(f"{n}: placements keys must be step counts (ints >= 1), got {key!r}")
            where = f"{n}: placements[{N}]"
            if isinstance(steps, (str, bytes)) or not hasattr(steps, "__iter__"):
                raise ValueError(f"{where} must be a list of compute steps, got {steps!r}")
            steps = tuple(steps)
            if (not steps or any(isinstance(i, bool) or not isinstance(i, int) for i in steps)
                    or list(steps) != sorted(set(steps)) or steps[0] != 0 or steps[-1] >= N):
                raise ValueError(f"{where} must be increasing ints in [0, {N}) starting at 0, got {list(steps)!r}")
            must = set(range(min(self.warmup_steps, N))) | set(range(max(N - self.cooldown, 0), N))
            if not must <= set(steps):
                raise ValueError(f"{where} must compute every warm-up and cooldown step: misses "
                                 f"{sorted(must - set(steps))}")
            gaps = [b - a - 1 for a, b in zip(steps, steps[1:] + (N,))]
            if self.max_forecast_run is not None and max(gaps) > self.max_forecast_run:
                raise ValueError(f"{where} forecasts {max(gaps)} steps in a row; max_forecast_run is "
                                 f"{self.max_forecast_run}")
            if self.budget is not None:
                want = target_computes(budget_fraction(self.budget), N, self.warmup_steps, self.cooldown,
                                       self.max_forecast_run)
                if len(steps) != want:
                    raise ValueError(f"{where} computes {len(steps)} steps; the budget {self.budget!r} "
                                     f"computes {want} of {N}")
            if N in out:
                raise ValueError(f"{n}: placements has {N} twice")
            out[N] = steps
        if not out:
            raise ValueError(f"{n}: placements is empty (leave it out, or give {{num_steps: [compute steps]}})")
        return tuple(sorted(out.items()))

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
