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
- :class:`~taylorseer_fx.policy.auto.AutoPolicy` (``auto.py``) -- forecast while the estimated relative
  errors of the region output over the current forecast run stay <= ``threshold``, or spend a budget.

Presets (``policies/*.toml``) load by name with :func:`taylorseer_fx.policy.presets.load_policy`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..forecast.forms import DIVIDED
from .base import Policy, Schedule, _check_int

__all__ = ["ANCHOR_OVERRIDES", "FixedPolicy", "MaskPolicy"]

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
