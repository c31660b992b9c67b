"""The fused fast path (``fused=True``): one whole-graph call when every region computes or every
region forecasts; equal outputs and decisions to the split path (``fused=False``)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")

from dit_plain import make_plain_dit, plain_dit_inputs
from taylorseer_fx.backend import taylorseer_backend
from taylorseer_fx.policy import FixedPolicy

torch.set_num_threads(1)


def _timesteps(n, start=999.0, end=0.0):
    return [start + (end - start) * i / max(n - 1, 1) for i in range(n)]


def _run(fn, inputs, ts):
    outs = []
    with torch.no_grad():
        for t in ts:
            x, y = inputs(t)
            outs.append(fn(x, torch.full((x.shape[0],), t), y))
    return outs


def _both(model, inputs, ts, **kw):
    res = {}
    for fused in (True, False):
        torch._dynamo.reset()
        be = taylorseer_backend(fused=fused, inner="eager", **kw)
        outs = _run(torch.compile(model, backend=be), inputs, ts)
        res[fused] = (outs, be, _decisions(be), be.stats()["forecast"])   # dynamo.reset() resets be
    return res


def _decisions(be):
    return [(t["step"], t["decision"], t["regions"]) for t in be.stats()["trace"]]


def _spy_fused(be):
    calls = {"compute": 0, "forecast": 0}
    for g in be.graphs:
        f = g["fused"]
        assert f is not None
        for kind in calls:
            orig = getattr(f, kind)

            def wrapped(*a, _orig=orig, _kind=kind):
                calls[_kind] += 1
                return _orig(*a)
            setattr(f, kind, wrapped)
    return calls


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("regions", ["stack", "stack-residual", "modules"])
def test_fused_equals_split_plain_dit(regions, transposed):
    model = make_plain_dit(transposed_out=transposed)
    x, y = plain_dit_inputs()
    ts = _timesteps(10)
    res = _both(model, lambda t: (x, y), ts, policy=FixedPolicy(interval=3), regions=regions)
    (got, _, dec_f, nf), (want, _, dec_s, _) = res[True], res[False]
    for a, b in zip(got, want):
        assert torch.equal(a, b) and a.stride() == b.stride()
    assert dec_f == dec_s
    assert nf > 0


def test_fused_path_is_taken_and_forecast_graph_drops_the_region():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend(FixedPolicy(interval=3), regions="stack-residual", inner="eager")
    cm = torch.compile(model, backend=be)
    _run(cm, lambda t: (x, y), _timesteps(1))
    calls = _spy_fused(be)
    _run(cm, lambda t: (x, y), _timesteps(6)[1:])
    assert calls["compute"] >= 1 and calls["forecast"] >= 1
    assert sum(calls.values()) == 5


@pytest.mark.parametrize("regions", ["stack", "stack-residual", "modules"])
def test_fused_equals_split_demo_model(regions):
    from taylorseer_fx.demo import load_model
    model = load_model()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, model.in_channels, model.sample_size, model.sample_size, generator=g)
    y = torch.tensor([1, 7])
    res = _both(model, lambda t: (x, y), _timesteps(8, 0.9, 0.1), policy=FixedPolicy(interval=3),
                regions=regions)
    (got, _, dec_f, nf), (want, _, dec_s, _) = res[True], res[False]
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert dec_f == dec_s
    assert nf > 0


def test_batch_change_mid_run_never_forecasts_from_old_shape():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    x2, y2 = torch.cat([x, x]), torch.cat([y, y])
    ts = _timesteps(8)
    inputs = lambda t: (x, y) if t > 500 else (x2, y2)   # noqa: E731
    for regions in ("stack", "stack-residual"):
        res = _both(model, inputs, ts, policy=FixedPolicy(interval=3), regions=regions)
        (got, _, dec_f, _), (want, _, dec_s, _) = res[True], res[False]
        for a, b in zip(got, want):
            assert torch.equal(a, b)
        assert dec_f == dec_s
        first_new = next(i for i, t in enumerate(ts) if t <= 500)
        # the step index goes on; the new batch's factors restart with their own warm-up
        assert [d[:2] for d in dec_f[first_new:first_new + 2]] == [(first_new, "compute"), (first_new + 1, "compute")]


def test_per_region_uses_the_split_path():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    ts = _timesteps(8)
    res = _both(model, lambda t: (x, y), ts, policy=FixedPolicy(interval=3), regions="modules", per_region=True)
    (got, _, dec_f, nf), (want, _, dec_s, _) = res[True], res[False]
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert dec_f == dec_s and nf > 0
    be = taylorseer_backend(FixedPolicy(interval=3), regions="modules", inner="eager", per_region=True)
    cm = torch.compile(model, backend=be)
    _run(cm, lambda t: (x, y), ts[:1])
    calls = _spy_fused(be)
    _run(cm, lambda t: (x, y), ts[1:])
    assert calls == {"compute": 0, "forecast": 0}


def test_fused_false_builds_nothing():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend(FixedPolicy(interval=3), inner="eager", fused=False)
    _run(torch.compile(model, backend=be), lambda t: (x, y), _timesteps(2))
    assert be.graphs[0]["fused"] is None


@pytest.mark.inductor
@pytest.mark.parametrize("regions", ["stack-residual", "modules"])
def test_fused_inductor_matches_split_eager_demo_model(regions):
    from taylorseer_fx.demo import load_model, sigmas
    model = load_model()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 16, 16, generator=g)
    labels = torch.tensor([1, 2, 10, 10])
    ts = sigmas(12)[:-1].tolist()
    res = {}
    for inner, fused in (("eager", False), ("inductor", True)):
        torch._dynamo.reset()
        be = taylorseer_backend(FixedPolicy(interval=3, warmup=3, order=2), regions=regions, inner=inner, fused=fused)
        cm = torch.compile(model, backend=be)
        with torch.no_grad():
            outs = [cm(x, torch.full((4,), float(t)), labels) for t in ts]
        if fused:
            assert be.graphs[0]["fused"] is not None
        res[inner] = (outs, _decisions(be))
    assert res["eager"][1] == res["inductor"][1] and any(d == "forecast" for _, d, _ in res["eager"][1])
    for a, b in zip(res["inductor"][0], res["eager"][0]):
        assert a.stride() == b.stride()
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
