"""Per-generation state: step coordinate, streams, forecasters, decisions, stats, reset rules.

Knows nothing of FX. One :class:`Runtime` per backend object; one :class:`GraphRuntime` per compiled
graph (graph breaks and recompiles give several), all sharing the policy, the stats and a generation
counter.

Per model call (``GraphRuntime.__call__``):

* **Grad enabled** (or no step coordinate available): every region is computed and nothing is
  stored or counted (no graph-attached tensors are kept).
* **Coordinate.** The value of the timestep input: one host read per call (``float`` of its first
  element), in the model's own units (0..1000, a sigma ...). In a :meth:`Runtime.session` with a
  schedule the calls are counted instead (sync-free): call ``n`` is step ``n // streams``, stream
  ``n % streams``, coordinate ``timesteps[step]``.
* **Streams.** Calls with the coordinate of the current step (CFG as separate cond/uncond calls, a
  scheduler that evaluates a step twice) are the step's streams 1, 2, ... with their own forecasters;
  a batched CFG call is one stream.
* **Generations.** A new generation (step 0, fresh forecasters and schedule) starts when the coordinate
  moves against the run's direction, when a dynamic input's shape/dtype/device changes, at
  :meth:`Runtime.reset`, on entering/leaving a session, and in every graph when another graph started
  one. A forecaster is only used for a forecast when it was filled in the current generation.
* **Decision.** Once per step, at its first call, for all regions (``policy.start(num_steps)
  .decide(step, estimate)``; one schedule per region with ``per_region``); the step's other streams
  reuse it. A region whose forecaster of this stream is empty computes anyway (fallback). The estimate
  (adaptive policies) is the max over regions of ``Forecaster.error_estimate(x, policy.estimator)``
  read with one host read,
  all-reduced with MAX first under ``torch.distributed``.
* **Forecaster coordinate.** ``taylor``: the step index; ``newton``: the timestep value when
  ``policy.coordinate == "timestep"``, else the step index. Derivative factors only when
  ``Schedule.derivatives(step)``.

Stats (:meth:`Runtime.stats`): steps computed/forecast (first stream of each step), per-region counts
over all calls, and a per-call trace (wall time in seconds of host time, not synchronised with the
device).
"""

from __future__ import annotations

import collections
import contextlib
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .graph_runtime import GraphRuntime, _Call

__all__ = ["Runtime", "GraphRuntime"]


def _never_forecasts(policy) -> bool:
    """True for policies that compute every step (FixedPolicy(interval=1), an all-True mask)."""
    from .policy import FixedPolicy, MaskPolicy
    if type(policy) is FixedPolicy:
        return policy.interval == 1
    if type(policy) is MaskPolicy:
        return all(policy.mask)
    return False


@dataclass
class _Session:
    timesteps: list | None
    num_steps: int | None
    streams: int
    calls: dict = field(default_factory=dict)  # graph id -> calls counted


class Runtime:
    """Shared state of one backend object: policy, options, stats, generations, session."""

    max_trace = 100_000   # trace entries kept (the oldest are dropped)

    def __init__(self, policy, *, num_steps: int | None = None, per_region: bool | None = None,
                 factor_dtype: torch.dtype = torch.float32):
        self.graphs: list[GraphRuntime] = []
        self.generation = 0
        self._last = None           # (generation, step, coordinate) of the last cached call, any graph
        self._session: _Session | None = None
        self._per_region = per_region
        self.policy = policy            # property: also sets never / per_region
        self.num_steps = num_steps
        self.factor_dtype = factor_dtype
        self._clear_stats()

    @property
    def policy(self):
        return self._policy

    @policy.setter
    def policy(self, policy) -> None:
        """Swap the policy: forgets all cached state (not the stats); the next call starts a generation."""
        self._policy = policy
        self.never = _never_forecasts(policy)   # skip factor updates: nothing will be forecast
        pr = self._per_region
        self.per_region = bool(getattr(policy, "per_region", False) if pr is None else pr)
        self._forget()

    # ------------------------------------------------------------ api
    def new_graph(self, regions: Sequence, timestep_index: int | None, dynamic_indices: Sequence[int],
                  name: str = "") -> "GraphRuntime":
        g = GraphRuntime(self, len(self.graphs), list(regions), timestep_index, tuple(dynamic_indices), name)
        self.graphs.append(g)
        return g

    def new_generation(self) -> int:
        self.generation += 1
        return self.generation

    def reset(self) -> None:
        """Forget all cached state (every forecaster, step counter, schedule) and the stats."""
        self._forget()
        self._clear_stats()

    def _forget(self) -> None:
        self.new_generation()
        for g in self.graphs:
            g.tracker_reset()
            g.states.clear()
        self._last = None

    @contextlib.contextmanager
    def session(self, timesteps=None, num_steps: int | None = None, streams: int = 1):
        """One generation with a caller-given schedule.

        ``timesteps``: the scheduler's timesteps (tensor or sequence, read once here); calls are then
        counted, sync-free: ``streams`` calls per step (2 for CFG as separate cond/uncond calls).
        ``num_steps``: step count for the policy (default ``len(timesteps)``). A new generation starts
        on entry and on exit."""
        if not isinstance(streams, int) or isinstance(streams, bool) or streams < 1:
            raise ValueError(f"session: streams must be an int >= 1, got {streams!r}")
        ts = None
        if timesteps is not None:
            ts = [float(v) for v in (timesteps.tolist() if torch.is_tensor(timesteps) else timesteps)]
            if not ts:
                raise ValueError("session: timesteps is empty")
        if num_steps is None and ts is not None:
            num_steps = len(ts)
        prev = self._session
        self._session = _Session(ts, num_steps, streams)
        self.new_generation()
        try:
            yield self
        finally:
            self._session = prev
            self.new_generation()

    def stats(self) -> dict:
        """``{"compute", "forecast"}``: steps (first call of each step) at which regions were computed /
        at least one region was forecast; ``"steps"``, ``"calls"``, ``"uncached_calls"``,
        ``"generations"``; ``"regions"``: ``{name: {"compute": n, "forecast": n}}`` over all calls;
        ``"trace"``: one dict per call (graph, generation, step, stream, coordinate, decision,
        estimate (the max over regions read by an adaptive policy at the step's first call; None when
        not read or not finite), regions: {name: "compute" | "forecast" | "fallback"}, orders (at a
        computed step of stream 0 with an order-selecting policy: {name: degree the region forecasts
        with until its next compute}, else None), wall_s). Reading the orders syncs once per call here,
        never during the run."""
        return {
            "compute": self._steps["compute"], "forecast": self._steps["forecast"],
            "steps": self._steps["compute"] + self._steps["forecast"],
            "calls": self._calls, "uncached_calls": self._uncached, "generations": len(self._gens),
            "regions": {k: dict(v) for k, v in self._regions.items()},
            "trace": self._trace_rows(),
        }

    def _trace_rows(self) -> list[dict]:
        """The trace as plain data: the chosen degrees (0-dim device tensors) read in one go."""
        rows = [dict(t) for t in self._trace]
        held = [v for r in rows if r.get("orders") for v in r["orders"].values()]
        if held:
            try:
                values = iter(torch.stack(held).tolist())
            except RuntimeError:                     # regions on different devices
                values = iter([int(v) for v in held])
            for r in rows:
                if r.get("orders"):
                    r["orders"] = {name: next(values) for name in r["orders"]}
        return rows

    # ------------------------------------------------------------ internals
    def _clear_stats(self) -> None:
        self._steps = {"compute": 0, "forecast": 0}
        self._calls = 0
        self._uncached = 0
        self._gens: set = set()
        self._regions: dict = {}
        self._trace = collections.deque(maxlen=self.max_trace)

    def _start_schedules(self, n_regions: int) -> list:
        n = self.num_steps
        if n is None and self._session is not None:
            n = self._session.num_steps
        try:
            if self.per_region:
                return [self.policy.start(n) for _ in range(n_regions)]
            return [self.policy.start(n)]
        except ValueError as e:
            raise ValueError(f"{e} (taylorseer_backend: pass num_steps=..., or call the model inside "
                             "backend.session(timesteps=..., num_steps=...))") from e

    def _record(self, g: "GraphRuntime", call: _Call) -> None:
        self._calls += 1
        self._gens.add(call.generation)
        forecast = any(v == "forecast" for v in call.regions.values())
        if call.stream == 0:
            self._steps["forecast" if forecast else "compute"] += 1
        for name, what in call.regions.items():
            d = self._regions.setdefault(name, {"compute": 0, "forecast": 0})
            d["forecast" if what == "forecast" else "compute"] += 1
        orders = {}
        if call.stream == 0 and not forecast:     # device tensors, read only by stats()
            for i, name in enumerate(g.names):
                state = g.states.get((i, 0))
                chosen = state.forecaster.chosen_order() if state is not None else None
                if chosen is not None:
                    orders[name] = chosen
        self._trace.append({
            "graph": g.index, "generation": call.generation, "step": call.step, "stream": call.stream,
            "coordinate": call.coord, "decision": "forecast" if forecast else "compute",
            "estimate": call.estimate, "regions": dict(call.regions), "orders": orders or None,
            "wall_s": time.perf_counter() - call.t0,
        })
