"""The base of every policy: :class:`Policy` (the fields common to all, validation, resolved values),
its per-generation :class:`Schedule`, and :class:`Forecast` (the *how*: form, order, coordinate, order
choice). The concrete policies (``FixedPolicy``, ``MaskPolicy``, ``AutoPolicy``) are in ``policies.py``;
``taylorseer_fx.policy`` names both. Knows nothing of graphs or tensors.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Callable

from ..forecast.forms import DIVIDED, FORMS

__all__ = ["COORDINATES", "MAX_ORDER", "Forecast", "Policy", "Schedule"]

COORDINATES = ("timestep", "step")
#: the largest forecast order (and max_order) a policy accepts: (order + 1) stored factors per output
MAX_ORDER = 8
_HOW = ("order", "form", "coordinate", "select_order", "max_order", "order_margin")
_COMMON = _HOW + ("warmup", "cooldown", "max_forecast_run", "num_steps", "derivatives_from")


def _check_int(owner: str, name: str, value: Any, low: int | None, optional: bool = False) -> None:
    """ValueError naming the field unless value is an int >= low (any int when low is None)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        allowed = "an int" + ("" if low is None else f" >= {low}") + (" or None" if optional else "")
        raise ValueError(f"{owner}: {name} must be {allowed}, got {value!r}")


@dataclass(frozen=True)
class Forecast:
    """How a region is forecast (every value resolved): the part of a policy that is not the schedule.

    ``form``: ``"newton"`` (divided differences, exact for polynomials of degree <= order on any
    spacing), ``"taylor"`` (the paper's recursion in the step index), ``"heun"`` (a FoCa-like
    predictor-corrector on divided differences) or ``"hermite"`` (HiCache's scaled
    Hermite basis on the taylor recursion); :mod:`taylorseer_fx.forecast.forms`. ``order``: the polynomial
    degree. ``coordinate``: what the forecaster extrapolates in, ``"timestep"`` (the model's timestep
    value) or ``"step"`` (the step index). ``select_order``: choose the degree per forecast run among
    ``0..max_order`` by back-test (``order_margin``: how much better another degree must be)."""

    form: str
    order: int
    coordinate: str
    select_order: bool
    max_order: int
    order_margin: float

    def __post_init__(self) -> None:
        n = "Forecast"
        if self.form not in FORMS:
            raise ValueError(f"{n}: form must be one of {FORMS}, got {self.form!r}")
        _check_int(n, "order", self.order, 0)
        if self.order > MAX_ORDER:
            raise ValueError(f"{n}: order must be an int in [0, {MAX_ORDER}], got {self.order!r}")
        if self.coordinate not in COORDINATES:
            raise ValueError(f"{n}: coordinate must be one of {COORDINATES}, got {self.coordinate!r}")
        if not isinstance(self.select_order, bool):
            raise ValueError(f"{n}: select_order must be a bool, got {self.select_order!r}")
        _check_int(n, "max_order", self.max_order, self.order)
        if self.max_order > MAX_ORDER:
            raise ValueError(f"{n}: max_order must be an int in [order, {MAX_ORDER}], got {self.max_order!r}")
        m = self.order_margin
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m <= 1:
            raise ValueError(f"{n}: order_margin must be a number in (0, 1], got {m!r}")

    def forecaster_options(self) -> dict:
        """Keyword arguments of the :class:`~taylorseer_fx.forecast.forecaster.Forecaster` of each region."""
        if not self.select_order or self.max_order == self.order:
            return {"order": self.order, "form": self.form}
        return {"order": self.max_order, "form": self.form, "select": self.order,
                "select_margin": float(self.order_margin)}


@dataclass(frozen=True, kw_only=True, repr=False)
class Policy:
    """Base of all policies. Fields common to every policy (see the module docstring); ``None`` means
    the default, resolved in :attr:`warmup_steps` and :attr:`forecast`."""

    order: int = 1
    form: str = "newton"
    coordinate: str | None = None  # None: "step" for taylor/hermite, "timestep" for newton/heun
    #                                (AutoPolicy: "step")
    warmup: int | None = None  # None: order + 1 (AutoPolicy: max(order + 1, 3), with a budget 1)
    cooldown: int = 0
    max_forecast_run: int | None = None
    num_steps: int | None = None
    derivatives_from: int = 0
    select_order: bool | None = None   # None: False (AutoPolicy: True with the pair estimator)
    max_order: int | None = None       # None: order + 1 with select_order, else order
    order_margin: float = 1.0

    def __post_init__(self) -> None:
        self._validate()

    # ------------------------------------------------------------ resolved values
    def _default_coordinate(self) -> str:
        return "timestep" if self.form in DIVIDED else "step"

    def _least_warmup(self) -> int:
        """The smallest warm-up of a divided form (newton, heun): ``order + 1`` points before the first
        forecast, so that a fixed schedule forecasts with the order it names."""
        return self.order + 1

    def _default_warmup(self) -> int:
        return self.order + 1

    def _default_select_order(self) -> bool:
        return False

    # ------------------------------------------------------------ capabilities (what the runtime asks)
    @property
    def never_forecasts(self) -> bool:
        """True when no step is ever forecast: the runtime then stores nothing (FixedPolicy(interval=1),
        an all-compute mask)."""
        return False

    @property
    def decides_per_region(self) -> bool:
        """True when each region gets its own schedule (AutoPolicy(per_region=True))."""
        return False

    @property
    def reads_estimate(self) -> bool:
        """True when decisions depend on the runtime's error estimate (adaptive): a schedule replayed
        without it is not the one that ran."""
        return False

    @property
    def error_estimator(self) -> str:
        """How the runtime estimates a forecast's error for the decision (``Forecaster.error_estimate``)."""
        return "remainder"

    @property
    def warmup_steps(self) -> int:
        """The warm-up: leading steps always computed (``warmup``, or its default)."""
        return self._default_warmup() if self.warmup is None else self.warmup

    @property
    def forecast(self) -> Forecast:
        """How regions are forecast, every ``None`` resolved."""
        select = self._default_select_order() if self.select_order is None else self.select_order
        max_order = self.max_order if self.max_order is not None else self.order + 1 if select else self.order
        coordinate = self._default_coordinate() if self.coordinate is None else self.coordinate
        return Forecast(self.form, self.order, coordinate, select, max_order, self.order_margin)

    def with_forecast(self, forecast: "Forecast | Policy") -> "Policy":
        """This policy's schedule with another forecast (a :class:`Forecast`, or a policy's)."""
        f = forecast.forecast if isinstance(forecast, Policy) else forecast
        if not isinstance(f, Forecast):
            raise ValueError(f"with_forecast: expected a Forecast or a Policy, got {forecast!r}")
        return dataclasses.replace(self, **{k: getattr(f, k) for k in _HOW})

    # ------------------------------------------------------------ validation
    def _validate(self) -> None:
        n = type(self).__name__
        _check_int(n, "order", self.order, 0)
        if self.order > MAX_ORDER:
            raise ValueError(f"{n}: order must be an int in [0, {MAX_ORDER}], got {self.order!r}")
        if self.form not in FORMS:
            raise ValueError(f"{n}: form must be one of {FORMS}, got {self.form!r}")
        if self.coordinate is not None and self.coordinate not in COORDINATES:
            raise ValueError(f"{n}: coordinate must be one of {COORDINATES} or None, got {self.coordinate!r}")
        f = self.forecast
        if self.form not in DIVIDED and f.coordinate != "step":
            raise ValueError(f"{n}: coordinate must be 'step' for form={self.form!r}, got {self.coordinate!r}")
        _check_int(n, "warmup", self.warmup, 1, optional=True)
        if self.form in DIVIDED and self.warmup_steps < self._least_warmup():
            raise ValueError(f"{n}: warmup must be >= order + 1 = {self.order + 1} for form={self.form!r} "
                             f"(order + 1 points before the first forecast), got {self.warmup_steps}")
        _check_int(n, "cooldown", self.cooldown, 0)
        _check_int(n, "max_forecast_run", self.max_forecast_run, 1, optional=True)
        _check_int(n, "num_steps", self.num_steps, 1, optional=True)
        _check_int(n, "derivatives_from", self.derivatives_from, 0)
        if self.select_order is not None and not isinstance(self.select_order, bool):
            raise ValueError(f"{n}: select_order must be a bool or None, got {self.select_order!r}")
        _check_int(n, "max_order", self.max_order, self.order, optional=True)
        if f.max_order > MAX_ORDER:
            raise ValueError(f"{n}: max_order must be an int in [order, {MAX_ORDER}], got {f.max_order!r}")
        m = self.order_margin
        if isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 < m <= 1:
            raise ValueError(f"{n}: order_margin must be a number in (0, 1], got {m!r}")

    def _repr_parts(self) -> list[str]:
        """``name=value`` of the fields given (not None, not the default), own fields first."""
        fs = [f for f in fields(self) if f.repr]
        ordered = [f for f in fs if f.name not in _COMMON] + [f for f in fs if f.name in _COMMON]
        return [f"{f.name}={getattr(self, f.name)!r}" for f in ordered
                if getattr(self, f.name) is not None and getattr(self, f.name) != f.default]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._repr_parts())})"

    def needs_num_steps(self) -> bool:
        return self.cooldown > 0

    def forecaster_options(self) -> dict:
        """Keyword arguments of the :class:`~taylorseer_fx.forecast.forecaster.Forecaster` of each region."""
        return self.forecast.forecaster_options()

    def start(self, num_steps: int | None = None, first_step: int = 0) -> "Schedule":
        """A fresh per-generation decider. Raises ValueError naming num_steps when it is needed but unknown.

        ``first_step``: the step index (0-based) the decider starts at. A region state that starts
        mid-generation (after a batch change, or a model instance taking over) has its own warm-up and
        derivative gating counted from there; the cooldown stays counted from the end of the run."""
        _check_int(type(self).__name__, "first_step", first_step, 0)
        n = self.num_steps if num_steps is None else num_steps
        _check_int(type(self).__name__, "num_steps", n, 1, optional=True)
        if n is None and self.needs_num_steps():
            raise ValueError(f"{self!r} needs num_steps (a cooldown counts from the end, a budget over the "
                             "run's steps): pass start(num_steps=...) or set num_steps")
        end = None if n is None or self.cooldown == 0 else n - self.cooldown
        sched = self._schedule(n, end)
        sched.first_step = first_step
        return sched

    def _schedule(self, num_steps: int | None, end: int | None) -> "Schedule":
        raise NotImplementedError

    def compute_steps(self, num_steps: int,
                      estimate: Callable[[int, int], float] | None = None) -> list[int]:
        """0-based compute steps of one generation, by stepping ``decide``. ``estimate(step, since)``
        (``since`` = steps since the last compute) feeds adaptive policies; fixed ones ignore it."""
        sched = self.start(num_steps)
        out = []
        for s in range(num_steps):
            est = None
            if estimate is not None and sched.last_compute is not None:
                est = (lambda s=s, k=s - sched.last_compute: estimate(s, k))
            if sched.decide(s, est):
                out.append(s)
        return out


class Schedule:
    """Per-generation (and per-region, when decisions are per region) decider of one policy."""

    def __init__(self, policy: Policy, num_steps: int | None, end: int | None) -> None:
        self.policy = policy
        self.num_steps = num_steps
        self.end = end  # every step >= end is computed (cooldown, compute_from)
        self.last_compute: int | None = None
        self.first_step = 0   # step the decider started at: warm-up and gating count from it
        self._step: int | None = None
        self._decision = True

    def decide(self, step: int, estimate: Callable[[], float] | None = None) -> bool:
        """True = compute at ``step``. ``estimate`` is called lazily, at most once, by adaptive policies."""
        if self._step is not None:
            if step == self._step:
                return self._decision
            if step < self._step:
                raise ValueError(f"step must increase within a generation ({step} after {self._step}); "
                                 "call policy.start() for a new generation")
        decision = bool(self._decide(step, estimate))
        self._step, self._decision = step, decision
        if decision:
            self.last_compute = step
        return decision

    def computed_anyway(self, step: int) -> None:
        """The caller computed ``step`` although this schedule decided to forecast it (nothing to
        forecast from: the weights changed, the state was forgotten). The step then counts as a
        compute: forecast runs restart from it, and a budget spends one of its computes on it (the
        steps after it are paced to keep the count, where the run still allows). Call after
        :meth:`decide` at the same step; a step decided compute is left as it is."""
        if step != self._step or self._decision:
            return
        self._decision = True
        self.last_compute = step
        self._count_compute()

    def _count_compute(self) -> None:
        """What a subclass counts for a compute it did not decide (:meth:`computed_anyway`)."""

    def derivatives(self, step: int) -> bool:
        """Whether a compute at ``step`` may form derivative factors (taylor warm-up gating)."""
        return step - self.first_step >= self.policy.derivatives_from

    def _forced(self, step: int) -> bool:
        p = self.policy
        return (step - self.first_step < p.warmup_steps or self.last_compute is None
                or (self.end is not None and step >= self.end)
                or (p.max_forecast_run is not None and step - self.last_compute - 1 >= p.max_forecast_run))

    def _decide(self, step: int, estimate: Callable[[], float] | None) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<Schedule of {self.policy!r} at step {self._step}>"
