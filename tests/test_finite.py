"""Finite in, finite out: switched-off terms contribute exactly nothing, a non-finite back-test is never
the chosen order, forecasts of fp16/bf16 outputs stay in the dtype's finite range, and a non-finite
estimate makes the auto policy compute."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from taylorseer_fx.forecast.forecaster import Forecaster
from taylorseer_fx.forecast.forms import DIVIDED, FORMS


def _seq(values):
    return [torch.full((3, 4), v) for v in values]


def test_an_order_that_holds_a_nan_is_never_chosen_and_contributes_nothing():
    f = Forecaster(2, "newton", select=1)
    ys = _seq([1.0, math.nan, 3.0, 4.0])
    for t, y in enumerate(ys):
        f.update(float(t), y)
    out = f.forecast(4.0)
    assert torch.isfinite(out).all(), "a NaN factor leaked into the forecast"
    # only the finite computes since the NaN are used: the line through (2, 3) and (3, 4)
    torch.testing.assert_close(out, torch.full((3, 4), 5.0))


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.lists(st.floats(-10, 10), min_size=4, max_size=7), st.integers(0, 6))
def test_a_nan_point_reaches_a_forecast_only_through_a_term_it_is_in(values, bad):
    """Newton factor D_j depends on the newest j + 1 points only: with a NaN as the (j+1)-th newest
    point, a forecast of chosen degree < j is finite (the terms above it add exactly nothing)."""
    bad = bad % len(values)
    values = list(values)
    values[bad] = math.nan
    f = Forecaster(2, "newton", select=1)
    for t, v in enumerate(values):
        f.update(float(t), torch.full((5,), v))
    age = len(values) - 1 - bad                     # 0: the newest point
    chosen = f.chosen_order()
    degree = 1 if chosen is None else int(chosen)
    out = f.forecast(float(len(values)))
    if age > degree:
        assert torch.isfinite(out).all(), (values, degree)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_forecasts_stay_in_the_dtype_finite_range(dtype):
    lim = torch.finfo(dtype).max
    f = Forecaster(1, "newton")
    f.update(0.0, torch.full((4,), 0.9 * lim, dtype=dtype))
    f.update(1.0, torch.full((4,), 0.99 * lim, dtype=dtype))
    out = f.forecast(3.0)                                   # the line goes past the largest value
    assert out.dtype == dtype and torch.isfinite(out).all() and float(out.max()) == float(lim)
    g = Forecaster(1, "newton")
    g.update(0.0, torch.full((4,), -0.9 * lim, dtype=dtype))
    g.update(1.0, torch.full((4,), -0.99 * lim, dtype=dtype))
    assert float(g.forecast(3.0).min()) == -float(lim)


def test_float32_forecasts_are_not_clamped():
    f = Forecaster(1, "newton")
    f.update(0.0, torch.full((2,), 1e38))
    f.update(1.0, torch.full((2,), 3e38))
    assert torch.isinf(f.forecast(3.0)).all()              # float32 is the model's own range: no clamp


def test_a_nan_estimate_makes_the_auto_policy_compute():
    from taylorseer_fx import AutoPolicy
    from taylorseer_fx.runtime.region_state import Generation
    policy = AutoPolicy(threshold=10.0)
    gen = Generation(policy, lambda n, first: [policy.start(None, first)], torch.float32)
    st_ = gen.state(0, 0, 0)
    for t, v in enumerate([1.0, 2.0, math.nan]):
        st_.absorb((torch.full((3,), v),), (), {}, float(t), True)
    assert gen.estimates(0, 1, 3.0) == [math.inf]


def test_the_trace_is_bounded_and_holds_no_tensor_after_stats():
    from taylorseer_fx.runtime.trace import Recorder
    rec = Recorder()
    rec.max_trace = 50
    rec.clear()
    for g in range(300):
        rec.record({"graph": 0, "generation": g, "step": 0, "stream": 0, "coordinate": 1.0,
                    "decision": "compute", "estimate": None, "regions": {"stack": "compute"},
                    "orders": {"stack": torch.tensor(g % 3)}, "wall_s": 0.0, "thread": 0})
    s = rec.stats()
    assert len(s["trace"]) == 50 and s["generations"] == 300 and s["calls"] == 300
    assert [r["orders"]["stack"] for r in s["trace"]] == [g % 3 for g in range(250, 300)]
    assert not any(isinstance(v, torch.Tensor) for r in rec._trace for v in (r.get("orders") or {}).values())


def test_the_readme_memory_table_formula_matches_the_forecaster():
    from bench_import import benchmark_module
    with benchmark_module("memory_table") as memory_table:
        memory_table.check()
        assert memory_table.elements()[("FLUX.1-dev 1024x1024", "stack")] == (4096 * 3072, 4096 * 3072)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(st.floats(1e-3, 5.0), st.floats(-1e6, 1e6)), min_size=2, max_size=6),
       st.integers(0, 3), st.sampled_from(FORMS))
def test_finite_data_gives_a_finite_forecast_when_its_polynomial_is_finite(points, order, form):
    """Fuzz: gaps of 1e-3 .. 5 between decreasing coordinates, values up to 1e6: the forecast at the
    next coordinate is finite wherever the exact polynomial through the stored points is."""
    import numpy as np
    ts, t = [], 1000.0
    for gap, _ in points:
        ts.append(t)
        t -= gap
    f = Forecaster(order, form)
    step = form not in DIVIDED               # taylor / hermite: the step index
    for k, (tt, (_, v)) in enumerate(zip(ts, points)):
        f.update(float(k) if step else tt, torch.tensor([v], dtype=torch.float32))
    at = float(len(points)) if step else t
    nodes = [float(k) for k in range(len(points))] if step else ts
    deg = min(order, len(points) - 1)
    xs, ys = np.array(nodes[-(deg + 1):]), np.array([v for _, v in points][-(deg + 1):])
    exact = float(np.polyval(np.polyfit(xs - xs[-1], ys, deg), at - xs[-1])) if deg else float(ys[-1])
    if abs(exact) < 1e30:
        assert torch.isfinite(f.forecast(at)).all(), (nodes, ys, exact)


def test_coordinates_closer_than_the_dtype_resolves_are_a_clear_error_and_restart_in_a_region():
    f = Forecaster(1, "newton")
    f.update(1.0, torch.ones(3))
    with pytest.raises(ValueError, match="resolves"):
        f.update(1.0 + 1e-9, torch.ones(3))
    assert not f.resolves(1.0 + 1e-9) and f.resolves(1.0 + 1e-3)
    from taylorseer_fx.runtime.region_state import RegionState
    st_ = RegionState(Forecaster(1, "newton"))
    st_.absorb((torch.ones(3),), (), {}, 1.0, True)
    st_.absorb((torch.full((3,), 2.0),), (), {}, 1.0 + 1e-9, True)      # restarts instead of raising
    assert st_.forecaster.num_points == 1 and torch.equal(st_.forecast(0.5, ())[0], torch.full((3,), 2.0))


_VALUES = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e30, 1e-30]))


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(st.lists(_VALUES, min_size=1, max_size=9), st.integers(0, 3), st.sampled_from(FORMS),
       st.sampled_from(["remainder", "pair"]))
def test_a_forecast_uses_only_the_finite_computes_since_the_last_non_finite_one(values, order, form, method):
    """Fuzz with NaN/inf/huge/tiny outputs: the forecast equals the polynomial through the newest
    finite points since the last non-finite one (at most order + 1 of them), and the error estimate
    is +inf until the method's points are all finite -- a non-finite compute never reaches a forecast
    made after a finite compute, and an adaptive policy computes instead of trusting it."""
    import numpy as np
    f = Forecaster(order, form)
    for k, v in enumerate(values):
        f.update(float(k), torch.tensor([v], dtype=torch.float32))
    run = 0
    for v in reversed(values):
        if not math.isfinite(v):
            break
        run += 1
    at = float(len(values)) + 0.5
    out = float(f.forecast(at))
    if run == 0:                                   # the newest compute is not finite: repeated as it was
        assert not math.isfinite(out) or not math.isfinite(values[-1])
    else:
        deg = min(order, run - 1)
        xs = np.arange(len(values) - deg - 1, len(values), dtype=np.float64)
        ys = np.array(values[-(deg + 1):], dtype=np.float64)
        exact = float(np.polyval(np.polyfit(xs - xs[-1], ys, deg), at - xs[-1])) if deg else float(ys[-1])
        if abs(exact) < 1e25 and max(abs(y) for y in ys) < 1e25:
            assert math.isfinite(out), (values, out, exact)
            # taylor's and heun's degree >= 2 are not the interpolant, hermite's degree >= 1 is a contraction
            if form == "newton" or (deg < 2 and form != "hermite") or deg == 0:
                assert out == pytest.approx(exact, rel=1e-3, abs=1e-3 * max(1.0, *map(abs, ys))), (values, exact)
    est = f.error_estimate(at, method)
    needed = order + 2 if method == "remainder" or order == 0 else min(order, len(values) - 1) + 1
    if est is not None and run < needed:
        assert math.isinf(float(est)), (values, run, needed, float(est))


def _toy(bad_t: float):
    """A block stack whose output is 1 + h t^2, NaN at timestep ``bad_t`` only (0 * 1/(t - bad))."""

    class Block(torch.nn.Module):
        def forward(self, h, t):
            return 1.0 + h * t[:, None] ** 2 + 0.0 * (1.0 / (t[:, None] - bad_t))

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])

        def forward(self, x, timestep):
            h = x * 1.0
            for b in self.blocks:
                h = b(h, timestep)
            return h - 1.0

    return Toy().eval()


@pytest.mark.usefixtures("one_thread_fresh_dynamo")
@pytest.mark.parametrize("policy", ["auto", "fixed"])
def test_after_a_non_finite_compute_the_region_forecasts_only_finite_values(policy):
    """The model gives NaN at one step only. Every later forecast is finite: AutoPolicy computes while
    its estimate is +inf, a fixed policy forecasts from the finite computes after the NaN one only."""
    from taylorseer_fx import AutoPolicy, FixedPolicy, taylorseer_backend
    steps = 20
    ts = [1.0 - k / steps for k in range(steps)]
    pol = AutoPolicy(threshold=0.5, warmup=2) if policy == "auto" else FixedPolicy(interval=3, order=2)
    x = torch.linspace(0.1, 1.0, 8)[None]

    def run(model):
        torch._dynamo.reset()
        be = taylorseer_backend(pol, inner="eager")
        compiled = torch.compile(model, backend=be)
        with torch.no_grad():
            return [compiled(x, torch.tensor([t])) for t in ts], be

    _, clean = run(_toy(2.0))                      # never NaN: where the policy computes
    computed = [r["step"] for r in clean.stats()["trace"] if r["decision"] == "compute"]
    bad = next(k for k in computed if k >= 3)      # a computed step with forecasts before it
    model = _toy(ts[bad])
    got, be = run(model)
    with torch.no_grad():
        want = [model(x, torch.tensor([t])) for t in ts]
    assert not torch.isfinite(want[bad]).all() and all(torch.isfinite(w).all() for k, w in enumerate(want) if k != bad)
    decisions = [r["decision"] for r in be.stats()["trace"]]
    assert decisions[bad] == "compute"
    for k in range(bad + 1, steps):
        if decisions[k] == "forecast" and "compute" in decisions[bad + 1:k]:
            assert torch.isfinite(got[k]).all(), (k, decisions)
    assert decisions[bad + 1:].count("forecast") >= 4, decisions
    if policy == "auto":                           # +inf estimates right after the NaN: it computes
        assert decisions[bad + 1] == "compute", decisions


def test_forecasters_of_one_generation_share_one_pair_of_work_buffers():
    """Per cached output only the factors are held; the scratch is one pair per generation and device,
    as large as the largest output (not a pair per region)."""
    from taylorseer_fx import FixedPolicy
    from taylorseer_fx.runtime.region_state import Generation
    policy = FixedPolicy(interval=2, order=1)
    gen = Generation(policy, lambda n, first: [policy.start(None, first)], torch.float32)
    shapes = [(64, 8), (16, 8), (100, 8), (3,)]
    for i, shape in enumerate(shapes):
        st_ = gen.state(0, i, 0)
        for t in range(3):
            st_.absorb((torch.randn(shape, dtype=torch.bfloat16),), (), {}, float(t), True)
            st_.forecast(t + 0.5, ())
    factors = sum(2 * math.prod(s) * 4 for s in shapes)          # order + 1 = 2 float32 factors each
    assert gen.memory_bytes() == factors + 2 * 800 * 4            # + one pair of the largest (100 x 8)


def _clipping_toy():
    """fp16 blocks that clip their activations to the fp16 range, as diffusers' Flux does: the stack
    output sits at the limit while its change to the input grows (what "stack-residual" forecasts)."""

    class Block(torch.nn.Module):
        def forward(self, h, t):
            return torch.clip(h + 30000.0 * (1.0 - t[:, None]) ** 2, -65504, 65504)

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])

        def forward(self, x, timestep):
            h = x * 1.0
            for b in self.blocks:
                h = b(h, timestep)
            return h * 0.5

    return Toy().eval()


@pytest.mark.usefixtures("one_thread_fresh_dynamo")
@pytest.mark.parametrize("regions", ["stack-residual", "stack"])
@pytest.mark.parametrize("whole_graph", [True, False])
def test_an_fp16_residual_forecast_never_turns_a_clipped_stack_into_inf(regions, whole_graph):
    from taylorseer_fx import FixedPolicy, taylorseer_backend
    steps = 12
    ts = [1.0 - k / steps for k in range(steps)]
    x = torch.linspace(20000.0, 60000.0, 8, dtype=torch.float16)[None]
    model = _clipping_toy()
    with torch.no_grad():
        want = [model(x, torch.tensor([t], dtype=torch.float16)) for t in ts]
    assert all(torch.isfinite(w).all() for w in want)
    be = taylorseer_backend(FixedPolicy(interval=3, order=2, warmup=3), regions=regions, inner="eager",
                            whole_graph=whole_graph)
    compiled = torch.compile(model, backend=be)
    with torch.no_grad():
        got = [compiled(x, torch.tensor([t], dtype=torch.float16)) for t in ts]
    assert be.stats()["forecast"] > 0
    assert all(torch.isfinite(g).all() for g in got), [int(torch.isinf(g).sum()) for g in got]
