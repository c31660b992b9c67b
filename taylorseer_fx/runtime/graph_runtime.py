"""One model call of one compiled graph: coordinate, owner, placement, then the regions.

:class:`GraphRuntime` is what a compiled graph calls (``graph/backend.py`` hands dynamo a callable that
goes through it; every region piece is a ``CacheNode`` that calls :meth:`GraphRuntime.run_region`).
Per call (``__call__``):

* **Grad enabled** (or no step coordinate): every region is computed and nothing is stored.
* **Coordinate.** The value of the timestep input, in the model's own units (0..1000, a sigma ...):
  one host read per call. A 0-dim or (B,) tensor, a Python float or int. Per-sample timesteps that
  differ within the batch use element 0 (a warning says so, once per graph). In a ``session`` with a
  schedule the calls are counted instead (sync-free, per owner: ``runtime.Session.count``): call
  ``n`` is step ``n // streams``, stream ``n % streams``, coordinate ``timesteps[step]``.
* **Owner.** State belongs to one scope (the request in force, else the asyncio task, else the
  thread: ``runtime.Runtime.scope``) and one model instance: the instance is told apart by the
  identity of all the parameters dynamo passes as graph inputs (two instances of one class share the
  compiled graph, never its state). A call whose step the request tells (``request.Told``) belongs to
  the owner of its branch and stage, placed at the told step (``_begin_told``).
* **Weights.** Before a forecast, the owner's parameters' version counters and data pointers are
  compared with the generation's; a change drops the generation's state (a warning says so). The owner's step tracker (``steps.py``, where the rules of
  generations, steps and streams are written) places the call; its :class:`~.region_state.Generation`
  holds the forecasters, which nothing outside the generation can reach.
* **Interrupted calls.** An exception raised inside the call ends every generation of this thread.
* **Decision.** Once per step and graph, at its first call (``policy.start(num_steps, first_step)
  .decide(step, estimate)``; one schedule per region with ``per_region``); the step's other streams
  reuse it. A region whose forecaster of this stream is empty computes (fallback). The estimate
  (adaptive policies) is ``worst`` over the regions' ``Forecaster.error_estimate`` (+inf over NaN over
  the largest), read with one host read.
* **Paths.** The call runs the whole graph (``whole_graph.py``) when every region computes, when every
  region forecasts from a state the forecast version accepts, and when every region was to be
  forecast but none has a state yet (a fallback: all computed). Otherwise -- per-region or mixed
  decisions, a forecast from some regions' states only -- it runs the split pieces (``pieces``,
  compiled at the first such call). Uncached calls run the whole compute version.
* **Forecaster coordinate.** ``taylor``: the step index; ``newton``: the timestep value when
  ``policy.forecast.coordinate == "timestep"``, else the step index.

The backend-wide part (policy, owners per thread, sessions, stats) is ``runtime.Runtime``, handed
in as ``context``; this module does not import it.
"""

from __future__ import annotations

import math
import operator
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import torch

from ..forecast.forms import DIVIDED
from .region_state import Generation, StepPlan

__all__ = ["GraphRuntime", "RuntimeContext", "read_coordinate"]

_READ_ALL = 64     # per-sample timesteps up to this many elements are read whole (one copy, no kernel)


def read_coordinate(v) -> tuple:
    """``(element 0, smallest, largest)`` of a timestep value (tensor or Python number) in one host
    read, or ``(None, None, None)``. Up to 64 elements are copied whole, more are reduced on the device."""
    if not isinstance(v, torch.Tensor):
        try:
            x = float(v)
        except (TypeError, ValueError):
            return None, None, None
        return x, x, x
    n = v.numel()
    if n <= 1:
        x = float(v.reshape(-1)[0]) if n else None                  # the one host read of the call
        return x, x, x
    flat = v.reshape(-1)
    if n <= _READ_ALL:
        vals = flat.tolist()                                        # one copy
        return vals[0], min(vals), max(vals)
    lo, hi = torch.aminmax(flat)
    first, lo, hi = torch.stack((flat[0], lo, hi)).tolist()
    return first, lo, hi


@runtime_checkable
class RuntimeContext(Protocol):
    """Everything a :class:`GraphRuntime` uses of the backend-wide runtime (``runtime.Runtime``).

    ``recorder``: the stats and trace (``trace.Recorder``); what a call reads of the policy is its
    generation's (``Generation.never``, ``forecast``, ``per_region``). The methods place a call: its scope and what the request tells,
    the owner of its state, the graph-break coordinate hand-over, the end of an interrupted call's
    generations and the trace's generation label."""

    recorder: Any

    def scope(self) -> tuple: ...

    def owner(self, scope, instance: Sequence, stream=None): ...

    def publish_coordinate(self, scope, order: int, coord: float, top: float) -> None: ...

    def take_coordinate(self, scope, order: int, owner_key) -> tuple | None: ...

    def interrupt(self, scope=None) -> None: ...

    def arrive(self) -> None: ...

    def generation_label(self, scope, owner, generation: int, coord: float, step: int) -> int: ...


@dataclass
class _Call:
    generation: int
    step: int
    stream: int
    coord: float
    x: float                  # forecaster coordinate
    gen: Generation
    plan: StepPlan
    defer: bool               # compute and hold the outputs (steps.py: step 1 with unknown streams)
    scope: Any = None         # the runtime's scope of the request (or task, thread) making the call
    owner: Any = None         # the owner whose generation the call belongs to
    weights: tuple | None = None   # the instance's weights fingerprint before a boundary compute
    shown: int | None = None  # the stream in the trace, when not ``stream`` (told branches: one owner each)
    regions: dict = field(default_factory=dict)

    def computes(self, index: int) -> bool:
        return self.defer or self.plan.compute[index]


class GraphRuntime:
    """Runs the calls of one compiled graph. ``regions``: RegionInfo-like (.name, .residual);
    ``timestep_index``: graph input holding the coordinate (None: none found); ``dynamic_indices``:
    inputs that are not parameters/buffers (the call's signature); ``instance_indices``: parameter
    inputs whose identity tells model instances apart. ``whole``: the graph's
    :class:`~taylorseer_fx.graph.whole_graph.WholeGraph` (None: split pieces only); ``pieces``: a callable
    running the split graph, whose region pieces call :meth:`run_region` (compiled at its first call);
    ``compile_order``: the graph's position among all the backend compiled (default ``index``)."""

    def __init__(self, context: RuntimeContext, index: int, regions: list, timestep_index: int | None,
                 dynamic_indices: Sequence[int], instance_indices: Sequence[int] = (), name: str = "",
                 whole=None, pieces: Callable | None = None, compile_order: int | None = None):
        self.ctx = context
        self.index = index
        self.regions = regions
        self.timestep_index = timestep_index
        self.sig_indices = tuple(i for i in dynamic_indices if i != timestep_index)
        self.instance_indices = tuple(instance_indices)
        n = len(self.instance_indices)                  # the instance's tensors out of the inputs, in C
        self._pick = (operator.itemgetter(*self.instance_indices) if n > 1
                      else (lambda args: (args[self.instance_indices[0]],)) if n else (lambda args: ()))
        self.name = name
        self.names = [r.name if index == 0 else f"g{index}:{r.name}" for r in regions]
        self.device = None
        self.whole = whole
        self.pieces = pieces
        # position among every graph the backend compiled (graph-break coordinate hand-over)
        self.compile_order = index if compile_order is None else compile_order
        self._tls = threading.local()   # the call in progress, per thread
        self._warned: set = set()

    @property
    def label(self) -> str:
        """The graph in messages: its index in the backend and what ``name`` says (dynamo's compile id,
        the model code it was traced from)."""
        return f"graph {self.index} [{self.name}]" if self.name else f"graph {self.index}"

    @property
    def current(self) -> _Call | None:
        """This thread's call in progress (None outside a model call)."""
        return getattr(self._tls, "call", None)

    # ------------------------------------------------------------ call
    def __call__(self, args: Sequence) -> Any:
        """Run one model call of the graph on ``args`` (its inputs)."""
        t0 = time.perf_counter()
        self.ctx.arrive()
        call = self._begin(args)
        if call is None:
            return self.whole.run(args) if self.whole is not None else self.pieces(*args)
        self._tls.call = call
        try:
            out = self._run_whole(call, args) if self.whole is not None else None
            return self.pieces(*args) if out is None else out
        except BaseException:
            self.ctx.interrupt(call.scope)        # the interrupted generation is over: nothing of it is used again
            call = None
            raise
        finally:
            self._tls.call = None
            if call is not None:
                self._record(call, t0)

    def _record(self, call: _Call, t0: float) -> None:
        forecast = any(v == "forecast" for v in call.regions.values())
        tally = call.scope.tally
        if tally is not None:
            tally.record((self.index, call.stream if call.shown is None else call.shown), call.step, forecast,
                         not all(call.plan.compute))
            if any(v == "fallback" for v in call.regions.values()):
                tally.cause("fallback")
        orders = None
        if call.stream == 0 and not forecast and not call.gen.never:
            orders = call.gen.chosen_orders(self.index, self.names) or None   # device tensors
        self.ctx.recorder.record({
            "graph": self.index, "generation": call.generation, "step": call.step,
            "stream": call.stream if call.shown is None else call.shown,
            "coordinate": call.coord, "decision": "forecast" if forecast else "compute",
            "estimate": call.plan.estimate, "regions": dict(call.regions), "orders": orders, "wall_s": time.perf_counter() - t0, "thread": threading.get_ident(),
        })

    def _begin(self, args) -> _Call | None:
        ctx = self.ctx
        if torch.is_grad_enabled():
            ctx.recorder.uncached()
            ctx.scope()[0].cause("grad", uncached=True)
            return None
        if self.device is None:
            self.device = next((a.device for a in args if isinstance(a, torch.Tensor)), None)
        scope, told = ctx.scope()
        instance = self._instance(args)
        if told is not None and told.step_index is None and told.locate is not None and self.timestep_index is not None:
            told = told.locate(read_coordinate(args[self.timestep_index])[2]) or told
        if told is not None and told.step_index is not None:
            return self._begin_told(scope, told, instance, args)
        counted = None
        # a told branch whose step could not be told (a scheduler with no index, a timestep not in its
        # schedule) is placed by inference, in the owner its told calls continue
        owner = ctx.owner(scope, instance, None if told is None or told.branch is None else told.stream)
        session = scope.session
        if session is not None and session.timesteps is not None:
            step, stream, coord = session.count(owner, self.index)
            counted = (step, stream)
        else:
            if self.timestep_index is not None:
                coord, top = self._read_coord(args, session)
                if coord is not None and math.isfinite(coord):
                    ctx.publish_coordinate(scope, self.compile_order, coord, top)
            else:                       # a graph-break piece: the coordinate an earlier graph of the call read
                coord, top = ctx.take_coordinate(scope, self.compile_order, self._instance_key(args)) or (None, None)
            if coord is None or not math.isfinite(coord):
                self._warn_once("coord", f"taylorseer: {self.label} has no step coordinate (no "
                                "timestep input found and no earlier graph of the model call read one, or a "
                                "non-finite value; pass timestep_arg=... or use "
                                "backend.session(timesteps=...)); running it uncached. A timestep passed as a "
                                "Python number is baked into the first graph dynamo traces (one uncached call; "
                                "from its second value on it is a graph input): pass a tensor to cache the "
                                "first call too")
                ctx.recorder.uncached()
                scope.cause("no-coordinate", uncached=True)
                return None
            if session is not None and session.schedule is not None:
                counted = session.locate(owner, self.index, top)   # None: placed by inference
                if counted is None:
                    self._warn_once("schedule", f"taylorseer: {self.label}: timestep {top:g} is not in "
                                    "the session's schedule; placing the call by its value")
        return self._place(scope, owner, coord, args, counted, instance)

    def _begin_told(self, scope, told, instance, args) -> _Call:
        """A call whose step (and branch) the request tells: one owner per branch and stage, each with
        its own history, all deciding with one schedule (``region_state.share_schedules``); the coordinate is the told one, else the timestep input's value,
        else the step index."""
        stream = told.stream
        if told.branch is None:            # calls of one step told apart by their order
            stream = (None, told.stage, scope.untold_stream(self._instance_key(args), self.index, told))
        owner = self.ctx.owner(scope, instance, stream)
        coord = told.coordinate
        if coord is None and self.timestep_index is not None:
            coord = read_coordinate(args[self.timestep_index])[2]
        if coord is None or not math.isfinite(coord):
            coord = float(told.step_index)
        call = self._place(scope, owner, coord, args, (told.step_index, 0), instance)
        call.shown = scope.told_streams.setdefault(stream, len(scope.told_streams))
        if scope.told_label is None:
            scope.told_label = call.generation
        call.generation = scope.told_label      # one generation in the trace, whatever the branches
        return call

    def _place(self, scope, owner, coord: float, args, counted, instance) -> _Call:
        before = owner.generation_id
        pos, gen = owner.place(self.index, coord, self._signature(args), counted)
        if pos.restart or (before is not None and pos.generation != before):
            scope.cause("restart")
        if owner.weights is None and not gen.never:
            owner.check_weights(instance)           # the weights this generation starts with
        x = self._forecaster_x(gen, pos.step, coord)
        n, per_region = len(self.regions), gen.per_region
        plan = gen.plan(self.index, pos.step, n, x, self.device, per_region)
        if not all(plan.compute) and owner.check_weights(instance):     # never forecast from old weights
            self._warn_once("weights", f"taylorseer: {self.label}: the model's weights changed during a "
                            "generation; its cached state was dropped and the steps from here are computed "
                            "again until the policy's warm-up allows a forecast")
            scope.cause("weights")
            gen = owner.generation
            x = self._forecaster_x(gen, pos.step, coord)
            plan = gen.plan(self.index, pos.step, n, x, self.device, gen.per_region)
        if pos.defer and not all(plan.compute):     # step 1 computes while its streams are unknown: counted
            plan = gen.computed_anyway(self.index, pos.step)
        label = self.ctx.generation_label(scope, owner, pos.generation, coord, pos.step)
        return _Call(label, pos.step, pos.stream, coord, x, gen, plan, pos.defer, scope, owner=owner)

    def _instance(self, args) -> tuple:
        return self._pick(args)

    def _instance_key(self, args) -> tuple:
        return tuple(map(id, self._pick(args)))

    def _signature(self, args) -> tuple:
        """Shapes, dtypes and devices of the tensor inputs. Integers dynamo lifted into the graph
        (sizes, storage offsets such as ``timesteps[i]``'s) are not part of it: they change at every
        step of a run without starting a new one."""
        return tuple((i, tuple(a.shape), a.dtype, a.device) for i in self.sig_indices
                     if isinstance(a := args[i], torch.Tensor))

    def _read_coord(self, args, session=None) -> tuple[float | None, float | None]:
        """``(element 0, largest element)`` of the timestep input (None, None: no coordinate). The
        largest is what a schedule lookup uses: per-token timesteps hold 0 for conditioning tokens."""
        if self.timestep_index is None:
            return None, None
        first, lo, hi = read_coordinate(args[self.timestep_index])
        if lo != hi and (session is None or session.schedule is None):
            self._warn_once("per-sample", f"taylorseer: {self.label}: the timesteps differ within the "
                            f"batch ({lo:g}..{hi:g}); element 0 is the step coordinate. For per-token "
                            "timesteps use backend.session(timesteps=...) (explicit schedule)")
        return first, hi

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=4)

    @staticmethod
    def _forecaster_x(gen: Generation, step: int, coord: float) -> float:
        f = gen.forecast
        if f.form in DIVIDED and f.coordinate == "timestep":
            return float(coord)
        return float(step)

    # ------------------------------------------------------------ regions
    def _run_whole(self, call: _Call, args) -> Any:
        """The call through the whole graph (see the module docstring), or None: use the split pieces."""
        n, gen, whole = len(self.regions), call.gen, self.whole
        decisions = {call.computes(i) for i in range(n)}
        if len(decisions) != 1:
            return None
        states = [None] * n if True in decisions else [gen.states.get((self.index, i, call.stream))
                                                         for i in range(n)]
        if all(st is None or not st.ready for st in states):     # compute (as decided, or fallback)
            out, regions = whole.compute(args)
            label = "compute" if True in decisions else "fallback"
            for i, (outs, bases) in enumerate(regions):
                if not gen.never:
                    self._absorb(call, i, outs, bases)
                call.regions[self.names[i]] = label
            return out
        if not all(whole.accepts(st, info) for st, info in zip(states, self.regions)):
            return None
        forecasts = []
        for i, st in enumerate(states):
            forecasts.append(st.forecast_tensors(call.x))
            call.regions[self.names[i]] = "forecast"
        return whole.forecast(args, forecasts)

    def _absorb(self, call: _Call, index: int, out, args) -> None:
        residual = self.regions[index].residual
        if call.defer:
            call.gen.hold(self.index, index, call.stream, out, args, residual, call.x, call.plan.derivatives)
        else:
            call.gen.state(self.index, index, call.stream).absorb(out, args, residual, call.x,
                                                                  call.plan.derivatives)

    def run_region(self, index: int, compiled: Callable, args: Sequence) -> Any:
        """Compute region ``index`` (``compiled(*args)``) or forecast it, for this thread's current call."""
        call = self.current
        if call is None:
            return compiled(*args)
        if call.gen.never:                        # nothing will ever be forecast: store nothing
            call.regions[self.names[index]] = "compute"
            return compiled(*args)
        compute = call.computes(index)
        st = None if compute else call.gen.states.get((self.index, index, call.stream))
        if st is not None and st.ready:
            call.regions[self.names[index]] = "forecast"
            return st.forecast(call.x, args)
        out = compiled(*args)
        self._absorb(call, index, out, args)
        call.regions[self.names[index]] = "compute" if compute else "fallback"
        return out
