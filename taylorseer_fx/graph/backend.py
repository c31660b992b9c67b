"""``taylorseer_backend``: glue select -> transform -> inner compile -> runtime.

::

    backend = taylorseer_backend(policy="official-flux", regions="stack", inner="inductor")
    model = torch.compile(model, backend=backend)
    with torch.no_grad():
        for t in scheduler.timesteps: ...            # regions computed or forecast per step
    backend.stats(); backend.reset()

``torch.compile(model, backend="taylorseer")`` uses a shared default backend
(:func:`default_backend`).
"""

from __future__ import annotations

import logging
import warnings
import weakref
from typing import Any, Callable

import torch
from torch import fx

from .options import (BOUNDARY_KINDS, DEFAULT_POLICY, OPTIONS, _RENAMED, check_regions, resolve_inner,
                              resolve_policy)
from ..policy.base import Policy
from ..runtime.runtime import Runtime
from .placeholders import find_timestep, is_static_placeholder
from .select import ALIASES, NoRegionError, describe_graph, select_regions, warn_unpaired_residual
from .graph_record import GraphRecord
from .boundary import ModelBoundary
from .graph_callables import Graph, Plain, Publishing
from .lazy_compile import LazyCompile, has_symbolic_inputs
from .transform import CacheNode, compile_pieces, split
from ..torch_internals import backend_registry, inductor_wrapper
from .whole_graph import WholeGraph

__all__ = ["TaylorSeerBackend", "taylorseer_backend", "default_backend", "DEFAULT_POLICY"]

log = logging.getLogger(__name__)

def _split_pieces(split_gm, submod_region, infos, inner, graph_rt):
    """The split graph's compile: ``build(fake inputs) -> split_gm`` with every piece compiled by
    ``inner`` and every region piece a CacheNode of ``graph_rt`` (a callable holding the runtime)."""
    def build(inputs):
        wrap = lambda ri, compiled, piece, fake_out: CacheNode(ri, compiled, graph_rt(), infos[ri])  # noqa: E731
        return compile_pieces(split_gm, inputs, inner, submod_region, wrap)
    return build


class TaylorSeerBackend:
    """A dynamo backend ``(gm, example_inputs) -> callable`` that routes regions through cache nodes.

    See :func:`taylorseer_backend` for the arguments. ``stats()``, ``reset()`` and
    ``session(timesteps=None, num_steps=None, streams=1)`` act on the state of every graph it compiled."""

    def __init__(self, policy=None, regions="stack", inner="inductor", *, timestep_arg: str | None = None,
                 num_steps: int | None = None, per_region: bool | None = None,
                 factor_dtype: torch.dtype = torch.float32, whole_graph: bool = True, strict: bool = False,
                 **unknown):
        for name in unknown:
            if name in _RENAMED:
                raise ValueError(f"taylorseer_backend: option {name!r} is now called {_RENAMED[name]!r}")
            raise ValueError(f"taylorseer_backend: unknown option {name!r}; known: "
                             f"('policy', 'regions', 'inner') + {OPTIONS}")
        policy = resolve_policy(policy)
        regions = ALIASES.get(regions, regions) if isinstance(regions, str) else regions
        check_regions(regions)
        self.regions = regions
        self.inner_name = inner if isinstance(inner, str) else getattr(inner, "__name__", repr(inner))
        self.inner = resolve_inner(inner)
        self._inner_with: dict = {}
        if timestep_arg is not None and not isinstance(timestep_arg, str):
            raise ValueError(f"timestep_arg must be a str (the model's argument name), got {timestep_arg!r}")
        self.timestep_arg = timestep_arg
        if num_steps is not None and (isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1):
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
        if not isinstance(factor_dtype, torch.dtype) or not factor_dtype.is_floating_point:
            raise ValueError(f"factor_dtype must be a floating torch.dtype, got {factor_dtype!r}")
        if per_region is not None and not isinstance(per_region, bool):
            raise ValueError(f"per_region must be a bool or None, got {per_region!r}")
        if not isinstance(whole_graph, bool):
            raise ValueError(f"whole_graph must be a bool, got {whole_graph!r}")
        self.whole_graph = whole_graph
        if not isinstance(strict, bool):
            raise ValueError(f"strict must be a bool, got {strict!r}")
        self.runtime = Runtime(policy, num_steps=num_steps, per_region=per_region, factor_dtype=factor_dtype,
                               strict=strict)
        self._records: list[GraphRecord] = []   # per compiled graph dynamo still holds: what was done
        self._compiles = 0                     # graphs compiled so far (their order: graph-break hand-over)
        self.boundaries: weakref.WeakSet = weakref.WeakSet()   # the ModelBoundary of every module compiled
        self._model_warned = False

    @property
    def policy(self) -> Policy:
        return self.runtime.policy

    @policy.setter
    def policy(self, policy) -> None:
        """Swap the policy (a Policy, preset name or TOML path) without recompiling; forgets the cached
        state (not the stats)."""
        self.runtime.policy = resolve_policy(policy)

    def __repr__(self) -> str:
        return f"taylorseer_backend(policy={self.policy!r}, regions={self.regions!r}, inner={self.inner_name!r})"

    # ------------------------------------------------------------ dynamo entry point
    def _inner_for(self, mode, options) -> Callable:
        """The inner backend with ``torch.compile``'s ``mode`` / ``options`` applied (inductor only)."""
        if (mode in (None, "default")) and not options:
            return self.inner
        if self.inner_name != "inductor":
            raise ValueError(f"torch.compile(mode={mode!r}, options={options!r}): mode and options are "
                             f"inductor settings, and this backend compiles with inner={self.inner_name!r}; "
                             "use taylorseer_backend(inner='inductor') or drop mode/options")
        key = (mode, repr(sorted((options or {}).items())))
        if key not in self._inner_with:
            try:
                self._inner_with[key] = inductor_wrapper(mode, options)
            except RuntimeError as e:         # an unknown inductor option or a bad value
                raise ValueError(f"torch.compile(options=...): {e}") from None
        return self._inner_with[key]

    def __call__(self, gm: fx.GraphModule, example_inputs: list, mode: str | None = None,
                 options: dict | None = None) -> Callable:
        inner = self._inner_for(mode, options)
        if torch.is_grad_enabled():
            if not any(g.get("reason") == "grad enabled" for g in self.graphs):
                warnings.warn("taylorseer: running uncached: grad is enabled; wrap sampling in torch.no_grad() "
                              "(or torch.inference_mode())", stacklevel=2)
            return self._keep(GraphRecord(regions=[], reason="grad enabled"), inner(gm, example_inputs))
        if self.regions in BOUNDARY_KINDS:
            if not self.boundaries and not self._model_warned:
                self._model_warned = True
                warnings.warn(f"taylorseer: regions={self.regions!r} caches the model's output at its boundary, "
                              "which torch.compile(model, backend=...) does not reach: the model runs uncached. Use "
                              "backend.compile_module(model) or compile_pipeline(pipe, ...)", stacklevel=2)
            return self._keep(GraphRecord(regions=[], reason=f"regions={self.regions!r}: cached at the model "
                                          "boundary"), inner(gm, example_inputs))
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        ts = find_timestep(gm, self.timestep_arg)
        try:
            regions = select_regions(gm, self.regions)
        except NoRegionError as e:
            if e.has_blocks:
                raise ValueError(str(e)) from None
            if all(b.active is False for b in self.boundaries):      # no boundary caches (or will) instead
                warnings.warn(f"taylorseer: {describe_graph(gm)} has no region and runs uncached: {e}. Fine for "
                              "a piece of a model that graph-breaks when another graph of it holds the blocks "
                              "(backend.graphs lists every graph with its regions; backend.compile_module(model) "
                              "caches a model none of whose graphs holds them at its boundary)", stacklevel=2)
            record = GraphRecord(regions=[], reason=str(e), timestep=ts.name if ts is not None else None)
            compiled = inner(gm, example_inputs)
            if ts is not None:
                compiled = Publishing(compiled, placeholders.index(ts), self.runtime, self._compiles)
            return self._keep(record, compiled)
        if ts is None and self.timestep_arg is not None:
            names = [n.name for n in placeholders if not is_static_placeholder(n)]
            raise ValueError(f"timestep_arg={self.timestep_arg!r}: no such graph input; inputs: {names}")
        ts_index = placeholders.index(ts) if ts is not None else None
        static = [is_static_placeholder(n, example_inputs[i] if i < len(example_inputs) else None)
                  for i, n in enumerate(placeholders)]
        dynamic = [i for i, s in enumerate(static) if not s]
        params = [i for i, s in enumerate(static) if s and isinstance(example_inputs[i], torch.Tensor)]
        instance = params               # the model instance: all of its parameters and buffers

        split_gm, infos, submod_region = split(gm, regions)     # an FX pass: nothing compiled yet
        if [i.index for i in infos] != list(range(len(regions))):
            raise AssertionError(f"region pieces {[i.index for i in infos]} do not cover {len(regions)} regions")
        warn_unpaired_residual(gm, regions, infos)
        symbolic = has_symbolic_inputs(example_inputs)           # compile now what would be lazy
        whole = None
        if self.whole_graph:
            try:
                whole = WholeGraph(gm, infos, example_inputs, inner, lazy=not symbolic)
            except ValueError as e:
                log.warning("taylorseer: no whole-graph path for this graph (%s); split pieces only", e)
        holder: list = []
        pieces = LazyCompile(_split_pieces(split_gm, submod_region, infos, inner, lambda: holder[0]),
                             example_inputs, "split pieces")
        graph_rt = self.runtime.new_graph(infos, ts_index, dynamic, whole=whole, pieces=pieces,
                                          name=describe_graph(gm), instance_indices=instance,
                                          compile_order=self._compiles)
        holder.append(graph_rt)
        if whole is None or symbolic:
            pieces.get()
        return self._keep(GraphRecord(regions=[i.name for i in infos], infos=infos,
                                      timestep=ts.name if ts is not None else None), Graph(graph_rt, split_gm))

    @property
    def graphs(self) -> list[GraphRecord]:
        """What the backend did with each graph that dynamo still holds (:class:`GraphRecord`), in compile
        order; a graph dynamo dropped (``torch._dynamo.reset()``, an evicted cache entry) leaves no record."""
        self._records = [r for r in self._records if r.alive]
        return list(self._records)

    def _keep(self, record: GraphRecord, compiled: Callable) -> Callable:
        """Record ``record`` for the callable handed to dynamo, for as long as dynamo holds it. Every
        callable handed over counts its calls as arrivals (``Runtime.arrive``)."""
        if not isinstance(compiled, (Graph, Publishing)):
            compiled = Plain(compiled, self.runtime)
        ref = weakref.ref(compiled)
        record.graph = ref
        self._records = [r for r in self._records if r.alive] + [record]
        self._compiles += 1
        return compiled

    # ------------------------------------------------------------ the model boundary
    def compile_module(self, module: torch.nn.Module, announce: bool = False) -> ModelBoundary:
        """Compile ``module`` in place with this backend (``module.compile(backend=self)``) and put a
        :class:`~taylorseer_fx.graph.boundary.ModelBoundary` in front of the compiled call (:meth:`boundary`).
        Undo it with ``module._compiled_call_impl = None`` (or what was there before)."""
        previous = vars(module).get("_compiled_call_impl")
        module.compile(backend=self)
        try:
            module._compiled_call_impl = self.boundary(module, module._compiled_call_impl, announce)
        except BaseException:
            module._compiled_call_impl = previous     # a bad timestep_arg: the module as it was
            raise
        return module._compiled_call_impl

    def boundary(self, module: torch.nn.Module, compiled: Callable, announce: bool = False) -> ModelBoundary:
        """A :class:`~taylorseer_fx.graph.boundary.ModelBoundary` for ``compiled``, ``module``'s call compiled
        with this backend. It caches the model's whole output when the region kind is ``"model"``, or when
        no graph this backend compiled holds a region (graph breaks inside every block): then from the
        call after the first one, and ``announce`` says so with a warning (else a log line). Otherwise
        the graphs' own regions cache and the boundary passes every call on. Use one backend per module
        (as ``compile_pipeline`` does): the choice looks at every graph the backend compiled."""
        if self.regions in BOUNDARY_KINDS:
            b = ModelBoundary(self.runtime, module, compiled, self.timestep_arg, active=True)
            self.boundaries.add(b)
            return b
        name = type(module).__name__

        def resolve() -> bool | None:
            done = [g for g in self.graphs if g.reason != "grad enabled"]
            if not done:
                return None                     # nothing traced yet (grad enabled): ask again next call
            if any(g.regions for g in done):
                return False
            text = (f"taylorseer: no graph of {name} holds a region for regions={self.regions!r} ({len(done)} "
                    "graphs: graph breaks split its blocks); its whole output is cached at the model boundary "
                    "instead (regions='model')")
            if announce:
                warnings.warn(text, stacklevel=4)
            else:
                log.info(text)
            return True

        b = ModelBoundary(self.runtime, module, compiled, self.timestep_arg, active=None, resolve=resolve)
        self.boundaries.add(b)
        return b

    def compile_seconds(self) -> dict:
        """Seconds spent in the inner compiles that ran after the backend call (lazily, at the first call
        that needed them): ``{"forecast": s, "pieces": s}`` summed over graphs."""
        out = {"forecast": 0.0, "pieces": 0.0}
        for g in self.graphs:
            w, p = g.get("whole_graph"), g.get("pieces")
            if w is not None and w.forecast_compiled.seconds is not None:
                out["forecast"] += w.forecast_compiled.seconds
            if p is not None and p.seconds is not None:
                out["pieces"] += p.seconds
        return out

    # ------------------------------------------------------------ state
    def stats(self) -> dict:
        """See :meth:`taylorseer_fx.runtime.runtime.Runtime.stats`."""
        return self.runtime.stats()

    def reset(self) -> None:
        """Forget all cached state (forecasters, step counters, schedules) and the stats."""
        self.runtime.reset()

    def memory_bytes(self) -> int:
        """Bytes this backend holds in cached state (factors, scratch, held outputs), over every
        thread and model instance. See :meth:`taylorseer_fx.runtime.runtime.Runtime.memory_bytes`."""
        return self.runtime.memory_bytes()

    def session(self, timesteps=None, num_steps: int | None = None, streams: int = 1, schedule=None):
        """Context manager: one generation with caller-given boundaries: ``timesteps`` (calls counted,
        sync-free) or ``schedule`` (each call placed at its timestep's index), ``num_steps``.
        See :meth:`taylorseer_fx.runtime.runtime.Runtime.session`."""
        return self.runtime.session(timesteps=timesteps, num_steps=num_steps, streams=streams, schedule=schedule)


def taylorseer_backend(policy=None, regions="stack", inner="inductor", *, timestep_arg: str | None = None,
                       num_steps: int | None = None, per_region: bool | None = None,
                       factor_dtype: torch.dtype = torch.float32, whole_graph: bool = True,
                       strict: bool = False, **unknown) -> TaylorSeerBackend:
    """A torch.compile backend that forecasts regions of a diffusion transformer instead of computing them.

    Args:
        policy: a :class:`~taylorseer_fx.policy.policies.Policy`, a preset name (``"official-flux"``, ``"never"``,
            ``"auto-balanced"`` ...) or a TOML path. Default :data:`DEFAULT_POLICY`.
        regions: ``"stack"`` (the block stack's outputs, cheapest), ``"stack-residual"`` (forecast
            output - input of the stack), ``"output"`` (alias ``"lite"``: everything from the first block
            to the graph's end, ``norm_out`` / ``proj_out`` included: the model output, as OpenVINO
            TaylorSeer Lite and diffusers' lite mode forecast), ``"modules"`` (each block's attention /
            feed-forward outputs), a regex (``re.fullmatch``) over normalised module paths (``transformer_blocks.0.attn``) or a
            ``callable(path) -> bool``.
        inner: the backend that compiles the graphs: ``"inductor"``, ``"eager"``, ``"aot_eager"``, any
            registered name, or a backend callable. ``torch.compile(..., mode=..., options=...)`` are
            passed on to inductor (a ValueError for any other inner backend).
        timestep_arg: the model argument holding the step coordinate, when it is not one of
            timestep/timesteps/t/sigma/sigmas. Default None (found by name).
        num_steps: steps per generation, for policies with a cooldown when no session gives it.
            Default None.
        per_region: one decision per region instead of one per step. Default None: the policy's
            ``per_region`` (False for fixed policies).
        factor_dtype: dtype of the stored factors. Default ``torch.float32``.
        whole_graph: default True: every graph runs as one inner-compiled call when every region
            computes (compiled in the backend call, as plain ``torch.compile`` would) or every region
            forecasts (its forecast version, compiled at the first such step). Calls with per-region
            or mixed decisions use the split pieces, compiled the first time one needs them.
            ``False`` (debugging): the split pieces only, compiled at once.
        strict: default False: when a request ends (a ``compile_pipeline`` call, a ``session``, a
            closed ``Request``) and fewer than half of the forecasts its policy planned happened, warn
            once, naming the first cause; True: raise RuntimeError instead, every time (for CI and
            production checks). ``stats()["audit"]`` counts the causes either way.

    Raises ValueError naming the argument for an unknown preset, region kind, inner backend or option.
    """
    return TaylorSeerBackend(policy=policy, regions=regions, inner=inner, timestep_arg=timestep_arg,
                             num_steps=num_steps, per_region=per_region, factor_dtype=factor_dtype,
                             whole_graph=whole_graph, strict=strict, **unknown)


_DEFAULT: TaylorSeerBackend | None = None
_BY_OPTIONS: dict = {}
_BACKEND_KEYS = ("policy", "regions", "inner") + OPTIONS


def default_backend(options: dict | None = None) -> TaylorSeerBackend:
    """The backend behind ``torch.compile(model, backend="taylorseer")`` (created at first use).

    ``options``: the ``torch.compile(..., options={...})`` of such a call; its keys among
    ``policy``, ``regions``, ``inner`` and :data:`OPTIONS` build the backend (one per distinct set of
    values, kept for ``stats()`` / ``reset()`` / ``session()``), the other keys are inductor options."""
    global _DEFAULT
    ours = {k: v for k, v in (options or {}).items() if k in _BACKEND_KEYS}
    if not ours:
        if _DEFAULT is None:
            _DEFAULT = TaylorSeerBackend()
        return _DEFAULT
    key = repr(sorted(ours.items()))
    if key not in _BY_OPTIONS:
        _BY_OPTIONS[key] = TaylorSeerBackend(**ours)
    return _BY_OPTIONS[key]


def _taylorseer_by_name(gm: fx.GraphModule, example_inputs: list, mode: str | None = None,
                        options: dict | None = None, **kwargs: Any) -> Callable:
    """``backend="taylorseer"``: :func:`default_backend` for the call's options (entry point
    ``torch_dynamo_backends``)."""
    if kwargs:
        raise ValueError(f"backend='taylorseer': unexpected arguments {sorted(kwargs)}")
    rest = {k: v for k, v in (options or {}).items() if k not in _BACKEND_KEYS} or None
    return default_backend(options)(gm, example_inputs, mode=mode, options=rest)


def _register() -> None:
    """Register ``"taylorseer"`` by name when this module is imported before dynamo has read the
    ``torch_dynamo_backends`` entry points (when the entry point loads it, dynamo registers it)."""
    register, _, _, names, compiler_fns = backend_registry()
    if names.get("taylorseer") is None and "taylorseer" not in compiler_fns:
        try:
            register(compiler_fn=_taylorseer_by_name, name="taylorseer")
        except AssertionError:  # pragma: no cover - registered concurrently
            pass


_register()
