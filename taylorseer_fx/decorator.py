"""``@taylor_seer``: TaylorSeer for one ``nn.Module`` whose forward returns a single tensor.

This is the seed API, kept for users who do not want a compiler pass. Each call of the decorated
module's ``forward`` is one denoising step. The module's output is either computed (the original
forward runs and the stored factors are updated) or forecast from the stored factors, as a
:class:`~taylorseer_fx.policy.FixedPolicy` built by :meth:`FixedPolicy.seed` decides.

It is a thin layer over :mod:`taylorseer_fx.forecast` and :mod:`taylorseer_fx.policy`; it holds no
math of its own.

Coordinates:

- ``form="taylor"`` (default, the seed's behaviour): the step index (0, 1, 2, ... per call).
- ``form="newton"``: the value of the module's timestep input: the keyword argument ``timestep``
  when given, else the first positional argument. Non-uniform and decreasing timesteps are fine;
  polynomials of degree <= ``n_derivatives`` are forecast exactly. Reading that value costs one host
  read per call.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import nn

from .forecast import Forecaster
from .policy import FixedPolicy

__all__ = ["taylor_seer"]


@dataclass
class _SeerState:
    """Per-module cache state: the policy, its per-generation schedule, the factors and a trace."""

    policy: FixedPolicy
    forecaster: Forecaster
    schedule: object = None
    step: int = 0
    trace: list[str] = field(default_factory=list)

    def restart(self) -> None:
        self.schedule = self.policy.start()
        self.forecaster.reset()
        self.step = 0
        self.trace = []


def _make_state(warmup_steps: int, skip_interval_steps: int, n_derivatives: int, form: str) -> _SeerState:
    policy = FixedPolicy.seed(
        warmup_steps=warmup_steps,
        skip_interval_steps=skip_interval_steps,
        n_derivatives=n_derivatives,
        form=form,
    )
    state = _SeerState(policy=policy, forecaster=Forecaster(order=policy.order, form=policy.form))
    state.restart()
    return state


def _timestep_value(args: tuple, kwargs: dict) -> float:
    """The newton coordinate: ``timestep=`` if given, else the first positional argument."""
    if "timestep" in kwargs:
        value = kwargs["timestep"]
    elif args:
        value = args[0]
    else:
        raise ValueError(
            "taylor_seer(form='newton') reads the coordinate from the `timestep` keyword argument "
            "or the first positional argument; the call had neither"
        )
    if isinstance(value, torch.Tensor):
        return float(value.reshape(-1)[0])  # the one host read of this call
    return float(value)


def taylor_seer(
    warmup_steps: int = 4,
    skip_interval_steps: int = 2,
    n_derivatives: int = 1,
    form: str = "taylor",
):
    """Class decorator: forecast the module's output at all but every ``skip_interval_steps``-th call.

    Args:
        warmup_steps: the first calls (steps) are always computed.
        skip_interval_steps: after warm-up, one call in this many is computed (counted from the last
            warm-up step); the others are forecast.
        n_derivatives: the order of the forecast polynomial.
        form: ``"taylor"`` (the paper's recursion in step index, the seed's behaviour) or ``"newton"``
            (divided differences in the timestep input's value).

    The decorated class gains ``reset_cache(warmup_steps=None, skip_interval_steps=None,
    n_derivatives=None)`` (forget the factors, restart at step 0, optionally with new settings) and
    ``cache_trace`` (``"compute"`` or ``"forecast"`` per call since the last reset).
    Invalid settings raise ``ValueError`` naming the argument when the decorator is applied.
    """
    _make_state(warmup_steps, skip_interval_steps, n_derivatives, form)  # validate early

    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"@taylor_seer decorates nn.Module subclasses, got {cls!r}")
        original_forward = cls.forward
        original_init = cls.__init__

        @functools.wraps(original_init)
        def __init__(self, *args, **kwargs):
            original_init(self, *args, **kwargs)
            self._taylor_seer = _make_state(warmup_steps, skip_interval_steps, n_derivatives, form)

        @functools.wraps(original_forward)
        def forward(self, *args, **kwargs):
            state: _SeerState = self._taylor_seer
            step = state.step
            t = float(step) if state.policy.form == "taylor" else _timestep_value(args, kwargs)
            compute = state.schedule.decide(step) or state.forecaster.num_points == 0
            if compute:
                out = original_forward(self, *args, **kwargs)
                if not isinstance(out, torch.Tensor):
                    raise TypeError(
                        f"@taylor_seer needs forward to return one tensor, got {type(out).__name__}"
                    )
                state.forecaster.update(t, out.detach(), derivatives=state.schedule.derivatives(step))
                state.trace.append("compute")
            else:
                out = state.forecaster.forecast(t)
                state.trace.append("forecast")
            state.step += 1
            return out

        def reset_cache(self, warmup_steps=None, skip_interval_steps=None, n_derivatives=None):
            """Forget the stored factors and restart at step 0, optionally with new settings."""
            old = self._taylor_seer.policy
            self._taylor_seer = _make_state(
                old.warmup_steps if warmup_steps is None else warmup_steps,
                old.interval if skip_interval_steps is None else skip_interval_steps,
                old.order if n_derivatives is None else n_derivatives,
                old.form,
            )

        cls.__init__ = __init__
        cls.forward = forward
        cls.reset_cache = reset_cache
        cls.cache_trace = property(lambda self: list(self._taylor_seer.trace))
        return cls

    return decorate
