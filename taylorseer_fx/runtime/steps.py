"""The step tracker: the calls of one owner (one request x one model instance x one told branch) -> generation, step, stream.

A pure object (no tensors, no torch): :meth:`StepTracker.observe` takes what the runtime knows of one
model call of one compiled graph -- the graph's index, the step coordinate (the timestep value in the
model's own units, or the step a session counted) and the call's input signature -- and returns a
:class:`Position`. These are the rules, in one place (``runtime.py`` keys one tracker per owner):

**Generations.** A generation is one denoising run; cached state is only ever used inside the
generation that made it. A new generation starts

* at the first call, after :meth:`StepTracker.end` (an explicit ``backend.reset()``, entering or
  leaving a ``session(...)``, an exception raised inside a model call of this thread);
* when the coordinate moves against the run's direction (set by the first two steps). This also
  covers a return to, or above, the generation's first coordinate: a restart of the same schedule;
* when a graph's input signature (shapes, dtypes, devices of its dynamic inputs) changes, unless only
  the batch dimension changed and the coordinate moves on to the next step: that is a batch change
  *within* the generation (CFG truncation); the step index goes on and the graph restarts its
  cached state (``Position.restart``);
* when one graph is called more than :data:`MAX_STREAMS` times at one step (a constant coordinate,
  or one-step generations run back to back: nothing can be forecast there, and the state kept for
  it stays bounded).

A raw loop that stops early and a new run that continues *downward* on the same schedule cannot be
told apart from one run by the timestep values; ``session(...)`` (and the pipeline integration)
give explicit boundaries. The factors are never shared across a batch, shape or graph change.

**Steps.** Step 0 is a generation's first coordinate; every new coordinate in the run's direction is
the next step (a step index, 0-based, not the timestep).

**Streams.** The calls of one graph at one step are its streams 0, 1, ... in call order (CFG as
separate cond/uncond calls); a batched CFG call is one stream. A step with fewer calls than the one
before keeps the first streams (CFG truncation drops the last call). Step 0 is the exception: when
step 1 has fewer calls than step 0, the *leading* calls of step 0 were warm-up calls made before the
loop (``model(zeros, t0)``) and are dropped: step 1 is then computed and its outputs are held
(``Position.defer``) until step 2 says how many streams step 1 had (``Position.realign``).

**Restart.** A graph restarts its cached state (and its warm-up) when it was not called at the
previous step of the generation: its first call in the generation after step 0 (a recompile, a
second instance's graph), or after a gap. Graph-break siblings are separate graphs of one step.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

__all__ = ["MAX_STREAMS", "Position", "StepTracker", "batch_only_change"]

#: calls of one graph at one step before a call at that coordinate counts as a new generation
MAX_STREAMS = 8

_GENERATION_IDS = itertools.count(1)   # unique across trackers, threads and backends


@dataclass(frozen=True)
class Position:
    """Where one call stands. ``generation``: a process-unique id. ``step``: 0-based step index in the
    generation. ``stream``: call order of this graph at this step. ``restart``: this graph starts its
    cached state (and its warm-up) at this call. ``defer``: compute, and hold the outputs until the
    streams of step 1 are known. ``transition``: at the first call of a new step, ``{graph: calls at
    the previous step}`` (the (graph, stream) states that can still be continued), else None.
    ``realign``: at the first call of step 2 after a deferred step 1, ``{graph: leading step-0 calls
    to drop}``, else None."""
    generation: int
    step: int
    stream: int
    restart: bool = False
    defer: bool = False
    transition: dict | None = None
    realign: dict | None = None


def batch_only_change(old: tuple, new: tuple) -> bool:
    """True if two signatures (tuples of ``(index, shape, dtype, device)`` / ``(index, value)``) differ
    only in the first dimension of some tensors, all changed tensors by the same batch size."""
    if len(old) != len(new):
        return False
    batches = set()
    for a, b in zip(old, new):
        if a == b:
            continue
        if len(a) != 4 or len(b) != 4 or a[0] != b[0] or a[2:] != b[2:]:
            return False
        sa, sb = a[1], b[1]
        if len(sa) != len(sb) or not sa or sa[1:] != sb[1:]:
            return False
        batches.add((sa[0], sb[0]))
    return len(batches) == 1


@dataclass
class _Generation:
    id: int
    coord: float            # coordinate of the current step
    step: int = 0
    first: int = 0          # step index the generation started at (a session joined late: > 0)
    direction: int = 0      # +1 / -1 once two steps were seen
    calls: dict = field(default_factory=dict)       # graph -> calls at the current step
    previous: dict = field(default_factory=dict)    # graph -> calls at the previous step
    step0: dict = field(default_factory=dict)       # graph -> calls at step 0 (streams of step 0)
    deferred: set = field(default_factory=set)      # graphs whose step 1 is deferred
    sigs: dict = field(default_factory=dict)        # graph -> input signature


class StepTracker:
    """Calls of one owner -> :class:`Position` (rules in the module docstring)."""

    def __init__(self, max_streams: int = MAX_STREAMS):
        self.max_streams = max_streams
        self._gen: _Generation | None = None

    def end(self) -> None:
        """The current generation is over: the next call starts a new one."""
        self._gen = None

    def observe(self, graph: int, coord: float, sig: tuple = (), *, counted: tuple | None = None) -> Position:
        """Place one call of ``graph`` at ``coord`` with input signature ``sig``.

        ``counted=(step, stream)``: the position a session counted (no inference from the coordinate;
        a new generation when the count starts over at (0, 0))."""
        if counted is not None:
            return self._counted(graph, coord, sig, *counted)
        g = self._gen
        if g is None:
            return self._new(graph, coord, sig)
        known = g.sigs.get(graph)
        if coord == g.coord:
            if known is not None and known != sig:
                return self._new(graph, coord, sig)
            stream = g.calls.get(graph, 0)
            if stream >= self.max_streams:
                return self._new(graph, coord, sig)
            return self._call(graph, sig, stream)
        d = 1 if coord > g.coord else -1
        if g.direction and d != g.direction:
            return self._new(graph, coord, sig)
        restart = False
        if known is not None and known != sig:
            if not batch_only_change(known, sig):
                return self._new(graph, coord, sig)
            restart = True
        g.direction = d
        transition, realign = self._next_step(g, coord)
        return self._call(graph, sig, 0, restart=restart, transition=transition, realign=realign)

    # ------------------------------------------------------------ internals
    def _new(self, graph: int, coord: float, sig: tuple) -> Position:
        self._gen = _Generation(next(_GENERATION_IDS), coord)
        return self._call(graph, sig, 0)

    def _next_step(self, g: _Generation, coord: float) -> tuple:
        if g.step == 0:
            g.step0 = dict(g.calls)
        realign = None
        if g.step == 1 and g.deferred:
            realign = {k: max(0, g.step0.get(k, 0) - g.calls.get(k, 0)) for k in g.deferred}
            g.deferred = set()
        g.previous, g.calls = g.calls, {}
        g.step += 1
        g.coord = coord
        return g.previous, realign             # a fresh dict every step, never changed afterwards

    def _call(self, graph: int, sig: tuple, stream: int, restart: bool = False,
              transition: dict | None = None, realign: dict | None = None) -> Position:
        g = self._gen
        first_in_step = graph not in g.calls
        g.calls[graph] = stream + 1
        g.sigs[graph] = sig
        if first_in_step and g.step > g.first and graph not in g.previous:
            restart = True                     # not called at the previous step: nothing to continue
        defer = g.step == 1 and not restart and g.step0.get(graph, 0) > 1 and stream < g.step0[graph]
        if defer:
            g.deferred.add(graph)
        if restart:
            g.step0[graph] = 0
        return Position(g.id, g.step, stream, restart, defer, transition, realign)

    def _counted(self, graph: int, coord: float, sig: tuple, step: int, stream: int) -> Position:
        g = self._gen
        known = None if g is None else g.sigs.get(graph)
        changed = known is not None and known != sig
        if (g is None or (step, stream) == (0, 0) or step < g.step
                or (changed and (step == g.step or not batch_only_change(known, sig)))):
            self._gen = g = _Generation(next(_GENERATION_IDS), coord, step, first=step)
            changed = False
        transition = None
        if step != g.step:
            g.previous, g.calls = (g.calls if step == g.step + 1 else {}), {}
            g.step, g.coord = step, coord
            transition = g.previous
        first_in_step = graph not in g.calls
        g.calls[graph] = max(g.calls.get(graph, 0), stream + 1)
        g.sigs[graph] = sig
        restart = changed or (first_in_step and step > g.first and graph not in g.previous)
        return Position(g.id, step, stream, restart, False, transition, None)
