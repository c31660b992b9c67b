"""``@taylor_seer``: TaylorSeer for one ``nn.Module`` whose forward returns a single tensor.

This is the seed API, kept for users who do not want a compiler pass. Each call of the decorated
module's ``forward`` is one denoising step. The module's output is either computed (the original
forward runs and the stored factors are updated) or forecast from the stored factors, as a
:class:`~taylorseer_fx.policy.policies.FixedPolicy` built by :meth:`FixedPolicy.seed` decides.

It is a thin layer over :mod:`taylorseer_fx.forecast.forecaster` and :mod:`taylorseer_fx.policy.policies`; it holds no
math of its own.

Coordinates:

- ``form="taylor"`` (default, the seed's behaviour): the step index (0, 1, 2, ... per call).
- ``form="newton"``: the value of the module's timestep input: the keyword argument ``timestep``
  when given, else the first positional argument. Non-uniform and decreasing timesteps are fine;
  polynomials of degree <= ``n_derivatives`` are forecast exactly.

Runs and shapes, as the backend places calls (``steps.py``): the timestep input's value (one host read
per call) and the shapes of the tensor arguments go through a :class:`~taylorseer_fx.runtime.steps.StepTracker`,
so a new run (the timestep moves against the run's direction, or comes back to its first value) and a
change of input shape start over by themselves -- ``reset_cache()`` is only needed for a run that
cannot be told apart. Several calls at one timestep are streams, each with its own factors. The
timestep may be a number, a 0-dim tensor or a ``(B,)`` tensor of per-sample timesteps (diffusers'
convention; element 0 is read, as the backend does). A forward whose timestep input is none of these is
counted call by call instead; a change of its input shapes then starts over (never a forecast of the
old shape).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import nn

from ..forecast.forecaster import Forecaster
from ..forecast.forms import DIVIDED
from ..runtime.graph_runtime import read_coordinate
from ..policy.policies import FixedPolicy
from ..runtime.steps import StepTracker

__all__ = ["taylor_seer"]


@dataclass
class _SeerState:
    """Per-module cache state: the policy, its per-generation schedule, the factors per stream, the
    step tracker and a trace."""

    policy: FixedPolicy
    schedule: object = None
    forecasters: dict = field(default_factory=dict)    # stream -> Forecaster
    tracker: StepTracker = field(default_factory=StepTracker)
    generation: int | None = None
    step: int = 0                                      # calls counted (no readable timestep)
    sig: tuple | None = None                           # the last counted call's input signature
    trace: list[str] = field(default_factory=list)

    def restart(self, first_step: int = 0, trace: bool = True) -> None:
        self.schedule = self.policy.start(first_step=first_step)
        self.forecasters = {}
        if trace:
            self.trace = []

    def forecaster(self, stream: int) -> Forecaster:
        f = self.forecasters.get(stream)
        if f is None:
            f = self.forecasters[stream] = Forecaster(order=self.policy.order, form=self.policy.form)
        return f

    def place(self, args: tuple, kwargs: dict) -> tuple[int, int, float | None]:
        """``(step, stream, timestep value or None)`` of this call; starts over at a new run or shape."""
        value, source = _readable_timestep(args, kwargs)
        sig = tuple((i, tuple(a.shape), a.dtype, a.device) for i, a in enumerate(list(args) + list(kwargs.values()))
                    if isinstance(a, torch.Tensor) and a is not source)
        if value is None:
            if self.sig is not None and sig != self.sig:     # another shape: a new run, never the old shape
                self.step = 0
                self.restart(trace=False)
            self.sig = sig
            step, self.step = self.step, self.step + 1
            return step, 0, None
        pos = self.tracker.observe(0, value, sig)
        if pos.generation != self.generation:
            self.generation = pos.generation
            self.restart(trace=False)
        elif pos.restart or pos.realign:
            self.restart(first_step=pos.step, trace=False)
        return pos.step, pos.stream, value


def _make_state(warmup_steps: int, skip_interval_steps: int, n_derivatives: int, form: str) -> _SeerState:
    policy = FixedPolicy.seed(
        warmup_steps=warmup_steps,
        skip_interval_steps=skip_interval_steps,
        n_derivatives=n_derivatives,
        form=form,
    )
    state = _SeerState(policy=policy)
    state.restart()
    return state


def _readable_timestep(args: tuple, kwargs: dict) -> tuple[float | None, object]:
    """``(value, the argument it was read from)`` of the timestep input (``timestep=`` or the first
    positional argument) when it is a number, a 0-dim tensor or a ``(B,)`` tensor of per-sample
    timesteps (diffusers' convention: element 0, as the backend reads it; one host read), else
    ``(None, None)``."""
    value = kwargs["timestep"] if "timestep" in kwargs else args[0] if args else None
    if isinstance(value, torch.Tensor):
        if value.ndim > 1 or value.numel() == 0 or value.dtype.is_complex:
            return None, None
        return read_coordinate(value)[0], value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), value
    return None, None


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
            (divided differences in the timestep input's value); ``"hermite"`` / ``"heun"`` are their
            variants in the same coordinate (:mod:`taylorseer_fx.forecast.forms`).

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
            step, stream, value = state.place(args, kwargs)
            if state.policy.form not in DIVIDED:
                t = float(step)
            else:
                t = value if value is not None else _timestep_value(args, kwargs)
            forecaster = state.forecaster(stream)
            compute = state.schedule.decide(step) or forecaster.num_points == 0
            if compute:
                out = original_forward(self, *args, **kwargs)
                if not isinstance(out, torch.Tensor):
                    raise TypeError(
                        f"@taylor_seer needs forward to return one tensor, got {type(out).__name__}"
                    )
                if forecaster.num_points and not forecaster.matches(out):
                    forecaster.reset()
                forecaster.update(t, out.detach(), derivatives=state.schedule.derivatives(step))
                state.trace.append("compute")
            else:
                out = forecaster.forecast(t)
                state.trace.append("forecast")
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
