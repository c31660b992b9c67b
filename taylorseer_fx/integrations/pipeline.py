"""``compile_pipeline(pipe, ...)``: every denoiser of a diffusers pipeline through its own backend, and
every pipeline call one generation.

::

    handle = compile_pipeline(pipe, policy="openvino-lite")   # any preset: no num_steps needed
    image = pipe(prompt_embeds=..., num_inference_steps=28).images[0]
    handle.stats()["total"]; handle.reset(); handle.remove()   # remove(): the pipeline as it was

What it does, with the backend's public API only (``backend.py``):

* **Denoisers.** ``pipe.transformer`` and, where present, ``pipe.transformer_2`` (Wan 2.2), or
  ``pipe.unet`` are compiled in place (``backend.compile_module``: the pipeline keeps the same module
  objects), each with a backend of its own (:attr:`CompiledPipeline.backends`). Transformers cache
  their graphs' regions (``"stack"`` by default); UNets, and transformers none of whose graphs holds a
  region, cache their whole output at the model boundary (``boundary.py``; :attr:`CompiledPipeline.kinds`).
* **One request per pipeline call.** The pipeline's class is swapped for a subclass whose ``__call__``
  makes the call one :class:`~taylorseer_fx.runtime.request.Request`, closed when the call returns or raises.
  The scheduler's ``set_timesteps`` and the denoisers' ``cache_context`` are wrapped on the instances
  (``pipeline_hooks.py``, shared with other handles that hold them) so that the request is told the
  step count, each call's step, stage and branch. So every preset works at any step count, call after
  call, Heun-type schedulers, img2img and a second transformer joining mid-run are placed exactly, and
  an exception leaves nothing behind.

The same by hand, for a loop of your own or ``pipe.transformer.compile(backend=backend)`` users::

    with backend.session(schedule=pipe.scheduler.timesteps):   # after set_timesteps
        ...                                                     # the denoising loop
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

import torch

from ..graph.backend import TaylorSeerBackend, taylorseer_backend
from .pipeline_hooks import (HOLDERS, hold_cache_context, hold_scheduler, open_request, release_cache_context,
                             release_scheduler)

__all__ = ["BACKENDS", "DENOISERS", "CompiledPipeline", "backend_for", "compile_pipeline", "options_key"]

#: the pipeline attributes that hold denoisers, in the order they run
DENOISERS = ("transformer", "transformer_2", "unet")
#: denoisers cached at the model boundary whatever the graphs hold (``regions="model"``)
_BOUNDARY_ONLY = ("unet",)


class CompiledPipeline:
    """What :func:`compile_pipeline` did to one pipeline: ``backends`` (denoiser name -> backend),
    ``kinds`` (the region kind each denoiser caches with), ``stats()``, ``reset()``, ``memory_bytes()``,
    ``remove()``."""

    def __init__(self, pipe, backends: dict[str, TaylorSeerBackend], original_class: type):
        self.pipe = pipe
        self.backends = backends
        self._boundaries: dict = {}    # denoiser name -> its ModelBoundary
        self._modules: dict = {}       # denoiser name -> the module compiled (the pipeline may swap it later)
        self._original_class = original_class
        self._scheduler = None         # the scheduler whose set_timesteps this handle holds
        self.removed = False

    # ------------------------------------------------------------ one generation per call
    def _call(self, call, *args, **kwargs):
        """One pipeline call as one :class:`~taylorseer_fx.runtime.request.Request`: every model call inside
        belongs to it (whatever thread, task or generator the pipeline runs in), and it is closed,
        its cached state dropped, when the call returns or raises."""
        scheduler = getattr(self.pipe, "scheduler", None)
        if scheduler is not None and scheduler is not self._scheduler:
            self._hold_scheduler(scheduler)       # a scheduler replaced after compile_pipeline
        request = open_request(self.pipe)
        ok = False
        try:
            with request:
                out = call(*args, **kwargs)
            ok = True
        finally:
            reached = bool(request.scopes)
            request.close(audit=ok)
        if not reached and request.num_steps is not None:
            for backend in self.backends.values():    # no denoiser call reached any backend
                backend.runtime.never_reached(request.num_steps)
        return out

    def _hold_scheduler(self, scheduler) -> None:
        if self._scheduler is not None:
            release_scheduler(self._scheduler, self)
        hold_scheduler(scheduler, self)
        self._scheduler = scheduler

    # ------------------------------------------------------------ api
    @property
    def kinds(self) -> dict[str, str]:
        """``{denoiser name: region kind}``: ``"model"`` for a denoiser cached at its boundary (a UNet,
        ``regions="model"``, or a model none of whose graphs holds its blocks: known after its first
        call, ``"stack (model if no graph holds the blocks)"`` until then), else the graphs' kind."""
        out = {}
        for name, be in self.backends.items():
            b = self._boundaries.get(name)
            kind = be.regions if isinstance(be.regions, str) else "custom"
            if b is not None and b.active:
                kind = "model"
            elif b is not None and b.active is None:
                kind = f"{kind} (model if no graph holds the blocks)"
            out[name] = kind
        return out

    def stats(self) -> dict:
        """``{denoiser name: backend.stats(), "total": {"compute", "forecast", "steps", "calls",
        "uncached_calls", "planned_forecasts", "audited_forecasts", "causes"}}`` (see ``Recorder.stats``;
        the last three sum every backend's ``"audit"``)."""
        out: dict[str, Any] = {name: be.stats() for name, be in self.backends.items()}
        backends = list(out.values())
        out["total"] = {k: sum(s.get(k, 0) for s in backends)
                        for k in ("compute", "forecast", "steps", "calls", "uncached_calls")}
        out["total"]["planned_forecasts"] = sum(s["audit"]["planned"] for s in backends)
        out["total"]["audited_forecasts"] = sum(s["audit"]["forecasts"] for s in backends)
        causes: dict = {}
        for s in backends:
            for k, v in s["audit"]["causes"].items():
                causes[k] = causes.get(k, 0) + v
        out["total"]["causes"] = causes
        return out

    def reset(self) -> None:
        """Forget every backend's cached state and stats."""
        for be in self.backends.values():
            be.reset()

    def memory_bytes(self) -> int:
        """Bytes held in cached state by every backend."""
        return sum(be.memory_bytes() for be in self.backends.values())

    def remove(self) -> None:
        """Undo :func:`compile_pipeline`: the denoisers run as before it (uncompiled, or with the
        user's own ``module.compile()``), the pipeline's class, its scheduler's ``set_timesteps`` and
        the denoisers' ``cache_context`` are the original ones again -- except what another live handle
        still holds (a pipeline sharing the denoiser or scheduler): that stays until it is removed."""
        if self.removed:
            return
        self.removed = True
        pipe = self.pipe
        for name in self.backends:
            module = self._modules[name]
            if HOLDERS.release(module, self):
                module._compiled_call_impl = HOLDERS.previous(module)   # a user's own .compile() comes back
                self.backends[name].reset()
            release_cache_context(module, self)
        pipe.__class__ = self._original_class
        if self._scheduler is not None:
            release_scheduler(self._scheduler, self)
        vars(pipe).pop("_taylorseer", None)


#: per denoiser module: {arguments key: the backend compile_pipeline made for it}
BACKENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


#: backend options that apply at run time: a reused backend takes the new values (with the policy)
_RUN_OPTIONS = ("num_steps", "strict")


def options_key(regions, inner, options):
    """A hashable key of the compile-time arguments (not the policy, ``num_steps`` or ``strict``: a
    backend takes new ones without recompiling), or None (an unhashable argument: no reuse)."""
    key = (regions, inner, tuple(sorted((k, v) for k, v in options.items() if k not in _RUN_OPTIONS)))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def backend_for(module, key, policy, regions, inner, options) -> TaylorSeerBackend:
    """The backend an earlier handle made for ``module`` with the same compile-time arguments, given this
    call's policy and run-time options and reset, else a new one: the same backend object means the
    same dynamo cache entry for the module's forward, however many handles and policies come and go."""
    made = BACKENDS.setdefault(module, {})
    fresh = taylorseer_backend(policy, regions=regions, inner=inner, **options)    # validates every argument
    backend = made.get(key) if key is not None else None
    if backend is None:
        if key is not None:
            made[key] = fresh
        return fresh
    backend.policy = fresh.policy
    backend.runtime.num_steps, backend.runtime.strict = fresh.runtime.num_steps, fresh.runtime.strict
    backend.reset()
    return backend


def _shared_backend(name: str, module, key, policy, regions, inner, options) -> TaylorSeerBackend | None:
    """The backend of a live handle that holds ``module`` (a pipeline sharing it: ``from_pipe``), when
    this call's arguments are the same; None when no live handle holds it. Raises ValueError when one
    does with other arguments (one module, one backend: one policy)."""
    held = HOLDERS.held(module)
    if held is None:
        return None
    backend = held.backend
    fresh = taylorseer_backend(policy, regions=regions, inner=inner, **options)
    same = (key is not None and BACKENDS.get(module, {}).get(key) is backend and fresh.policy == backend.policy
            and (fresh.runtime.num_steps, fresh.runtime.strict) == (backend.runtime.num_steps, backend.runtime.strict))
    if not same:
        raise ValueError(f"compile_pipeline: pipe.{name} is compiled by another live compile_pipeline handle "
                         f"with other arguments ({backend!r}); a shared denoiser runs one backend: pass the same "
                         "policy, regions, inner and options (a pipeline made with from_pipe then shares it), "
                         "or call .remove() on that handle first")
    return backend


def _check_denoiser(name: str, module) -> None:
    if getattr(module, "_orig_mod", None) is not None:
        raise ValueError(f"compile_pipeline: pipe.{name} is already a torch.compile wrapper; pass the module "
                         f"itself (pipe.{name} = pipe.{name}._orig_mod) and compile_pipeline compiles it")


def _wrapped_class(cls: type) -> type:
    def __call__(self, *args, **kwargs):
        handle = vars(self).get("_taylorseer")
        if handle is None:
            return cls.__call__(self, *args, **kwargs)
        return handle._call(functools.partial(cls.__call__, self), *args, **kwargs)
    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})


def _kind_for(name: str, regions) -> tuple[Any, bool]:
    """``(region kind, announce a fallback)`` for denoiser ``name``: UNets are cached at the model
    boundary; a transformer with ``regions`` (default ``"stack"``) falls back to it where no graph holds
    a region (said with a warning when the user chose the kind)."""
    if name in _BOUNDARY_ONLY:
        if regions not in (None, "model"):
            raise ValueError(f"compile_pipeline: pipe.{name} is a UNet, cached at the model boundary: "
                             f"regions must be None or 'model', got {regions!r}")
        return "model", False
    return ("stack" if regions is None else regions), regions is not None


def compile_pipeline(pipe, policy=None, regions=None, inner="inductor", **options) -> CompiledPipeline:
    """Compile every denoiser of a diffusers pipeline in place, each with its own
    :func:`~taylorseer_fx.graph.backend.taylorseer_backend` (``policy``, ``regions``, ``inner`` and
    ``options`` as there), and make each pipeline call one generation (see the module docstring).

    ``regions``: None (default) is ``"stack"`` for transformers and ``"model"`` (the whole output,
    decided at the model boundary) for UNets; a transformer none of whose graphs holds a region of
    the kind (graph breaks inside every block) is cached at its boundary from its second call
    (``handle.kinds`` says which kind each denoiser got).

    A denoiser compiled by an earlier handle (now removed) with the same ``regions``, ``inner`` and
    compile options gets that handle's backend again, with this call's policy, ``num_steps`` and
    ``strict`` (its stats reset): dynamo keeps one cache entry per model and compile-time arguments
    however many handles and policies come and go.

    A denoiser another live handle holds (a pipeline made with ``from_pipe``, or built around the same
    transformer) is shared when the arguments are the same: no second compile, one backend (its stats
    count both pipelines' calls), and each pipeline's calls are requests of their own; it stays compiled
    until the last handle holding it is removed.

    Raises ValueError when ``pipe`` has no denoiser (``transformer``, ``unet``) or no scheduler, was
    already compiled by this function (call ``.remove()`` on its handle first), when a denoiser is held by
    another live handle with other arguments, or is a ``torch.compile`` wrapper (pass the module
    itself)."""
    if "_taylorseer" in getattr(pipe, "__dict__", {}):
        raise ValueError("compile_pipeline: this pipeline is compiled already; call .remove() on the "
                         "handle compile_pipeline returned first")
    names = [n for n in DENOISERS if isinstance(getattr(pipe, n, None), torch.nn.Module)]
    if not names:
        raise ValueError(f"compile_pipeline: {type(pipe).__name__} has no denoiser among {DENOISERS}")
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is None or not callable(getattr(scheduler, "set_timesteps", None)):
        raise ValueError(f"compile_pipeline: {type(pipe).__name__} has no scheduler with set_timesteps")
    for n in names:
        _check_denoiser(n, getattr(pipe, n))
    kinds = {n: _kind_for(n, regions) for n in names}
    keys = {n: options_key(kinds[n][0], inner, options) for n in names}
    shared = {n: _shared_backend(n, getattr(pipe, n), keys[n], policy, kinds[n][0], inner, options) for n in names}
    backends = {n: shared[n] or backend_for(getattr(pipe, n), keys[n], policy, kinds[n][0], inner, options)
                for n in names}
    handle = CompiledPipeline(pipe, backends, type(pipe))
    try:
        for name, backend in backends.items():
            module = handle._modules[name] = getattr(pipe, name)
            if shared[name] is None:
                previous = vars(module).get("_compiled_call_impl")        # a user's own .compile()
                backend.compile_module(module, announce=kinds[name][1])
                HOLDERS.hold(module, handle, backend, previous)
            else:
                HOLDERS.hold(module, handle)
            handle._boundaries[name] = module._compiled_call_impl
            hold_cache_context(module, handle)
        handle._hold_scheduler(scheduler)
    except BaseException:
        handle.backends = {n: b for n, b in backends.items() if n in handle._modules and n in handle._boundaries}
        handle.remove()                         # what was installed before the failure comes off again
        raise
    pipe.__class__ = _wrapped_class(type(pipe))
    vars(pipe)["_taylorseer"] = handle
    return handle
