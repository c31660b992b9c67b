"""Compile later what dynamo hands over now: an inner compile deferred to its first use.

The backend receives a graph inside dynamo's compile (a ``TracingContext`` with its fake mode and
shape environment). The whole-graph compute version is compiled there and then; the versions a call
may never need (the whole-graph forecast version, the split pieces) are :class:`LazyCompile` objects:
they keep the graph's inputs as fake tensors of that fake mode and the tracing context, and compile at
the first :meth:`LazyCompile.get` by re-entering the context -- the way DDPOptimizer's first version
compiled its pieces lazily (``torch/_dynamo/backends/distributed.py``), but on the same fake inputs
and static-input marks a compile inside dynamo would have seen.

Graphs with symbolic shapes (dynamo's dynamic recompiles) are compiled at once instead
(:func:`has_symbolic_inputs`): a compile after dynamo has installed its guards could add shape guards
that nothing would check. When in doubt, compile now.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import torch

from ..torch_internals import fake_mode_for, is_fake, to_fake, tracing, tracing_context

__all__ = ["LazyCompile", "has_symbolic_inputs", "fake_inputs"]


def _symbolic(v) -> bool:
    if isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool)):
        return True
    if isinstance(v, torch.Tensor):
        return any(isinstance(d, torch.SymInt) for d in tuple(v.shape) + tuple(v.stride()))
    return False


def has_symbolic_inputs(example_inputs) -> bool:
    """True when any input is a symbolic number or a tensor with symbolic sizes or strides."""
    return any(_symbolic(v) for v in example_inputs)


def fake_inputs(example_inputs) -> tuple[list, Any]:
    """``(inputs as fake tensors of the current compile's fake mode, that fake mode)``."""
    mode = fake_mode_for(example_inputs, tracing_context())
    out = [to_fake(a, mode) if isinstance(a, torch.Tensor) and not is_fake(a) else a for a in example_inputs]
    return out, mode


class LazyCompile:
    """``build(fake example inputs) -> compiled callable``, run once at the first :meth:`get` (thread-safe).

    Created inside the backend call (it captures the current tracing context and fake inputs).
    ``seconds``: wall time of the compile once done (None before); ``done``: whether it ran."""

    def __init__(self, build: Callable[[list], Callable], example_inputs, what: str = ""):
        self._build = build
        self._context = tracing_context()
        self._inputs, self.fake_mode = fake_inputs(example_inputs)
        self._lock = threading.Lock()
        self._compiled: Callable | None = None
        self.what = what
        self.seconds: float | None = None

    @property
    def done(self) -> bool:
        return self._compiled is not None

    def get(self) -> Callable:
        """The compiled callable, compiling it now if this is the first use."""
        compiled = self._compiled
        if compiled is not None:
            return compiled
        with self._lock:
            if self._compiled is None:
                t0 = time.perf_counter()
                self._compiled = self._run_build()
                self.seconds = time.perf_counter() - t0
                self._build, self._inputs = None, ()   # what it closed over is compiled now
        return self._compiled

    def _run_build(self) -> Callable:
        if self._context is None or tracing_context() is self._context:
            return self._build(list(self._inputs))
        with tracing(self._context):
            return self._build(list(self._inputs))

    def __call__(self, *args):
        return self.get()(*args)
