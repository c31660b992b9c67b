"""What ``compile_pipeline`` installs on a pipeline's shared objects, and who holds each of them.

A diffusers pipeline's components are shared objects: ``from_pipe`` makes a second pipeline around the
same transformer and scheduler, and two pipelines can be built around one transformer. So everything
installed on a component is **held** by the handles that use it and undone when the last one lets go:

* **Pipeline requests.** Each call of a compiled pipeline is one :class:`~taylorseer_fx.runtime.request.Request`,
  registered here with its pipeline (:func:`open_request`); :func:`pipeline_request` says whether the
  request in force is one, and of which pipeline.
* **The scheduler's ``set_timesteps``** is wrapped on the instance (one wrapper, whatever the number of
  handles): inside a pipeline request whose pipeline runs this scheduler, the request takes the schedule
  and is told its steps by a :class:`~taylorseer_fx.integrations.scheduler_teller.SchedulerTeller`. Outside one, a
  compiled denoiser's calls are placed by inference only, and the holders are told once (a
  ``from_pipe`` pipeline that was not compiled itself).
* **The denoiser's ``cache_context``** (diffusers' ``CacheMixin``) is wrapped on the instance: inside a
  pipeline request the branch (and a step the scheduler does not keep) is told.
* **Denoisers** (:class:`Holders`): the backend a denoiser was compiled with, what its
  ``_compiled_call_impl`` was before, and the handles holding it.

Knows nothing of backends' internals: it calls ``Request`` methods and the callbacks it is given.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from ..runtime.request import Request, Told, active, check_values
from .scheduler_teller import SchedulerTeller

__all__ = ["open_request", "pipeline_request", "hold_scheduler", "release_scheduler", "hold_cache_context",
           "release_cache_context", "Holders", "HOLDERS"]

_REQUESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()    # Request -> weakref to its pipeline


def open_request(pipe) -> Request:
    """A new request for one call of ``pipe`` (registered as a pipeline request)."""
    request = Request()
    _REQUESTS[request] = weakref.ref(pipe)
    return request


def pipeline_request(scheduler=None) -> Request | None:
    """The request in force when it is a pipeline call's (and, with ``scheduler``, that pipeline runs
    ``scheduler``), else None."""
    request = active()
    ref = _REQUESTS.get(request) if request is not None else None
    pipe = ref() if ref is not None else None
    if pipe is None:
        return None
    if scheduler is not None and getattr(pipe, "scheduler", None) is not scheduler:
        return None
    return request


# ------------------------------------------------------------------ the scheduler
@dataclass
class _Held:
    handles: weakref.WeakSet = field(default_factory=weakref.WeakSet)
    warned: bool = False


_SCHEDULERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()    # scheduler -> _Held
_CONTEXTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()      # denoiser -> _Held


def _schedule_set(scheduler, held: _Held) -> None:
    request = pipeline_request(scheduler)
    if request is None:
        if any(not h.removed for h in list(held.handles)) and not held.warned:
            held.warned = True
            warnings.warn("taylorseer: scheduler.set_timesteps was called outside a call of the pipeline "
                          "compile_pipeline compiled (a pipeline made with from_pipe, or a loop of your own): "
                          "its denoiser calls are placed by inference, with no step count (presets with a "
                          "cool-down need one). Call compile_pipeline on that pipeline too (it shares the "
                          "compiled denoisers), or use backend.session(schedule=...)", stacklevel=3)
        return
    timesteps = getattr(scheduler, "timesteps", None)
    if timesteps is None or len(timesteps) == 0:
        return
    schedule = check_values(timesteps, "scheduler.timesteps")
    teller = SchedulerTeller(scheduler, schedule)
    n = getattr(scheduler, "num_inference_steps", None)
    if not isinstance(n, int) or n < 1:
        n = -(-len(schedule) // teller.order)
    request.replan(num_steps=n, schedule=schedule, tellers=[teller])


def hold_scheduler(scheduler, handle) -> None:
    """``handle`` uses ``scheduler``: its ``set_timesteps`` tells the pipeline requests their schedule
    (wrapped once, on the instance; pipelines inspect its signature, so it keeps the original's)."""
    held = _SCHEDULERS.get(scheduler)
    if held is None or "set_timesteps" not in vars(scheduler):
        held = _SCHEDULERS[scheduler] = _Held()
        original = scheduler.set_timesteps                  # the bound method of the class

        @functools.wraps(original)
        def set_timesteps(*args, **kwargs):
            out = original(*args, **kwargs)
            _schedule_set(scheduler, held)
            return out
        scheduler.set_timesteps = set_timesteps
    held.handles.add(handle)


def _release(table: weakref.WeakKeyDictionary, obj, attr: str, handle) -> None:
    """``handle`` is done with ``obj``: the last live holder takes ``obj.<attr>``'s wrapper off."""
    held = table.get(obj)
    if held is None:
        return
    held.handles.discard(handle)
    if not any(not h.removed for h in list(held.handles)):
        vars(obj).pop(attr, None)
        table.pop(obj, None)


def release_scheduler(scheduler, handle) -> None:
    """``handle`` is done with ``scheduler`` (the last holder unwraps ``set_timesteps``)."""
    _release(_SCHEDULERS, scheduler, "set_timesteps", handle)


# ------------------------------------------------------------------ cache_context
def _context(original, name, kwargs):
    with original(name, **kwargs) as value:
        request = pipeline_request()
        if request is None:
            yield value
            return
        tellers = request.tellers
        told = tellers[0].from_context(name, kwargs.get("step_index")) if tellers else Told(name)
        with request.tell(told):
            yield value


def hold_cache_context(module, handle) -> None:
    """``handle`` uses ``module``: diffusers' ``module.cache_context(name, ...)`` tells a pipeline
    request the branch (wrapped once, on the instance; nothing to do without a ``CacheMixin``)."""
    original = getattr(type(module), "cache_context", None)
    if not callable(original):
        return
    held = _CONTEXTS.get(module)
    if held is None or "cache_context" not in vars(module):
        held = _CONTEXTS[module] = _Held()
        bound = original.__get__(module)

        @functools.wraps(bound)
        @contextlib.contextmanager
        def cache_context(name, **kwargs):
            yield from _context(bound, name, kwargs)
        vars(module)["cache_context"] = cache_context
    held.handles.add(handle)


def release_cache_context(module, handle) -> None:
    """``handle`` is done with ``module`` (the last holder unwraps ``cache_context``)."""
    _release(_CONTEXTS, module, "cache_context", handle)


# ------------------------------------------------------------------ denoisers
@dataclass
class _Denoiser:
    backend: Any
    previous: Callable | None         # module._compiled_call_impl before the first holder compiled it
    handles: weakref.WeakSet = field(default_factory=weakref.WeakSet)

    def live(self) -> list:
        return [h for h in list(self.handles) if not h.removed]


class Holders:
    """Per denoiser module: the backend it runs with, what was there before, and the live handles that
    hold it. The first holder compiles it; the last one to let go restores ``previous``."""

    def __init__(self):
        self._held: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def held(self, module) -> _Denoiser | None:
        """The record of ``module`` while a live handle holds it, else None."""
        d = self._held.get(module)
        return d if d is not None and d.live() else None

    def hold(self, module, handle, backend=None, previous=None) -> None:
        d = self._held.get(module)
        if d is None or not d.live():
            if d is not None:             # its handles were dropped without remove(): what was there first
                previous = d.previous
            d = self._held[module] = _Denoiser(backend, previous)
        d.handles.add(handle)

    def release(self, module, handle) -> bool:
        """``handle`` lets ``module`` go; True when it was the last live holder (restore ``previous``)."""
        d = self._held.get(module)
        if d is None:
            return False
        d.handles.discard(handle)
        return not d.live()

    def previous(self, module) -> Callable | None:
        d = self._held.get(module)
        return None if d is None else d.previous


HOLDERS = Holders()
