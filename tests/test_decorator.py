"""The seed decorator ``@taylor_seer``: the seed's printed values, exact newton forecasts, reset, errors.

Hypothesis: ``max_examples=40, deadline=None`` (each example is a handful of scalar forward calls).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from taylorseer_fx import FixedPolicy, taylor_seer

ROOT = Path(__file__).resolve().parents[1]
SEED_CASE = json.loads((Path(__file__).parent / "data" / "schedules.json").read_text())["seed_decorator"][0]


def _square_class(**kwargs):
    @taylor_seer(**kwargs)
    class Square(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, t):
            self.calls += 1
            return t**2

    return Square


def test_seed_example_prints_reference_values():
    model = _square_class(warmup_steps=4, skip_interval_steps=2, n_derivatives=1)()
    outputs = [model(torch.tensor(float(t))).item() for t in range(SEED_CASE["num_steps"])]
    assert outputs == SEED_CASE["outputs"]
    computed = [i for i, d in enumerate(model.cache_trace) if d == "compute"]
    assert computed == SEED_CASE["compute_steps"]
    assert model.calls == len(SEED_CASE["compute_steps"])  # forecasts never run forward


def test_toy_example_script_prints_seed_values():
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "toy_square.py")], capture_output=True, text=True, check=True
    ).stdout
    values = [float(line.split("f(t)=")[1].split()[0]) for line in out.splitlines() if "f(t)=" in line]
    assert values == SEED_CASE["outputs"]
    assert out.count("forecast") == 3 and out.count("compute") == 7


@settings(max_examples=40, deadline=None)
@given(
    coeffs=st.lists(st.floats(-3, 3), min_size=3, max_size=3),
    start=st.floats(0.5, 1.0),
    gaps=st.lists(st.floats(0.01, 0.1), min_size=12, max_size=12),
)
def test_newton_forecasts_quadratic_exactly_on_decreasing_nonuniform_timesteps(coeffs, start, gaps):
    a, b, c = coeffs

    @taylor_seer(warmup_steps=3, skip_interval_steps=3, n_derivatives=2, form="newton")
    class Quadratic(nn.Module):
        def forward(self, timestep):
            return a + b * timestep + c * timestep**2

    model = Quadratic()
    t = start
    for gap in gaps:
        got = model(timestep=torch.tensor([t], dtype=torch.float64)).double()
        want = a + b * t + c * t * t
        # float32 factors: a few ulps of the largest term, amplified by the extrapolation distance
        assert got.item() == pytest.approx(want, abs=2e-4 * (1 + abs(a) + abs(b) + abs(c)))
        t -= gap
    assert "forecast" in model.cache_trace


def test_reset_cache_restarts_and_takes_new_settings():
    model = _square_class(warmup_steps=4, skip_interval_steps=2, n_derivatives=1)()
    for t in range(6):
        model(torch.tensor(float(t)))
    model.reset_cache(warmup_steps=2, skip_interval_steps=3)
    trace_len = len(model.cache_trace)
    assert trace_len == 0
    for t in range(8):
        model(torch.tensor(float(t)))
    computed = [i for i, d in enumerate(model.cache_trace) if d == "compute"]
    assert computed == FixedPolicy.seed(warmup_steps=2, skip_interval_steps=3, n_derivatives=1).compute_steps(8)


def test_outputs_keep_dtype_and_instances_are_independent():
    cls = _square_class(warmup_steps=2, skip_interval_steps=2, n_derivatives=1)
    m1, m2 = cls(), cls()
    outs = [m1(torch.full((2, 3), float(t), dtype=torch.bfloat16)) for t in range(5)]
    assert all(o.dtype == torch.bfloat16 and o.shape == (2, 3) for o in outs)
    assert m2.cache_trace == []


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"warmup_steps": 0}, "warmup"),
        ({"skip_interval_steps": 0}, "skip_interval_steps|interval"),
        ({"n_derivatives": -1}, "n_derivatives|order"),
        ({"form": "chebyshev"}, "form"),
    ],
)
def test_bad_settings_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        taylor_seer(**kwargs)


def test_non_module_and_non_tensor_output_are_rejected():
    with pytest.raises(TypeError):
        taylor_seer()(object)

    @taylor_seer(warmup_steps=1)
    class Pair(nn.Module):
        def forward(self, t):
            return t, t

    with pytest.raises(TypeError, match="one tensor"):
        Pair()(torch.tensor(0.0))


def test_a_new_run_starts_over_without_reset_cache():
    sq = _square_class()()
    ts = [torch.tensor(float(t)) for t in range(10)]
    first = [float(sq(t)) for t in ts]
    calls = sq.calls
    second = [float(sq(t)) for t in ts]                       # back to the first timestep: a new run
    assert second == first and sq.calls == 2 * calls
    assert second[0] == 0.0 and second[1] == 1.0
    down = [torch.tensor(float(t)) for t in range(8, 0, -1)]   # a run going the other way
    got = [float(sq(t)) for t in down]
    assert got[:2] == [64.0, 49.0]                            # computed, not forecast from the old run


def test_a_shape_change_computes_and_returns_the_new_shape():
    @taylor_seer(warmup_steps=2, skip_interval_steps=3, n_derivatives=1)
    class Scale(nn.Module):
        def forward(self, t, x):
            return x * t

    m = Scale()
    x1, x2 = torch.ones(2, 3), torch.ones(4, 3)
    for t in range(4):
        m(torch.tensor(float(t)), x1)
    out = m(torch.tensor(4.0), x2)                            # batch change at the next step
    assert out.shape == (4, 3) and torch.equal(out, x2 * 4.0)


def test_calls_at_one_timestep_are_streams_with_their_own_factors():
    @taylor_seer(warmup_steps=2, skip_interval_steps=2, n_derivatives=1, form="newton")
    class Lin(nn.Module):
        def forward(self, timestep, x):
            return x * timestep

    m = Lin()
    cond, uncond = torch.full((3,), 2.0), torch.full((3,), -1.0)
    outs = []
    for t in range(6):
        tt = torch.tensor(float(t))
        outs.append((m(tt, cond), m(tt, uncond)))
    for t, (c, u) in enumerate(outs):                         # linear in t: newton order 1 is exact
        assert torch.allclose(c, cond * t) and torch.allclose(u, uncond * t), t
    assert "forecast" in m.cache_trace


@pytest.mark.parametrize("form", ["taylor", "newton"])
def test_per_sample_timesteps_are_read_so_a_new_run_and_a_batch_change_start_over(form):
    """diffusers passes ``timestep`` of shape ``(B,)``: read as the backend reads it (element 0), so a
    new run (back to the first timestep) computes instead of forecasting from the old one, and a batch
    change never returns the old shape."""
    @taylor_seer(warmup_steps=2, skip_interval_steps=3, n_derivatives=1, form=form)
    class Model(nn.Module):
        def forward(self, x, timestep):
            return x * (timestep[:, None] / 1000.0) ** 2

    m = Model()
    ts = [1000.0 - 90.0 * k for k in range(10)]
    x2 = torch.linspace(0.5, 1.5, 6).reshape(2, 3)
    run = lambda x: [m(x, timestep=torch.full((x.shape[0],), t)) for t in ts]  # noqa: E731
    first = run(x2)
    assert "forecast" in m.cache_trace
    second = run(x2)                                        # a new run: back to the first timestep
    assert m.cache_trace[:2] == ["compute", "compute"]
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    x4 = torch.cat([x2, x2])
    for t in ts[:4]:
        m(x2, timestep=torch.full((2,), t))
    out = m(x4, timestep=torch.full((4,), ts[4]))           # batch 2 -> 4 at the next step
    assert out.shape == (4, 3) and torch.allclose(out, x4 * (ts[4] / 1000.0) ** 2)


def test_a_counted_forward_whose_input_shape_changes_never_returns_the_old_shape():
    @taylor_seer(warmup_steps=2, skip_interval_steps=3, n_derivatives=1)
    class Model(nn.Module):
        def forward(self, x, scale):                        # no readable timestep: counted call by call
            return x * scale

    m = Model()
    for _ in range(3):                                      # computes steps 0, 1; step 2 is forecast
        m(torch.ones(2, 3), torch.ones(2, 3))
    assert m.cache_trace == ["compute", "compute", "forecast"]
    out = m(torch.ones(4, 3), torch.full((4, 3), 2.0))      # step 3 would be a forecast too
    assert out.shape == (4, 3) and torch.equal(out, torch.full((4, 3), 2.0))
