"""Caching at the model boundary (``regions="model"``): the denoiser's whole output, decided before the
compiled call.

Where no graph dynamo traces of a model holds its block stack (graph breaks inside every block:
HiDream, Mochi, the HunyuanVideo 1.5 family) and for UNet denoisers (Stable Diffusion 1.5, SDXL), the
region is the model call itself: :class:`ModelBoundary` wraps the module's compiled call
(``module._compiled_call_impl``, what ``nn.Module.__call__`` runs after ``module.compile()``). Per call
it asks the backend's runtime -- the same policies, requests, owners, generations, stats and audit as
a graph's regions -- whether to compute or forecast:

* **compute**: the compiled call runs (the graphs dynamo traced, compiled by the inner backend, no cache
  node inside); its output (any pytree of tensors: a tuple, diffusers' ``Transformer2DModelOutput`` or
  ``UNet2DConditionOutput``) is absorbed by the region's forecaster;
* **forecast**: the compiled call does not run at all; the output is the forecast, in the computed
  output's structure, shapes, dtypes and strides (its floating tensors are fresh: the caller may keep
  them; other leaves -- integer tensors, numbers -- are returned as the last compute gave them).

What the call is, for the runtime (``graph_runtime.py``): the coordinate is the forward's timestep
argument (``timestep_arg``, else the first of ``timestep``, ``timesteps``, ``t``, ``sigma``,
``sigmas`` the forward takes), in the model's own units; the signature is the shape, dtype and device
of every other tensor argument (nested in lists and dicts too) and every non-float scalar (a change
starts a new generation, as a graph's input signature does); the model instance is the identity of
all of its parameters and buffers.

Knows nothing of FX or of pipelines.
"""

from __future__ import annotations

import inspect
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..runtime.graph_runtime import GraphRuntime
from .placeholders import TIMESTEP_NAMES
from ..runtime.region_state import weights_fingerprint
from ..torch_internals import pytree as _pytree

pytree = _pytree()

__all__ = ["MODEL_REGION", "BoundaryRuntime", "ModelBoundary", "timestep_parameter", "InstanceTensors"]

#: the name of the one region of a model cached at its boundary (in stats and traces)
MODEL_REGION = "model"


@dataclass
class _Region:
    """The one region of a boundary: the model's whole output (never residual)."""
    name: str = MODEL_REGION
    residual: dict = field(default_factory=dict)


def timestep_parameter(forward: Callable, timestep_arg: str | None = None) -> tuple[str | None, int | None]:
    """``(name, position)`` of the forward's step-coordinate argument: ``timestep_arg`` when given,
    else the first of :data:`~taylorseer_fx.graph.placeholders.TIMESTEP_NAMES` it takes; ``position`` is
    its index among the positional parameters (None: keyword only). ``(None, None)``: none found.
    Follows ``__wrapped__`` (accelerate's offload hooks keep the model's own signature there).

    Raises ValueError when ``timestep_arg`` names no parameter of a forward without ``**kwargs``."""
    try:
        params = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = {p.name for p in params}
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    if timestep_arg is not None:
        if timestep_arg not in names and not var_kw:
            raise ValueError(f"timestep_arg={timestep_arg!r}: the model's forward takes no such argument; "
                             f"its arguments: {[p.name for p in params]}")
        return timestep_arg, (positional.index(timestep_arg) if timestep_arg in positional else None)
    for name in TIMESTEP_NAMES:
        if name in names:
            return name, (positional.index(name) if name in positional else None)
    return None, None


def _nones(values: list) -> int:
    """How many of ``values`` are None, by identity (``list.count(None)`` compares each tensor with
    ``==``: 2.5 ms for 200 tensors)."""
    return sum(v is None for v in values)


class InstanceTensors:
    """A module's parameters and buffers, read at every call without walking the module tree (a walk
    costs milliseconds for an SDXL UNet's 1,680 tensors): the tree is walked once, and again when a
    check at every call sees it changed -- a dict of children, parameters or buffers that grew or
    shrank, a child replaced (a LoRA layer injected, ``module.conv = ...``). The tensors are re-read
    from their slots at every call, so a tensor replaced in place (``module._parameters[name] = ...``,
    as accelerate does; ``load_state_dict(assign=True)``) is seen too."""

    def __init__(self, module: torch.nn.Module):
        self._module = weakref.ref(module)
        self._dicts: list = []        # every module's children, parameters and buffers dicts ...
        self._sizes: list = []        # ... and their lengths
        self._parents: tuple = ((), ())   # (parent's _modules, name) of every child ...
        self._children: list = []     # ... and the child
        self._slots: tuple = ((), ())     # (dict, name) of every tensor slot, empty (None) ones too
        self._empty = 0                   # how many slots were None at the walk

    def _walk(self) -> None:
        dicts, parents, names, children, where, keys = [], [], [], [], [], []
        for m in self._module().modules():
            dicts += (m._modules, m._parameters, m._buffers)
            for k, c in m._modules.items():
                parents.append(m._modules), names.append(k), children.append(c)
            for d in (m._parameters, m._buffers):
                for k in d:
                    where.append(d), keys.append(k)
        self._dicts, self._sizes = dicts, list(map(len, dicts))
        self._parents, self._children = (parents, names), children
        self._slots = (where, keys)
        self._empty = _nones(list(map(dict.get, where, keys)))

    def __call__(self) -> tuple:
        if (not self._dicts or list(map(len, self._dicts)) != self._sizes
                or list(map(dict.get, *self._parents)) != self._children):     # modules compare by identity
            self._walk()
        values = list(map(dict.get, *self._slots))
        if _nones(values) != self._empty:          # a slot emptied or filled (``m.bias = None``)
            self._walk()
            values = list(map(dict.get, *self._slots))
        return tuple(v for v in values if v is not None)


class BoundaryRuntime(GraphRuntime):
    """The :class:`~taylorseer_fx.runtime.graph_runtime.GraphRuntime` of a model call made at its boundary.
    Its "graph inputs" are ``(timestep, signature, instance tensors, compute)``: the coordinate
    value (tensor or number, None), the call's signature (a tuple), the model's parameters and
    buffers, and a callable that runs the compiled model and returns its flattened output
    ``(treespec, *leaves)``."""

    tensors = None     # the module's InstanceTensors (ModelBoundary sets it)

    def _record(self, call, t0: float) -> None:
        super()._record(call, t0)
        # a hook inside the forward that only moved the weights (accelerate's offload: new data pointers,
        # the same version counters) is not a change of weights: the next forecast checks against the
        # weights as the computed call left them. Any other change -- before the call (the baseline no
        # longer matches) or a write inside it (a version counter moved) -- keeps the baseline, so the
        # next forecast's check drops the state
        owner = call.owner
        if (self.tensors is None or owner is None or owner.weights is None
                or any(v == "forecast" for v in call.regions.values())):
            return
        before = call.weights
        if before is not None and before == owner.weights:
            after = weights_fingerprint(self.tensors())
            if after[0] == before[0]:
                owner.weights = after

    def _place(self, scope, owner, coord, args, counted, instance):
        call = super()._place(scope, owner, coord, args, counted, instance)
        if self.tensors is not None and owner.weights is not None and call.computes(0):
            call.weights = weights_fingerprint(instance)     # read now: a hook may move them in the call
        return call

    def _instance(self, args) -> tuple:
        return args[2]

    def _instance_key(self, args) -> tuple:
        return tuple(map(id, args[2]))

    def _signature(self, args) -> tuple:
        return args[1]


def _run_region(graph: BoundaryRuntime):
    def pieces(timestep, signature, instance, compute):
        return graph.run_region(0, compute, ())
    return pieces


class ModelBoundary:
    """``module``'s compiled call, cached at its boundary by ``runtime`` (a backend's
    :class:`~taylorseer_fx.runtime.runtime.Runtime`). Installed as ``module._compiled_call_impl``; ``compiled``
    is the call it replaces (``torch.compile(module._call_impl, backend=...)``).

    ``active``: True, the boundary decides every call; False, every call goes straight to ``compiled``
    (the graphs' own regions cache); None, not known yet: calls go straight to ``compiled`` until
    ``resolve`` (called after each such call) says which. A call passed straight on that reaches none of
    the backend's compiled graphs (dynamo ran it uncompiled) is counted (``stats()["bypassed_calls"]``,
    the request's audit: ``never-reached``). The first call runs alone (a lock): it compiles."""

    def __init__(self, runtime, module: torch.nn.Module, compiled: Callable, timestep_arg: str | None = None,
                 active: bool | None = True, resolve: Callable[[], bool | None] | None = None):
        self.compiled = compiled
        self.active = active
        self.resolve = resolve
        self._module = weakref.ref(module)
        self.timestep_arg = timestep_arg
        self._forward = None
        self._ts = (None, None)
        self._tensors = InstanceTensors(module)
        self._refresh(module)               # a bad timestep_arg raises here, at install time
        self.graph = runtime.new_graph([_Region()], 0, (), name=f"{type(module).__name__} (model boundary)",
                                       kind=BoundaryRuntime)
        self.graph.pieces = _run_region(self.graph)
        self.graph.tensors = self._tensors
        self._first = threading.RLock()
        self._warm = False

    def _refresh(self, module) -> None:
        forward = module.forward                  # accelerate's hooks replace it on the instance
        key = getattr(forward, "__func__", forward)
        if key is not self._forward:
            self._forward = key
            self._ts = timestep_parameter(forward, self.timestep_arg)

    def __call__(self, *args, **kwargs) -> Any:
        if not self._warm:
            # the first call compiles: one thread at a time. Concurrent first calls would each compile a
            # copy of the graph (dynamo does not wait for a compile in flight), fill dynamo's cache (8
            # entries) and leave later threads' calls running uncompiled, past the backend
            with self._first:
                out = self._call(args, kwargs)
                self._warm = True
                return out
        return self._call(args, kwargs)

    def _call(self, args, kwargs) -> Any:
        if not self.active:
            runtime = self.graph.ctx
            before = runtime.arrivals()
            out = self.compiled(*args, **kwargs)
            if runtime.arrivals() == before:       # dynamo ran the model uncompiled: say so
                runtime.bypassed()
            if self.active is None and self.resolve is not None:
                self.active = self.resolve()
            return out
        module = self._module()
        compute = lambda: self._flat(args, kwargs)      # noqa: E731
        if torch.is_grad_enabled():                     # counted as an uncached call, nothing stored
            out = self.graph((None, (), (), compute))
        else:
            self._refresh(module)
            timestep = self._timestep(args, kwargs)
            signature = tuple(_signature_of(i, x) for i, x in enumerate(pytree.tree_leaves((args, kwargs)))
                              if x is not timestep)
            instance = self._tensors()
            if self.graph.device is None:
                self.graph.device = next((p.device for p in instance), None)
            out = self.graph((timestep, signature, instance, compute))
        return pytree.tree_unflatten(list(out[1:]), out[0])

    def _flat(self, args, kwargs) -> tuple:
        leaves, spec = pytree.tree_flatten(self.compiled(*args, **kwargs))
        return (spec, *leaves)

    def _timestep(self, args, kwargs):
        name, pos = self._ts
        if name is None:
            return None
        if name in kwargs:
            return kwargs[name]
        return args[pos] if pos is not None and pos < len(args) else None


def _signature_of(i: int, x) -> tuple:
    """What of argument leaf ``i`` starts a new generation when it changes (``steps.py``'s signature
    entries): a tensor's ``(i, shape, dtype, device)``; a non-float scalar's ``(i, value)``
    (``return_dict``, a frame count); of floats (a guidance scale passed as a number, a per-step value)
    and other objects only the type."""
    if isinstance(x, torch.Tensor):
        return (i, tuple(x.shape), x.dtype, x.device)
    if isinstance(x, (bool, int, str)) or x is None:
        return (i, x)
    return (i, type(x).__name__)
