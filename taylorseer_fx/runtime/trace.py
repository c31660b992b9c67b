"""Stats and the decision trace of one backend: counts and one row per cached model call.

Thread-safe (one lock; calls from several threads interleave in the trace in the order they ended).
Knows nothing of FX, policies or forecasters: rows are handed in by ``graph_runtime.py``.
"""

from __future__ import annotations

import collections
import threading

import torch

__all__ = ["Recorder"]


class Recorder:
    """Counts and trace rows. Bounded: the newest ``max_trace`` rows are kept (the oldest are dropped);
    after :meth:`stats` no row holds a tensor (the order choices are read once and stored as ints)."""

    max_trace = 10_000
    _RECENT = 4096          # generation ids remembered to count distinct ones (threads interleave)

    def __init__(self):
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._steps = {"compute": 0, "forecast": 0}
            self._calls = 0
            self._uncached = 0
            self._bypassed = 0
            self._n_gens = 0
            self._recent_gens: collections.OrderedDict = collections.OrderedDict()
            self._recent_steps: collections.OrderedDict = collections.OrderedDict()  # (gen, step) -> decision
            self._regions: dict = {}
            self._trace = collections.deque(maxlen=self.max_trace)
            self._audit = {"runs": 0, "planned": 0, "forecasts": 0, "causes": {}}

    def audited(self, planned: int, forecasts: int, causes: dict) -> None:
        """One request ended: the forecasts its policy planned, those that happened, and the causes of
        missing ones (``tally.py``)."""
        with self._lock:
            a = self._audit
            a["runs"] += 1
            a["planned"] += planned
            a["forecasts"] += forecasts
            for k, v in causes.items():
                a["causes"][k] = a["causes"].get(k, 0) + v

    def uncached(self) -> None:
        with self._lock:
            self._uncached += 1

    def bypassed(self) -> None:
        """A model call made through a model boundary that reached none of the backend's compiled graphs
        (dynamo ran the frame uncompiled: its recompile limit, a compile racing in another thread)."""
        with self._lock:
            self._bypassed += 1

    def record(self, row: dict) -> None:
        """One cached call: ``row`` has graph, generation, step, stream, coordinate, decision
        ("forecast" when any region was forecast, else "compute"), estimate, regions ({name: "compute"
        | "forecast" | "fallback"}), orders, wall_s, thread."""
        with self._lock:
            self._calls += 1
            g = row["generation"]
            if g not in self._recent_gens:
                self._n_gens += 1
                self._recent_gens[g] = None
                if len(self._recent_gens) > self._RECENT:
                    self._recent_gens.popitem(last=False)
            if row["stream"] == 0:
                self._count_step((g, row["step"]), row["decision"])
            for name, what in row["regions"].items():
                d = self._regions.setdefault(name, {"compute": 0, "forecast": 0})
                d["forecast" if what == "forecast" else "compute"] += 1
            self._trace.append(row)

    def _count_step(self, key, decision: str) -> None:
        """Count a step once, whatever number of graphs with regions its model call has (a model that
        graph-breaks between its block lists): forecast when any of its graphs forecast a region."""
        seen = self._recent_steps.get(key)
        if seen is None:
            self._steps[decision] += 1
            self._recent_steps[key] = decision
            if len(self._recent_steps) > self._RECENT:
                self._recent_steps.popitem(last=False)
        elif seen == "compute" and decision == "forecast":
            self._steps["compute"] -= 1
            self._steps["forecast"] += 1
            self._recent_steps[key] = decision

    def stats(self) -> dict:
        """``{"compute", "forecast"}``: steps (stream 0 of each step, counted once over the graphs of a
        model call) at which every region was computed / at least one region was forecast; ``"steps"``,
        ``"calls"``, ``"uncached_calls"``, ``"bypassed_calls"`` (calls through a model boundary --
        ``compile_pipeline``, ``backend.compile_module`` -- that reached no compiled graph of the backend:
        dynamo ran them uncompiled), ``"generations"``; ``"regions"``: ``{name: {"compute": n,
        "forecast": n}}`` over all calls;
        ``"audit"``: over the requests that ended (``compile_pipeline`` calls, sessions, closed
        ``Request``s): ``{"runs", "planned", "forecasts", "causes": {cause: count}}`` (``tally.py``);
        ``"trace"``: one dict per call (graph, generation (a process-unique id), step (0-based index),
        stream, coordinate (the timestep value, model units), decision, estimate (the worst over
        regions read by an adaptive policy at the step's first call, ``forecast.estimates.worst``;
        None when not read, not finite, or when a region had no estimate yet), regions, orders (at a
        computed call of stream 0 with an order-selecting policy: {name: degree the region forecasts
        with until its next compute}, else None), wall_s (host seconds, not synchronised with the
        device), thread (``threading.get_ident()``)). Reading the orders syncs once here, never during
        the run."""
        with self._lock:
            _read_orders(self._trace)          # in place: the rows keep ints, not device tensors
            rows = [dict(t) for t in self._trace]
            out = {
                "compute": self._steps["compute"], "forecast": self._steps["forecast"],
                "steps": self._steps["compute"] + self._steps["forecast"],
                "calls": self._calls, "uncached_calls": self._uncached, "bypassed_calls": self._bypassed,
                "generations": self._n_gens,
                "regions": {k: dict(v) for k, v in self._regions.items()},
                "audit": dict(self._audit, causes=dict(self._audit["causes"])),
            }
        for r in rows:
            if r.get("orders"):
                r["orders"] = dict(r["orders"])
        out["trace"] = rows
        return out


def _read_orders(rows) -> None:
    """The chosen degrees still held as 0-dim device tensors, read in one go and stored as ints."""
    pending = [r for r in rows if r.get("orders") and any(isinstance(v, torch.Tensor) for v in r["orders"].values())]
    held = [v for r in pending for v in r["orders"].values()]
    if held:
        try:
            values = iter(torch.stack([torch.as_tensor(v) for v in held]).tolist())
        except RuntimeError:                     # regions on different devices
            values = iter([int(v) for v in held])
        for r in pending:
            r["orders"] = {name: next(values) for name in r["orders"]}
