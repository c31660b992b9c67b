"""taylorseer_backend end to end: never-forecast equality, forecasts equal a hand-made reference,
zero recompiles, argument validation, graphs without regions, inductor strides."""

from __future__ import annotations

import re
import warnings

import pytest
import torch

from dit_plain import HookReference, make_plain_dit, plain_dit_inputs
from taylorseer_fx.graph.backend import TaylorSeerBackend, default_backend, taylorseer_backend
from taylorseer_fx.policy.policies import FixedPolicy

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _timesteps(n, start=999.0, end=0.0):
    return [start + (end - start) * i / max(n - 1, 1) for i in range(n)]


def _run(fn, x, y, ts):
    outs = []
    with torch.no_grad():
        for t in ts:
            outs.append(fn(x, torch.full((x.shape[0],), t), y))
    return outs


# ---------------------------------------------------------------- never forecast

@pytest.mark.parametrize("regions", ["stack", "stack-residual", "modules"])
def test_never_forecast_bit_equal_plain_dit(regions):
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend(FixedPolicy(interval=1), regions=regions, inner="eager")
    ts = _timesteps(5)
    got = _run(torch.compile(model, backend=be), x, y, ts)
    want = _run(model, x, y, ts)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    s = be.stats()
    assert s["compute"] == 5 and s["forecast"] == 0
    assert len(be.graphs) == 1 and be.graphs[0]["regions"]


@pytest.mark.parametrize("family,regions", [("flux", "stack"), ("pixart", "modules")])
def test_never_forecast_bit_equal_diffusers(family, regions):
    tiny_models = pytest.importorskip("tiny_models")
    model, make_inputs = tiny_models.FAMILIES[family]()
    be = taylorseer_backend("never", regions=regions, inner="eager")
    cm = torch.compile(model, backend=be)
    start, end = tiny_models.TIMESTEP_RANGE[family]
    with torch.no_grad():
        for i in range(3):
            args, kwargs = make_inputs(batch=1, step_t=start + (end - start) * i / 3)
            assert torch.equal(cm(*args, **kwargs)[0], model(*args, **kwargs)[0])
    assert be.stats()["compute"] == 3 and len(be.graphs) == 1


# ---------------------------------------------------------------- forecasts = reference

POLICIES = {
    "newton2": FixedPolicy(interval=3, order=2, form="newton", warmup=3),
    "newton-step": FixedPolicy(interval=2, order=1, form="newton", coordinate="step"),
    "taylor2": FixedPolicy(interval=3, order=2, form="taylor", warmup=3, derivatives_from=1),
    "official": FixedPolicy.official(first_enhance=3, fresh_threshold=3, max_order=2),
}


@pytest.mark.parametrize("kind", ["stack", "modules"])
@pytest.mark.parametrize("pname", sorted(POLICIES))
def test_fixed_policy_equals_reference(kind, pname):
    policy = POLICIES[pname]
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    ts = _timesteps(10)
    be = taylorseer_backend(policy, regions=kind, inner="eager")
    got = _run(torch.compile(model, backend=be), x, y, ts)
    ref = HookReference(model, policy, kind=kind)
    try:
        want = [ref(x, torch.full((2,), t), y) for t in ts]
    finally:
        ref.close()
    for step, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"step {step}")
    trace = be.stats()["trace"]
    expect = ["forecast" if "forecast" in what else "compute" for *_, what in ref.log]
    assert [t["decision"] for t in trace] == expect
    assert expect.count("forecast") >= 3
    plain = _run(model, x, y, ts)
    assert any(not torch.equal(a, b) for a, b in zip(got, plain))  # forecasts really happened


def test_aot_eager_inner_equals_reference():
    policy = POLICIES["newton2"]
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    ts = _timesteps(7)
    be = taylorseer_backend(policy, regions="modules", inner="aot_eager")
    got = _run(torch.compile(model, backend=be), x, y, ts)
    ref = HookReference(model, policy, kind="modules")
    try:
        want = [ref(x, torch.full((2,), t), y) for t in ts]
    finally:
        ref.close()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert be.stats()["forecast"] == 3                      # steps 3, 4, 6


@pytest.mark.parametrize("regions", ["stack", "stack-residual", "modules"])
def test_forecasts_keep_the_computed_strides(monkeypatch, regions):
    from taylorseer_fx.runtime.graph_runtime import GraphRuntime
    model = make_plain_dit(transposed_out=True)
    x, y = plain_dit_inputs()
    seen = {}
    orig = GraphRuntime.run_region

    def spy(self, index, compiled, args):
        out = orig(self, index, compiled, args)
        what = self.current.regions.get(self.names[index])
        seen.setdefault(index, []).append((what, [(o.shape, o.stride(), o.dtype) for o in out]))
        return out

    monkeypatch.setattr(GraphRuntime, "run_region", spy)
    # spies the split path's CacheNodes (the default runs whole-graph calls; see test_whole_graph.py)
    be = taylorseer_backend(FixedPolicy(interval=2, order=1), regions=regions, inner="eager", whole_graph=False)
    _run(torch.compile(model, backend=be), x, y, _timesteps(5))
    for index, calls in seen.items():
        metas = {tuple(m) for _, m in calls}
        assert len(metas) == 1, (index, calls)
        assert {w for w, _ in calls} == {"compute", "forecast"}
    if regions != "modules":
        ((shape, stride, _),) = next(iter(metas))
        assert stride != torch.empty(shape).stride()       # the stack output is not contiguous


def test_stack_residual_adds_current_input():
    """stack-residual forecasts (out - in) and adds the current input: with a latent that changes
    between steps the result differs from plain stack forecasting but is exact at compute steps."""
    model = make_plain_dit()
    policy = FixedPolicy(interval=2, order=1, form="newton")
    ts = _timesteps(6)
    xs = [torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    y = plain_dit_inputs()[1]
    outs = {}
    for regions in ("stack", "stack-residual"):
        torch._dynamo.reset()
        be = taylorseer_backend(policy, regions=regions, inner="eager")
        cm = torch.compile(model, backend=be)
        with torch.no_grad():
            outs[regions] = [cm(x, torch.full((2,), t), y) for x, t in zip(xs, ts)]
        assert be.graphs[0]["infos"][0].residual == ({0: be.graphs[0]["infos"][0].residual[0]}
                                                     if regions == "stack-residual" else {})
        decisions = [t["decision"] for t in be.stats()["trace"]]
    with torch.no_grad():
        plain = [model(x, torch.full((2,), t), y) for x, t in zip(xs, ts)]
    for i, d in enumerate(decisions):
        if d == "compute":
            assert torch.equal(outs["stack-residual"][i], plain[i])
        else:
            assert not torch.allclose(outs["stack-residual"][i], outs["stack"][i])


# ---------------------------------------------------------------- recompiles

def test_zero_recompiles_over_a_generation():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    compiles = []

    def counting_inner(gm, example_inputs):
        compiles.append(len(gm.graph.nodes))
        return gm.forward

    be = taylorseer_backend(FixedPolicy(interval=3, order=1), inner=counting_inner)
    calls = []

    def outer(gm, example_inputs):
        calls.append(1)
        return be(gm, example_inputs)

    cm = torch.compile(model, backend=outer)
    _run(cm, x, y, _timesteps(20))
    n = len(compiles)
    assert len(calls) == 1 and not be.graphs[0]["pieces"].done   # uniform decisions: whole graph only
    s = be.stats()
    assert s["steps"] == 20 and s["forecast"] > 0
    _run(cm, x, y, _timesteps(20))                          # a second generation: still no recompile
    assert len(calls) == 1 and len(compiles) == n


# ---------------------------------------------------------------- validation and fallbacks

@pytest.mark.parametrize("kwargs,field", [
    (dict(regions="stacks"), "regions"),
    (dict(regions="blocks[0"), "regions"),
    (dict(regions=3), "regions"),
    (dict(inner="no-such-backend"), "inner"),
    (dict(inner=3), "inner"),
    (dict(policy="no-such-preset"), "policy"),
    (dict(policy=3), "policy"),
    (dict(num_steps=0), "num_steps"),
    (dict(bogus=1), "bogus"),
    (dict(timestep_arg=1), "timestep_arg"),
])
def test_bad_arguments_raise_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        taylorseer_backend(**kwargs)


def test_graph_without_region_runs_unchanged_with_one_warning():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))
    be = taylorseer_backend(regions="stack", inner="eager")
    cm = torch.compile(model, backend=be)
    x = torch.randn(3, 8)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with torch.no_grad():
            outs = [cm(x) for _ in range(3)]
    ours = [str(m.message) for m in w if "no region" in str(m.message)]
    assert len(ours) == 1
    # which graph (dynamo's compile id) of which model code, and why
    assert re.search(r"graph 0/0( \(\w+\.py:\d+ in \w+\))? has no region", ours[0]), ours[0]
    assert "no block list" in ours[0], ours[0]
    assert all(torch.equal(o, model(x)) for o in outs)


def test_regex_matching_nothing_in_a_model_with_blocks_raises():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend(regions=r"blocks\.\d+\.nothing", inner="eager")
    with pytest.raises(Exception, match="matched no module path.*blocks"):
        _run(torch.compile(model, backend=be), x, y, [1.0])


def test_regex_and_callable_regions():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    for regions in (r"blocks\.\d+\.mlp", lambda path: path.endswith(".mlp") and path.count(".") == 2):
        torch._dynamo.reset()
        be = taylorseer_backend(FixedPolicy(interval=2, order=1), regions=regions, inner="eager")
        _run(torch.compile(model, backend=be), x, y, _timesteps(4))
        assert be.graphs[0]["regions"] == ["blocks.0.mlp", "blocks.1.mlp", "blocks.2.mlp"]
        assert be.stats()["regions"]["blocks.1.mlp"] == {"compute": 3, "forecast": 1}


def test_timestep_arg_override_and_missing():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(4, 4)) for _ in range(2)])

        def forward(self, x, noise_level):
            for layer in self.layers:
                x = layer(x) * noise_level[:, None]
            return x

    m = M().eval()
    x = torch.randn(2, 4)
    be = taylorseer_backend(FixedPolicy(interval=2, order=1), inner="eager", timestep_arg="noise_level")
    cm = torch.compile(m, backend=be)
    with torch.no_grad():
        for t in (0.9, 0.8, 0.7, 0.6):
            cm(x, torch.full((2,), t))
    assert be.graphs[0]["timestep"] == "l_noise_level_"
    assert be.stats()["forecast"] == 1
    torch._dynamo.reset()
    with pytest.raises(Exception, match="timestep_arg='sigma_t'"):
        with torch.no_grad():
            torch.compile(m, backend=taylorseer_backend(inner="eager", timestep_arg="sigma_t"))(x, torch.ones(2))


def test_no_timestep_input_runs_uncached_with_a_warning_or_counts_in_a_session():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(4, 4)) for _ in range(2)])

        def forward(self, x, level):
            for b in self.blocks:
                x = b(x) * level[:, None]
            return x

    m = M().eval()
    x = torch.randn(2, 4)
    be = taylorseer_backend(FixedPolicy(interval=2, order=1), inner="eager")
    cm = torch.compile(m, backend=be)
    with pytest.warns(UserWarning, match=r"graph 0 \[graph 0/0 \(test_backend\.py:\d+ in forward\)\] has no "
                      "step coordinate"), torch.no_grad():
        a = cm(x, torch.ones(2))
    assert torch.equal(a, m(x, torch.ones(2))) and be.stats()["uncached_calls"] == 1
    with be.session(timesteps=[3.0, 2.0, 1.0, 0.0]), torch.no_grad():
        for t in (3.0, 2.0, 1.0, 0.0):
            cm(x, torch.full((2,), t))
    assert be.stats()["forecast"] == 1


def test_registered_by_name():
    from torch._dynamo.backends.registry import list_backends, lookup_backend
    from taylorseer_fx.graph.backend import _taylorseer_by_name
    assert "taylorseer" in list_backends()
    assert lookup_backend("taylorseer") is _taylorseer_by_name
    assert isinstance(default_backend(), TaylorSeerBackend) and default_backend() is default_backend()


def test_default_policy_needs_no_num_steps():
    be = taylorseer_backend(inner="eager")
    assert not be.policy.needs_num_steps()


def test_policy_needing_num_steps_raises_at_first_call_unless_given():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    policy = FixedPolicy(interval=2, order=1, cooldown=2)
    be = taylorseer_backend(policy, inner="eager")
    with pytest.raises(Exception, match="num_steps"):
        _run(torch.compile(model, backend=be), x, y, [1.0])
    torch._dynamo.reset()
    be = taylorseer_backend(policy, inner="eager", num_steps=6)
    _run(torch.compile(model, backend=be), x, y, _timesteps(6))
    assert [t["decision"] for t in be.stats()["trace"]][-2:] == ["compute", "compute"]
    torch._dynamo.reset()
    be = taylorseer_backend(policy, inner="eager")
    cm = torch.compile(model, backend=be)
    with be.session(num_steps=6):
        _run(cm, x, y, _timesteps(6))
    assert [t["decision"] for t in be.stats()["trace"]][-2:] == ["compute", "compute"]


# ---------------------------------------------------------------- inductor

@pytest.mark.inductor
def test_inductor_never_forecast_allclose_and_forecast_strides(monkeypatch):
    from taylorseer_fx.runtime.graph_runtime import GraphRuntime
    model = make_plain_dit(transposed_out=True)
    x, y = plain_dit_inputs()
    ts = _timesteps(6)
    seen = []
    orig = GraphRuntime.run_region

    def spy(self, index, compiled, args):
        out = orig(self, index, compiled, args)
        what = self.current.regions.get(self.names[index]) if self.current else None
        seen.append((what, [(o.shape, o.stride(), o.dtype) for o in out]))
        return out

    monkeypatch.setattr(GraphRuntime, "run_region", spy)
    be = taylorseer_backend(FixedPolicy(interval=2, order=1), regions="stack", inner="inductor", whole_graph=False)
    got = _run(torch.compile(model, backend=be), x, y, ts)
    want = _run(model, x, y, ts)
    computed = [m for w, m in seen if w == "compute"]
    forecast = [m for w, m in seen if w == "forecast"]
    assert forecast and computed
    assert all(m == computed[0] for m in computed + forecast)        # same shape/stride/dtype
    assert computed[0][0][1] != torch.empty(computed[0][0][0]).stride()  # a non-contiguous output
    decisions = [t["decision"] for t in be.stats()["trace"]]
    for a, b, d in zip(got, want, decisions):
        if d == "compute":
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    torch._dynamo.reset()
    be = taylorseer_backend("never", regions="modules", inner="inductor")
    for a, b in zip(_run(torch.compile(model, backend=be), x, y, ts[:3]), want[:3]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_never_policy_stores_nothing_and_policy_can_be_swapped_without_recompiling():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend("never", inner="eager")
    cm = torch.compile(model, backend=be)
    _run(cm, x, y, _timesteps(4))
    assert be.runtime.never and be.memory_bytes() == 0     # no factor updates at all
    be.policy = FixedPolicy(interval=2, order=1)
    assert not be.runtime.never
    _run(cm, x, y, _timesteps(4))
    assert len(be.graphs) == 1
    assert [t["decision"] for t in be.stats()["trace"][4:]] == ["compute", "compute", "forecast", "compute"]


def test_graph_break_gives_two_transformed_graphs_in_one_generation():
    class Broken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(4)])

        def step(self, x, i, timestep):
            return x + torch.tanh(self.blocks[i](x)) * timestep[:, None] / 1000

        def forward(self, x, timestep):
            x = self.step(self.step(x, 0, timestep), 1, timestep)
            torch._dynamo.graph_break()
            return self.step(self.step(x, 2, timestep), 3, timestep)

    model = Broken().eval()
    x = torch.randn(2, 8)
    be = taylorseer_backend(FixedPolicy(interval=2, order=1), inner="eager")
    cm = torch.compile(model, backend=be)
    ts = _timesteps(5)
    with torch.no_grad():
        for t in ts:
            cm(x, torch.full((2,), t))
    assert len(be.graphs) == 2 and all(g["regions"] == ["stack"] for g in be.graphs)
    tr = be.stats()["trace"]
    assert len({t["generation"] for t in tr}) == 1                  # siblings share the generation
    assert [(t["graph"], t["step"], t["decision"]) for t in tr] == [
        (g, s, d) for s, d in enumerate(["compute", "compute", "forecast", "compute", "forecast"]) for g in (0, 1)]
