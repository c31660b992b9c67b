"""The forecast forms beyond newton/taylor (taylorseer_fx/forecast/forms.py): each equals its definition
(tests/form_refs.py, float64) and is exact where it claims to be; selectable per policy, fixed and
auto, through the compile path."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import form_refs
from dit_plain import make_plain_dit, plain_dit_inputs
from taylorseer_fx import AutoPolicy, FixedPolicy, taylorseer_backend
from taylorseer_fx.forecast.forecaster import Forecaster
from taylorseer_fx.forecast.forms import FORMS, HERMITE_SCALE, coefficients
from taylorseer_fx.testing import strategies as S

_SETTINGS = settings(max_examples=50, deadline=None)


def monotone(n: int):
    """n coordinates with gaps in [0.25, 2] (non-uniform), increasing or decreasing."""
    return S.coordinates(n, max_gap=2.0, directions=("increasing", "decreasing"))


def _points(draw, n, shape=(3, 2)):
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]


def _fed(form, order, ts, ys):
    f = Forecaster(order, form, factor_dtype=torch.float64)
    for t, y in zip(ts, ys):
        f.update(t, y)
    return f


@_SETTINGS
@given(data=st.data())
def test_heun_is_the_bdf2_predictor_heun_corrector(data):
    """On any monotone spacing, the heun forecast beyond the newest compute is the BDF2 slope, Euler
    predictor, slope at t from the prediction, trapezoidal corrector (order 2; above, newton's terms)."""
    order = data.draw(st.integers(2, 3))
    n = data.draw(st.integers(order + 1, order + 3))
    ts, ys = data.draw(monotone(n)), _points(data.draw, n)
    f = _fed("heun", order, ts, ys)
    step = ts[-1] - ts[-2]
    for u in data.draw(st.lists(st.floats(0.1, 6.0), min_size=1, max_size=3)):
        t = ts[-1] + u * step
        want = form_refs.heun(ts, ys, t, order)
        torch.testing.assert_close(f.forecast(t), want, rtol=1e-9, atol=1e-9 * (1 + float(want.abs().max())))


@_SETTINGS
@given(data=st.data())
def test_heun_is_exact_for_lines_and_damps_the_quadratic(data):
    """Exact for polynomials of degree <= 1 on any spacing (any order); on a quadratic, its quadratic
    coefficient lies between 0 and newton's for every forward forecast, so its forecast lies between
    newton's order 1 and order 2 (which is exact there)."""
    order = data.draw(st.integers(1, 3))
    ts = data.draw(monotone(order + 2))
    a, b, c = (torch.tensor(data.draw(st.floats(-3, 3)), dtype=torch.float64) for _ in range(3))
    lines = [a + b * t for t in ts]
    f = _fed("heun", order, ts, [x.reshape(1) for x in lines])
    step = ts[-1] - ts[-2]
    for u in (0.5, 1.0, 3.0, 10.0):
        t = ts[-1] + u * step
        assert float(f.forecast(t)) == pytest.approx(float(a + b * t), rel=1e-9, abs=1e-9 * (1 + abs(t)))
        heun, newton = coefficients("heun", t, ts[::-1], 2), coefficients("newton", t, ts[::-1], 2)
        assert heun[:2] == newton[:2] and 0.0 <= heun[2] <= newton[2] * (1 + 1e-12)
    quad = [(a + b * t + c * t * t).reshape(1) for t in ts]
    lo, hi = _fed("newton", 1, ts, quad), _fed("newton", 2, ts, quad)
    mid = _fed("heun", 2, ts, quad)
    for u in (1.0, 4.0):
        t = ts[-1] + u * step
        x, y, z = float(lo.forecast(t)), float(mid.forecast(t)), float(hi.forecast(t))
        assert min(x, z) - 1e-9 * (1 + abs(z)) <= y <= max(x, z) + 1e-9 * (1 + abs(z))


@_SETTINGS
@given(data=st.data())
def test_hermite_is_the_scaled_hermite_series(data):
    """Step indices 0, 1, 2, ...: sum_i nabla^i y s^i H_i(s x) / i! with numpy's Hermite polynomials;
    equal to taylor at order 0, and a contraction of taylor's slope (2 s^2 < 1) above."""
    order = data.draw(st.integers(0, 3))
    n = data.draw(st.integers(order + 1, order + 3))
    ts, ys = [float(k) for k in range(n)], _points(data.draw, n)
    f = _fed("hermite", order, ts, ys)
    for x in data.draw(st.lists(st.floats(0.0, 8.0), min_size=1, max_size=3)):
        t = ts[-1] + x
        want = form_refs.hermite_series(ts, ys, t, min(order, n - 1), HERMITE_SCALE)
        torch.testing.assert_close(f.forecast(t), want, rtol=1e-9, atol=1e-9 * (1 + float(want.abs().max())))
        if order == 0:
            assert torch.equal(f.forecast(t), _fed("taylor", 0, ts, ys).forecast(t))
    c = coefficients("hermite", ts[-1] + 2.0, ts[::-1], 1)
    assert c[0] == 1.0 and c[1] == pytest.approx(2 * HERMITE_SCALE ** 2 * 2.0) and c[1] < 2.0


def test_coefficients_reject_unknown_forms():
    with pytest.raises(ValueError, match="form must be one of"):
        coefficients("chebyshev", 1.0, [0.0], 0)
    with pytest.raises(ValueError, match="form must be one of"):
        Forecaster(1, "chebyshev")
    assert set(FORMS) == {"newton", "taylor", "heun", "hermite"}


def test_policies_take_every_form_and_check_its_coordinate():
    for form in FORMS:
        assert FixedPolicy(interval=3, form=form).form == form
        assert AutoPolicy(threshold=0.1, form=form).forecaster_options()["form"] == form
    assert FixedPolicy(interval=3, form="heun").forecast.coordinate == "timestep"
    assert FixedPolicy(interval=3, form="hermite").forecast.coordinate == "step"
    with pytest.raises(ValueError, match="coordinate must be 'step' for form='hermite'"):
        FixedPolicy(interval=3, form="hermite", coordinate="timestep")
    with pytest.raises(ValueError, match="warmup must be >= order \\+ 1 = 3 for form='heun'"):
        FixedPolicy(interval=3, order=2, form="heun", warmup=1)


def _run(policy, model, x, y, ts):
    torch._dynamo.reset()
    backend = taylorseer_backend(policy=policy, regions="stack", inner="eager")
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        outs = [compiled(x, torch.full((x.shape[0],), t), y) for t in ts]
    stats = backend.stats()
    torch._dynamo.reset()
    return outs, stats


@pytest.mark.parametrize("form", ["heun", "hermite"])
@pytest.mark.parametrize("auto", [False, True])
def test_new_forms_run_through_the_compile_path(form, auto):
    """Fixed and auto policies take the new forms through the compile path: the computed steps equal
    the uncached model, the forecast steps differ from the same schedule's forecasts with the form it
    modifies (newton for heun, taylor for hermite) -- the field reaches the runtime -- and stay close."""
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    ts = [999.0 * (1 - i / 11) for i in range(12)]
    base = "newton" if form == "heun" else "taylor"

    def policy(f):
        return (AutoPolicy(threshold=0.3, form=f, max_forecast_run=3) if auto
                else FixedPolicy(interval=3, order=2, form=f))
    got, stats = _run(policy(form), model, x, y, ts)
    other, stats_other = _run(policy(base), model, x, y, ts)
    with torch.no_grad():
        want = [model(x, torch.full((x.shape[0],), t), y) for t in ts]
    assert stats["forecast"] > 0
    decisions = [c["decision"] for c in stats["trace"]]
    if not auto:
        assert decisions == [c["decision"] for c in stats_other["trace"]]
    for d, a, b, w in zip(decisions, got, other, want):
        if d == "compute":
            assert torch.equal(a, w)
        elif not auto:
            assert not torch.equal(a, b)
        assert float((a - w).norm() / w.norm()) < 0.5
