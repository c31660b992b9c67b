"""The whole-graph path: one dynamo graph as two inner-compiled calls, the backend's main path.

* **compute** (:func:`compute_graph`): the graph returning, after its own outputs, every region's
  outputs and the region inputs its residual outputs continue. Compiled in the backend call: it is
  what every computed step runs, and it costs what plain ``torch.compile`` costs (the extra outputs
  are values the graph computes anyway).
* **forecast** (:func:`forecast_graph`): the graph with every region's outputs replaced by trailing
  inputs (the forecasts) and the nodes left dead removed -- a ``stack`` forecast runs only the
  prefix and suffix of the model. Compiled at the first step that forecasts every region
  (``lazy_compile.py``); a policy that never forecasts never compiles it.

:class:`WholeGraph` owns this layout: what :meth:`WholeGraph.compute` returns and what
:meth:`WholeGraph.forecast` takes, region by region, in the order of the backend's region infos
(``transform.RegionInfo``). A residual output's forecast is the delta (output - input, in float32);
the forecast graph adds the region's current input back (``forecast.add_back``, the one definition
the split path uses too) and casts to the output's dtype.

The split pieces (``transform.py``) remain for the calls this path cannot take: per-region or mixed
decisions and forecasts from an incomplete state.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import fx

from ..forecast.buffers import add_back, out_strides
from .lazy_compile import LazyCompile

__all__ = ["WholeGraph", "compute_graph", "forecast_graph"]


def _example(n: fx.Node):
    return n.meta.get("example_value", n.meta.get("val"))


def _copy(gm: fx.GraphModule) -> tuple[fx.Graph, Any, dict]:
    """A copy of ``gm``'s graph without its output node: (graph, mapped output value, {name: node})."""
    g = fx.Graph()
    env: dict = {}
    out = g.graph_copy(gm.graph, env)
    for old, new in env.items():
        if old.op == "placeholder" and hasattr(old, "_dynamo_source"):
            new._dynamo_source = old._dynamo_source
    return g, out, {old.name: new for old, new in env.items()}


def _module(gm: fx.GraphModule, g: fx.Graph) -> fx.GraphModule:
    new = fx.GraphModule(gm, g)
    new.meta = gm.meta
    for attr in ("_param_name_to_source", "compile_subgraph_reason"):
        if hasattr(gm, attr):
            setattr(new, attr, getattr(gm, attr))
    return new


def _region_nodes(node: dict, info) -> list:
    missing = [n for n in info.output_names + info.input_names if n not in node]
    if missing:
        raise ValueError(f"region {info.name!r}: piece inputs/outputs {missing} not found in the graph")
    outs = [node[n] for n in info.output_names]
    for o in outs:
        v = _example(o)
        if not (isinstance(v, torch.Tensor) and v.is_floating_point()):
            raise ValueError(f"region {info.name!r}: output {o.name} is not a floating tensor")
    return outs


def compute_graph(gm: fx.GraphModule, infos: Sequence) -> tuple[fx.GraphModule, int]:
    """``gm`` returning, after its own outputs, every region's outputs (piece order) and then the
    region inputs its residual outputs continue (``sorted(set(info.residual.values()))``), region by
    region. Returns ``(graph module, number of the model's own outputs)``."""
    g, out, node = _copy(gm)
    if not isinstance(out, (tuple, list)):
        raise ValueError("graph output is not a tuple")
    extra = []
    for info in infos:
        extra += _region_nodes(node, info)
        extra += [node[info.input_names[j]] for j in sorted(set(info.residual.values()))]
    g.output(tuple(out) + tuple(extra))
    return _module(gm, g), len(out)


def forecast_graph(gm: fx.GraphModule, infos: Sequence) -> fx.GraphModule:
    """``gm`` with every region's outputs replaced by new trailing placeholders (the forecasts, region
    by region, piece order) and the nodes left dead removed. A residual output's placeholder is the
    delta; the graph adds the region's current input back (``forecast.add_back``)."""
    g, out, node = _copy(gm)
    g.output(out)
    first = next(n for n in g.nodes if n.op != "placeholder")
    replaced: dict = {}
    for info in infos:
        for oi, o in enumerate(_region_nodes(node, info)):
            with g.inserting_before(first):
                ph = g.placeholder(f"forecast_{info.index}_{oi}")
                ph._dynamo_source = None          # not a dynamo input (aot_autograd asks)
            repl = ph
            if oi in info.residual:
                base = node[info.input_names[info.residual[oi]]]
                base = replaced.get(base, base)
                with g.inserting_before(o):
                    repl = g.call_function(add_back, (ph, base, _example(o).dtype))
            o.replace_all_uses_with(repl)
            replaced[o] = repl
    g.eliminate_dead_code()
    g.lint()
    return _module(gm, g)


def _forecast_layouts(gm: fx.GraphModule, infos: Sequence) -> list:
    """Per forecast input: ``(shape, stride, dtype)`` the forecast graph is compiled for (stride by
    :func:`~taylorseer_fx.forecast.forecaster.out_strides`, the rule the forecaster's buffers follow), whether
    it is static (symbolic shapes: no layout check at run time) and the device."""
    node = {n.name: n for n in gm.graph.nodes}
    out = []
    for info in infos:
        for oi, o in enumerate(_region_nodes(node, info)):
            v = _example(o)
            dtype = torch.float32 if oi in info.residual else v.dtype     # residual: float32 delta
            static = all(isinstance(d, int) for d in tuple(v.shape) + tuple(v.stride()))
            stride = out_strides(v.shape, v.stride()) if static else v.stride()
            out.append((tuple(v.shape), tuple(stride), dtype, static, v.device))
    return out


class WholeGraph:
    """The compute and forecast versions of one graph, inner-compiled (see the module docstring).

    ``compute(args) -> (model outputs, [(region outputs, {piece input index: tensor})])`` and
    ``forecast(args, [region forecasts]) -> model outputs``. ``lazy=False`` compiles the forecast
    version at once (graphs with symbolic shapes). Raises ValueError when the graph has no whole-graph
    form (a non-tuple output, a region output that is not a floating tensor)."""

    def __init__(self, gm: fx.GraphModule, infos: Sequence, example_inputs: list, inner: Callable,
                 lazy: bool = True):
        self.infos = list(infos)
        cgm, self.n_out = compute_graph(gm, self.infos)
        fgm = forecast_graph(gm, self.infos)
        self.layouts = _forecast_layouts(gm, self.infos)
        self._forecast = LazyCompile(lambda inputs: inner(fgm, inputs + self._extra_inputs()),
                                     example_inputs, "forecast")
        self._compute = inner(cgm, list(example_inputs))
        if not lazy:
            self._forecast.get()

    @property
    def forecast_compiled(self) -> LazyCompile:
        """The lazily compiled forecast version (``.done``, ``.seconds``)."""
        return self._forecast

    def _extra_inputs(self) -> list:
        with self._forecast.fake_mode:
            return [torch.empty_strided(shape, stride, dtype=dtype, device=device)
                    for shape, stride, dtype, _, device in self.layouts]

    def run(self, args) -> tuple:
        """The model outputs of a call in which nothing is stored (uncached calls)."""
        return tuple(self._compute(*args)[:self.n_out])

    def compute(self, args):
        res = self._compute(*args)
        i, regions = self.n_out, []
        for info in self.infos:
            k = len(info.output_names)
            outs = tuple(res[i:i + k])
            i += k
            bases = {}
            for j in sorted(set(info.residual.values())):
                bases[j] = res[i]
                i += 1
            regions.append((outs, bases))
        return tuple(res[:self.n_out]), regions

    def accepts(self, state, info) -> bool:
        """Whether a region's stored state can feed the forecast version: every output a forecast
        floating tensor, stored as a delta exactly where the graph adds the input back."""
        return state is not None and state.all_forecast and set(state.residual) == set(info.residual)

    def forecast(self, args, forecasts):
        flat = [t for ts in forecasts for t in ts]
        for k, (t, (shape, stride, dtype, static, _)) in enumerate(zip(flat, self.layouts)):
            if static and (t.stride() != stride or t.dtype != dtype):
                flat[k] = torch.empty_strided(shape, stride, dtype=dtype, device=t.device).copy_(t)
        return tuple(self._forecast.get()(*args, *flat))
