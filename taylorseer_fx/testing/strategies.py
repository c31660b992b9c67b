"""Hypothesis strategies for caches: policies, step counts, schedules, CFG layouts and trajectories.

Public and used by this project's own property tests. Units: a *step* is a 0-based index into a
generation's steps; a *timestep* is the model's timestep value (``scheduler.timesteps``, 0..1000 for
the schedulers here); a *sigma* is the noise level (flow matching: the interpolation weight of the
noise, 1 = pure noise; Karras: the EDM sigma). Schedules are lists of Python floats, noisiest first.

Policies: :func:`fixed_policies`, :func:`mask_policies`, :func:`auto_policies`, :func:`budget_policies`,
:func:`presets`, :func:`policies` (any of them) and :func:`policies_with_kwargs` (with the keyword arguments each was
built from). Schedules: :func:`flow_matching_sigmas` (shift and dynamic shifting),
:func:`ddim_timesteps` (DDIM / DDPM spacings), :func:`karras_sigmas`, :func:`custom_sigmas`,
:func:`heun_timesteps` (every inner timestep twice), :func:`img2img` (a strength's tail of a
schedule) and :func:`schedules` (any, as a :class:`DrawnSchedule`). Layouts: :func:`cfg_layouts`.
Trajectories: :func:`coordinates` (any spacing), :func:`polynomial_trajectories`,
:func:`random_walks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from hypothesis import assume, strategies as st

from ..forecast.estimates import ESTIMATORS
from ..forecast.forms import FORMS
from ..policy.base import COORDINATES, MAX_ORDER, Forecast
from ..policy.auto import ACCUMULATE, AutoPolicy
from ..policy.budget import PACINGS
from ..policy.policies import FixedPolicy, MaskPolicy
from ..policy.presets import available_policies, load_policy

__all__ = [
    "CfgLayout", "DrawnSchedule", "PolynomialTrajectory", "auto_policies", "budget_policies", "cfg_layouts",
    "coordinates",
    "custom_sigmas", "ddim_timesteps", "fixed_policies", "flow_matching_sigmas", "forecasts",
    "heun_timesteps", "img2img", "karras_sigmas", "mask_policies", "policies", "policies_with_kwargs",
    "polynomial_trajectories", "presets", "random_walks", "schedules", "seeds", "step_counts",
]

#: seeds for torch generators
seeds = st.integers(0, 2**31 - 1)


def step_counts(min_steps: int = 1, max_steps: int = 60) -> st.SearchStrategy[int]:
    """Step counts (``num_inference_steps``) in ``[min_steps, max_steps]``; shrinks to the fewest."""
    return st.integers(min_steps, max_steps)


# ------------------------------------------------------------------------------------ policies
def forecasts(max_order: int = 3) -> st.SearchStrategy[Forecast]:
    """The *how* of a policy: every form, order ``0..max_order``, coordinate and order choice."""
    @st.composite
    def build(draw):
        order = draw(st.integers(0, max_order))
        select = draw(st.booleans())
        return Forecast(form=draw(st.sampled_from(FORMS)), order=order, coordinate=draw(st.sampled_from(COORDINATES)),
                        select_order=select, max_order=draw(st.integers(order, MAX_ORDER)) if select else order,
                        order_margin=draw(st.sampled_from([0.5, 1.0])))
    return build()


@st.composite
def fixed_policies(draw, max_interval: int = 8, max_order: int = 3) -> FixedPolicy:
    """Any :class:`FixedPolicy`: interval, phase, warm-up, cooldown, order, form (newton or taylor),
    ``max_forecast_run`` and ``compute_from``."""
    order = draw(st.integers(0, max_order))
    form = draw(st.sampled_from(["newton", "taylor"]))
    interval = draw(st.integers(1, max_interval))
    low = order + 1 if form == "newton" else 1
    warmup = draw(st.one_of(st.none(), st.integers(low, low + 6)))
    return FixedPolicy(
        interval=interval, phase=draw(st.integers(0, interval - 1)), warmup=warmup,
        cooldown=draw(st.integers(0, 4)), order=order, form=form,
        max_forecast_run=draw(st.one_of(st.none(), st.integers(1, 6))),
        compute_from=draw(st.one_of(st.none(), st.integers(0, 40))),
    )


@st.composite
def mask_policies(draw, max_steps: int = 30) -> MaskPolicy:
    """A :class:`MaskPolicy` computing a lead of 1..5 steps and up to 6 later steps below ``max_steps``."""
    order = draw(st.integers(0, 2))
    form = draw(st.sampled_from(["newton", "taylor"]))
    lead = draw(st.integers(order + 1 if form == "newton" else 1, 5))
    later = draw(st.sets(st.integers(lead + 1, max(lead + 1, max_steps - 1)), max_size=6))
    return MaskPolicy(list(range(lead)) + sorted(later), order=order, form=form)


@st.composite
def auto_policies(draw, max_order: int = 3) -> AutoPolicy:
    """Any :class:`AutoPolicy`: threshold in [1e-4, 1], order, form, warm-up, cooldown, forecast-run
    bounds, estimator, accumulate rule and ``min_steps`` (0, 4, the default 8 or 12)."""
    order = draw(st.integers(0, max_order))
    form = draw(st.sampled_from(["taylor", "newton"]))
    warmup = draw(st.integers(order + 1, order + 4))
    max_run = draw(st.one_of(st.none(), st.integers(1, 6)))
    min_run = draw(st.integers(0, max_run if max_run is not None else 3))
    return AutoPolicy(threshold=draw(st.floats(1e-4, 1.0)), order=order, form=form, warmup=warmup,
                      cooldown=draw(st.integers(0, 4)), max_forecast_run=max_run, min_forecast_run=min_run,
                      estimator=draw(st.sampled_from(ESTIMATORS)),
                      accumulate=draw(st.sampled_from([False, True, *ACCUMULATE])),
                      min_steps=draw(st.sampled_from([0, 4, 8, 12])))


@st.composite
def budget_policies(draw, max_order: int = 2) -> AutoPolicy:
    """An :class:`AutoPolicy` with a budget: a fraction in [0.05, 1] or a speed-up ``"<k>x"`` (k in 1..6),
    with any warm-up, cooldown, max_forecast_run, min_forecast_run, accumulate rule, starting
    threshold, ``min_steps`` (0, 4, the default 8 or 12), ``final_compute`` (None, True, False) and
    ``pacing`` (``"even"``, ``"estimate"``)."""
    order = draw(st.integers(0, max_order))
    budget = draw(st.one_of(st.floats(0.05, 1.0), st.integers(1, 6).map(lambda k: f"{k}x")))
    max_run = draw(st.one_of(st.none(), st.integers(1, 8)))
    return AutoPolicy(budget=budget, threshold=draw(st.one_of(st.none(), st.floats(1e-4, 1.0))), order=order,
                      form=draw(st.sampled_from(["heun", "newton", "taylor"])),
                      warmup=draw(st.integers(1, order + 4)), cooldown=draw(st.integers(0, 4)),
                      max_forecast_run=max_run, min_forecast_run=draw(st.integers(0, max_run if max_run else 3)),
                      accumulate=draw(st.sampled_from(ACCUMULATE)), min_steps=draw(st.sampled_from([0, 4, 8, 12])),
                      final_compute=draw(st.sampled_from([None, True, False])),
                      pacing=draw(st.sampled_from(PACINGS)))


def presets() -> st.SearchStrategy:
    """Every shipped preset (``policies/*.toml``), loaded."""
    return st.sampled_from(sorted(available_policies())).map(load_policy)


_HOW = st.fixed_dictionaries({}, optional={
    "order": st.integers(0, 3), "form": st.sampled_from(["newton", "taylor"]),
    "coordinate": st.sampled_from(["step", "timestep"]), "select_order": st.booleans(),
    "max_order": st.integers(0, 4), "order_margin": st.sampled_from([0.5, 1.0])})
_WHEN = st.fixed_dictionaries({}, optional={
    "warmup": st.integers(1, 5), "cooldown": st.integers(0, 3), "max_forecast_run": st.integers(1, 4),
    "num_steps": st.integers(8, 30), "derivatives_from": st.integers(0, 3)})


def _build(cls, kw):
    try:
        return cls(**kw) if cls is not MaskPolicy else MaskPolicy(kw.pop("compute_steps"), **kw)
    except ValueError:
        return None


@st.composite
def policies_with_kwargs(draw) -> tuple:
    """``(policy, the keyword arguments it was built from)`` for a Fixed, Mask or Auto policy with any
    valid mix of the common fields (invalid mixes are rejected by the constructor and not drawn)."""
    kind = draw(st.sampled_from([FixedPolicy, MaskPolicy, AutoPolicy]))
    kw = {**draw(_HOW), **draw(_WHEN)}
    if kind is FixedPolicy:
        kw["interval"] = draw(st.integers(1, 6))
        kw["phase"] = draw(st.integers(0, kw["interval"] - 1))
        if draw(st.booleans()):
            kw["compute_from"] = draw(st.integers(0, 20))
    elif kind is AutoPolicy:
        kw["threshold"] = draw(st.sampled_from([0.01, 0.1, 1]))
        kw.update(draw(st.fixed_dictionaries({}, optional={
            "estimator": st.sampled_from(["pair", "remainder"]), "min_forecast_run": st.integers(0, 2),
            "accumulate": st.booleans(), "per_region": st.booleans()})))
    else:
        kw.pop("num_steps", None)
        lead = draw(st.integers(1, 5))
        kw["compute_steps"] = list(range(lead)) + sorted(draw(st.sets(st.integers(lead + 1, 20), max_size=4)))
    p = _build(kind, dict(kw))
    assume(p is not None)
    return p, kw


def policies() -> st.SearchStrategy:
    """Any policy: drawn fixed, mask and auto policies, and every shipped preset."""
    return st.one_of(fixed_policies(), mask_policies(), auto_policies(), budget_policies(), presets(),
                     policies_with_kwargs().map(lambda pk: pk[0]))


# ----------------------------------------------------------------------------------- schedules
@dataclass(frozen=True)
class DrawnSchedule:
    """One generation's schedule. ``timesteps``: the model's timestep per denoiser call, noisiest
    first (model units; a Heun schedule repeats each inner timestep); ``sigmas``: the noise level per
    entry where the family has one, else None; ``num_steps``: the steps this run takes (what a policy
    is started with); ``first_step``: the index of its first step in the full schedule (an img2img
    strength below 1 starts late); ``kind`` and ``params``: how it was drawn."""

    kind: str
    timesteps: tuple
    sigmas: tuple | None
    num_steps: int
    first_step: int = 0
    params: dict = field(default_factory=dict, compare=False)


def _flow_sigmas(n: int, shift: float | None, mu: float | None) -> list:
    base = [1.0 - k * (1.0 - 1.0 / n) / max(n - 1, 1) for k in range(n)]      # linspace(1, 1/n, n)
    if mu is not None:                                                         # dynamic shifting (FLUX)
        return [math.exp(mu) / (math.exp(mu) + (1.0 / s - 1.0)) for s in base]
    if shift is not None:
        return [shift * s / (1.0 + (shift - 1.0) * s) for s in base]
    return base


@st.composite
def flow_matching_sigmas(draw, min_steps: int = 1, max_steps: int = 60) -> DrawnSchedule:
    """FlowMatchEulerDiscreteScheduler's: ``linspace(1, 1/N, N)`` with a static shift (SD3: 3.0) or
    FLUX's dynamic shifting (``mu`` in [0.5, 1.15], from the image's sequence length), or none;
    timesteps = sigma * 1000."""
    n = draw(step_counts(min_steps, max_steps))
    how = draw(st.sampled_from(["none", "shift", "dynamic"]))
    shift = draw(st.floats(1.0, 6.0)) if how == "shift" else None
    mu = draw(st.floats(0.5, 1.15)) if how == "dynamic" else None
    sig = _flow_sigmas(n, shift, mu)
    return DrawnSchedule("flow-matching", tuple(s * 1000.0 for s in sig), tuple(sig), n,
                         params={"shift": shift, "mu": mu})


@st.composite
def ddim_timesteps(draw, min_steps: int = 1, max_steps: int = 60, train_steps: int = 1000) -> DrawnSchedule:
    """DDIM / DDPM integer timesteps with ``timestep_spacing`` "leading" (+ steps_offset 1),
    "trailing" or "linspace" over ``train_steps`` training steps."""
    n = draw(step_counts(min_steps, min(max_steps, train_steps)))
    spacing = draw(st.sampled_from(["leading", "trailing", "linspace"]))
    if spacing == "leading":
        ratio = train_steps // n
        ts = [k * ratio + 1 for k in range(n)][::-1]
    elif spacing == "trailing":
        ratio = train_steps / n
        ts = [round(train_steps - k * ratio) - 1 for k in range(n)]
    else:
        ts = [round(k * (train_steps - 1) / max(n - 1, 1)) for k in range(n)][::-1]
    assume(len(set(ts)) == n)
    return DrawnSchedule("ddim", tuple(float(t) for t in ts), None, n, params={"spacing": spacing})


@st.composite
def karras_sigmas(draw, min_steps: int = 2, max_steps: int = 60) -> DrawnSchedule:
    """Karras et al.'s sigmas (rho = 7) from sigma_max in [14.6, 80] to sigma_min in [0.002, 0.03];
    the timestep is EDM's ``0.25 * log(sigma)`` scaled by 1000."""
    n = draw(step_counts(max(min_steps, 2), max_steps))
    smax, smin, rho = draw(st.floats(14.6, 80.0)), draw(st.floats(0.002, 0.03)), 7.0
    sig = [(smax ** (1 / rho) + k / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho for k in range(n)]
    return DrawnSchedule("karras", tuple(250.0 * math.log(s) for s in sig), tuple(sig), n,
                         params={"sigma_max": smax, "sigma_min": smin})


@st.composite
def custom_sigmas(draw, min_steps: int = 1, max_steps: int = 60) -> DrawnSchedule:
    """A user's own strictly decreasing sigmas in (0, 1] (``pipe(sigmas=[...])``), any spacing."""
    n = draw(step_counts(min_steps, max_steps))
    gaps = draw(st.lists(st.floats(0.05, 1.0), min_size=n, max_size=n))
    total = sum(gaps)
    sig, level = [], 1.0
    for g in gaps:
        sig.append(level)
        level -= g / total * 0.999
    return DrawnSchedule("custom", tuple(s * 1000.0 for s in sig), tuple(sig), n)


@st.composite
def heun_timesteps(draw, min_steps: int = 1, max_steps: int = 40) -> DrawnSchedule:
    """A second-order (Heun, DPM2) schedule: every timestep after the first twice, ``2N - 1`` model
    calls for N steps, as ``HeunDiscreteScheduler.timesteps``."""
    inner = draw(st.one_of(flow_matching_sigmas(min_steps, max_steps), ddim_timesteps(min_steps, max_steps)))
    ts = [inner.timesteps[0]] + [t for t in inner.timesteps[1:] for _ in range(2)]
    return DrawnSchedule("heun", tuple(ts), None, len(ts), params={"inner": inner.kind})


@st.composite
def img2img(draw, base: st.SearchStrategy | None = None) -> DrawnSchedule:
    """An img2img run at ``strength`` in (0, 1]: the last ``int(N * strength)`` steps of a schedule
    (diffusers' Stable Diffusion ``get_timesteps``; Flux's rounds ``N - N * strength`` down instead);
    ``first_step`` says where it starts, ``num_steps`` what it runs."""
    full = draw(base if base is not None else st.one_of(flow_matching_sigmas(2), ddim_timesteps(2)))
    strength = draw(st.floats(0.05, 1.0))
    start = max(full.num_steps - min(int(full.num_steps * strength), full.num_steps), 0)
    assume(start < full.num_steps)
    sig = None if full.sigmas is None else full.sigmas[start:]
    return DrawnSchedule("img2img", full.timesteps[start:], sig, full.num_steps - start, start,
                         params={"strength": strength, "inner": full.kind, "nominal_steps": full.num_steps})


def schedules(min_steps: int = 1, max_steps: int = 60) -> st.SearchStrategy[DrawnSchedule]:
    """Any of the schedules above."""
    return st.one_of(flow_matching_sigmas(min_steps, max_steps), ddim_timesteps(min_steps, max_steps),
                     karras_sigmas(max(min_steps, 2), max_steps), custom_sigmas(min_steps, max_steps),
                     heun_timesteps(min_steps, min(max_steps, 40)),
                     img2img(flow_matching_sigmas(max(min_steps, 2), max_steps)))


# ------------------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class CfgLayout:
    """How one step's denoiser calls carry classifier-free guidance. ``kind``: ``"none"`` (one call),
    ``"batched"`` (one call of ``2 * batch``: uncond and cond concatenated), ``"split"`` (two calls,
    cond then uncond), ``"truncated"`` (CFG only for steps ``< cfg_steps``, batched or split as
    ``split`` says; then one call of ``batch``)."""

    kind: str
    batch: int
    split: bool = False
    cfg_steps: int | None = None

    def calls(self, step: int) -> list:
        """``[(branch, batch size)]`` of the denoiser calls at ``step`` (0-based)."""
        guided = self.kind in ("batched", "split") or (self.kind == "truncated" and step < self.cfg_steps)
        if not guided:
            return [("cond", self.batch)]
        split = self.kind == "split" or (self.kind == "truncated" and self.split)
        return [("cond", self.batch), ("uncond", self.batch)] if split else [("cfg", 2 * self.batch)]


@st.composite
def cfg_layouts(draw, max_batch: int = 3, max_cfg_steps: int = 30) -> CfgLayout:
    """Any :class:`CfgLayout` with a batch of 1..``max_batch``."""
    kind = draw(st.sampled_from(["none", "batched", "split", "truncated"]))
    batch = draw(st.integers(1, max_batch))
    if kind != "truncated":
        return CfgLayout(kind, batch, split=kind == "split")
    return CfgLayout(kind, batch, split=draw(st.booleans()), cfg_steps=draw(st.integers(0, max_cfg_steps)))


# -------------------------------------------------------------------------------- trajectories
@st.composite
def coordinates(draw, n: int, min_gap: float = 0.25, max_gap: float = 1.5,
                directions: Sequence[str] = ("increasing", "decreasing", "shuffled")) -> list:
    """``n`` distinct coordinates with gaps in ``[min_gap, max_gap]`` (non-uniform), starting in
    [-3, 3], in one of ``directions``: increasing, decreasing or shuffled."""
    ts = [draw(st.floats(-3.0, 3.0))]
    for g in draw(st.lists(st.floats(min_gap, max_gap), min_size=n - 1, max_size=n - 1)):
        ts.append(ts[-1] + g)
    direction = draw(st.sampled_from(list(directions)))
    if direction == "decreasing":
        return ts[::-1]
    if direction == "shuffled":
        return draw(st.permutations(ts))
    return ts


@dataclass(frozen=True)
class PolynomialTrajectory:
    """A polynomial ``sum_k coefficients[k] * t**k`` (tensor coefficients) sampled at ``ts``."""

    ts: tuple
    coefficients: tuple

    @property
    def degree(self) -> int:
        return len(self.coefficients) - 1

    def value(self, t: float) -> torch.Tensor:
        out = torch.zeros_like(self.coefficients[0])
        for c in reversed(self.coefficients):
            out = out * t + c
        return out

    @property
    def values(self) -> list:
        return [self.value(t) for t in self.ts]


@st.composite
def polynomial_trajectories(draw, degree: int | st.SearchStrategy = st.integers(0, 3), n: int | None = None,
                            spacing: Callable | None = None, shape=(3, 2),
                            dtype: torch.dtype = torch.float64) -> PolynomialTrajectory:
    """A random polynomial of ``degree`` (an int or a strategy) with standard normal tensor
    coefficients of ``shape``, sampled at ``n`` coordinates (default ``degree + 1 .. degree + 3``) drawn
    by ``spacing(n)`` (default :func:`coordinates`)."""
    d = degree if isinstance(degree, int) else draw(degree)
    count = n if n is not None else draw(st.integers(d + 1, d + 3))
    ts = draw((spacing or coordinates)(count))
    g = torch.Generator().manual_seed(draw(seeds))
    coeffs = tuple(torch.randn(shape, generator=g, dtype=torch.float64).to(dtype) for _ in range(d + 1))
    return PolynomialTrajectory(tuple(float(t) for t in ts), coeffs)


@st.composite
def random_walks(draw, n_min: int = 4, n_max: int = 30, shape=(2, 3)) -> list:
    """A trajectory of ``n`` tensors ``base * level_k + 2`` whose level takes random steps in
    [-0.3, 0.3]: smooth stretches, kinks and jumps."""
    n = draw(st.integers(n_min, n_max))
    steps = draw(st.lists(st.floats(-0.3, 0.3, allow_nan=False, allow_infinity=False), min_size=n, max_size=n))
    base = torch.randn(*shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 2 ** 16))))
    out, level = [], 1.0
    for d in steps:
        level += d
        out.append(base * level + 2.0)
    return out
