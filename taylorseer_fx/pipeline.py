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
import threading
from typing import Any

import torch

from .backend import TaylorSeerBackend, taylorseer_backend

__all__ = ["DENOISERS", "CompiledPipeline", "compile_pipeline"]

#: the pipeline attributes that hold denoisers, in the order they run
DENOISERS = ("transformer", "transformer_2")


class CompiledPipeline:
    """What :func:`compile_pipeline` did to one pipeline: ``backends`` (denoiser name -> backend),
    ``stats()``, ``reset()``, ``memory_bytes()``, ``remove()``."""

    def __init__(self, pipe, backends: dict[str, TaylorSeerBackend], original_class: type):
        self.pipe = pipe
        self.backends = backends
        self._original_class = original_class
        self._local = threading.local()       # the pipeline call in progress, per thread
        self._removed = False

    # ------------------------------------------------------------ one generation per call
    @contextlib.contextmanager
    def _generation(self):
        stack = contextlib.ExitStack()
        outer = getattr(self._local, "stack", None)
        self._local.stack = stack
        try:
            with stack:
                yield
        finally:
            self._local.stack = outer

    def _schedule_set(self, scheduler) -> None:
        """The pipeline has set its timesteps: (re)open every backend's session on them."""
        stack = getattr(self._local, "stack", None)
        if stack is None:
            return                             # set_timesteps outside a call of this pipeline
        timesteps = getattr(scheduler, "timesteps", None)
        if timesteps is None or len(timesteps) == 0:
            return
        stack.close()                          # a second set_timesteps in one call replaces the first
        for backend in self.backends.values():
            stack.enter_context(backend.session(schedule=timesteps))

    # ------------------------------------------------------------ api
    def stats(self) -> dict:
        """``{denoiser name: backend.stats(), "total": {"compute", "forecast", "steps", "calls",
        "uncached_calls"}}`` (see ``Recorder.stats``)."""
        out: dict[str, Any] = {name: be.stats() for name, be in self.backends.items()}
        out["total"] = {k: sum(s.get(k, 0) for s in out.values())
                        for k in ("compute", "forecast", "steps", "calls", "uncached_calls")}
        return out

    def reset(self) -> None:
        """Forget every backend's cached state and stats."""
        for be in self.backends.values():
            be.reset()

    def memory_bytes(self) -> int:
        """Bytes held in cached state by every backend."""
        return sum(be.memory_bytes() for be in self.backends.values())

    def remove(self) -> None:
        """Undo :func:`compile_pipeline`: the denoisers run uncompiled, the pipeline's class and its
        scheduler's ``set_timesteps`` are the original ones again."""
        if self._removed:
            return
        pipe = self.pipe
        for name in self.backends:
            module = getattr(pipe, name)
            module._compiled_call_impl = None
        pipe.__class__ = self._original_class
        vars(pipe.scheduler).pop("set_timesteps", None)
        vars(pipe).pop("_taylorseer", None)
        self.reset()
        self._removed = True


def _wrap_scheduler(handle: CompiledPipeline, scheduler) -> None:
    original = scheduler.set_timesteps          # the bound method of the class

    @functools.wraps(original)                  # pipelines inspect its signature (sigmas=, mu=)
    def set_timesteps(*args, **kwargs):
        out = original(*args, **kwargs)
        handle._schedule_set(scheduler)
        return out
    scheduler.set_timesteps = set_timesteps


def _wrapped_class(cls: type) -> type:
    def __call__(self, *args, **kwargs):
        handle = vars(self).get("_taylorseer")
        if handle is None:
            return cls.__call__(self, *args, **kwargs)
        with handle._generation():
            return cls.__call__(self, *args, **kwargs)
    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})


def compile_pipeline(pipe, policy=None, regions="stack", inner="inductor", **options) -> CompiledPipeline:
    """Compile every denoiser of a diffusers pipeline in place, each with its own
    :func:`~taylorseer_fx.backend.taylorseer_backend` (``policy``, ``regions``, ``inner`` and
    ``options`` as there), and make each pipeline call one generation (see the module docstring).

    Raises ValueError when ``pipe`` has no denoiser (``transformer``) or no scheduler, or was already
    compiled by this function (call ``.remove()`` on its handle first)."""
    if "_taylorseer" in getattr(pipe, "__dict__", {}):
        raise ValueError("compile_pipeline: this pipeline is compiled already; call .remove() on the "
                         "handle compile_pipeline returned first")
    names = [n for n in DENOISERS if isinstance(getattr(pipe, n, None), torch.nn.Module)]
    if not names:
        raise ValueError(f"compile_pipeline: {type(pipe).__name__} has no denoiser among {DENOISERS} "
                         "(UNet pipelines are not supported)")
    scheduler = getattr(pipe, "scheduler", None)
    if scheduler is None or not callable(getattr(scheduler, "set_timesteps", None)):
        raise ValueError(f"compile_pipeline: {type(pipe).__name__} has no scheduler with set_timesteps")
    backends = {n: taylorseer_backend(policy, regions=regions, inner=inner, **options) for n in names}
    handle = CompiledPipeline(pipe, backends, type(pipe))
    for name, backend in backends.items():
        getattr(pipe, name).compile(backend=backend)
    _wrap_scheduler(handle, scheduler)
    pipe.__class__ = _wrapped_class(type(pipe))
    vars(pipe)["_taylorseer"] = handle
    return handle
