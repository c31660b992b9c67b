"""The backend's shared state: policy and options, the scopes that own cached state, sessions, stats.

Knows nothing of FX. One :class:`Runtime` per backend object; it makes one
:class:`~taylorseer_fx.runtime.graph_runtime.GraphRuntime` per compiled graph (graph breaks and recompiles
give several). Cached state is never kept per graph: it belongs to a :class:`Scope` -- the request in
force (``request.py``: a ``Request``, a ``session``, a ``compile_pipeline`` call), else the asyncio
task, else the thread -- and within it to an **owner**: one model instance (the identity of all the
parameters the graph runs with) and, where the request tells it, one branch and stage. Within an
owner it belongs to the current generation (``steps.py`` states the rules for generations, steps and
streams; ``graph_runtime.py`` the per-call flow). So two requests, tasks or threads, two instances
of one class through one compiled graph, or two images, never share factors or step counters.

* An owner is created at its first call and released when its scope ends (a request closed, a task
  or thread gone), when its model instance's parameters are freed, or at :meth:`Runtime.reset`.
* :meth:`Runtime.session` gives explicit generation boundaries for this backend and, with a schedule,
  a sync-free coordinate; a session's ``num_steps`` wins over the backend's.
* :meth:`Runtime.memory_bytes` reports the bytes held in cached state (factors, scratch, held
  outputs) over every scope and instance.
"""

from __future__ import annotations

import itertools
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .graph_runtime import GraphRuntime
from .region_state import Generation, Owner, share_schedules
from .request import SCHEDULE_SCALES, Request, Told, active, current_task, nearest_index
from .tally import Shortfall, Tally
from .trace import Recorder

__all__ = ["Runtime", "Scope", "Session"]

#: per thread: exceptions raised inside a model call of any backend (an owner that saw fewer ends its
#: generation at its next call: Wan 2.2's two denoisers have one backend each)
_INTERRUPTS = threading.local()
_SERIALS = itertools.count(1)            # published coordinates, process-wide



@dataclass
class Session:
    """How a request places one backend's calls. ``timesteps``: the schedule (model
    units) whose calls are counted, or None (the coordinate is still read per call); ``num_steps``:
    step count for the policy; ``schedule``: the scheduler's timesteps, to place each call (its
    coordinate read) at its index in them (:meth:`locate`)."""
    timesteps: list | None
    num_steps: int | None
    streams: int
    schedule: list | None = None
    calls: dict = field(default_factory=dict)  # owner or graph index -> calls counted
    _scale: float | None = None
    _located: dict = field(default_factory=dict)   # (owner, graph) -> (last step, calls at it)

    def locate(self, owner, graph: int, coord: float) -> tuple[int, int] | None:
        """``(step, stream)`` of a call at ``coord``: the index of the nearest schedule value, at or after
        this owner's last step, under the scale the pipeline applies (1 or 1/1000 of the scheduler's
        values, found at the first call); the stream counts the owner's calls at that step. None (place
        it by inference) when the nearest value is farther than half the gap to its neighbours."""
        last, seen = self._located.get((owner, graph), (0, 0))
        found = nearest_index(self.schedule, coord, last,
                              (self._scale,) if self._scale is not None else SCHEDULE_SCALES)
        if found is None:
            return None
        step, self._scale = found
        stream = seen if step == last else 0
        self._located[(owner, graph)] = (step, stream + 1)
        return step, stream

    def count(self, owner, graph: int) -> tuple[int, int, float]:
        """``(step, stream, coordinate)`` of the next call of ``owner`` through ``graph``; starts over
        after the last step. Calls are counted per owner (a recompile after a batch change, cond and
        uncond in graphs of their own, go on counting); an owner's first call goes on from the graph's
        count (a second model instance taking over a shared graph mid-run, Wan 2.2-like)."""
        n = self.calls.get(owner)
        if n is None:
            n = self.calls.get(graph, 0)
        step, stream = divmod(n, self.streams)
        if step >= len(self.timesteps):
            n, step, stream = 0, 0, 0
        self.calls[owner] = self.calls[graph] = n + 1
        return step, stream, self.timesteps[step]


class Scope:
    """What one request (or, with none in force, one asyncio task or thread) holds in one runtime: its
    owners ((instance key, stream key) -> Owner), its session (calls counted or placed on a schedule),
    and the coordinate its last timestep-reading graph published (graph-break models)."""
    __slots__ = ("owners", "session", "request", "last", "coord", "taken", "streams", "told_streams",
                 "told_label", "tally", "audit", "schedules", "__weakref__")

    def __init__(self, session: Session | None = None, request: Request | None = None, audit=None):
        self.owners: dict = {}
        self.schedules: dict = {}         # (instance ids, generation, graph, ...) -> schedules the told branches share
        self.session = session
        self.request = request
        self.last: tuple | None = None    # (owner, generation label, coordinate, step) of the last call
        self.coord: tuple | None = None   # (serial, compile order, coordinate, largest element) last published
        self.taken: dict = {}             # (graph, owner key) -> serial of the coordinate it last took
        self.streams: dict = {}           # (instance key, graph, stage) -> (step, calls at it): untold branches
        self.told_streams: dict = {}      # told stream key -> its number in the trace (first seen, first)
        self.told_label: int | None = None   # the trace's generation label of the told calls
        # a request's planned vs actual forecasts (implicit scopes never end: they keep no tally)
        self.tally: Tally | None = Tally() if request is not None else None
        self.audit = audit                # audit(scope) at close: warn (or raise) on a shortfall

    def end_all(self) -> None:
        """End every owner's generation. A session's call count goes on: the next call is still placed
        at the step the session counts (a new generation, with its own warm-up, starting there)."""
        for owner in list(self.owners.values()):
            owner.end()
        self.told_label = None

    def clear(self) -> None:
        """Forget every owner and every reference to one (``Runtime.reset``, a policy swap): what the
        owners held is freed, not merely uncounted."""
        self.owners.clear()
        self.schedules.clear()
        self.last = self.coord = None
        self.taken.clear()
        self.streams.clear()
        self.told_streams.clear()
        self.told_label = None

    def close(self, audit: bool = True) -> None:
        """The request is over: every generation ends, and (``audit``) its forecasts are audited."""
        self.end_all()
        if audit and self.audit is not None and self.tally is not None:
            self.audit(self)

    def cause(self, name: str, uncached: bool = False) -> None:
        """A cause of missing forecasts (``tally.CAUSES``; ``uncached``: a call ran uncached), counted
        for the request's audit."""
        if self.tally is not None:
            self.tally.cause(name, uncached)

    def untold_stream(self, key: tuple, graph: int, told: Told) -> int:
        """The call order of a told step's calls when no branch is told (split CFG without
        ``cache_context``): 0, 1, ... per instance, graph, step and stage."""
        k = (key, graph, told.stage)
        step, n = self.streams.get(k, (None, -1))
        n = n + 1 if step == told.step_index else 0
        self.streams[k] = (told.step_index, n)
        return n


class Runtime:
    """Shared state of one backend object: policy, options, owners, sessions, stats."""

    def __init__(self, policy, *, num_steps: int | None = None, per_region: bool | None = None,
                 factor_dtype: torch.dtype = torch.float32, strict: bool = False):
        self._graphs: list[weakref.ref] = []   # the GraphRuntimes, weakly: dynamo's cache owns them
        self._graph_count = 0
        self.recorder = Recorder()
        self._local = threading.local()                           # this thread's scope
        self._task_scopes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # asyncio task -> scope
        self._scopes: weakref.WeakSet = weakref.WeakSet()        # every scope, for reset() and memory
        self._lock = threading.Lock()
        self._per_region = per_region
        self.policy = policy            # property: also sets never / per_region
        self.num_steps = num_steps
        self.factor_dtype = factor_dtype
        self.strict = strict              # a shortfall of forecasts raises instead of warning
        self._short_warned = False
        self._arrivals = threading.local()   # per thread: calls that reached a compiled graph of the backend

    @property
    def policy(self):
        return self._policy

    @policy.setter
    def policy(self, policy) -> None:
        """Swap the policy: forgets all cached state (not the stats); every owner's next call starts a
        generation with the new policy. A call in flight in another thread finishes with its own
        generation's policy (``Generation`` keeps what it reads of it): the swap is atomic per call."""
        pr = self._per_region
        per_region = policy.decides_per_region if pr is None else pr
        self._current = (policy, per_region)   # one assignment: what new generations read
        self._policy = policy
        self.never = policy.never_forecasts    # skip factor updates: nothing will be forecast
        self.forecast = policy.forecast         # how (resolved once)
        self.per_region = per_region
        self._forget()

    # ------------------------------------------------------------ graphs and owners
    def new_graph(self, regions: Sequence, timestep_index: int | None, dynamic_indices: Sequence[int],
                  name: str = "", instance_indices: Sequence[int] = (), whole=None, pieces=None,
                  compile_order: int | None = None, kind: type = GraphRuntime) -> GraphRuntime:
        """A :class:`GraphRuntime` (or ``kind``, a subclass) for one compiled graph (see there for the
        arguments)."""
        g = kind(self, self._graph_count, list(regions), timestep_index, tuple(dynamic_indices),
                         tuple(instance_indices), name, whole=whole, pieces=pieces, compile_order=compile_order)
        self._graph_count += 1          # graph indices are never reused (they key cached state)
        self._graphs = [r for r in self._graphs if r() is not None] + [weakref.ref(g)]
        return g

    @property
    def graphs(self) -> list[GraphRuntime]:
        """The graph runtimes still alive (dynamo drops them at ``torch._dynamo.reset()``)."""
        return [g for g in (r() for r in self._graphs) if g is not None]

    def scope(self) -> tuple[Scope, Told | None]:
        """``(scope, told)`` of a model call made now: the scope of the request in force
        (``request.active``), else of this asyncio task, else of this thread; and what the request
        tells of the call (None: nothing, the call is placed by inference)."""
        req = active(self)
        if req is not None:
            with req.lock:                 # one scope per request and runtime, whatever the threads
                sc = req.scopes.get(self)
                if sc is None:
                    session = (Session(req.timesteps, req.num_steps, req.streams, req.schedule)
                               if req.timesteps is not None or req.schedule is not None or req.num_steps else None)
                    sc = req.scopes[self] = self._new_scope(session, req)
            return sc, req.told()
        task = current_task()
        if task is not None:
            sc = self._task_scopes.get(task)
            if sc is None:
                sc = self._task_scopes[task] = self._new_scope()
            return sc, None
        sc = getattr(self._local, "scope", None)
        if sc is None:
            sc = self._local.scope = self._new_scope()
        return sc, None

    def _new_scope(self, session: Session | None = None, request: Request | None = None) -> Scope:
        sc = Scope(session, request, self.audit if request is not None else None)
        with self._lock:
            self._scopes.add(sc)
        return sc

    def owner(self, scope: Scope, instance: Sequence[torch.Tensor], stream=None) -> Owner:
        """The owner in ``scope`` of the model instance whose parameters are ``instance`` (by identity,
        held weakly) and of the told ``stream`` (branch and stage; None: streams are inferred within
        the owner). Keyed by the parameters' ids: the owner is dropped as soon as any of them is freed
        (the weak references' callbacks), so a key that matches names the very same living tensors."""
        key = (tuple(map(id, instance)), stream)
        owner = scope.owners.get(key)
        interrupts = getattr(_INTERRUPTS, "n", 0)
        if owner is not None:
            if owner.interrupts != interrupts:    # another backend's call of this thread was interrupted
                owner.end()
                owner.interrupts = interrupts
            return owner
        sc_ref = weakref.ref(scope)

        def gone(_, key=key):
            sc = sc_ref()
            if sc is not None:
                sc.owners.pop(key, None)
        session = scope.session
        ids = key[0] if stream is not None else None
        owner = Owner(lambda gen=None: share_schedules(self._new_generation(session), sc_ref, ids, gen),
                      tuple(weakref.ref(t, gone) for t in instance))
        owner.interrupts = interrupts
        scope.owners[key] = owner
        return owner

    def _new_generation(self, session: Session | None) -> Generation:
        n = session.num_steps if session is not None and session.num_steps is not None else self.num_steps
        policy, per_region = self._current      # one read: the generation's, whatever swaps later
        n_schedules = (lambda k: k) if per_region else (lambda k: 1)

        def start(n_regions: int, first_step: int, graph=None) -> list:
            try:
                return [policy.start(n, first_step) for _ in range(n_schedules(n_regions))]
            except ValueError as e:
                raise ValueError(f"{e} (taylorseer_backend: pass num_steps=..., or call the model inside "
                                 "backend.session(timesteps=..., num_steps=...))") from e
        return Generation(policy, start, self.factor_dtype, per_region)

    def generation_label(self, scope: Scope, owner: Owner, generation: int, coord: float, step: int) -> int:
        """The generation id shown in the trace. Graph-break pieces of one model are separate owners
        (their parameters differ); a piece that starts its generation at the coordinate and step of
        the thread's previous call, in another owner, is labelled with that call's generation."""
        if owner.label_of != generation:
            last = scope.last
            sibling = last is not None and last[0] is not owner and last[2:] == (coord, step)
            owner.label_of, owner.label = generation, (last[1] if sibling else generation)
        scope.last = (owner, owner.label, coord, step)
        return owner.label

    def publish_coordinate(self, scope: Scope, order: int, coord: float, top: float) -> None:
        """A graph of this thread (the ``order``-th graph the backend compiled) read its timestep:
        graphs of the same model call that have none (the block graph of a model that graph-breaks
        after its timestep embedding) take it."""
        scope.coord = (next(_SERIALS), order, coord, top)

    def take_coordinate(self, scope: Scope, order: int, owner_key) -> tuple | None:
        """``(coordinate, largest element)`` for the ``order``-th compiled graph: the one published in
        this thread by a graph compiled before it (dynamo compiles a call's graphs in call order, so
        that graph runs before it in every call), and not taken yet by this graph and model instance;
        else None (the call runs uncached)."""
        c = scope.coord
        if c is None or c[1] >= order or scope.taken.get((order, owner_key)) == c[0]:
            return None
        scope.taken[(order, owner_key)] = c[0]
        return c[2], c[3]

    def interrupt(self, scope: Scope | None = None) -> None:
        """An exception inside a model call: every generation of ``scope`` (default: the caller's) is
        over, in this backend now and in every other backend at its next call in this thread."""
        _INTERRUPTS.n = getattr(_INTERRUPTS, "n", 0) + 1
        scope = self.scope()[0] if scope is None else scope
        scope.end_all()
        for owner in list(scope.owners.values()):     # reset() may clear the dict from another thread
            owner.interrupts = _INTERRUPTS.n

    # ------------------------------------------------------------ calls that reach the backend
    def arrive(self) -> None:
        """A call of this thread reached one of the backend's compiled graphs."""
        self._arrivals.n = getattr(self._arrivals, "n", 0) + 1

    def arrivals(self) -> int:
        """Calls of this thread that reached a compiled graph so far (a model boundary compares it before
        and after a model call: equal means dynamo ran the model uncompiled)."""
        return getattr(self._arrivals, "n", 0)

    def bypassed(self) -> None:
        """A model call through a model boundary reached no compiled graph: counted in the stats and,
        for the request in force, as ``never-reached`` in its audit."""
        self.recorder.bypassed()
        self.scope()[0].cause("never-reached", uncached=True)

    # ------------------------------------------------------------ api
    def reset(self) -> None:
        """Forget all cached state (every scope's and instance's forecasters, steps, schedules) and the
        stats. The next call of every request, task and thread starts a new generation."""
        self._forget()
        self.recorder.clear()

    def _forget(self) -> None:
        with self._lock:
            scopes = list(self._scopes)
        for sc in scopes:
            sc.clear()                    # a call in flight keeps its own reference and finishes

    def memory_bytes(self) -> int:
        """Bytes of cached state (factors, scratch, held outputs) over all scopes and instances."""
        with self._lock:
            scopes = list(self._scopes)
        return sum(o.memory_bytes() for sc in scopes for o in list(sc.owners.values()))

    def session(self, timesteps=None, num_steps: int | None = None, streams: int = 1, schedule=None) -> Request:
        """One generation with a caller-given schedule, for this backend's calls made inside
        ``with backend.session(...):`` (a :class:`~taylorseer_fx.runtime.request.Request` that is closed at
        the end of the ``with``; other backends and other threads, tasks and requests are not affected).

        ``timesteps``: the scheduler's timesteps (1-D tensor or sequence of finite numbers, in the units
        the model receives; read once here); calls are then counted, sync-free: ``streams`` calls per
        step (2 for CFG as separate cond/uncond calls). ``schedule`` (instead of ``timesteps``): the
        scheduler's timesteps (read once here, in its own units or the model's): each call's timestep
        is still read, and the call is placed at its index in the schedule, so step indices are the
        run's own even for a model that joins mid-run (Wan 2.2's second transformer, img2img), and CFG
        calls are streams whatever their number. ``num_steps``: step count for the policy (default the
        length of ``timesteps`` / ``schedule``; wins over the backend's)."""
        req = Request(num_steps, timesteps=timesteps, streams=streams, schedule=schedule, close_on_exit=True)
        req.only = weakref.ref(self)
        return req

    # ------------------------------------------------------------ no silent no-op
    def audit(self, scope: Scope) -> None:
        """A request ended: compare its forecasts with the policy's plan (``tally.py``) and report."""
        t = scope.tally
        session = scope.session
        n = session.num_steps if session is not None and session.num_steps is not None else self.num_steps
        planned = t.planned(self.policy, n)
        self.recorder.audited(planned, t.forecasts, t.causes)
        short = t.shortfall(self.policy, n, planned)
        if short is not None:
            self.report(short)

    def never_reached(self, num_steps: int) -> None:
        """A request of ``num_steps`` steps ended and none of its model calls reached this backend
        (dynamo's recompile limit, an uncompiled or otherwise compiled module): report it when the
        policy planned forecasts."""
        policy = self.policy
        if policy.never_forecasts:
            return
        planned = (num_steps - len(policy.compute_steps(num_steps)) if not policy.reads_estimate
                   else max(num_steps - policy.warmup_steps - policy.cooldown, 0))   # the steps it may forecast
        self.recorder.audited(planned, 0, {"never-reached": 1})
        if planned > 0:
            self.report(Shortfall(planned, 0, "never-reached"))

    def report(self, short: Shortfall) -> None:
        """Say that caching fell short: once per backend as a warning, every time as a RuntimeError
        with ``strict``."""
        text = f"taylorseer ({self.policy!r}): {short.message()}"
        if self.strict:
            raise RuntimeError(text + " (strict=True)")
        if not self._short_warned:
            self._short_warned = True
            warnings.warn(text + ". backend.stats()['audit'] counts every cause; strict=True makes this an "
                          "error", stacklevel=3)

    def stats(self) -> dict:
        """See :meth:`taylorseer_fx.runtime.trace.Recorder.stats`."""
        return self.recorder.stats()
