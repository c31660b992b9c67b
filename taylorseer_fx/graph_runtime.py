"""Per compiled graph: step tracking, per (region, stream) forecasters and the call in progress.

:class:`GraphRuntime` is the part of the runtime (``runtime.py``, whose docstring states the rules:
coordinate, streams, generations, decision) that runs one model call of one compiled graph. All
graphs of a backend share one :class:`~taylorseer_fx.runtime.Runtime` (policy, stats, generation
counter, session).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

from .forecast import Forecaster

if TYPE_CHECKING:
    from .runtime import Runtime

__all__ = ["GraphRuntime"]


def _call(compiled: Callable, args) -> Any:
    return compiled(*args)            # dynamo's convention for a backend's result (never boxed)


def _strides(t: torch.Tensor) -> tuple:
    """Strides a fresh tensor can reproduce (expanded, stride-0 layouts become contiguous)."""
    if any(s == 0 and n > 1 for s, n in zip(t.stride(), t.shape)):
        return torch.empty(t.shape).stride()
    return t.stride()


class _RegionState:
    """One region's outputs in one stream: a Forecaster for the floating tensors, the rest kept as
    constants. Residual outputs are stored as (output - input) in float32 and get the current input
    added back, into a tensor with the computed output's shape, strides and dtype; their error
    estimates stay relative to the whole region output."""

    def __init__(self, forecaster: Forecaster):
        self.forecaster = forecaster
        self.generation = -1
        self.kind: tuple = ()        # per output: ("f", k) forecast slot k | ("c", value) constant
        self.container = None        # tuple/list type of the outputs, None for a single tensor
        self.residual: dict = {}     # output index -> (input index, shape, stride, dtype)

    def absorb(self, out, args, residual: dict, x: float, derivatives: bool) -> None:
        kind, tensors, res, whole = [], [], {}, []
        for i, o in enumerate(out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(o, torch.Tensor) and o.is_floating_point():
                whole.append(o)
                j = residual.get(i)
                if j is not None and isinstance(args[j], torch.Tensor) and args[j].shape == o.shape:
                    res[i] = (j, o.shape, _strides(o), o.dtype)
                    o = o.float() - args[j].float()
                kind.append(("f", len(tensors)))
                tensors.append(o)
            else:
                kind.append(("c", o.clone() if isinstance(o, torch.Tensor) else o))
        f = self.forecaster
        if tensors:
            tensors = tuple(tensors)
            if f.num_points and not f.matches(tensors):
                f.reset()
            if derivatives and f.form == "newton" and x in f.nodes:
                derivatives = False          # a repeated coordinate: restart the factors from here
            # estimates relative to the region output, also when its residual is what is stored
            f.update(x, tensors, derivatives=derivatives, reference=tuple(whole) if res else None)
        self.kind, self.residual = tuple(kind), res
        self.container = type(out) if isinstance(out, (tuple, list)) else None

    def forecast(self, x: float, args):
        fc = self.forecaster.forecast(x) if any(k == "f" for k, _ in self.kind) else ()
        fc = (fc,) if isinstance(fc, torch.Tensor) else fc
        outs = []
        for i, (k, v) in enumerate(self.kind):
            if k == "f" and i in self.residual:
                j, shape, stride, dtype = self.residual[i]
                r = torch.empty_strided(shape, stride, dtype=dtype, device=fc[v].device)
                outs.append(torch.add(fc[v], args[j], out=r))
            else:
                outs.append(fc[v] if k == "f" else v)
        return outs[0] if self.container is None else self.container(outs)


@dataclass
class _Call:
    generation: int
    step: int
    stream: int
    coord: float
    x: float                  # forecaster coordinate
    compute: list             # per region: decision of the step (True = compute)
    derivatives: bool
    estimate: float | None = None
    regions: dict = field(default_factory=dict)
    t0: float = 0.0


class GraphRuntime:
    """State of one compiled graph: step tracking, per (region, stream) forecasters, current call."""

    def __init__(self, runtime: Runtime, index: int, regions: list, timestep_index: int | None,
                 dynamic_indices: tuple, name: str):
        self.rt = runtime
        self.index = index
        self.regions = regions          # RegionInfo-like: .name, .residual {out idx: in idx}
        self.timestep_index = timestep_index
        self.dynamic_indices = dynamic_indices
        self.name = name
        self.names = [r.name if index == 0 else f"g{index}:{r.name}" for r in regions]
        self.states: dict = {}          # (region, stream) -> _RegionState
        self.current: _Call | None = None
        self._warned = False
        self.device = None
        self.fused = None               # backend's whole-graph versions (fused=True), see _run_fused
        self.tracker_reset()

    def tracker_reset(self) -> None:
        self.generation = -1
        self.coord = None
        self.direction = 0
        self.step = -1
        self.stream = 0
        self.sig = None
        self.schedules: list = []
        self.step_decision: list | None = None
        self.step_derivatives = True
        self.step_estimate = None

    # ------------------------------------------------------------ call
    def __call__(self, body: Callable, args: Sequence) -> Any:
        """Run ``body(*args)`` (the split graph) as one model call."""
        t0 = time.perf_counter()
        self.current = self._begin(args)
        try:
            if self.fused is not None and self.current is not None:
                out = self._run_fused(args)
                if out is not None:
                    return out
            return body(*args)
        finally:
            call, self.current = self.current, None
            if call is not None:
                call.t0 = t0
                self.rt._record(self, call)

    def _run_fused(self, args) -> Any:
        """The call as one whole-graph call when every region computes, or every region forecasts
        from a forecaster filled in this generation with the layout the fused graph was built for;
        None: use the split pieces (per-region or mixed decisions, fallbacks)."""
        call, n = self.current, len(self.regions)
        if self.rt.per_region or len(set(call.compute)) != 1:
            return None
        if call.compute[0]:
            out, regions = self.fused.compute(args)
            for i, (outs, bases) in enumerate(regions):
                if not self.rt.never:
                    self._state(i, call.stream).absorb(outs, bases, self.regions[i].residual, call.x,
                                                       call.derivatives)
                call.regions[self.names[i]] = "compute"
            return out
        states = [self._state(i, call.stream) for i in range(n)]
        if not all(st.kind and all(k == "f" for k, _ in st.kind)
                   and set(st.residual) == set(self.regions[i].residual) for i, st in enumerate(states)):
            return None
        forecasts = []
        for i, st in enumerate(states):
            fc = st.forecaster.forecast(call.x)
            fc = (fc,) if isinstance(fc, torch.Tensor) else fc
            forecasts.append([fc[v] for _, v in st.kind])
            call.regions[self.names[i]] = "forecast"
        return self.fused.forecast(args, forecasts)

    def _signature(self, args) -> tuple:
        sig = []
        for i in self.dynamic_indices:
            a = args[i]
            if isinstance(a, torch.Tensor):
                sig.append((i, tuple(a.shape), a.dtype, a.device))
            elif isinstance(a, int) and not isinstance(a, bool):
                sig.append((i, a))
        return tuple(sig)

    def _read_coord(self, args) -> float | None:
        if self.timestep_index is None:
            return None
        v = args[self.timestep_index]
        if isinstance(v, torch.Tensor):
            return float(v.reshape(-1)[0]) if v.numel() else None   # the one host read of the call
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    def _begin(self, args) -> _Call | None:
        rt = self.rt
        if torch.is_grad_enabled():
            rt._uncached += 1
            return None
        sig = self._signature(args)
        if self.device is None:
            self.device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        sess = rt._session
        if sess is not None and sess.timesteps is not None:
            n = sess.calls.get(self.index, 0)
            step, stream = divmod(n, sess.streams)
            if step >= len(sess.timesteps):
                n, step, stream = 0, 0, 0
            sess.calls[self.index] = n + 1
            coord = sess.timesteps[step]
            if n == 0 or self.generation != rt.generation or sig != self.sig:
                self._start_generation(coord, sig, step)
            self._advance_to(step, stream, coord)
        else:
            coord = self._read_coord(args)
            if coord is None or not math.isfinite(coord):
                if not self._warned:
                    warnings.warn(f"taylorseer: graph {self.index} has no step coordinate (no timestep input "
                                  "found; pass timestep_arg=... or use backend.session(timesteps=...)); "
                                  "running it uncached", stacklevel=3)
                    self._warned = True
                rt._uncached += 1
                return None
            if self.generation != rt.generation or sig != self.sig or self.coord is None:
                self._start_generation(coord, sig, 0)
                self._advance_to(0, 0, coord)
            elif coord == self.coord:
                self._advance_to(self.step, self.stream + 1, coord)
            else:
                d = 1 if coord > self.coord else -1
                if self.direction and d != self.direction:
                    self._start_generation(coord, sig, 0)
                    self._advance_to(0, 0, coord)
                else:
                    self.direction = d
                    self._advance_to(self.step + 1, 0, coord)
        rt._last = (rt.generation, self.step, coord)
        return self._plan()

    def _start_generation(self, coord: float, sig: tuple, step: int) -> None:
        """Start a new generation in this graph. It joins the backend's current generation when it is
        a sibling of the graph called last (a graph break: same generation, step and coordinate);
        otherwise it starts a new backend-wide generation, so that every other graph resets too."""
        rt = self.rt
        sibling = (self.generation != rt.generation and rt._last is not None
                   and rt._last[0] == rt.generation and rt._last[2] == coord)
        fresh_session = (rt._session is not None and self.generation != rt.generation
                         and (rt._last is None or rt._last[0] != rt.generation))
        if not (sibling or fresh_session):
            rt.new_generation()
        self.generation = rt.generation
        self.direction = 0
        self.sig = sig
        self.schedules = rt._start_schedules(len(self.regions))
        self.step = -1
        self.coord = None

    def _advance_to(self, step: int, stream: int, coord: float) -> None:
        self.stream = stream
        if step != self.step:
            self.step, self.coord = step, coord
            self.step_decision = None

    def _forecaster_x(self, step: int, coord: float) -> float:
        p = self.rt.policy
        if p.form == "newton" and getattr(p, "coordinate", "timestep") == "timestep":
            return float(coord)
        return float(step)

    def _plan(self) -> _Call:
        step, x = self.step, self._forecaster_x(self.step, self.coord)
        if self.step_decision is None:          # first call of the step: decide for all streams
            cache: dict = {}
            per = len(self.schedules) > 1

            def estimate(i=0):
                if "v" not in cache:
                    cache["v"] = self._estimates(x, per_region=per)
                return cache["v"][i]
            if per:
                self.step_decision = [s.decide(step, lambda i=i: estimate(i)) for i, s in enumerate(self.schedules)]
            else:
                self.step_decision = [self.schedules[0].decide(step, estimate)] * len(self.regions)
            self.step_derivatives = self.schedules[0].derivatives(step)
            est = max(cache["v"]) if cache.get("v") else None
            self.step_estimate = est if est is not None and math.isfinite(est) else None
        return _Call(self.generation, step, self.stream, self.coord, x, self.step_decision,
                     self.step_derivatives, self.step_estimate)

    def _estimates(self, x: float, per_region: bool = False) -> list:
        """Estimated relative error of forecasting each region (stream 0) at ``x``; one host read.
        Regions that cannot forecast, or have no estimate yet, give +inf (compute). Returns one value
        (the max) or one per region."""
        method = getattr(self.rt.policy, "estimator", "remainder")
        vals = []
        for i in range(len(self.regions)):
            st = self.states.get((i, 0))
            if st is None or st.generation != self.generation or not st.kind:
                vals.append(math.inf)
            elif not any(k[0] == "f" for k in st.kind):
                vals.append(0.0)                      # constant outputs forecast exactly
            else:
                e = st.forecaster.error_estimate(x, method, degree=self.rt.policy.order)
                vals.append(math.inf if e is None else e)
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        tensors = [v for v in vals if isinstance(v, torch.Tensor)]
        if not tensors and not dist:
            return vals if per_region else [max(vals, default=math.inf)]
        dev = tensors[0].device if tensors else (self.device or torch.device("cpu"))
        t = torch.stack([v.to(dev, torch.float32).reshape(()) if isinstance(v, torch.Tensor)
                         else torch.tensor(float(v), dtype=torch.float32, device=dev) for v in vals])
        t = torch.nan_to_num(t, nan=math.inf, posinf=math.inf)
        if not per_region:
            t = t.max().reshape(1)
        if dist:
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return t.tolist()                              # the one host read

    # ------------------------------------------------------------ regions
    def _state(self, index: int, stream: int) -> _RegionState:
        st = self.states.get((index, stream))
        if st is None:
            p = self.rt.policy
            st = _RegionState(Forecaster(**p.forecaster_options(), factor_dtype=self.rt.factor_dtype))
            self.states[(index, stream)] = st
        if st.generation != self.generation:   # never forecast from another generation's points
            st.forecaster.reset()
            st.kind = ()
            st.generation = self.generation
        return st

    def run_region(self, index: int, compiled: Callable, args: Sequence) -> Any:
        """Compute region ``index`` (``compiled(*args)``) or forecast it, for the current call."""
        call = self.current
        if call is None:
            return _call(compiled, args)
        if self.rt.never:                        # nothing will ever be forecast: store nothing
            call.regions[self.names[index]] = "compute"
            return _call(compiled, args)
        st = self._state(index, call.stream)
        if not call.compute[index] and st.kind:
            call.regions[self.names[index]] = "forecast"
            return st.forecast(call.x, args)
        out = _call(compiled, args)
        st.absorb(out, args, self.regions[index].residual, call.x, call.derivatives)
        call.regions[self.names[index]] = "compute" if call.compute[index] else "fallback"
        return out
