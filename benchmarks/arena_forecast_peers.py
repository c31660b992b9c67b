"""The arena's whole-step forecasting peers: hicache-pp, SmoothCache and Spectrum (our implementation).

Units: a **step** is one Euler step of the pipeline (index 0 = the noisiest); with true CFG it makes two
transformer calls, the **branches** (0 = cond, 1 = uncond, in FluxPipeline's order). A schedule is one
bool per step (True = compute). Every peer keeps one state per branch, so one branch never sees the
other's outputs.

* **hicache-pp** 1.3.0 (HiCache, arXiv:2508.16984; HiCache++ DMD / Prony): a state machine
  (``hicache_init`` / ``hicache_decide`` / ``hicache_update_derivatives`` / ``dmd_update_snapshots`` /
  ``hicache_forecast`` / ``dmd_forecast_state``) meant to be called from a denoise loop, no hooks.
  :class:`HiCache` calls it from an instance ``pipe.transformer.forward``: computed steps run the
  model, forecast steps return the package's forecast of the **transformer's output** (unit: blocks;
  a forecast step runs no block). Schedule: the first ``first_enhance`` steps, then every
  ``interval``-th step after the last of them (:func:`fixed_schedule` (steps, interval, first_enhance)).
* **SmoothCache** (dit-smoothcache 0.1.1, ``SmoothCacheHelper``): wraps the instance forwards of
  sub-modules of the block classes and returns a sub-module's cached output on the schedule's 0-steps.
  The stock helper keeps one cache per module and counts calls as steps, so under true CFG the cond
  call reuses the uncond output (rel L2 0.189 at interval 2) and it prints on every call:
  :class:`SmoothCache` is a branch-aware subclass without output, on the arena's units (dual blocks'
  ``attn``, ``ff``, ``ff_context``, single blocks' ``attn``, ``proj_mlp``; unit: attn+ff), fixed
  schedules (SmoothCache's calibrator is not in the wheel).
* **Spectrum** (arXiv:2603.01623, implemented here from the paper's description and the authors'
  public code; not their package): the transformer's output on the computed steps, one history per
  branch; a forecast step evaluates the ridge fit of Chebyshev polynomials T_0..T_d of the time
  coordinate over **all** computed steps so far (:func:`chebyshev_ridge_weights`), optionally mixed
  with the linear extrapolation of the last two (weight ``1 - mix``). Schedules: fixed
  (:func:`fixed_schedule`) or the paper's adaptive one (:func:`adaptive_schedule`: gaps growing by
  ``alpha`` per computed step). Differences from the authors' code: they forecast the last hidden
  state before ``norm_out`` / ``proj_out`` (those still run), we forecast the whole output (so a
  forecast step runs no module at all), and our ridge strength is relative to the Gram matrix's trace.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math

import torch

#: the sub-modules SmoothCache reuses: the arena's units (``arena_peers.UNITS``) by attribute name
SMOOTHCACHE_UNITS = ("attn", "ff", "ff_context", "proj_mlp")
SPECTRUM = "Spectrum (our implementation)"
TARGETS = (0.25, 0.35, 0.5)       # arena.TARGETS (arena imports this module)
PACKAGES = {"hicache-pp": "hicache_pp", "SmoothCache": "SmoothCache"}


def missing(family: str) -> str | None:
    """Why ``family`` cannot run here (its package is not installed), else None."""
    mod = PACKAGES.get(family)
    try:
        if mod is None or importlib.util.find_spec(mod) is not None:
            return None
    except (ImportError, ValueError):                       # sys.modules[mod] is None: blocked
        pass
    return f"{mod} not installed; pip install 'taylorseer-fx[peers]'"


# ------------------------------------------------------------------------------------------ schedules

def fixed_schedule(steps: int, interval: int, warmup: int = 1) -> list[bool]:
    """Compute the first ``warmup`` (>= 1) steps, then every ``interval``-th step after the last of them."""
    return [i < warmup or (i - warmup + 1) % interval == 0 for i in range(steps)]


def adaptive_schedule(steps: int, warmup: int, window: float, alpha: float) -> list[bool]:
    """Spectrum's schedule: the first ``warmup`` steps, then gaps of ``floor(window)`` steps, ``window``
    growing by ``alpha`` after each computed step (``alpha`` 0: :func:`fixed_schedule`)."""
    out, nxt = [False] * steps, warmup - 1 + math.floor(window)
    out[:warmup] = [True] * min(warmup, steps)
    while nxt < steps:
        out[nxt] = True
        window = round(window + alpha, 6)
        nxt += math.floor(window)
    return out


def adaptive_for(steps: int, target: float) -> tuple[int, float, float]:
    """(warm-up, window, alpha) of the :func:`adaptive_schedule` computing the most steps within
    ``target`` (warm-up 5 as the paper, 3 where 5 is too many; window 1-4, alpha 0.25-1)."""
    grid = [(w, ws, a) for w in (5, 3) for ws in (2, 1, 3, 4) for a in (0.75, 0.5, 0.25, 1.0)]
    ok = [g for g in grid if fraction(adaptive_schedule(steps, *g)) <= target + 1e-9]
    return max(ok, key=lambda g: fraction(adaptive_schedule(steps, *g)))


def fraction(schedule: list[bool]) -> float:
    return sum(schedule) / len(schedule)


def interval_for(steps: int, target: float, warmup: int) -> int | None:
    """The smallest interval >= 2 whose :func:`fixed_schedule` computes at most ``target`` of the steps."""
    for n in range(2, steps + 1):
        if fraction(fixed_schedule(steps, n, warmup)) <= target + 1e-9:
            return n
    return None


# ------------------------------------------------------------------------------------------ Chebyshev ridge

def chebyshev_basis(tau: torch.Tensor, degree: int) -> torch.Tensor:
    """[n] times in [-1, 1] -> [n, degree + 1]: T_0..T_degree (T_{k+1} = 2 tau T_k - T_{k-1})."""
    tau = tau.reshape(-1).to(torch.float64)
    cols = [torch.ones_like(tau), tau][:degree + 1]
    while len(cols) < degree + 1:
        cols.append(2 * tau * cols[-1] - cols[-2])
    return torch.stack(cols, 1)


def chebyshev_ridge_weights(taus, tau_star: float, degree: int, lam: float = 1e-3) -> torch.Tensor:
    """Weights w [n] with forecast(tau_star) = sum_i w_i h_i for the ridge fit of T_0..T_d to (taus, h).

    Coefficients C = (X^T X + lam' I)^-1 X^T H with X = :func:`chebyshev_basis` (taus, d) and
    lam' = ``lam`` * trace(X^T X) (relative ridge strength), so the forecast x*^T C is linear in the
    stored features: w = X (X^T X + lam' I)^-1 x*. The degree is capped at n - 1 (fewer points would
    leave the fit to the ridge alone): as ``lam`` -> 0 it reproduces a polynomial of degree <= d
    exactly and interpolates when n <= d + 1; the arena's ``lam`` 1e-3 shrinks a little (all of
    T_0..T_d are penalised, as in the authors' code; of 1e-2..1e-7 it was the best for degree 4). float64."""
    taus = torch.as_tensor(taus, dtype=torch.float64).reshape(-1)
    d = min(degree, taus.numel() - 1)
    x = chebyshev_basis(taus, d)
    g = x.T @ x
    g = g + lam * torch.trace(g) * torch.eye(d + 1, dtype=torch.float64)
    xs = chebyshev_basis(torch.tensor([float(tau_star)]), d)[0]
    return x @ torch.linalg.solve(g, xs)


# ------------------------------------------------------------------------------------------ adapters

class Steps:
    """The loop's position from the transformer calls: a step is a run of calls with the same timestep;
    ``branch`` is a call's position in its step. A timestep that rises, or a step past ``steps``,
    starts a new run (step 0)."""

    def __init__(self, steps: int):
        self.steps, self.step, self.branch, self.t = steps, -1, 0, None

    def observe(self, timestep) -> tuple[int, int]:
        t = float(torch.as_tensor(timestep).reshape(-1)[0])
        if t == self.t:
            self.branch += 1
        else:
            new_run = self.t is None or t > self.t or self.step + 1 >= self.steps
            self.step, self.branch, self.t = 0 if new_run else self.step + 1, 0, t
        return self.step, self.branch


def _instance_forward(module):
    return module.__dict__.get("forward", _MISSING)


def _put_forward(module, f) -> None:
    if f is _MISSING:
        module.__dict__.pop("forward", None)
    else:
        module.forward = f


_MISSING = object()


class OutputForecaster:
    """Replaces the instance ``pipe.transformer.forward``: per call, ``compute(state, step)`` decides;
    computed calls run the saved forward and ``record`` its output, the others return ``forecast``.
    ``disable`` puts back exactly the instance attribute that was there (usually none). Unit: blocks."""

    def __init__(self, steps: int):
        self.steps, self.states, self.tracker = steps, {}, Steps(steps)

    def enable(self, pipe) -> None:
        tr = self.transformer = pipe.transformer
        self.saved, inner = _instance_forward(tr), tr.forward

        def forward(*args, return_dict=True, **kw):
            if "timestep" not in kw:
                raise TypeError("the forecasting peers need the transformer's timestep as a keyword")
            step, branch = self.tracker.observe(kw["timestep"])
            if step == 0 and branch == 0:
                self.states = {}
            st = self.states.setdefault(branch, self.new_state())
            if self.compute(st, step):
                out = inner(*args, return_dict=False, **kw)[0]
                self.record(st, step, out.detach())
            else:
                out = self.forecast(st, step)
            if not return_dict:
                return (out,)
            from diffusers.models.modeling_outputs import Transformer2DModelOutput
            return Transformer2DModelOutput(sample=out)
        tr.forward = forward

    def disable(self, pipe) -> None:
        _put_forward(self.transformer, self.saved)
        self.states = {}


class HiCache(OutputForecaster):
    """hicache-pp's forecaster of the transformer's output; ``backend`` "dmd" (HiCache++: DMD / Prony
    on the last ``history`` outputs, Hermite until 4 uniformly spaced ones exist) or "hermite"."""

    def __init__(self, steps, interval, first_enhance=1, backend="dmd", max_order=1, sigma=0.5, history=5):
        import hicache_pp as hp
        super().__init__(steps)
        self.hp, self.backend = hp, backend
        self.kw = dict(num_steps=steps, interval=interval, first_enhance=first_enhance, max_order=max_order,
                       sigma=sigma, backend=backend, history=history)
        self.fc = hp.dmd_forecast_state if backend == "dmd" else hp.hicache_forecast

    def new_state(self):
        return self.hp.hicache_init(**self.kw)

    def compute(self, st, step):
        st["step"] = step
        return self.hp.hicache_decide(st) == "full"

    def record(self, st, step, v):
        self.hp.hicache_update_derivatives(st, v)
        if self.backend != "hermite":
            self.hp.dmd_update_snapshots(st, v, st["history"])

    def forecast(self, st, step):
        return self.fc(st)


class Spectrum(OutputForecaster):
    """Chebyshev ridge forecaster of the transformer's output over all computed steps of the run; time:
    the step index over [0, steps - 1] ("step", as the authors' code) or sigma over [0, 1] ("sigma"),
    mapped to [-1, 1]."""

    def __init__(self, steps, schedule, degree=4, lam=1e-3, mix=1.0, time="step"):
        super().__init__(steps)
        self.schedule, self.degree, self.lam, self.mix, self.time = schedule, degree, lam, mix, time

    def tau(self, step) -> float:
        return 2 * self.tracker.t - 1 if self.time == "sigma" else 2 * step / max(self.steps - 1, 1) - 1

    def new_state(self):
        return []

    def compute(self, st, step):
        return self.schedule[step] or not st

    def record(self, st, step, v):
        st.append((self.tau(step), step, v))

    def forecast(self, st, step):
        taus, _, hs = zip(*st)
        w = chebyshev_ridge_weights(taus, self.tau(step), self.degree, self.lam)
        out = sum(float(wi) * h for wi, h in zip(w, hs))
        if self.mix < 1:
            lin = hs[-1] if len(st) < 2 else hs[-1] + (hs[-1] - hs[-2]) * ((step - st[-1][1]) / (st[-1][1] - st[-2][1]))
            out = self.mix * out + (1 - self.mix) * lin
        return out


class SmoothCache:
    """dit-smoothcache's ``SmoothCacheHelper`` made branch-aware and quiet: its wrapped sub-modules
    (:data:`SMOOTHCACHE_UNITS` of the Flux block classes) keep one cache per (module, branch) and read the
    step from a forward pre-hook on the transformer. Unit: attn+ff."""

    def __init__(self, steps: int, schedule: list[bool]):
        self.steps, self.schedule, self.tracker = steps, [int(c) for c in schedule], Steps(steps)

    def enable(self, pipe) -> None:
        with contextlib.redirect_stdout(io.StringIO()):     # the package prints import warnings
            from SmoothCache import SmoothCacheHelper
        from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
        tracker = self.tracker

        class BranchHelper(SmoothCacheHelper):
            def create_wrapped_forward(self, full_name, original_forward):
                comp = full_name.rsplit(".", 1)[-1]

                def wrapped_forward(*args, **kwargs):
                    key = (full_name, tracker.branch)
                    if self.schedule[comp][tracker.step] == 0 and key in self.cache:
                        return self.cache[key]
                    out = self.cache[key] = original_forward(*args, **kwargs)
                    return out
                return wrapped_forward

        tr = self.transformer = pipe.transformer
        self.saved = {m: _instance_forward(m) for m in tr.modules()}

        def observe(module, args, kwargs):
            tracker.observe(kwargs["timestep"])
        self.hook = tr.register_forward_pre_hook(observe, with_kwargs=True)
        self.helper = BranchHelper(tr, [FluxTransformerBlock, FluxSingleTransformerBlock], list(SMOOTHCACHE_UNITS),
                                   {c: self.schedule for c in SMOOTHCACHE_UNITS})
        self.helper.enable()

    def disable(self, pipe) -> None:
        try:
            self.helper.disable()
        finally:
            self.hook.remove()
            for m, f in self.saved.items():                 # the helper leaves bound methods behind
                _put_forward(m, f)


# ------------------------------------------------------------------------------------------ settings

def _adapter(make):
    """(enable, disable) of a fresh ``make()`` adapter per run."""
    held = {}

    def enable(p):
        held["a"] = make()
        held["a"].enable(p)

    def disable(p):
        held.pop("a").disable(p)
    return enable, disable


def _grid(steps, targets, warmups, neighbours):
    """[(interval, warm-up)]: per target the smallest interval within it (and the next one)."""
    out = []
    for t in targets:
        for w in warmups:
            n = interval_for(steps, t, w)
            if n is not None:
                out += [(n, w)] + ([(n + 1, w)] if neighbours else [])
    return list(dict.fromkeys(out))


def hicache_settings(steps: int, quick: bool) -> list[tuple]:
    """``(method, setting, unit, enable, disable)``: DMD and Hermite, order 1, first_enhance 1 / 3, at
    the targets and one interval longer (quick: DMD at 0.25 / 0.5, Hermite at 0.25)."""
    out, quick_targets = [], {"dmd": (TARGETS[0], TARGETS[-1]), "hermite": (TARGETS[0],)}
    for backend, method in (("dmd", "HiCache++ DMD"), ("hermite", "HiCache Hermite")):
        targets = quick_targets[backend] if quick else TARGETS
        for n, w in _grid(steps, targets, (1,) if quick else (1, 3), not quick):
            out.append((method, f"interval {n}, first_enhance {w}, order 1", "blocks",
                        *_adapter(lambda n=n, w=w, b=backend: HiCache(steps, n, w, b))))
    return out


def smoothcache_settings(steps: int, quick: bool) -> list[tuple]:
    """Fixed intervals (step 0 computed), and some with the last step computed too; unit attn+ff."""
    def last(s):
        return s[:-1] + [True]
    out = [("SmoothCache (branch-aware)", f"interval {n}, fixed", "attn+ff",
            *_adapter(lambda n=n: SmoothCache(steps, fixed_schedule(steps, n, 1))))
           for n in ((2, 4) if quick else (2, 3, 4, 5, 6))]
    return out + [("SmoothCache (branch-aware)", f"interval {n}, fixed, last step computed", "attn+ff",
                   *_adapter(lambda n=n: SmoothCache(steps, last(fixed_schedule(steps, n, 1)))))
                  for n in (() if quick else (2, 3, 4, 5))]


def spectrum_settings(steps: int, quick: bool) -> list[tuple]:
    """Fixed schedules at the targets (degrees 2-4, warm-up 1 / 3; quick: degree 4, warm-up 1 at 0.25 /
    0.5), lambda 1e-3 x trace, step time, one with sigma time; per target the paper's adaptive schedule
    (:func:`adaptive_for`, degree 4), pure (mix 1) and half linear (mix 0.5, the authors' later advice)."""
    out = []
    for n, w in _grid(steps, (TARGETS[0], TARGETS[-1]) if quick else TARGETS, (1,) if quick else (1, 3), False):
        for d in (4,) if quick else (2, 3, 4):
            out.append(("Spectrum fixed", f"interval {n}, warm-up {w}, degree {d}, lambda 1e-3", "blocks",
                        *_adapter(lambda n=n, w=w, d=d: Spectrum(steps, fixed_schedule(steps, n, w), d))))
    if not quick:
        n = interval_for(steps, TARGETS[0], 1)
        out.append(("Spectrum fixed", f"interval {n}, warm-up 1, degree 4, lambda 1e-3, sigma time", "blocks",
                    *_adapter(lambda: Spectrum(steps, fixed_schedule(steps, n, 1), 4, time="sigma"))))
    for t in () if quick else TARGETS:
        w, ws, a = adaptive_for(steps, t)
        for mix in (1.0, 0.5):
            out.append(("Spectrum adaptive", f"window {ws}, alpha {a}, warm-up {w}, degree 4, lambda 1e-3, mix {mix}",
                        "blocks", *_adapter(lambda s=adaptive_schedule(steps, w, ws, a), mix=mix:
                                            Spectrum(steps, s, 4, mix=mix))))
    return out


SETTINGS = {"hicache-pp": hicache_settings, "SmoothCache": smoothcache_settings, SPECTRUM: spectrum_settings}
