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
import os
import re
import warnings
from typing import Any, Callable

import torch
from torch import fx

from .policy import Policy
from .presets import load_policy
from .runtime import Runtime
from .select import KINDS, NoRegionError, find_timestep, is_static_placeholder, select_regions
from .forecast import _out_strides
from .transform import CacheNode, compile_pieces, compute_graph, forecast_graph, split

__all__ = ["TaylorSeerBackend", "taylorseer_backend", "default_backend", "DEFAULT_POLICY"]

log = logging.getLogger(__name__)

#: preset used when no policy is given: official TaylorSeer's FLUX schedule (full steps 0-2, then one
#: in 6; order 1, taylor form). Needs no step count.
DEFAULT_POLICY = "official-flux"

_OPTIONS = ("timestep_arg", "num_steps", "per_region", "factor_dtype", "fused")


def _resolve_policy(policy) -> Policy:
    if policy is None:
        policy = DEFAULT_POLICY
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, (str, os.PathLike)):
        try:
            return load_policy(policy)
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"policy={os.fspath(policy)!r}: {e}") from e
    raise ValueError(f"policy must be a Policy, a preset name or a TOML path, got {type(policy).__name__}")


def _resolve_inner(inner) -> Callable:
    if callable(inner):
        return inner
    if isinstance(inner, str):
        from torch._dynamo.backends.registry import list_backends, lookup_backend
        if inner in ("taylorseer",):
            raise ValueError("inner='taylorseer' would nest the backend in itself")
        try:
            return lookup_backend(inner)
        except Exception:
            raise ValueError(f"inner={inner!r} is not a dynamo backend; use 'inductor', 'eager', 'aot_eager', "
                             f"one of {list_backends()} or a backend callable") from None
    raise ValueError(f"inner must be a backend name or a callable (gm, example_inputs) -> fn, got {inner!r}")


def _check_regions(regions) -> None:
    if isinstance(regions, str):
        if regions in KINDS:
            return
        try:
            re.compile(regions)
        except re.error as e:
            raise ValueError(f"regions={regions!r} is neither one of {KINDS} nor a valid regex: {e}") from None
        if re.fullmatch(r"[\w-]+", regions):
            # a bare word that is not a kind: most likely a typo of a kind
            raise ValueError(f"regions={regions!r} is not one of {KINDS}; for a module path pattern use a regex "
                             r"such as 'transformer_blocks\.\d+\.attn'")
        return
    if callable(regions):
        return
    raise ValueError(f"regions must be one of {KINDS}, a regex string or a callable(path) -> bool, got {regions!r}")


class _Graph:
    """The callable handed back to dynamo for one graph: a model call through the runtime."""

    def __init__(self, graph_runtime, split_gm: fx.GraphModule):
        self.graph_runtime = graph_runtime
        self.split_gm = split_gm

    def __call__(self, *args):
        return self.graph_runtime(self.split_gm, args)


class _Fused:
    """The two whole-graph versions of one graph (``fused=True``), each one inner-compiled call:
    ``compute(args) -> (model outputs, [(region outputs, {piece input index: tensor})])`` and
    ``forecast(args, [region forecasts]) -> model outputs`` (a residual output's forecast is the delta)."""

    def __init__(self, compute, n_out: int, forecast, infos, layouts: list):
        self._compute, self.n_out, self._forecast = compute, n_out, forecast
        self.infos = infos
        self.layouts = layouts     # per forecast input: (shape, stride, dtype) compiled for, or None

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

    def forecast(self, args, forecasts):
        flat = [t for ts in forecasts for t in ts]
        for k, (t, lay) in enumerate(zip(flat, self.layouts)):
            if lay is not None and (t.stride() != lay[1] or t.dtype != lay[2]):
                flat[k] = torch.empty_strided(lay[0], lay[1], dtype=lay[2], device=t.device).copy_(t)
        return tuple(self._forecast(*args, *flat))


def _compile_fused(gm, example_inputs, inner, infos, fake_outs) -> _Fused:
    from torch._guards import detect_fake_mode
    fake_mode = detect_fake_mode(example_inputs) or torch._subclasses.fake_tensor.FakeTensorMode()
    cgm, n_out = compute_graph(gm, infos)
    fgm = forecast_graph(gm, infos)
    extra, layouts = [], []
    for info in infos:
        for oi, fo in enumerate(fake_outs[info.index]):
            dtype = torch.float32 if oi in info.residual else fo.dtype   # residual: float32 delta
            static = all(isinstance(v, int) for v in tuple(fo.shape) + tuple(fo.stride()))
            stride = _out_strides(fo.shape, fo.stride()) if static else fo.stride()
            with fake_mode:
                extra.append(torch.empty_strided(fo.shape, stride, dtype=dtype, device=fo.device))
            layouts.append((tuple(fo.shape), tuple(stride), dtype) if static else None)
    compute = inner(cgm, list(example_inputs))
    forecast = inner(fgm, list(example_inputs) + extra)
    return _Fused(compute, n_out, forecast, infos, layouts)


class TaylorSeerBackend:
    """A dynamo backend ``(gm, example_inputs) -> callable`` that routes regions through cache nodes.

    See :func:`taylorseer_backend` for the arguments. ``stats()``, ``reset()`` and
    ``session(timesteps=None, num_steps=None, streams=1)`` act on the state of every graph it compiled."""

    def __init__(self, policy=None, regions="stack", inner="inductor", **options):
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(f"taylorseer_backend: unknown option {unknown[0]!r}; known: {_OPTIONS}")
        policy = _resolve_policy(policy)
        _check_regions(regions)
        self.regions = regions
        self.inner_name = inner if isinstance(inner, str) else getattr(inner, "__name__", repr(inner))
        self.inner = _resolve_inner(inner)
        self.timestep_arg = options.get("timestep_arg")
        if self.timestep_arg is not None and not isinstance(self.timestep_arg, str):
            raise ValueError(f"timestep_arg must be a str (the model's argument name), got {self.timestep_arg!r}")
        num_steps = options.get("num_steps")
        if num_steps is not None and (isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1):
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
        factor_dtype = options.get("factor_dtype", torch.float32)
        if not isinstance(factor_dtype, torch.dtype) or not factor_dtype.is_floating_point:
            raise ValueError(f"factor_dtype must be a floating torch.dtype, got {factor_dtype!r}")
        per_region = options.get("per_region")
        if per_region is not None and not isinstance(per_region, bool):
            raise ValueError(f"per_region must be a bool, got {per_region!r}")
        self.fused = options.get("fused", True)
        if not isinstance(self.fused, bool):
            raise ValueError(f"fused must be a bool, got {self.fused!r}")
        self.runtime = Runtime(policy, num_steps=num_steps, per_region=per_region, factor_dtype=factor_dtype)
        self.graphs: list[dict] = []   # per compiled graph: what was done (debugging, tests)

    @property
    def policy(self) -> Policy:
        return self.runtime.policy

    @policy.setter
    def policy(self, policy) -> None:
        """Swap the policy (a Policy, preset name or TOML path) without recompiling; forgets the cached
        state (not the stats)."""
        self.runtime.policy = _resolve_policy(policy)

    def __repr__(self) -> str:
        return f"taylorseer_backend(policy={self.policy!r}, regions={self.regions!r}, inner={self.inner_name!r})"

    # ------------------------------------------------------------ dynamo entry point
    def __call__(self, gm: fx.GraphModule, example_inputs: list) -> Callable:
        if torch.is_grad_enabled():
            log.info("taylorseer: graph traced with grad enabled; compiled unchanged (runs uncached)")
            self.graphs.append({"regions": [], "reason": "grad enabled"})
            return self.inner(gm, example_inputs)
        try:
            regions = select_regions(gm, self.regions)
        except NoRegionError as e:
            if e.has_blocks:
                raise ValueError(str(e)) from None
            warnings.warn(f"taylorseer: graph with no region runs unchanged: {e}", stacklevel=2)
            self.graphs.append({"regions": [], "reason": str(e)})
            return self.inner(gm, example_inputs)
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        ts = find_timestep(gm, self.timestep_arg)
        if ts is None and self.timestep_arg is not None:
            names = [n.name for n in placeholders if not is_static_placeholder(n)]
            raise ValueError(f"timestep_arg={self.timestep_arg!r}: no such graph input; inputs: {names}")
        ts_index = placeholders.index(ts) if ts is not None else None
        static = [is_static_placeholder(n, example_inputs[i] if i < len(example_inputs) else None)
                  for i, n in enumerate(placeholders)]
        dynamic = [i for i, s in enumerate(static) if not s]
        params = [i for i, s in enumerate(static) if s and isinstance(example_inputs[i], torch.Tensor)]
        instance = sorted({params[0], params[-1]}) if params else []   # identity of the model instance

        split_gm, infos, submod_region = split(gm, regions)
        if [i.index for i in infos] != list(range(len(regions))):
            raise AssertionError(f"region pieces {[i.index for i in infos]} do not cover {len(regions)} regions")
        graph_rt = self.runtime.new_graph(infos, ts_index, dynamic, name=str(gm.meta.get("dynamo_compile_id", "")),
                                          instance_indices=instance)

        fake_outs = {}

        def wrap_region(ri, compiled, piece, fake_out):
            fake_outs[ri] = tuple(fake_out) if isinstance(fake_out, (tuple, list)) else (fake_out,)
            return CacheNode(ri, compiled, graph_rt, infos[ri])

        compile_pieces(split_gm, example_inputs, self.inner, submod_region, wrap_region)
        if self.fused:
            try:
                graph_rt.fused = _compile_fused(gm, example_inputs, self.inner, infos, fake_outs)
            except ValueError as e:
                log.warning("taylorseer: no fused path for this graph (%s); split pieces only", e)
        self.graphs.append({"regions": [i.name for i in infos], "timestep": ts.name if ts is not None else None,
                            "split_gm": split_gm, "infos": infos, "fused": graph_rt.fused})
        return _Graph(graph_rt, split_gm)

    # ------------------------------------------------------------ state
    def stats(self) -> dict:
        """See :meth:`taylorseer_fx.runtime.Runtime.stats`."""
        return self.runtime.stats()

    def reset(self) -> None:
        """Forget all cached state (forecasters, step counters, schedules) and the stats."""
        self.runtime.reset()

    def memory_bytes(self) -> int:
        """Bytes this backend holds in cached state (factors, scratch, held outputs), over every
        thread and model instance. See :meth:`taylorseer_fx.runtime.Runtime.memory_bytes`."""
        return self.runtime.memory_bytes()

    def session(self, timesteps=None, num_steps: int | None = None, streams: int = 1):
        """Context manager: one generation with a caller-given schedule (sync-free step coordinate).
        See :meth:`taylorseer_fx.runtime.Runtime.session`."""
        return self.runtime.session(timesteps=timesteps, num_steps=num_steps, streams=streams)


def taylorseer_backend(policy=None, regions="stack", inner="inductor", **options) -> TaylorSeerBackend:
    """A torch.compile backend that forecasts regions of a diffusion transformer instead of computing them.

    Args:
        policy: a :class:`~taylorseer_fx.policy.Policy`, a preset name (``"official-flux"``, ``"never"``,
            ``"auto-balanced"`` ...) or a TOML path. Default :data:`DEFAULT_POLICY`.
        regions: ``"stack"`` (the block stack's outputs, cheapest), ``"stack-residual"`` (forecast
            output - input of the stack), ``"modules"`` (each block's attention / feed-forward outputs),
            a regex (``re.fullmatch``) over normalised module paths (``transformer_blocks.0.attn``) or a
            ``callable(path) -> bool``.
        inner: the backend that compiles the pieces: ``"inductor"``, ``"eager"``, ``"aot_eager"``, any
            registered name, or a backend callable.
        options: ``timestep_arg`` (the model argument holding the step coordinate, when not one of
            timestep/timesteps/t/sigma/sigmas), ``num_steps`` (steps per generation, for policies with a
            cooldown), ``per_region`` (one decision per region instead of one per step),
            ``factor_dtype`` (dtype of the stored factors, float32), ``fused`` (default True: also
            compile two whole-graph versions with ``inner``, one returning every region's outputs as
            extra outputs and one taking the regions' forecasts as extra inputs, and use them for
            calls in which every region computes, or every region forecasts; per-region or mixed
            decisions, fallbacks and grad-enabled calls use the split pieces. Costs two more inner
            compiles per graph, at compile time; ``fused=False`` skips them).

    Raises ValueError naming the argument for an unknown preset, region kind, inner backend or option.
    """
    return TaylorSeerBackend(policy=policy, regions=regions, inner=inner, **options)


_DEFAULT: TaylorSeerBackend | None = None


def default_backend() -> TaylorSeerBackend:
    """The backend behind ``torch.compile(model, backend="taylorseer")`` (created at first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = TaylorSeerBackend()
    return _DEFAULT


def _taylorseer_by_name(gm: fx.GraphModule, example_inputs: list, **kwargs: Any) -> Callable:
    return default_backend()(gm, example_inputs)


def _register() -> None:
    from torch._dynamo.backends import registry
    if "taylorseer" not in getattr(registry, "_COMPILER_FNS", {}):
        try:
            registry.register_backend(compiler_fn=_taylorseer_by_name, name="taylorseer")
        except AssertionError:  # pragma: no cover - registered concurrently
            pass


_register()
