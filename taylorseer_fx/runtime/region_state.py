"""Cached state of one generation: per (graph, region, stream) forecasters, per graph schedules.

Knows nothing of FX or of how calls are placed (``steps.py`` does that): a :class:`Generation` is
created for each generation of each owner (``runtime.py``) and dropped with it, so nothing of it can
reach another generation, request, thread or model instance.
"""

from __future__ import annotations

import math
import operator
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch

from ..forecast.estimates import worst
from ..forecast.forecaster import Forecaster
from ..forecast.buffers import Scratch, add_back, out_strides
from ..forecast.forms import DIVIDED
from .region_estimates import region_estimates
from .steps import Position, StepTracker

__all__ = ["RegionState", "Generation", "StepPlan", "Owner", "weights_fingerprint"]

_VERSION = operator.attrgetter("_version")


def weights_fingerprint(tensors) -> tuple:
    """What changes when a model's weights change: the sum of the tensors' version counters (every
    in-place write: ``copy_``, ``load_state_dict``, an optimizer step, a fused LoRA) and of their data
    pointers (``param.data = ...``). Not seen: a write through ``param.data`` (its own counter)."""
    return sum(map(_VERSION, tensors)), sum(map(torch.Tensor.data_ptr, tensors))


def _clone(v):
    if isinstance(v, torch.Tensor):
        return v.clone()
    if isinstance(v, (tuple, list)):
        return type(v)(_clone(x) for x in v)
    return v


def _nbytes(v) -> int:
    if isinstance(v, torch.Tensor):
        return v.numel() * v.element_size()
    if isinstance(v, (tuple, list)):
        return sum(_nbytes(x) for x in v)
    if isinstance(v, dict):
        return sum(_nbytes(x) for x in v.values())
    return 0


class RegionState:
    """One region's outputs in one stream: a Forecaster for the floating tensors, the rest kept as
    constants. Residual outputs are stored as (output - input) in float32 and get the current input
    added back, into a tensor with the computed output's shape, strides and dtype; their error
    estimates stay relative to the whole region output."""

    def __init__(self, forecaster: Forecaster):
        self.forecaster = forecaster
        self.kind: tuple = ()        # per output: ("f", k) forecast slot k | ("c", value) constant
        self.container = None        # tuple/list type of the outputs, None for a single tensor
        self.residual: dict = {}     # output index -> (input index, shape, stride, dtype)

    def absorb(self, out, args, residual: dict, x: float, derivatives: bool) -> None:
        """Take a computed output at forecaster coordinate ``x``. ``args[j]`` is the region input
        ``j`` (a sequence or ``{j: tensor}``); ``residual``: ``{output index: input index}``."""
        kind, tensors, res, whole = [], [], {}, []
        for i, o in enumerate(out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(o, torch.Tensor) and o.is_floating_point():
                whole.append(o)
                j = residual.get(i)
                if j is not None and isinstance(args[j], torch.Tensor) and args[j].shape == o.shape:
                    res[i] = (j, o.shape, out_strides(o.shape, o.stride()), o.dtype)
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
            if derivatives and f.form in DIVIDED and not f.resolves(x):
                derivatives = False          # a repeated (or unresolvable) coordinate: restart from here
            # estimates relative to the region output, also when its residual is what is stored
            f.update(x, tensors, derivatives=derivatives, reference=tuple(whole) if res else None)
        self.kind, self.residual = tuple(kind), res
        self.container = type(out) if isinstance(out, (tuple, list)) else None

    @property
    def all_forecast(self) -> bool:
        """True when every output is a forecast floating tensor (no constants): what the whole graph's
        forecast version takes."""
        return bool(self.kind) and all(k == "f" for k, _ in self.kind)

    @property
    def all_constant(self) -> bool:
        """True when no output is forecast (every output a constant: forecast exactly)."""
        return not any(k == "f" for k, _ in self.kind)

    @property
    def ready(self) -> bool:
        """True once a compute was absorbed (a forecast can be made)."""
        return bool(self.kind)

    def estimate(self, x: float, method: str, degree: int | None):
        """The estimated relative error of forecasting at ``x``: a 0-dim device tensor (no host read;
        +inf on the device while too few finite computes are stored), ``0.0`` when every output is a
        constant (forecast exactly), ``math.inf`` (compute) before a compute was absorbed, ``math.nan``
        while the forecaster holds fewer computes than ``method`` needs (no estimate yet: a threshold
        computes, a budget paces the step at its even spacing)."""
        if not self.ready:
            return math.inf
        if self.all_constant:
            return 0.0
        e = self.forecaster.error_estimate(x, method, degree=degree)
        return math.nan if e is None else e

    def _forecasts(self, x: float) -> tuple:
        fc = self.forecaster.forecast(x) if any(k == "f" for k, _ in self.kind) else ()
        return (fc,) if isinstance(fc, torch.Tensor) else fc

    def forecast_tensors(self, x: float) -> list:
        """The forecast of the floating outputs, in output order (a residual output's is the delta);
        only for states whose outputs are all floating tensors."""
        fc = self._forecasts(x)
        return [fc[v] for _, v in self.kind]

    def forecast(self, x: float, args):
        fc = self._forecasts(x)
        outs = []
        for i, (k, v) in enumerate(self.kind):
            if k == "f" and i in self.residual:
                j, shape, stride, dtype = self.residual[i]
                r = torch.empty_strided(shape, stride, dtype=dtype, device=fc[v].device)
                outs.append(add_back(fc[v], args[j], dtype, out=r))
            else:
                outs.append(fc[v] if k == "f" else v)
        return outs[0] if self.container is None else self.container(outs)

    def memory_bytes(self) -> int:
        return self.forecaster.memory_bytes() + sum(_nbytes(v) for k, v in self.kind if k == "c")


@dataclass
class StepPlan:
    """The decision of one graph for one step (shared by the step's streams)."""
    step: int
    compute: list             # per region: True = compute
    derivatives: bool
    estimate: float | None


class _GraphSchedules:
    def __init__(self, schedules: list):
        self.schedules = schedules    # one, or one per region (per_region)
        self.plan: StepPlan | None = None


class Generation:
    """Everything cached for one generation of one owner.

    ``policy`` decides; ``start_schedules(n_regions, first_step)`` returns the fresh schedules of a
    graph that starts (at step 0, or later: a graph that joins or restarts mid-generation gets its
    own warm-up from ``first_step``). What the calls read of the policy is fixed here, for the whole
    generation: ``never`` (nothing is stored), ``forecast`` (form and coordinate) and ``per_region``,
    so a policy swapped from another thread applies from the next generation, never half-way
    through a call or a generation."""

    def __init__(self, policy, start_schedules, factor_dtype: torch.dtype, per_region: bool | None = None):
        self.policy = policy
        self.never = policy.never_forecasts
        self.forecast = policy.forecast
        self.per_region = policy.decides_per_region if per_region is None else per_region
        self.factor_dtype = factor_dtype
        self._start_schedules = start_schedules
        self.states: dict = {}      # (graph, region, stream) -> RegionState
        self.scratch = Scratch()    # the work buffers of every forecaster of the generation
        self._graphs: dict = {}     # graph -> _GraphSchedules
        self._held: list = []       # deferred step-1 computes: (graph, region, stream, out, bases, residual, x, der)

    # ------------------------------------------------------------ placement
    def apply(self, pos: Position, graph: int) -> None:
        """Carry out what the tracker said about this call: realign and prune at a new step, restart
        a graph."""
        if pos.realign is not None:
            self._realign(pos.realign)
        if pos.transition is not None:
            keep = pos.transition
            for key in [k for k in self.states if k[2] >= keep.get(k[0], 0)]:
                del self.states[key]          # streams/graphs that can no longer be continued
        if pos.restart:
            for key in [k for k in self.states if k[0] == graph]:
                del self.states[key]
            self._graphs.pop(graph, None)

    def _realign(self, shifts: dict) -> None:
        for graph, shift in shifts.items():
            if shift:
                moved = {}
                for (g, r, s), st in list(self.states.items()):
                    if g == graph:
                        del self.states[(g, r, s)]
                        if s >= shift:
                            moved[(g, r, s - shift)] = st
                self.states.update(moved)
        held, self._held = self._held, []
        for graph, region, stream, out, bases, residual, x, der in held:
            self.state(graph, region, stream).absorb(out, bases, residual, x, der)

    def hold(self, graph: int, region: int, stream: int, out, args, residual: dict, x: float,
             derivatives: bool) -> None:
        """Keep a copy of a deferred compute (step 1 while its streams are not known yet)."""
        bases = {j: args[j].clone() for j in set(residual.values()) if isinstance(args[j], torch.Tensor)}
        self._held.append((graph, region, stream, _clone(out), bases, residual, x, derivatives))

    # ------------------------------------------------------------ state
    def state(self, graph: int, region: int, stream: int) -> RegionState:
        key = (graph, region, stream)
        st = self.states.get(key)
        if st is None:
            st = RegionState(Forecaster(**self.policy.forecaster_options(), factor_dtype=self.factor_dtype,
                                        scratch=self.scratch))
            self.states[key] = st
        return st

    def memory_bytes(self) -> int:
        held = sum(_nbytes(h[3]) + _nbytes(h[4]) for h in list(self._held))   # snapshots: another
        states = sum(st.memory_bytes() for st in list(self.states.values()))     # thread may call
        return states + held + self.scratch.memory_bytes()

    # ------------------------------------------------------------ decisions
    def plan(self, graph: int, step: int, n_regions: int, x: float, device, per_region: bool) -> StepPlan:
        """The graph's decision at ``step`` (made at its first call of the step, reused by the others)."""
        gs = self._graphs.get(graph)
        if gs is None:
            gs = self._graphs[graph] = _GraphSchedules(self._start_schedules(n_regions, step, graph=graph))
        if gs.plan is not None and gs.plan.step == step:
            return gs.plan
        cache: dict = {}
        per = len(gs.schedules) > 1

        def estimate(i=0):
            if "v" not in cache:
                cache["v"] = self.estimates(graph, n_regions, x, device, per_region=per)
            return cache["v"][i]
        if per:
            compute = [s.decide(step, lambda i=i: estimate(i)) for i, s in enumerate(gs.schedules)]
        else:
            compute = [gs.schedules[0].decide(step, estimate)] * n_regions
        est = worst(cache["v"]) if cache.get("v") else None
        gs.plan = StepPlan(step, compute, gs.schedules[0].derivatives(step),
                           est if est is not None and math.isfinite(est) else None)
        return gs.plan

    def computed_anyway(self, graph: int, step: int) -> StepPlan | None:
        """The graph computes every region at ``step`` whatever its plan said (a deferred step 1:
        ``steps.py``): its schedules count the compute (a budget re-paces the rest, keeping its count)
        and the plan, shared by the step's other streams, says compute. Returns the plan."""
        gs = self._graphs.get(graph)
        if gs is None or gs.plan is None or gs.plan.step != step:
            return None
        if not all(gs.plan.compute):
            for s in gs.schedules:
                s.computed_anyway(step)
            gs.plan = StepPlan(step, [True] * len(gs.plan.compute), gs.plan.derivatives, gs.plan.estimate)
        return gs.plan

    def estimates(self, graph: int, n_regions: int, x: float, device=None, per_region: bool = False) -> list:
        """Estimated relative error of forecasting each region of ``graph`` (stream 0) at ``x``, one host
        read (:func:`~.region_estimates.region_estimates`: +inf where a region cannot forecast, NaN where
        it has no estimate yet; summed over the ranks under context parallelism). Returns one value
        (:func:`~taylorseer_fx.forecast.estimates.worst` of them) or one per region."""
        states = [self.states.get((graph, i, 0)) for i in range(n_regions)]
        vals = region_estimates(states, x, self.policy.error_estimator, self.policy.order, device)
        return vals if per_region else [worst(vals)]

    def chosen_orders(self, graph: int, names: Sequence[str]) -> dict:
        """``{region name: chosen degree (0-dim device tensor)}`` of stream 0, order-selecting policies."""
        orders = {}
        for i, name in enumerate(names):
            st = self.states.get((graph, i, 0))
            chosen = st.forecaster.chosen_order() if st is not None else None
            if chosen is not None:
                orders[name] = chosen
        return orders


class Owner:
    """The cached state of one scope x one model instance (x one told branch): its step tracker and
    the state of its current generation (dropped, and so released, when the next generation starts
    or :meth:`end`).
    ``new_generation(k)`` makes the :class:`Generation` of the owner's k-th generation (sibling told
    branches' k-th share their schedules; None: schedules of its own)."""

    def __init__(self, new_generation, refs: tuple = ()):
        self.tracker = StepTracker()
        self.generation: Generation | None = None
        self._generation_id: int | None = None
        self._new_generation = new_generation
        self.refs = refs              # weak references to the instance's parameters (their callbacks drop the owner)
        self.label_of = self.label = None   # the trace's label of the current generation (runtime.py)
        self.interrupts = 0           # the thread's interrupted calls this owner has taken into account
        self.weights: tuple | None = None   # weights_fingerprint at the generation's start or last check
        self.started = 0              # generations started (ids are global serials; this counts per owner)

    @property
    def generation_id(self) -> int | None:
        """The id of the current generation (None: none started since the last :meth:`end`)."""
        return self._generation_id

    def place(self, graph: int, coord: float, sig: tuple, counted: tuple | None = None):
        """``(Position, Generation)`` of one call of ``graph`` (see ``steps.py``)."""
        pos = self.tracker.observe(graph, coord, sig, counted=counted)
        if pos.generation != self._generation_id:
            self.started += 1             # the k-th generation of this owner: sibling branches' k-th share schedules
            self._generation_id, self.generation = pos.generation, self._new_generation(self.started)
            self.weights = None
        self.generation.apply(pos, graph)
        return pos, self.generation

    def check_weights(self, instance) -> bool:
        """True (and the generation's cached state dropped: it was made with other weights; the step
        index goes on, the graphs start their warm-up again) when the weights changed since the
        generation started or since the last check. Called before a forecast."""
        fp = weights_fingerprint(instance)
        changed = self.weights is not None and fp != self.weights
        self.weights = fp
        if changed and self.generation is not None:
            self.generation = self._new_generation(None)     # fresh schedules: the warm-up starts again
        return changed

    def end(self) -> None:
        """The current generation is over: its state is dropped; the next call starts a new one."""
        self.tracker.end()
        self.generation, self._generation_id = None, None

    def memory_bytes(self) -> int:
        g = self.generation
        return 0 if g is None else g.memory_bytes()


class _Sibling:
    """A told branch's view of the schedule its sibling branches share: it decides with the shared
    one while the steps go forward; a branch that goes back (its calls not interleaved with its
    siblings' step by step) goes on with a schedule of its own from ``first_step``, and says so once."""

    def __init__(self, shared, own):
        self.shared, self._own, self.mine = shared, own, None

    def decide(self, step, estimate=None):
        if self.mine is None:
            try:
                return self.shared.decide(step, estimate)
            except ValueError:         # a step before the shared schedule's: not in step with the siblings
                warnings.warn("taylorseer: told branches of one model are not called step by step together; "
                              "this branch decides on its own from here (its forecasts no longer at its "
                              "siblings' steps)", stacklevel=4)
                self.mine = self._own()
        return self.mine.decide(step, estimate)

    def __getattr__(self, name):
        return getattr(self.mine if self.mine is not None else self.shared, name)


def share_schedules(generation: Generation, scope_ref, ids, k) -> Generation:
    """``generation`` (an owner's ``k``-th) with its schedules shared by the told branches and stages
    of one model instance in one scope: the branch that reaches a graph first starts its schedules,
    its siblings' k-th generations decide with the very same objects, so every branch of a step
    computes or forecasts together (a schedule answers a repeated step the same). Under
    classifier-free guidance this keeps the forecast errors of cond and uncond alike, so they cancel
    in ``cond - uncond`` instead of being amplified by the guidance scale (measured on the arena
    Flux, true CFG 3, 28 steps, threshold 0.25, 4 samples: relative L2 0.088 with a schedule per
    branch, 0.017 shared, as before the branches became owners of their own). Each branch keeps its
    own cached state. ``ids`` None (streams inferred within one owner) or ``k`` None (a restart after
    a weight change): schedules of its own."""
    if ids is None or k is None:
        return generation
    own = generation._start_schedules

    def start(n_regions: int, first_step: int, graph=None) -> list:
        sc = scope_ref()
        if sc is None:
            return own(n_regions, first_step, graph=graph)
        key = (ids, k, graph, n_regions, first_step, id(generation.policy))
        book = sc.schedules
        if key not in book:
            for old in [b for b in book if b[0] == ids and b[1] != k]:    # an earlier generation's
                del book[old]
            book[key] = own(n_regions, first_step, graph=graph)
        return [_Sibling(s, lambda i=i: own(n_regions, first_step, graph=graph)[i]) for i, s in enumerate(book[key])]
    generation._start_schedules = start
    return generation
