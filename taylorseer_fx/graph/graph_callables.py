"""The callables the backend hands dynamo, one per compiled graph: :class:`Graph` (a graph with regions:
a model call through its ``GraphRuntime``), :class:`Publishing` (a graph without regions that reads the
step coordinate for the graphs after it) and :class:`Plain` (any other compiled graph). Every one counts
its calls as arrivals (``Runtime.arrive``: a model boundary tells a call that reached the backend from
one dynamo ran uncompiled) and takes a weak reference (its record in ``backend.graphs`` lives as long as
dynamo holds it). Knows nothing of FX.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..runtime.graph_runtime import read_coordinate
from ..runtime.runtime import Runtime

__all__ = ["Graph", "Plain", "Publishing"]


class Graph:
    """The callable handed back to dynamo for one graph: a model call through the runtime. It owns
    everything compiled for the graph (dynamo holds it; when dynamo drops it, all of it goes)."""

    def __init__(self, graph_runtime, split_gm):
        self.graph_runtime = graph_runtime
        self.split_gm = split_gm
        self.whole_graph = graph_runtime.whole
        self.pieces = graph_runtime.pieces

    def __call__(self, *args):
        return self.graph_runtime(args)


class Plain:
    """An uncached graph's compiled callable, in an object a weak reference can follow (its record in
    ``backend.graphs`` lives as long as dynamo holds it); its calls count as arrivals."""

    def __init__(self, compiled: Callable, runtime: Runtime):
        self.compiled, self.runtime = compiled, runtime

    def __call__(self, *args):
        self.runtime.arrive()
        return self.compiled(*args)


class Publishing:
    """A graph without regions that reads the step coordinate for the graphs after it in the model call
    (a model that graph-breaks after its timestep embedding: the block graph has no timestep input)."""

    def __init__(self, compiled: Callable, timestep_index: int, runtime: Runtime, order: int):
        self.compiled, self.timestep_index, self.runtime, self.order = compiled, timestep_index, runtime, order

    def __call__(self, *args):
        self.runtime.arrive()
        if not torch.is_grad_enabled():
            scope, told = self.runtime.scope()
            session = scope.session
            if (told is None or told.step_index is None) and (session is None or session.timesteps is None):
                first, _, top = read_coordinate(args[self.timestep_index])
                if first is not None and math.isfinite(first):
                    self.runtime.publish_coordinate(scope, self.order, first, top)
        return self.compiled(*args)
