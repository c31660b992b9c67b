"""Whose call is this: requests (explicit generations), the one in force, and what the caller told.

Knows nothing of FX, tensors or policies. A :class:`Request` is one denoising run as the code that
runs it knows it: every model call made while it is in force belongs to it, and the cached state it
makes (``runtime.py`` keeps one scope per request and backend) reaches no other request. The request
in force is found, at every model call, by :func:`active`:

1. **The running code's own** ``with request:`` (or ``with request.context(...)``): the innermost
   frame on the current call stack that entered a request. A generator that entered its request and
   is resumed on another thread (a worker pool advancing step-wise generators) finds it there again;
   a suspended or abandoned generator is not on the stack, so its request captures nothing.
2. **The context's** (``contextvars``): a request entered in another thread or asyncio task whose
   context was copied into this one (``asyncio.to_thread``, ``copy_context().run``, a task created
   inside ``with request:``). A value left behind in this very thread and task by a ``with`` that is
   not running any more (a suspended generator) is stale and ignored.
3. **None**: the runtime keys state by the asyncio task in force, else by the thread (``runtime.py``),
   and places calls by inference (``steps.py``).

**Told.** Inside ``with request.context(branch=..., step_index=..., sigma=...)`` the calls are placed
where the caller says (:class:`Told`); ``compile_pipeline`` tells from diffusers'
``transformer.cache_context(...)`` and the pipeline's scheduler. Each branch (and each stage of a
multi-evaluation step, Heun's second) keeps its own history; the branches of one model decide
together (one schedule: under CFG their forecast errors then cancel in cond - uncond).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import sys
import threading
import weakref
from dataclasses import dataclass

import torch

__all__ = ["Request", "SCHEDULE_SCALES", "Told", "active", "check_schedule", "check_values", "current_task",
           "nearest_index"]

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("taylorseer_fx_request", default=None)
_FRAMES: dict = {}            # id(frame) -> [(request, code object)], innermost last
_LOCK = threading.Lock()
_SKIP = {__file__, contextlib.__file__}


@dataclass(frozen=True)
class Told:
    """Where the caller says the model calls stand. ``branch``: a name ("cond", "uncond", ...): each
    branch keeps its own history, whatever the order or number of calls per step; the branches of one
    model share one schedule (they compute and forecast at the same steps).
    ``step_index``: 0-based index of the denoising step in the run (not a timestep). ``coordinate``:
    the step's position on any monotone scale (a sigma, a timestep, 1 - t; forecasts do not depend on
    its scale or offset); None: read from the model's timestep input. ``stage``: the evaluation within
    a step that evaluates the model more than once (Heun's second evaluation is stage 1); each stage
    keeps its own history."""
    branch: str | None = None
    step_index: int | None = None
    coordinate: float | None = None
    stage: int = 0
    #: ``locate(timestep value read from the model input) -> Told | None``: where a call stands when
    #: only its timestep says it (a scheduler before its first step); None: nothing to locate
    locate: object = None

    def __post_init__(self):
        if self.branch is not None and not isinstance(self.branch, str):
            raise ValueError(f"context: branch must be a str (e.g. 'cond', 'uncond'), got {self.branch!r}")
        s = self.step_index
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 0):
            raise ValueError(f"context: step_index must be an int >= 0 (the step's index, not its "
                             f"timestep), got {s!r}")
        c = self.coordinate
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c)):
            raise ValueError(f"context: sigma must be a finite number, got {c!r}")
        if isinstance(self.stage, bool) or not isinstance(self.stage, int) or self.stage < 0:
            raise ValueError(f"context: stage must be an int >= 0, got {self.stage!r}")

    @property
    def stream(self) -> tuple:
        """The key of the history these calls continue (branch, stage)."""
        return (self.branch, self.stage)


def check_values(values, what: str) -> list:
    """``values`` (1-D tensor or sequence of finite numbers) as a list of floats, or ValueError."""
    if torch.is_tensor(values):
        if values.ndim != 1:
            raise ValueError(f"session: {what} must be 1-D (one value per step), got shape {tuple(values.shape)}")
        ts = values.tolist()
    else:
        if isinstance(values, (str, bytes, bytearray)):
            raise ValueError(f"session: {what} must be a 1-D tensor or a sequence of numbers, got a "
                             f"{type(values).__name__} ({values!r:.40})")
        try:
            ts = list(values)
        except TypeError:
            raise ValueError(f"session: {what} must be a 1-D tensor or a sequence of numbers (one per "
                             f"step), got {type(values).__name__} {values!r:.40}") from None
        if any(isinstance(v, (list, tuple)) or (torch.is_tensor(v) and v.ndim > 0) for v in ts):
            raise ValueError(f"session: {what} must be 1-D (one value per step)")
    try:
        ts = [float(v) for v in ts]
    except (TypeError, ValueError):
        raise ValueError(f"session: {what} must be numbers, got {values!r}") from None
    if not ts:
        raise ValueError(f"session: {what} is empty")
    bad = [v for v in ts if not math.isfinite(v)]
    if bad:
        raise ValueError(f"session: {what} must be finite, got {bad[0]!r}")
    return ts


def check_schedule(timesteps, num_steps, streams, schedule) -> tuple:
    """Validated ``(timesteps, num_steps, streams, schedule)`` of a request (lists of floats)."""
    if not isinstance(streams, int) or isinstance(streams, bool) or streams < 1:
        raise ValueError(f"session: streams must be an int >= 1, got {streams!r}")
    if num_steps is not None and (isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1):
        raise ValueError(f"session: num_steps must be an int >= 1, got {num_steps!r}")
    ts = None if timesteps is None else check_values(timesteps, "timesteps")
    sched = None if schedule is None else check_values(schedule, "schedule")
    if ts is not None and sched is not None:
        raise ValueError("session: give timesteps (calls counted) or schedule (calls placed by their "
                         "timestep), not both")
    if num_steps is None and (ts or sched) is not None:
        num_steps = len(ts or sched)
    return ts, num_steps, streams, sched


#: the factors by which pipelines scale the scheduler's timesteps before the model (Flux, Qwen: t / 1000)
SCHEDULE_SCALES = (1.0, 1e-3, 1e3)


def nearest_index(schedule: list, value: float, start: int = 0, scales=SCHEDULE_SCALES) -> tuple | None:
    """``(index, scale)`` of the schedule value nearest to ``value`` under one of ``scales`` (the first
    index of a repeated value), searching from ``start``; None when even the nearest is farther than
    half the gap to its neighbours (the value is not in the schedule)."""
    best = None
    for s in scales:
        prev = math.inf
        for i in range(start, len(schedule)):
            err = abs(value - s * schedule[i])
            if err > prev and best is not None and best[2] == s:
                break                          # a monotone schedule: past the nearest value
            prev = err
            gaps = [abs(s * (schedule[j] - schedule[i])) for j in (i - 1, i + 1)
                    if 0 <= j < len(schedule) and schedule[j] != schedule[i]]
            tol = 0.5 * min(gaps) if gaps else 1e-6 * max(1.0, abs(value))
            if err <= tol and (best is None or err < best[0]):
                best = (err, i, s)
    return None if best is None else best[1:]


def current_task():
    """The asyncio task running in this thread, or None."""
    loop = asyncio._get_running_loop()
    return None if loop is None else asyncio.current_task(loop)


def _caller_frame():
    f = sys._getframe(2)
    while f is not None and f.f_code.co_filename in _SKIP:
        f = f.f_back                   # ExitStack.enter_context, our own context managers
    return f


class Request:
    """One generation (a request, an image, a run), explicit and portable.

    ``with request:`` puts it in force for the model calls made inside (every backend's); it can be
    entered again and again, from any thread or task (a generator resumed by another worker keeps its
    request). ``num_steps``: the run's step count, for the policy (wins over the backend's);
    ``timesteps``: the run's timesteps, to count calls sync-free (``streams`` calls per step);
    ``schedule``: the scheduler's timesteps, to place each call at the index of its timestep.
    :meth:`context` also tells the step and branch; :meth:`close` drops everything it cached (a
    closed request is never used again; ``close_on_exit`` closes it at the end of its first ``with``)."""

    def __init__(self, num_steps: int | None = None, *, timesteps=None, streams: int = 1, schedule=None,
                 close_on_exit: bool = False):
        self.timesteps, self.num_steps, self.streams, self.schedule = check_schedule(
            timesteps, num_steps, streams, schedule)
        self.close_on_exit = close_on_exit
        self.only = None               # a weak reference to the one runtime it applies to (backend.session)
        self.closed = False
        self.scopes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # runtime -> its scope
        self._told: list = []          # Told in force, innermost last
        self._entries: list = []       # (frame id, ContextVar value before) per open ``with``
        self._tellers: list = []       # callables () -> Told | None, consulted when nothing is told
        self.lock = threading.Lock()     # guards ``scopes``

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"num_steps={self.num_steps}"
        return f"Request({state})"

    # ------------------------------------------------------------ in force
    def __enter__(self) -> "Request":
        self._enter(_caller_frame())
        return self

    def __exit__(self, *exc) -> None:
        self._exit()
        if self.close_on_exit and not self._entries:
            self.close(audit=exc[0] is None)

    def _enter(self, frame) -> None:
        if self.closed:
            raise ValueError("Request: this request is closed (its cached state was dropped); open a new one")
        with _LOCK:
            if frame is not None:
                _FRAMES.setdefault(id(frame), []).append((self, frame.f_code))
            prev = _ACTIVE.get()
            _ACTIVE.set((self, threading.get_ident(), current_task()))
            self._entries.append((None if frame is None else id(frame), prev))

    def _exit(self) -> None:
        with _LOCK:
            if not self._entries:
                return
            fid, prev = self._entries.pop()
            entries = _FRAMES.get(fid)
            if entries:
                for i in range(len(entries) - 1, -1, -1):
                    if entries[i][0] is self:
                        del entries[i]
                        break
                if not entries:
                    del _FRAMES[fid]
            cur = _ACTIVE.get()
            if cur is not None and cur[0] is self:
                _ACTIVE.set(prev)      # this thread's context, where the ``with`` ends

    def context(self, branch: str | None = None, step_index: int | None = None, sigma: float | None = None,
                stage: int = 0):
        """``with request.context("cond", step_index=i, sigma=s):`` -- the request in force, and the
        calls inside placed where told (see :class:`Told`; ``sigma``: the step's coordinate on any
        monotone scale, None to read the model's timestep input)."""
        return _Context(self, Told(branch, step_index, None if sigma is None else float(sigma), stage))

    @contextlib.contextmanager
    def tell(self, told: Told):
        """Tell ``told`` for the calls inside, without putting the request in force (it must already
        be, e.g. from a pipeline call around it)."""
        self._told.append(told)
        try:
            yield
        finally:
            self._told.remove(told)

    def told(self) -> Told | None:
        """What is told for a call now: the innermost :meth:`context` / :meth:`tell`, completed by the
        tellers (``compile_pipeline``: the scheduler's step), or None."""
        told = self._told[-1] if self._told else None
        if told is not None and told.step_index is not None:
            return told
        for teller in self._tellers:
            t = teller(told)
            if t is not None:
                return t
        return told

    @property
    def tellers(self) -> list:
        """``teller(told_or_None) -> Told | None`` callables that complete what a call is told (the
        step, the coordinate) from code that knows it (``compile_pipeline``: the scheduler)."""
        return list(self._tellers)

    def replan(self, num_steps: int | None = None, schedule=None, tellers=()) -> None:
        """A new run inside this request (a pipeline set its scheduler's timesteps again): the cached
        state so far is dropped; ``num_steps``, ``schedule`` and ``tellers`` replace the old ones."""
        _, num_steps, _, schedule = check_schedule(None, num_steps, 1, schedule)
        self._close_scopes(audit=True)         # the run so far, audited under its own step count
        self.num_steps, self.schedule, self.timesteps = num_steps, schedule, None
        self._tellers = list(tellers)

    # ------------------------------------------------------------ end
    def close(self, audit: bool = True) -> None:
        """Drop every backend's cached state of this request; it cannot be entered again. ``audit``:
        each backend compares the forecasts made with its policy's plan and warns (``strict``: raises
        RuntimeError) when fewer than half happened; False after an exception."""
        self.closed = True
        runtime = self.only() if self.only is not None else None
        unreached = audit and runtime is not None and runtime not in self.scopes and self.num_steps is not None
        self._close_scopes(audit)
        if unreached:                        # a backend's session that none of its model calls reached
            runtime.never_reached(self.num_steps)

    def _close_scopes(self, audit: bool) -> None:
        with self.lock:
            scopes, self.scopes = list(self.scopes.values()), weakref.WeakKeyDictionary()
        error = None
        for scope in scopes:                 # every scope closes, even if an audit raises (strict)
            try:
                scope.close(audit)
            except RuntimeError as e:
                error = error or e
        if error is not None:
            raise error


class _Context:
    __slots__ = ("request", "told")

    def __init__(self, request: Request, told: Told):
        self.request, self.told = request, told

    def __enter__(self) -> Request:
        self.request._enter(_caller_frame())
        self.request._told.append(self.told)
        return self.request

    def __exit__(self, *exc) -> None:
        try:
            self.request._told.remove(self.told)
        finally:
            self.request._exit()


def _applies(req: Request, runtime) -> bool:
    return not req.closed and (req.only is None or req.only() is runtime)


def active(runtime=None) -> Request | None:
    """The request in force for a model call of ``runtime`` made now (rules in the module docstring;
    a request made for one runtime only, ``backend.session``, is passed over for the others), or None."""
    if _FRAMES:
        f = sys._getframe(1)
        while f is not None:
            entries = _FRAMES.get(id(f))
            if entries:
                for req, code in reversed(entries):
                    if code is f.f_code and _applies(req, runtime):
                        return req
            f = f.f_back
    cur = _ACTIVE.get()
    if cur is None:
        return None
    req, thread, task = cur
    if not _applies(req, runtime) or (thread == threading.get_ident() and task is current_task()):
        return None                    # left behind here by a ``with`` that is not running
    return req
