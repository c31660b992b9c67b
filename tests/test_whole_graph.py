"""The whole-graph path (the default): one whole-graph call when every region computes or every region
forecasts, split pieces compiled only when a call needs them; equal outputs and decisions to the split
path (``whole_graph=False``)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")

from dit_plain import make_plain_dit, plain_dit_inputs
from taylorseer_fx.graph.backend import taylorseer_backend
from taylorseer_fx.policy.policies import FixedPolicy

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
    for whole in (True, False):
        torch._dynamo.reset()
        be = taylorseer_backend(whole_graph=whole, inner="eager", **kw)
        outs = _run(torch.compile(model, backend=be), inputs, ts)
        pieces = be.graphs[0]["pieces"].done          # read now: dynamo.reset() frees the compiled graph
        res[whole] = (outs, pieces, _decisions(be), be.stats()["forecast"])   # and resets be
    return res


def _decisions(be):
    return [(t["step"], t["decision"], t["regions"]) for t in be.stats()["trace"]]


def _spy_whole(be):
    calls = {"compute": 0, "forecast": 0}
    for g in be.graphs:
        f = g["whole_graph"]
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
def test_whole_equals_split_plain_dit(regions, transposed):
    model = make_plain_dit(transposed_out=transposed)
    x, y = plain_dit_inputs()
    ts = _timesteps(10)
    res = _both(model, lambda t: (x, y), ts, policy=FixedPolicy(interval=3), regions=regions)
    (got, _, dec_f, nf), (want, _, dec_s, _) = res[True], res[False]
    for a, b in zip(got, want):
        assert torch.equal(a, b) and a.stride() == b.stride()
    assert dec_f == dec_s
    assert nf > 0


def test_whole_path_is_taken_and_compiles_the_rest_only_when_needed():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend(FixedPolicy(interval=3), regions="stack-residual", inner="eager")
    cm = torch.compile(model, backend=be)
    ts = _timesteps(6)
    _run(cm, lambda t: (x, y), ts[:1])
    g = be.graphs[0]
    assert not g["pieces"].done and not g["whole_graph"].forecast_compiled.done   # only compute compiled
    calls = _spy_whole(be)
    _run(cm, lambda t: (x, y), ts[1:2])                     # warm-up: computed
    assert not g["whole_graph"].forecast_compiled.done
    _run(cm, lambda t: (x, y), ts[2:])
    assert calls["compute"] >= 1 and calls["forecast"] >= 1
    assert sum(calls.values()) == 5
    assert g["whole_graph"].forecast_compiled.done and not g["pieces"].done   # uniform decisions: no pieces
    assert be.compile_seconds()["pieces"] == 0.0


def test_never_compiles_only_the_compute_version():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend("never", inner="eager")
    _run(torch.compile(model, backend=be), lambda t: (x, y), _timesteps(6))
    g = be.graphs[0]
    assert not g["pieces"].done and not g["whole_graph"].forecast_compiled.done
    assert be.stats()["forecast"] == 0


def test_mixed_decisions_compile_the_pieces_at_the_first_call_that_needs_them(monkeypatch):
    from taylorseer_fx.runtime.graph_runtime import GraphRuntime
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    ts = _timesteps(8)
    torch._dynamo.reset()
    ref = taylorseer_backend(FixedPolicy(interval=3), regions="modules", inner="eager", whole_graph=False)
    want = _run(torch.compile(model, backend=ref), lambda t: (x, y), ts)
    want_decisions = _decisions(ref)
    torch._dynamo.reset()
    be = taylorseer_backend(FixedPolicy(interval=3), regions="modules", inner="eager")
    cm = torch.compile(model, backend=be)
    got = _run(cm, lambda t: (x, y), ts[:3])
    assert not be.graphs[0]["pieces"].done
    monkeypatch.setattr(GraphRuntime, "_run_whole", lambda self, call, args: None)   # as if mixed
    got += _run(cm, lambda t: (x, y), ts[3:])
    assert be.graphs[0]["pieces"].done and be.compile_seconds()["pieces"] > 0
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert _decisions(be) == want_decisions and be.stats()["forecast"] > 0


def test_symbolic_shapes_compile_everything_at_once():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend(FixedPolicy(interval=3), inner="eager")
    cm = torch.compile(model, backend=be, dynamic=True)
    outs = _run(cm, lambda t: (x, y), _timesteps(1))
    g = be.graphs[0]      # (a region returning a symbolic size has no whole-graph form: pieces only)
    assert g["pieces"].done and (g["whole_graph"] is None or g["whole_graph"].forecast_compiled.done)
    with torch.no_grad():
        torch.testing.assert_close(outs[0], model(x, torch.full((x.shape[0],), 999.0), y))


@pytest.mark.parametrize("regions", ["stack", "stack-residual", "modules"])
def test_whole_equals_split_demo_model(regions):
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


def test_per_region_equals_split_path():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    ts = _timesteps(8)
    res = _both(model, lambda t: (x, y), ts, policy=FixedPolicy(interval=3), regions="modules", per_region=True)
    (got, _, dec_f, nf), (want, _, dec_s, _) = res[True], res[False]
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert dec_f == dec_s and nf > 0
    assert not res[True][1]                               # one schedule per region, all equal: uniform


def test_whole_graph_false_builds_only_the_pieces():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend(FixedPolicy(interval=3), inner="eager", whole_graph=False)
    _run(torch.compile(model, backend=be), lambda t: (x, y), _timesteps(1))
    assert be.graphs[0]["whole_graph"] is None and be.graphs[0]["pieces"].done


def test_fused_is_renamed():
    with pytest.raises(ValueError, match="whole_graph"):
        taylorseer_backend(fused=False)


@pytest.mark.inductor
@pytest.mark.parametrize("regions", ["stack-residual", "modules"])
def test_whole_inductor_matches_split_eager_demo_model(regions):
    from taylorseer_fx.demo import load_model, sigmas
    model = load_model()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 16, 16, generator=g)
    labels = torch.tensor([1, 2, 10, 10])
    ts = sigmas(12)[:-1].tolist()
    res = {}
    for inner, whole in (("eager", False), ("inductor", True)):
        torch._dynamo.reset()
        be = taylorseer_backend(FixedPolicy(interval=3, warmup=3, order=2), regions=regions, inner=inner,
                                whole_graph=whole)
        cm = torch.compile(model, backend=be)
        with torch.no_grad():
            outs = [cm(x, torch.full((4,), float(t)), labels) for t in ts]
        if whole:
            assert be.graphs[0]["whole_graph"].forecast_compiled.done and not be.graphs[0]["pieces"].done
        res[inner] = (outs, _decisions(be))
    assert res["eager"][1] == res["inductor"][1] and any(d == "forecast" for _, d, _ in res["eager"][1])
    for a, b in zip(res["inductor"][0], res["eager"][0]):
        assert a.stride() == b.stride()
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.inductor
def test_lazy_pieces_and_forecast_version_compile_with_inductor_at_run_time(monkeypatch):
    """The versions compiled after the backend call (at the first call that needs them) give what the
    split path compiled at once gives."""
    from taylorseer_fx.runtime.graph_runtime import GraphRuntime
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    ts = _timesteps(9)
    res = {}
    for whole in (False, True):
        torch._dynamo.reset()
        be = taylorseer_backend(FixedPolicy(interval=3), regions="stack-residual", inner="inductor",
                                whole_graph=whole)
        cm = torch.compile(model, backend=be)
        outs = _run(cm, lambda t: (x, y), ts[:5])             # computes, then whole-graph forecasts
        if whole:
            assert be.graphs[0]["whole_graph"].forecast_compiled.done and not be.graphs[0]["pieces"].done
            monkeypatch.setattr(GraphRuntime, "_run_whole", lambda self, call, args: None)
        outs += _run(cm, lambda t: (x, y), ts[5:])            # split pieces, compiled now
        monkeypatch.undo()
        if whole:
            assert be.graphs[0]["pieces"].done
        res[whole] = (outs, _decisions(be))
    assert res[True][1] == res[False][1]
    for a, b in zip(res[True][0], res[False][0]):
        assert a.stride() == b.stride()
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_compiled_graph_state_is_freed_when_dynamo_drops_the_graph():
    import gc
    import weakref
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend(FixedPolicy(interval=3), inner="eager")
    refs = []
    for _ in range(4):                                  # compile, run, drop: four times
        cm = torch.compile(model, backend=be)
        _run(cm, lambda t: (x, y), _timesteps(5))
        g = be.graphs[-1]
        refs.append((weakref.ref(g["whole_graph"]), weakref.ref(g["pieces"]), weakref.ref(be.runtime.graphs[-1])))
        del g, cm
        torch._dynamo.reset()
        gc.collect()
    assert all(r() is None for trio in refs for r in trio), "compiled state outlived dynamo's cache"
    assert be.runtime.graphs == []
    assert be.graphs == []              # the records of graphs dynamo dropped go too (issue 25, item 7)
