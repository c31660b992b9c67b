"""The FX pass: cut regions out of a dynamo graph and call each through a :class:`CacheNode`.

Knows nothing of how a compute/forecast decision is made: a ``CacheNode`` forwards its call to a
runtime object's ``run_region(index, compiled, args)``.

Steps (the way torch's DDPOptimizer splits graphs, ``torch/_dynamo/backends/distributed.py``):

1. :func:`plan_partitions` gives every ``call_*`` node a partition id: each region its own id, the
   nodes between regions one id per stretch (prefix, glue, suffix). Side-effect-free nodes whose
   every user is in one region move into that region (Flux's RoPE: computed only when the region
   is), so forecast steps skip them too.
2. :func:`split` runs ``torch.fx.passes.split_module`` and copies dynamo's metadata (graph meta,
   ``_param_name_to_source``, placeholders' ``_dynamo_source``) onto the pieces so parameters stay
   static inputs (CUDA graphs) and guards dedup as in the unsplit graph.
3. :func:`compile_pieces` compiles piece by piece with the inner backend on fake inputs propagated
   through the already compiled pieces (inductor's first call on fakes returns the runtime
   strides), and replaces each region piece by a ``CacheNode``.

The split graph is the backend's second path: the main one is the whole graph (``whole_graph.py``),
which uses the region infos made here. The backend compiles the pieces only when a call needs them
(``lazy_compile.py``).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable
from unittest import mock

import torch
from torch import fx
from torch.fx.passes.split_module import split_module

from .placeholders import is_static_placeholder
from .select import Region
from ..torch_internals import (aot_compiles, deepcopy_to_fake, fake_mode_for, global_state_targets, is_fake,
                              saved_tensors_hooks_guard, to_fake, tracing_context)

__all__ = ["RegionInfo", "CacheNode", "plan_partitions", "split", "compile_pieces", "call_compiled"]

log = logging.getLogger(__name__)

_COMPUTE_OPS = ("call_function", "call_method", "call_module")


@dataclass
class RegionInfo:
    """What the runtime needs to know of one region piece.

    ``index``: position in graph order; ``name``: module path or "stack"; ``num_inputs``: arguments of
    the piece; ``dynamic_inputs``: indices of inputs that are not parameters/buffers; ``residual``:
    ``{output index: input index}`` for outputs forecast as (output - input) + current input;
    ``submod``: name of the piece in the split graph; ``input_names`` / ``output_names``: the
    nodes of the unsplit graph that the piece takes / returns, in the piece's order."""
    index: int
    name: str
    num_inputs: int = 0
    dynamic_inputs: tuple = ()
    residual: dict = field(default_factory=dict)
    submod: str = ""
    input_names: tuple = ()
    output_names: tuple = ()


class CacheNode(torch.nn.Module):
    """Calls a compiled region piece, or asks the runtime for a forecast instead.

    ``forward(*args)`` returns ``runtime.run_region(index, compiled, args)``: a tuple with the exact
    structure, shapes, dtypes and strides the compiled piece returns."""

    def __init__(self, index: int, compiled: Callable, runtime: Any, info: RegionInfo):
        super().__init__()
        self.index = index
        self.compiled = compiled
        self.runtime = runtime
        self.info = info

    def forward(self, *args):
        return self.runtime.run_region(self.index, self.compiled, args)

    def extra_repr(self) -> str:
        return f"index={self.index}, name={self.info.name!r}"


def call_compiled(compiled: Callable, args) -> Any:
    """Call a compiled piece the way dynamo calls a backend's result: ``compiled(*args)``.

    (Not by ``_boxed_call``: aot_autograd's ``forward`` copies that attribute from the boxed function
    it wraps with ``simple_wraps`` while itself taking unboxed arguments.)"""
    return compiled(*args)


# ---------------------------------------------------------------- 1. partition plan

def _has_global_state_nodes(gm: fx.GraphModule) -> bool:
    targets = global_state_targets()
    return any(n.op == "call_function" and n.target in targets for n in gm.graph.nodes)


def _mutates(n: fx.Node) -> bool:
    t = n.target
    name = t if isinstance(t, str) else getattr(t, "__name__", "")
    if isinstance(name, str) and name.endswith("_") and not name.endswith("__"):
        return True
    schema = getattr(t, "_schema", None)
    return bool(schema is not None and schema.is_mutable)


def _movable(n: fx.Node) -> bool:
    if n.op not in _COMPUTE_OPS or _mutates(n):
        return False
    try:
        return not n.is_impure()
    except Exception:  # pragma: no cover - older fx
        return True


def plan_partitions(gm: fx.GraphModule, regions: list[Region]) -> tuple[dict, dict]:
    """``(pid of every call_* node, {region index: pid})``. Pids increase in graph order, except
    for prefix/glue nodes moved into the single region that uses them."""
    in_region = {}
    for ri, r in enumerate(regions):
        for n in r.nodes:
            in_region[n] = ri
    pid: dict[fx.Node, int] = {}
    region_pid: dict[int, int] = {}
    cur, cur_region, next_pid = None, "unset", 0
    for n in gm.graph.nodes:
        if n.op not in _COMPUTE_OPS:
            continue
        r = in_region.get(n)
        if r != cur_region or cur is None:
            cur, cur_region = next_pid, r
            next_pid += 1
            if r is not None:
                if r in region_pid:
                    raise ValueError(f"region {regions[r].name!r} is not a contiguous run of nodes")
                region_pid[r] = cur
        pid[n] = cur
    # move side-effect-free non-region nodes used by exactly one region into it; for residual
    # regions keep the residual bases (values shaped like a region output) outside
    if not _has_global_state_nodes(gm):
        pid_region = {p: r for r, p in region_pid.items()}
        keep_out = {}
        for ri, r in enumerate(regions):
            if r.residual:
                members = set(r.nodes)
                outs = [n for n in r.nodes if any(u not in members for u in n.users)]
                keep_out[ri] = {_meta_key(_example(o)) for o in outs} - {None}
        for n in reversed(list(gm.graph.nodes)):
            if n not in pid or n in in_region or not _movable(n) or not n.users:
                continue
            users = {pid.get(u) for u in n.users}
            if len(users) == 1:
                (p,) = users
                if p in pid_region and p > pid[n]:
                    if _meta_key(_example(n)) in keep_out.get(pid_region[p], ()):
                        continue
                    pid[n] = p
    # a tuple-valued node (chunk, split, an attention returning a pair) never crosses a piece
    # boundary: its getitem users join its piece and pass on tensors
    import operator
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is operator.getitem and isinstance(n.args[0], fx.Node):
            src = n.args[0]
            if src in pid and isinstance(_example(src), (tuple, list)):
                pid[n] = pid[src]
    return pid, region_pid


def _meta_key(v):
    if isinstance(v, torch.Tensor) and v.is_floating_point():
        return (tuple(d if isinstance(d, int) else str(d) for d in v.shape), v.dtype)   # SymInts: by name
    return None


# ---------------------------------------------------------------- 2. split

def _split_kwargs() -> dict:
    params = inspect.signature(split_module).parameters
    return {"tuple_return": True} if "tuple_return" in params else {}


def split(gm: fx.GraphModule, regions: list[Region]) -> tuple[fx.GraphModule, list[RegionInfo], dict]:
    """Split ``gm``; returns ``(split_gm, region infos, {submod name: region index})``."""
    pid, region_pid = plan_partitions(gm, regions)
    for n in gm.graph.nodes:          # split_module may rename nodes; meta is copied
        n.meta["taylorseer_name"] = n.name
    split_gm = split_module(gm, None, lambda n: pid[n], **_split_kwargs())
    names = _partition_names(split_gm)
    _propagate_metadata(gm, split_gm, names)
    pid_to_region = {p: r for r, p in region_pid.items()}
    submod_region = {}
    infos = []
    for name in names:
        p = int(name.rsplit("_", 1)[-1])
        if p in pid_to_region:
            submod_region[name] = pid_to_region[p]
    for name, ri in sorted(submod_region.items(), key=lambda kv: kv[1]):
        sub = getattr(split_gm, name)
        infos.append(_region_info(ri, regions[ri], name, sub))
    return split_gm, infos, submod_region


def _partition_names(split_gm: fx.GraphModule) -> list[str]:
    names = split_gm.meta.get("partition_names")
    if names is None:
        names = {n.target for n in split_gm.graph.nodes if n.op == "call_module"}
    order = [n.target for n in split_gm.graph.nodes if n.op == "call_module" and n.target in names]
    return order


def _propagate_metadata(orig: fx.GraphModule, split_gm: fx.GraphModule, names) -> None:
    sources = {n.name: getattr(n, "_dynamo_source", None) for n in orig.graph.find_nodes(op="placeholder")}
    reason = getattr(orig, "compile_subgraph_reason", None)
    for name in names:
        sub = getattr(split_gm, name)
        sub.meta = orig.meta
        if hasattr(orig, "_param_name_to_source"):
            sub._param_name_to_source = orig._param_name_to_source
        if reason is not None:
            sub.compile_subgraph_reason = reason
        for n in sub.graph.find_nodes(op="placeholder"):
            n._dynamo_source = sources.get(n.name)


def _example(n: fx.Node):
    return n.meta.get("example_value", n.meta.get("val"))


def _region_info(index: int, region: Region, submod_name: str, sub: fx.GraphModule) -> RegionInfo:
    phs = list(sub.graph.find_nodes(op="placeholder"))
    dynamic = tuple(i for i, n in enumerate(phs) if not is_static_placeholder(n, _example(n)))
    residual = {}
    out_node = next(n for n in sub.graph.nodes if n.op == "output")
    outs = out_node.args[0]
    outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
    if region.residual:
        for oi, o in enumerate(outs):
            ii = _residual_input(o, phs, dynamic)
            if ii is not None:
                residual[oi] = ii
    def name(n):
        return n.meta.get("taylorseer_name", n.name) if isinstance(n, fx.Node) else None
    return RegionInfo(index, region.name, len(phs), dynamic, residual, submod_name,
                      tuple(name(n) for n in phs), tuple(name(o) for o in outs))


def _same_meta(a, b) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
            and a.is_floating_point() and tuple(a.shape) == tuple(b.shape))


def _residual_input(out: Any, phs: list, dynamic: tuple) -> int | None:
    """The input of the residual stream that ``out`` continues: the same-shape, same-dtype dynamic
    input reached from ``out`` through the fewest same-shape nodes (``x = x + f(x)`` chains)."""
    if not isinstance(out, fx.Node):
        return None
    ov = _example(out)
    cands = {phs[i]: i for i in dynamic if _same_meta(_example(phs[i]), ov)}
    if not cands:
        return None
    frontier, seen = [out], {out}
    while frontier:
        nxt = []
        for n in frontier:
            if n in cands:
                return cands[n]
            for a in n.all_input_nodes:
                if a not in seen and _same_meta(_example(a), ov):
                    seen.add(a)
                    nxt.append(a)
        frontier = nxt
    return min(cands.values()) if len(cands) == 1 else None


# ---------------------------------------------------------------- 3. compile

class _PieceCompiler(fx.Interpreter):
    """Compile each piece of ``split_gm`` on fake inputs, piece by piece (DDPOptimizer's SubmodCompiler)."""

    def __init__(self, split_gm: fx.GraphModule, inner: Callable, fake_mode, wrap_region: Callable,
                 submod_region: dict):
        super().__init__(split_gm)
        self.inner = inner
        self.fake_mode = fake_mode
        self.wrap_region = wrap_region
        self.submod_region = submod_region

    def _fake(self, a):
        if isinstance(a, torch.Tensor) and not is_fake(a):
            return to_fake(a, self.fake_mode)
        return a

    def run_node(self, n: fx.Node) -> Any:
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        args = tuple(self._fake(a) for a in args)
        if n.op != "call_module":
            return getattr(self, n.op)(n.target, args, kwargs)
        assert not kwargs, "split pieces take positional arguments only"
        real_mod = self.fetch_attr(str(n.target))
        ctx = tracing_context()
        if ctx is not None:
            ctx.fakify_first_call = True
        before = aot_compiles()
        try:
            compiled = self.inner(real_mod, list(args))
        finally:
            invoked_aot = before != aot_compiles()
        try:
            with self.fake_mode, mock.patch.object(self.fake_mode, "allow_non_fake_inputs", True):
                if ctx is not None and invoked_aot:
                    out = call_compiled(compiled, args)
                else:
                    fake_mod = deepcopy_to_fake(real_mod, self.fake_mode)
                    out = fake_mod(*args)
        finally:
            if ctx is not None:
                ctx.fakify_first_call = False
        name = str(n.target)
        self.module.delete_submodule(name)
        if name in self.submod_region:
            piece = self.wrap_region(self.submod_region[name], compiled, real_mod, out)
            n.target = "cached_" + name
        else:
            piece = _Compiled(compiled)
            n.target = "compiled_" + name
        self.module.add_submodule(n.target, piece)
        return out


class _Compiled(torch.nn.Module):
    """A compiled non-region piece (prefix, glue, suffix)."""

    def __init__(self, compiled: Callable):
        super().__init__()
        self.compiled = compiled

    def forward(self, *args):
        return call_compiled(self.compiled, args)


def compile_pieces(split_gm: fx.GraphModule, example_inputs: list, inner: Callable, submod_region: dict,
                   wrap_region: Callable) -> fx.GraphModule:
    """Compile every piece of ``split_gm`` with ``inner`` (a dynamo backend ``(gm, inputs) -> fn``).

    Region pieces become ``wrap_region(region index, compiled, piece, fake outputs)`` (a
    :class:`CacheNode`); the others plain compiled pieces. Returns ``split_gm``, recompiled."""
    fake_mode = fake_mode_for(example_inputs)
    comp = _PieceCompiler(split_gm, inner, fake_mode, wrap_region, submod_region)
    guard = saved_tensors_hooks_guard()
    if guard is not None:
        with guard():
            comp.run(*example_inputs)
    else:  # pragma: no cover
        comp.run(*example_inputs)
    split_gm.recompile()
    return split_gm
