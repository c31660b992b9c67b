"""``compile_pipeline(pipe, ...)``: every denoiser of a diffusers pipeline through its own backend, and
every pipeline call one generation.

::

    handle = compile_pipeline(pipe, policy="openvino-lite")   # any preset: no num_steps needed
    image = pipe(prompt_embeds=..., num_inference_steps=28).images[0]
    handle.stats()["total"]; handle.reset(); handle.remove()   # remove(): the pipeline as it was

What it does, with the backend's public API only (``backend.py``):

* **Denoisers.** ``pipe.transformer`` and, where present, ``pipe.transformer_2`` (Wan 2.2) are compiled
  in place (``module.compile(backend=...)``: the pipeline keeps the same module objects), each with a
  backend of its own (:attr:`CompiledPipeline.backends`).
* **One generation per pipeline call.** The pipeline's class is swapped for a subclass whose
  ``__call__`` opens, for every backend, a ``session(schedule=scheduler.timesteps)`` as soon as the
  pipeline has set its scheduler's timesteps (``scheduler.set_timesteps`` is wrapped on the instance),
  and closes it when the call returns or raises. So the step count comes from the pipeline (every
  preset works, ``cooldown`` included, at any step count, call after call), each model call is placed
  at its timestep's index in the schedule (a second transformer joining mid-run, img2img's shortened
  schedule, per-token timesteps), and CFG calls are streams however the pipeline makes them. An
  exception leaves nothing behind: the session's exit ends the generation.

The same by hand, for a loop of your own or ``pipe.transformer.compile(backend=backend)`` users::

    with backend.session(schedule=pipe.scheduler.timesteps):   # after set_timesteps
        ...                                                     # the denoising loop
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from typing import Any

import torch

from .backend import TaylorSeerBackend, taylorseer_backend
from .request import Request, Told, active, check_values, nearest_index

__all__ = ["DENOISERS", "CompiledPipeline", "compile_pipeline"]

#: the pipeline attributes that hold denoisers, in the order they run
DENOISERS = ("transformer", "transformer_2", "unet")
#: denoisers cached at the model boundary whatever the graphs hold (``regions="model"``)
_BOUNDARY_ONLY = ("unet",)


class _SchedulerTeller:
    """Tells where a model call stands from the pipeline's scheduler: its own index ``k`` into its
    timesteps (``step_index``, else ``begin_index``; before a scheduler's first step without either,
    the index of the model's timestep value in the schedule, else 0). The step is ``k // scheduler.order``
    (Heun-type and KDPM2 schedulers evaluate the model twice per step: ``state_in_first_order`` says
    which stage), the coordinate the schedule's value at ``k`` (forecasts do not depend on its scale,
    so the model may receive t, t / 1000 or 1 - t / 1000)."""

    def __init__(self, scheduler, schedule: list):
        self.scheduler = scheduler
        self.schedule = schedule
        order = getattr(scheduler, "order", 1)
        self.order = order if isinstance(order, int) and order >= 1 else 1

    def __call__(self, told: Told | None) -> Told | None:
        branch = None if told is None else told.branch
        sch = self.scheduler
        stage = 0 if getattr(sch, "state_in_first_order", True) else 1
        k = getattr(sch, "step_index", None)
        if k is None:
            k = getattr(sch, "begin_index", None)
        if k is None:
            # before the scheduler's first step: the model's timestep in the schedule; a value not in
            # it (a model that receives 1 - t / 1000) is the first step (index 0): diffusers'
            # pipelines that start later (img2img) set the scheduler's begin_index
            return Told(branch, stage=stage, locate=lambda v: self.at(branch, self.nearest(v) or 0, stage))
        return self.at(branch, k, stage)

    def at(self, branch, k, stage: int) -> Told | None:
        """The told position of schedule index ``k``, or None when ``k`` is not in the schedule."""
        if not isinstance(k, int) or not 0 <= k < len(self.schedule):
            return None
        return Told(branch, k // self.order, self.schedule[k], stage)

    def nearest(self, value) -> int | None:
        """The schedule index of a model timestep ``value`` that is a schedule value exactly (to float32
        rounding) under a pipeline's scale (t, t / 1000), or None: a value merely near one (a model fed
        1 - t / 1000 can come close to a schedule value by chance) says nothing."""
        if value is None or not math.isfinite(value):
            return None
        found = nearest_index(self.schedule, value)
        if found is None:
            return None
        k, scale = found
        exact = abs(value - scale * self.schedule[k]) <= 1e-5 * max(abs(value), abs(scale * self.schedule[k]))
        return k if exact else None

    def from_context(self, branch: str, step_index) -> Told:
        """What diffusers' ``cache_context(branch, step_index=...)`` tells: the branch, and the step
        when the scheduler keeps no index of its own (its own index wins: it is what indexes its
        timesteps and sigmas)."""
        sch = self.scheduler
        if isinstance(step_index, int) and getattr(sch, "step_index", None) is None \
                and getattr(sch, "begin_index", None) is None:
            return self.at(branch, step_index, 0) or Told(branch)
        return Told(branch)


class CompiledPipeline:
    """What :func:`compile_pipeline` did to one pipeline: ``backends`` (denoiser name -> backend),
    ``kinds`` (the region kind each denoiser caches with), ``stats()``, ``reset()``, ``memory_bytes()``,
    ``remove()``."""

    def __init__(self, pipe, backends: dict[str, TaylorSeerBackend], original_class: type):
        self.pipe = pipe
        self.backends = backends
        self._boundaries: dict = {}    # denoiser name -> its ModelBoundary
        self._original_class = original_class
        self._open: weakref.WeakSet = weakref.WeakSet()     # the requests of pipeline calls in progress
        self._previous: dict = {}      # denoiser name -> its _compiled_call_impl before compile_pipeline
        self._removed = False

    # ------------------------------------------------------------ one generation per call
    def _call(self, call, *args, **kwargs):
        """One pipeline call as one :class:`~taylorseer_fx.request.Request`: every model call inside
        belongs to it (whatever thread, task or generator the pipeline runs in), and it is closed,
        its cached state dropped, when the call returns or raises."""
        scheduler = getattr(self.pipe, "scheduler", None)
        if scheduler is not None and "set_timesteps" not in vars(scheduler):
            _wrap_scheduler(self, scheduler)       # a scheduler replaced after compile_pipeline
        request = Request()
        self._open.add(request)
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

    def _schedule_set(self, scheduler) -> None:
        """The pipeline has set its timesteps: the call's request takes them (a second set_timesteps in
        one call replaces the first) and its steps are told from the scheduler."""
        request = active()
        if request is None or request not in self._open:
            return                             # set_timesteps outside a call of this pipeline
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is None or len(timesteps) == 0:
            return
        schedule = check_values(timesteps, "scheduler.timesteps")
        teller = _SchedulerTeller(scheduler, schedule)
        n = getattr(scheduler, "num_inference_steps", None)
        if not isinstance(n, int) or n < 1:
            n = -(-len(schedule) // teller.order)
        request.replan(num_steps=n, schedule=schedule, tellers=[teller])

    def _context(self, original, name, kwargs):
        """diffusers' ``transformer.cache_context(name, ...)``, and the branch (and, for a scheduler
        that keeps no index, ``step_index``) told to this pipeline call's request."""
        with original(name, **kwargs) as value:
            request = active()
            if request is None or request not in self._open:
                yield value
                return
            tellers = request.tellers
            told = tellers[0].from_context(name, kwargs.get("step_index")) if tellers else Told(name)
            with request.tell(told):
                yield value

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
        the denoisers' ``cache_context`` are the original ones again."""
        if self._removed:
            return
        pipe = self.pipe
        for name in self.backends:
            module = getattr(pipe, name)
            module._compiled_call_impl = self._previous.get(name)    # a user's own .compile() comes back
            vars(module).pop("cache_context", None)
            vars(module).pop("_taylorseer_handle", None)
        pipe.__class__ = self._original_class
        vars(pipe.scheduler).pop("set_timesteps", None)
        vars(pipe).pop("_taylorseer", None)
        self.reset()
        self._removed = True


#: per denoiser module: {arguments key: the backend compile_pipeline made for it}
_BACKENDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


#: backend options that apply at run time: a reused backend takes the new values (with the policy)
_RUN_OPTIONS = ("num_steps", "strict")


def _options_key(regions, inner, options):
    """A hashable key of the compile-time arguments (not the policy, ``num_steps`` or ``strict``: a
    backend takes new ones without recompiling), or None (an unhashable argument: no reuse)."""
    key = (regions, inner, tuple(sorted((k, v) for k, v in options.items() if k not in _RUN_OPTIONS)))
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _backend_for(module, key, policy, regions, inner, options) -> TaylorSeerBackend:
    """The backend an earlier handle made for ``module`` with the same compile-time arguments, given this
    call's policy and run-time options and reset, else a new one: the same backend object means the
    same dynamo cache entry for the module's forward, however many handles and policies come and go."""
    made = _BACKENDS.setdefault(module, {})
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


def _check_denoiser(name: str, module) -> None:
    if getattr(module, "_orig_mod", None) is not None:
        raise ValueError(f"compile_pipeline: pipe.{name} is already a torch.compile wrapper; pass the module "
                         f"itself (pipe.{name} = pipe.{name}._orig_mod) and compile_pipeline compiles it")
    owner = vars(module).get("_taylorseer_handle")
    handle = owner() if owner is not None else None
    if handle is not None and not handle._removed:
        raise ValueError(f"compile_pipeline: pipe.{name} is compiled by another live compile_pipeline handle "
                         "(a pipeline that shares it, e.g. through from_pipe); call .remove() on that handle "
                         "first, or run the pipeline it was compiled for")


def _wrap_scheduler(handle: CompiledPipeline, scheduler) -> None:
    original = scheduler.set_timesteps          # the bound method of the class

    @functools.wraps(original)                  # pipelines inspect its signature (sigmas=, mu=)
    def set_timesteps(*args, **kwargs):
        out = original(*args, **kwargs)
        handle._schedule_set(scheduler)
        return out
    scheduler.set_timesteps = set_timesteps


def _wrap_cache_context(handle: CompiledPipeline, module) -> None:
    original = getattr(module, "cache_context", None)
    if not callable(original):
        return                                  # no diffusers CacheMixin: steps come from the scheduler

    @functools.wraps(original)
    @contextlib.contextmanager
    def cache_context(name, **kwargs):
        yield from handle._context(original, name, kwargs)
    vars(module)["cache_context"] = cache_context


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
    :func:`~taylorseer_fx.backend.taylorseer_backend` (``policy``, ``regions``, ``inner`` and
    ``options`` as there), and make each pipeline call one generation (see the module docstring).

    ``regions``: None (default) is ``"stack"`` for transformers and ``"model"`` (the whole output,
    decided at the model boundary) for UNets; a transformer none of whose graphs holds a region of
    the kind (graph breaks inside every block) is cached at its boundary from its second call
    (``handle.kinds`` says which kind each denoiser got).

    A denoiser compiled by an earlier handle (now removed) with the same ``regions``, ``inner`` and
    compile options gets that handle's backend again, with this call's policy, ``num_steps`` and
    ``strict`` (its stats reset): dynamo keeps one cache entry per model and compile-time arguments
    however many handles and policies come and go.

    Raises ValueError when ``pipe`` has no denoiser (``transformer``) or no scheduler, was already
    compiled by this function (call ``.remove()`` on its handle first), when a denoiser is compiled by
    another live handle (a pipeline sharing it), or is a ``torch.compile`` wrapper (pass the module
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
    backends = {n: _backend_for(getattr(pipe, n), _options_key(kinds[n][0], inner, options), policy,
                                kinds[n][0], inner, options) for n in names}
    handle = CompiledPipeline(pipe, backends, type(pipe))
    for name, backend in backends.items():
        module = getattr(pipe, name)
        handle._previous[name] = vars(module).get("_compiled_call_impl")     # a user's own .compile()
        handle._boundaries[name] = backend.compile_module(module, announce=kinds[name][1])
        vars(module)["_taylorseer_handle"] = weakref.ref(handle)
        _wrap_cache_context(handle, module)
    _wrap_scheduler(handle, scheduler)
    pipe.__class__ = _wrapped_class(type(pipe))
    vars(pipe)["_taylorseer"] = handle
    return handle
