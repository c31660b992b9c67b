"""One request of a batched serving engine: its policy's schedule, one cached state per branch, its step
counter and what it did (planned against actual forecasts).

Units: ``step`` is the request's own 0-based step index (one per engine tick it takes part in);
``num_steps`` its step count; a coordinate is what the forecaster extrapolates in -- the request's
``sigmas[step]`` when the engine told them, else the model's timestep value of the request's row, or
the step index (``Forecast.coordinate == "step"``).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Sequence

from ..forecast import Forecaster
from ..policy.base import Policy
from ..runtime.region_state import RegionState
from ..runtime.tally import Tally

__all__ = ["Row", "ServingRequest"]


class Row:
    """One batch row: ``request``'s ``branch`` (``"cond"``, ``"uncond"``, any hashable name). Made by
    ``request[branch]``; the request itself stands for its first branch."""

    __slots__ = ("request", "branch")

    def __init__(self, request: "ServingRequest", branch):
        self.request, self.branch = request, branch

    def __eq__(self, other) -> bool:
        return isinstance(other, Row) and other.request is self.request and other.branch == self.branch

    def __hash__(self) -> int:
        return hash((id(self.request), self.branch))

    def __repr__(self) -> str:
        return f"{self.request!r}[{self.branch!r}]"


class ServingRequest:
    """One request's cached state in a :class:`~taylorseer_fx.serving.batched.BatchedCache` (made by
    ``cache.open``). Its branches (``branches``, e.g. ``("cond", "uncond")`` under true CFG) decide with
    one schedule, so their forecast errors are made at the same steps and cancel in ``cond - uncond``;
    each branch has its own forecaster. Nothing of it is shared with another request.

    Attributes:
        num_steps: the request's step count (its policy's budget and cooldown count from it).
        policy: its :class:`~taylorseer_fx.policy.base.Policy`.
        step: the step its rows take at the next tick they appear in (0-based; advances by one per tick).
        sigmas: the coordinate per step when told (``len >= num_steps``), else None.
        decisions: per step taken, True = computed (its rows ran through the model).
        closed: True once :meth:`close` released its state.
    """

    def __init__(self, cache, num_steps: int, policy: Policy, branches: Sequence, sigmas=None, name=None):
        if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
            raise ValueError(f"num_steps must be an int >= 1 (the request's step count), got {num_steps!r}")
        branches = tuple(branches)
        if not branches or len(set(branches)) != len(branches):
            raise ValueError(f"branches must be distinct names, at least one (e.g. ('cond', 'uncond')), "
                             f"got {branches!r}")
        if sigmas is not None:
            sigmas = [float(s) for s in sigmas]
            if len(sigmas) < num_steps or not all(math.isfinite(s) for s in sigmas):
                raise ValueError(f"sigmas must hold a finite coordinate per step (at least num_steps={num_steps}"
                                 f" values), got {len(sigmas)}")
        self._cache = cache
        self.num_steps = int(num_steps)
        self.policy = policy
        self.branches = branches
        self.sigmas = sigmas
        self.name = name
        self.step = 0
        self.decisions: list[bool] = []
        self.closed = False
        self.tally = Tally()
        self._schedule = policy.start(self.num_steps)
        self._states: dict = {}
        self.spec = None              # the model output's structure at its last compute (a pytree spec)

    # ------------------------------------------------------------ rows
    def __getitem__(self, branch) -> Row:
        if branch not in self.branches:
            raise KeyError(f"{self!r} has no branch {branch!r}; its branches: {self.branches}")
        return Row(self, branch)

    def __repr__(self) -> str:
        return f"<ServingRequest {self.name if self.name is not None else hex(id(self))} step {self.step}/{self.num_steps}>"

    def __enter__(self) -> "ServingRequest":
        return self

    def __exit__(self, *exc) -> None:
        self.close(audit=exc[0] is None)

    # ------------------------------------------------------------ state
    def state(self, branch) -> RegionState:
        """The branch's cached state (made at its first compute)."""
        st = self._states.get(branch)
        if st is None:
            st = self._states[branch] = RegionState(Forecaster(**self.policy.forecaster_options(),
                                                               factor_dtype=self._cache.factor_dtype))
        return st

    def ready(self, branch) -> bool:
        st = self._states.get(branch)
        return st is not None and st.ready

    def forget(self) -> None:
        """Drop every branch's cached state (the model's weights changed): the next steps compute."""
        self._states.clear()

    def coordinate(self, timestep_value) -> float:
        """The forecaster coordinate of the current step: told sigma, else the timestep value, else the
        step index (``coordinate="step"``)."""
        if self.policy.forecast.coordinate == "step":
            return float(self.step)
        if self.sigmas is not None:
            return self.sigmas[self.step]
        if timestep_value is None:
            raise ValueError(f"{self!r}: its policy extrapolates in the timestep, but the call passed no "
                             "timestep: pass the model's timestep argument per row, open the request with "
                             "sigmas=..., or use a policy with coordinate='step'")
        return float(timestep_value)

    def estimate(self, x: float, branches) -> list:
        """The estimated errors of forecasting ``branches`` at ``x``, one per branch
        (:meth:`RegionState.estimate`: a 0-dim device tensor, ``0.0`` for constant outputs, ``math.inf``
        for a branch with no state yet, ``math.nan`` with no estimate yet); the decision takes
        :func:`~taylorseer_fx.forecast.estimates.worst` of them."""
        p = self.policy
        return [math.inf if self._states.get(b) is None else self._states[b].estimate(x, p.error_estimator, p.order)
                for b in branches]

    def forced(self) -> bool:
        """True when the step computes whatever an estimate says (warm-up, cooldown): nothing is read."""
        end = self._schedule.end
        return self.step < self.policy.warmup_steps or (end is not None and self.step >= end)

    def decide(self, estimate: float | None) -> bool:
        """The schedule's decision at :attr:`step` (True = compute); ``estimate``: the value read for it."""
        est = None if estimate is None else (lambda: estimate)
        if self.policy.reads_estimate and est is None:
            est = (lambda: math.inf)
        return self._schedule.decide(self.step, est)

    def computed_anyway(self) -> None:
        """A row of this request computed at :attr:`step` although its schedule decided to forecast
        (a branch with no state to forecast from): the schedule counts the step as a compute."""
        self._schedule.computed_anyway(self.step)

    def derivatives(self) -> bool:
        return self._schedule.derivatives(self.step)

    def memory_bytes(self) -> int:
        """Bytes of the cached state this request holds now (0 once closed)."""
        return sum(st.memory_bytes() for st in list(self._states.values()))

    # ------------------------------------------------------------ leaving
    def close(self, audit: bool = True) -> None:
        """Leave the batch: release its cached state. With ``audit`` (a request that ran to its end),
        warn when fewer than half of the forecasts its policy planned happened, naming why (or raise,
        the cache's ``strict``). Idempotent."""
        with self._cache._lock:          # never in the middle of a tick
            if self.closed:
                return
            self.closed = True
            self._states.clear()
            self._cache._release(self)
        if audit and self.step >= self.num_steps:
            short = self.tally.shortfall(self.policy, self.num_steps)
            if short is not None:
                text = f"taylorseer serving {self!r} ({self.policy!r}): {short.message()}"
                if self._cache.strict:
                    raise RuntimeError(text + " (strict=True)")
                warnings.warn(text, stacklevel=3)
