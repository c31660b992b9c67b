"""One request's denoiser calls cached at the model output, with the compute/forecast choice made on the
device: no host read per step, so a whole step can be captured in a CUDA graph.

:class:`DeviceStepCache` (``cache(*args, **kwargs)``, one call per step, CFG branches batched in it):

* steps the host knows -- the warm-up, the cooldown, a run too short to forecast, every step of a fixed
  or mask policy or of an evenly spaced budget (``AutoPolicy(budget=...)``, which reads no estimate) --
  are decided on the host, from the step index alone (no read);
* the other steps of an adaptive policy (``AutoPolicy(threshold=...)``) are decided on the device: the
  estimate (:class:`~taylorseer_fx.serving.device_math.DeviceForecaster`) and the threshold rule
  (:class:`~taylorseer_fx.serving.device_math.DeviceRule`) give a 0-dim bool tensor, and the step is
  ``mode="cond"``: ``torch.cond(forecast?, forecast, compute)`` -- inside a CUDA-graph capture torch
  records both branches as conditional nodes and the GPU runs only the taken one (torch's
  ``_higher_order_ops/cudagraph_conditional_nodes.py``; not exercised here: no GPU); outside a capture, eager ``torch.cond`` reads its predicate on the host (one read
  per step: what the host mode reads too); or ``mode="select"``: both branches run and
  ``torch.where`` keeps one -- no read anywhere, at the cost of a full compute every step (for a
  capture where conditional nodes are not available; it saves nothing).

The coordinate is the model's timestep argument (its largest element, on the device: batched CFG rows
share it, a per-token timestep's noisiest token) or the step index
(``coordinate="step"``: a device counter). Decisions and estimates are kept on the device;
:meth:`DeviceStepCache.decisions` reads them once, at the end of a run.

Differences from the host forecaster: no coordinate unit (gaps below 2^-20 of the coordinate's scale lose
float32 range: use the step index or sigmas, not such coordinates), a compute at a coordinate already
stored restarts the table (the host merges one that repeats the newest node), no zeroing of factors after
a non-finite output (it makes the estimate NaN, which computes).

Knows nothing of FX or of pipelines.
"""

from __future__ import annotations

import inspect
import numbers
import warnings

import torch

from ..graph.boundary import InstanceTensors, timestep_parameter
from ..graph.options import resolve_policy
from ..runtime.region_state import weights_fingerprint
from ..torch_internals import pytree as _pytree
from .device_math import DeviceForecaster, DeviceRule

pytree = _pytree()

__all__ = ["DeviceStepCache", "MODES"]

MODES = ("cond", "select")
_FORMS = ("newton", "heun")


def _checked(policy):
    """The policy, or a ValueError naming the field the device mode cannot follow."""
    n = type(policy).__name__
    if policy.form not in _FORMS:
        raise ValueError(f"DeviceStepCache: {n}.form must be one of {_FORMS} (divided differences), got "
                         f"{policy.form!r}")
    if policy.derivatives_from:
        raise ValueError(f"DeviceStepCache: {n}.derivatives_from must be 0 (the warm-up gating of the derivative "
                         f"factors is not on the device), got {policy.derivatives_from!r}")
    if policy.forecast.select_order:
        raise ValueError(f"DeviceStepCache: {n}.select_order must be False (the order choice is not on the "
                         "device); e.g. AutoPolicy(threshold=..., select_order=False)")
    if policy.reads_estimate:
        if getattr(policy, "budget", None) is not None or getattr(policy, "placements", None) \
                or getattr(policy, "thresholds", None):
            raise ValueError(f"DeviceStepCache: {n}.budget / placements / thresholds are decided on the host; "
                             "the device mode follows the threshold rule: AutoPolicy(threshold=...)")
        if getattr(policy, "per_region", False):
            raise ValueError(f"DeviceStepCache: {n}.per_region must be False (one region: the model output)")
    return policy


class DeviceStepCache:
    """``model``'s calls of one run, cached at its output, decided on the device where the host cannot.

    Args:
        model: the denoiser (any callable returning a tensor or a pytree of floating tensors).
        policy: an ``AutoPolicy(threshold=...)`` (form ``newton`` or ``heun``, ``select_order=False``),
            or a fixed or mask policy or an evenly paced ``AutoPolicy(budget=...)`` of those forms
            (decided on the host, from the step index; a budget keeps its count when a step computes
            for lack of state).
        num_steps: the run's step count (a cooldown, ``min_steps`` and a fixed policy's end count from it).
        mode: ``"cond"`` or ``"select"`` (module docstring).
        timestep_arg: the forward's timestep argument (default: found by name, as ``regions="model"``).
    """

    def __init__(self, model, policy, *, num_steps: int, mode: str = "cond", timestep_arg: str | None = None):
        if not callable(model):
            raise ValueError(f"model must be callable, got {type(model).__name__}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model, self.mode = model, mode
        self._buffers = self._state = None
        self.policy = _checked(resolve_policy(policy))
        f = self.policy.forecast
        self.forecaster = DeviceForecaster(f.order, f.form, self.policy.error_estimator)
        self.rule = DeviceRule(self.policy) if self.policy.reads_estimate else None
        named = getattr(model, "_orig_mod", model)
        forward = named.forward if isinstance(named, torch.nn.Module) else named
        self._tensors = InstanceTensors(named) if isinstance(named, torch.nn.Module) else None
        self._weights = None
        self.timestep_arg, self._position = timestep_parameter(forward, timestep_arg)
        try:
            self._signature = inspect.signature(forward)
        except (TypeError, ValueError):
            self._signature = None
        if f.coordinate == "timestep" and self.timestep_arg is None:
            raise ValueError("DeviceStepCache: the policy extrapolates in the timestep but the model's forward "
                             "takes no timestep argument: pass timestep_arg=... or use coordinate='step'")
        self.start(num_steps)

    def start(self, num_steps: int) -> None:
        """A new run of ``num_steps`` steps: its state is dropped. With the same step count the run's
        buffers are reset in place (the same memory: a captured step stays valid); another count
        allocates new ones (capture again)."""
        if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or num_steps < 1:
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
        same = self._buffers is not None and int(num_steps) == self.num_steps
        self.num_steps, self.step = int(num_steps), 0
        self._host = self.policy.start(self.num_steps)     # the host's schedule: forced steps, fixed policies
        self._fresh = True                                  # nothing computed in this run yet
        if same:                       # the same memory again (a captured step keeps replaying against it)
            run, total, index, decided, estimates = self._buffers
            for b in (run, total, index):
                b.zero_()
            decided.fill_(False), estimates.fill_(float("nan"))
            if self._state is not None:
                self._state[-3].zero_()                     # no stored point: the next compute starts over
        else:
            self._state = self._spec = self._dtypes = None
            self._buffers = None       # (run, total, step counter, decisions, estimates) on the device

    def _allocate(self, device) -> None:
        """The run's device buffers: every step writes into them in place, so that a captured step
        replays against the same memory."""
        run, total = DeviceRule.empty(device)
        self._buffers = (run, total, torch.zeros((), dtype=torch.int64, device=device),
                         torch.zeros(self.num_steps, dtype=torch.bool, device=device),
                         torch.full((self.num_steps,), float("nan"), dtype=torch.float64, device=device))

    # ------------------------------------------------------------ host side: which steps are known
    def _host_decision(self, step: int):
        """True/False when the host knows this step's decision without a read, None when the device decides."""
        p, sched = self.policy, self._host
        if not p.reads_estimate:
            decided = sched.decide(step)
            if self._fresh and not decided:       # nothing to forecast from: computes, and a budget counts it
                sched.computed_anyway(step)
            return decided or self._fresh
        if self._fresh or step < p.warmup_steps or (sched.end is not None and step >= sched.end):
            return True
        if p.min_steps and self.num_steps < p.min_steps:
            if step == p.warmup_steps:
                warnings.warn(f"DeviceStepCache: a run of {self.num_steps} steps is shorter than min_steps="
                              f"{p.min_steps}: every step computes", UserWarning, stacklevel=3)
            return True
        return None

    def _coordinate(self, args, kwargs, device) -> torch.Tensor:
        if self.policy.forecast.coordinate == "step":
            return self._buffers[2].to(torch.float64)             # the device's step counter
        t = kwargs.get(self.timestep_arg)
        if t is None and self._position is not None and self._position < len(args):
            t = args[self._position]
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"DeviceStepCache: the timestep argument {self.timestep_arg!r} must be a tensor "
                             f"(a Python number would be baked into a captured graph), got {type(t).__name__}")
        return t.detach().amax().to(device=device, dtype=torch.float64)   # per row or per token: the noisiest

    # ------------------------------------------------------------ one step
    def __call__(self, *args, **kwargs):
        if self.step >= self.num_steps:
            raise ValueError(f"DeviceStepCache: the run's num_steps={self.num_steps} steps were taken; call "
                             "start(num_steps) for the next run")
        if torch.is_grad_enabled():
            raise ValueError("DeviceStepCache: call it under torch.no_grad() (a cached step has no gradient)")
        self._check_weights()
        known = self._host_decision(self.step)
        device = self._device(args, kwargs)
        if self._buffers is None:
            self._allocate(device)
        run, total, index, decided, estimates = self._buffers
        t = self._coordinate(args, kwargs, device)
        where = index.reshape(1)
        if known is True:
            out = self._compute(args, kwargs, t)
            self._fresh = False
            run.zero_(), total.zero_()
            decided.index_fill_(0, where, True)
        elif known is False:
            out = self._forecast(t)
        else:
            est = self.forecaster.estimate(self._state, t, degree=self.policy.order)
            forecast, new_run, new_total = self.rule.decide(est, run, total)
            out = self._decided_step(forecast, args, kwargs, t)
            run.copy_(new_run), total.copy_(new_total)
            decided.index_copy_(0, where, (~forecast).reshape(1))
            estimates.index_copy_(0, where, est.reshape(1))
        index.add_(1)
        self.step += 1
        return out

    def _check_weights(self) -> None:
        """A change of the model's weights (version counters and data pointers: host-side, no read) drops
        the run's stored points, with a warning: the step computes, and nothing made with the old
        weights reaches a forecast. (A replayed capture runs no Python: it is not checked there.)"""
        if self._tensors is None:
            return
        fp = weights_fingerprint(self._tensors())
        if self._weights is not None and fp != self._weights and not self._fresh:
            warnings.warn("DeviceStepCache: the model's weights changed during the run; its cached state was "
                          "dropped (this step computes)", stacklevel=3)
            self._state[-3].zero_()                          # no stored point
            self._fresh = True
        self._weights = fp

    def _device(self, args, kwargs) -> torch.device:
        for v in list(args) + list(kwargs.values()):
            if isinstance(v, torch.Tensor):
                return v.device
        return torch.device("cpu")

    @staticmethod
    def _leaves(out) -> tuple:
        """``(leaves, spec)`` of a model output. Pure: ``torch.cond``'s branches may not mutate anything
        outside them (torch 2.12 refuses it)."""
        leaves, spec = pytree.tree_flatten(out)
        if not leaves or not all(isinstance(x, torch.Tensor) and x.is_floating_point() for x in leaves):
            raise ValueError("DeviceStepCache: the model's output must be floating tensors (a tensor, a tuple, "
                             "a dataclass of them)")
        return [x.contiguous() for x in leaves], spec

    def _compute(self, args, kwargs, t):
        leaves, self._spec = self._leaves(self.model(*args, **kwargs))
        if self._state is None:
            self._state = self.forecaster.empty(leaves)
            self._dtypes = [x.dtype for x in leaves]
        self._keep(self.forecaster.update(self._state, t, leaves))
        return pytree.tree_unflatten(leaves, self._spec)

    def _keep(self, state) -> None:
        """The new state, written into the run's buffers (in place: a captured step replays them)."""
        for old, new in zip(self._state, state):
            old.copy_(new)

    def _forecast(self, t):
        return pytree.tree_unflatten(self.forecaster.forecast(self._state, t, self._dtypes), self._spec)

    def _decided_step(self, forecast: torch.Tensor, args, kwargs, t):
        """The step whose choice is the device's ``forecast`` (0-dim bool). Everything the branches read
        that is a tensor -- the state, the coordinate, the model's inputs -- is an operand, not a closure:
        dynamo (eager ``torch.cond`` traces its branches) would guard on a closed-over 0-dim tensor's
        value, a host read at every call."""
        n, ns = len(self._dtypes), len(self._state)
        fc, dtypes = self.forecaster, self._dtypes
        flat, spec = pytree.tree_flatten((args, kwargs))
        is_tensor = [isinstance(x, torch.Tensor) for x in flat]
        inputs = tuple(x for x in flat if isinstance(x, torch.Tensor))

        def compute_branch(*ops):
            given = iter(ops[ns + 1:])
            a, kw = pytree.tree_unflatten([next(given) if m else x for m, x in zip(is_tensor, flat)], spec)
            leaves, _ = self._leaves(self.model(*a, **kw))
            return (*leaves, *fc.update(ops[:ns], ops[ns].reshape(()), leaves))

        def forecast_branch(*ops):
            return (*fc.forecast(ops[:ns], ops[ns].reshape(()), dtypes), *[s.clone() for s in ops[:ns]])

        operands = (*self._state, t.reshape(1), *inputs)   # (1,): dynamo guards a 0-dim float operand against NaN
        if self.mode == "cond":
            outs = torch.cond(forecast, forecast_branch, compute_branch, operands)
        else:
            a, b = compute_branch(*operands), forecast_branch(*operands)
            outs = [torch.where(forecast, y, x) for x, y in zip(a, b)]
        self._keep(outs[n:])
        return pytree.tree_unflatten(list(outs[:n]), self._spec)

    # ------------------------------------------------------------ after the run
    def decisions(self) -> list:
        """Per step taken, True = computed (one host read for the whole run)."""
        if self._buffers is None:
            return []
        return [bool(v) for v in self._buffers[3][:self.step].tolist()]

    def estimates(self) -> list:
        """Per step taken, the estimate the device decided with (NaN where the host decided)."""
        if self._buffers is None:
            return []
        return self._buffers[4][:self.step].tolist()

    def memory_bytes(self) -> int:
        """Bytes of the run's device state."""
        return sum(x.numel() * x.element_size() for x in (self._state or ()) + (self._buffers or ()))
