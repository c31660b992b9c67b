"""Coordinates a sampler really produces (issue 25, item 2): nodes far closer together than the run's
own spacing (KDPM2's two stages, 1.6e-5 to 3.7e-4 apart on a timestep spacing of ~35), and coordinates
near float32's denormal range. Divided differences over such nodes must not be used at full weight, and
tiny coordinates must not silently drop the forecast to degree 0."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from taylorseer_fx.forecast.coordinates import NEAR
from taylorseer_fx.forecast.forecaster import Forecaster

FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None)


def _absorb(f: Forecaster, t: float, y) -> None:
    """As the runtime absorbs a compute (``RegionState.absorb``): a coordinate the table cannot resolve
    restarts it from this point."""
    f.update(t, y, derivatives=not f.nodes or f.resolves(t))


def _poly(coeffs, t: float) -> torch.Tensor:
    return sum(c * t ** k for k, c in enumerate(coeffs)).to(torch.float32)


@FAST
@given(order=st.integers(1, 3), form=st.sampled_from(["newton", "heun"]), steps=st.integers(4, 8),
       spacing=st.floats(5.0, 60.0), near=st.floats(1e-7, 1e-4), seed=st.integers(0, 2**16))
def test_two_stage_coordinates_keep_the_forecast_of_the_polynomial(order, form, steps, spacing, near, seed):
    """Every step evaluated twice, the second time ``near * spacing`` after the first (a KDPM2-like
    schedule in a bare loop): the outputs lie on one polynomial, so the forecast must stay what it is
    with one call per step -- the merged table holds one node per step."""
    g = torch.Generator().manual_seed(seed)
    coeffs = [torch.randn(5, generator=g, dtype=torch.float64) / (10.0 ** k) for k in range(min(order, 2) + 1)]
    t0 = 1000.0
    ts = []
    for k in range(steps):
        t = t0 - k * spacing
        ts += [t, t - near * spacing]
    f = Forecaster(order, form)
    ref = Forecaster(order, form)
    for i, t in enumerate(ts):
        _absorb(f, t, _poly(coeffs, t))
        if i % 2 == 1:
            ref.update(t, _poly(coeffs, t))          # one call per step: what the forecast must match
    at = ts[-1] - spacing
    want = _poly(coeffs, at).double()
    got, base = f.forecast(at).double(), ref.forecast(at).double()
    scale = want.norm().item() + 1e-6
    assert (got - base).norm().item() <= 1e-3 * scale + 10 * (base - want).norm().item(), (got, base, want)
    assert all(abs(a - b) > NEAR * spacing for a, b in zip(f.nodes, f.nodes[1:]))


def test_kdpm2_stages_in_a_bare_loop_forecast_like_order_1():
    """The measured case: KDPM2AncestralDiscreteScheduler's timesteps (both stages), order 2 in the
    timestep coordinate, an output smooth in the timestep plus a stage-dependent part. Before, order 2
    returned finite garbage (relative error 3.8e4 newton, 1.7e4 heun; order 1: 0.15)."""
    diffusers = pytest.importorskip("diffusers")
    sch = diffusers.KDPM2AncestralDiscreteScheduler()
    sch.set_timesteps(20)
    ts = [float(t) for t in sch.timesteps]
    gaps = sorted(abs(a - b) for a, b in zip(ts, ts[1:]))
    assert gaps[0] < 1e-3 * gaps[len(gaps) // 2]                 # the stages nearly coincide
    y = lambda t, stage: torch.tensor([math.sin(t / 300.0), math.cos(t / 200.0), 0.05 * stage])  # noqa: E731
    errs = {}
    for order in (1, 2):
        for form in ("newton", "heun"):
            f = Forecaster(order, form)
            worst = 0.0
            for k, t in enumerate(ts[:-1]):
                _absorb(f, t, y(t, k % 2))
                if k >= 6:
                    nxt = ts[k + 1]
                    truth = y(nxt, (k + 1) % 2)
                    worst = max(worst, ((f.forecast(nxt) - truth).norm() / truth.norm()).item())
            errs[(order, form)] = worst
    assert max(errs.values()) < 0.5, errs
    assert errs[(2, "newton")] < 2 * errs[(1, "newton")] + 0.05, errs


@pytest.mark.parametrize("scale", [1e-39, 1e-30, 1e-12, 1.0, 1e12, 1e30])
@pytest.mark.parametrize("form", ["newton", "heun"])
def test_coordinates_of_any_scale_forecast_at_the_full_degree(scale, form):
    """The forecast is affine-invariant: coordinates near the denormal range (or huge) forecast a
    quadratic as they do at scale 1 -- not silently at degree 0."""
    ts = [1.0, 0.8, 0.55, 0.3]
    q = lambda t: torch.tensor([1.0 + 2.0 * t + 3.0 * t * t, -t * t])  # noqa: E731
    f, unit = Forecaster(2, form), Forecaster(2, form)
    for t in ts:
        f.update(t * scale, q(t))
        unit.update(t, q(t))
    got, want = f.forecast(0.1 * scale), unit.forecast(0.1)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), (got, want)
    assert len(f.nodes) == 3
    if form == "newton":
        assert torch.allclose(got, q(0.1), rtol=1e-4, atol=1e-5)


def test_uneven_computes_of_a_real_schedule_are_not_merged():
    """Warm-up computes one step apart, then a compute 64 steps later (1000-step DDPM with a long
    interval): genuine points, kept at full degree."""
    q = lambda t: torch.tensor([1.0 + 2e-3 * t + 3e-6 * t * t])  # noqa: E731
    f = Forecaster(2, "newton")
    for t in (999.0, 998.0, 997.0, 933.0):
        f.update(t, q(t))
    assert f.nodes == [933.0, 997.0, 998.0]
    assert torch.allclose(f.forecast(869.0), q(869.0), rtol=1e-5)
