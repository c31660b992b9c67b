"""Serving: a batched call whose rows belong to different requests (``BatchedCache``). Every request's
outputs equal its solo run whatever else is in the batch and its host replay, its state is released when it
leaves, one model call per tick, bounded recompiles, changed weights and the audit. The call's arguments and
misuse: ``test_serving_calls.py``."""

from __future__ import annotations

import gc
import math
import importlib.util
import random
import sys
import warnings
import weakref
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from taylorseer_fx import AutoPolicy, FixedPolicy, Forecaster, MaskPolicy, load_policy
from taylorseer_fx.serving.batched import BatchedCache
from taylorseer_fx.testing.strategies import policies

FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
D = 32          # elements per row: a multiple of the vector width, so every row takes the same kernel path


class RowWise(torch.nn.Module):
    """A denoiser whose rows never mix (elementwise and per-row ops only), so that a row's output is
    bit-equal at any batch size: what lets the tests demand bit-equality with the solo run."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(torch.randn(D, generator=g))
        self.b = torch.nn.Parameter(torch.randn(D, generator=g))

    def forward(self, x, timestep, cond, scale: float = 1.0):
        return (torch.tanh(x * self.w + timestep[:, None] * self.b + cond) * scale,)


calls: list = []


class Counted(RowWise):
    """RowWise, recording the batch size of every call in ``calls``."""

    def forward(self, x, timestep, cond, scale: float = 1.0):
        calls.append(x.shape[0])
        return super().forward(x, timestep, cond, scale)


def _example():
    path = Path(__file__).resolve().parents[1] / "examples" / "serve_batched.py"
    spec = importlib.util.spec_from_file_location("serve_batched", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_batched"] = module          # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@dataclass
class Job:
    steps: int
    arrive: int
    policy: object
    cfg: bool
    seed: int
    tell: bool                       # the engine tells the request its sigmas (no timestep read)
    leave: int | None = None         # leaves (cancelled) after this many steps


def sigmas(n: int) -> list:
    return [1.0 - i / n for i in range(n + 1)]


def engine(model, jobs, *, buckets=None, shuffle: random.Random | None = None, concurrency: int = 99):
    """A step-level batching loop over the row-wise model: per request the outputs of every step (one
    tensor per branch), its decisions, and the cache."""
    cache = BatchedCache(model, FixedPolicy(interval=2), batch_args=("x", "timestep", "cond"), buckets=buckets)
    state = {}
    queue = sorted(range(len(jobs)), key=lambda k: jobs[k].arrive)
    active, outputs, decisions = [], {k: [] for k in range(len(jobs))}, {}
    tick = 0
    while queue or active:
        while queue and jobs[queue[0]].arrive <= tick and len(active) < concurrency:
            k = queue.pop(0)
            j = jobs[k]
            g = torch.Generator().manual_seed(j.seed)
            branches = ("cond", "uncond") if j.cfg else ("cond",)
            req = cache.open(j.steps, policy=j.policy, branches=branches,
                             sigmas=sigmas(j.steps)[:-1] if j.tell else None)
            state[k] = [torch.randn(1, D, generator=g), 0, req]
            active.append(k)
        tick += 1
        if not active:
            continue
        rows = [(k, b) for k in active for b in state[k][2].branches]
        if shuffle is not None:
            shuffle.shuffle(rows)
        x = torch.cat([state[k][0] for k, _ in rows])
        t = torch.tensor([sigmas(jobs[k].steps)[state[k][1]] for k, _ in rows])
        c = torch.tensor([[0.5 if b == "cond" else -0.5] for _, b in rows]).expand(-1, D)
        before = cache.stats()["model_calls"]
        out = cache(x, t, c, rows=[state[k][2][b] for k, b in rows], scale=0.9)[0]
        assert cache.stats()["model_calls"] - before <= 1, "one model call per tick"
        for k in list(active):
            x, step, req = state[k]
            got = {b: out[i:i + 1] for i, (kk, b) in enumerate(rows) if kk == k}
            outputs[k].append(got)
            v = got["cond"] + (2.0 * (got["cond"] - got["uncond"]) if "uncond" in got else 0)
            s = sigmas(jobs[k].steps)
            state[k][0] = x + (s[step + 1] - s[step]) * v
            state[k][1] = step + 1
            if step + 1 == jobs[k].steps or (jobs[k].leave is not None and step + 1 == jobs[k].leave):
                decisions[k] = list(req.decisions)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    req.close()
                active.remove(k)
    return outputs, decisions, cache


@st.composite
def jobs(draw):
    n = draw(st.integers(1, 14))
    return Job(steps=n, arrive=draw(st.integers(0, 12)), policy=draw(policies()), cfg=draw(st.booleans()),
               seed=draw(st.integers(0, 9)), tell=draw(st.booleans()),
               leave=draw(st.one_of(st.none(), st.integers(1, n))))


@FAST
@given(st.lists(jobs(), min_size=1, max_size=5), st.sampled_from([None, (1, 2, 4, 8)]), st.integers(0, 99),
       st.integers(1, 5))
def test_every_request_equals_its_solo_run(js, buckets, seed, concurrency):
    model = RowWise()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        together, decided, cache = engine(model, js, buckets=buckets, shuffle=random.Random(seed),
                                          concurrency=concurrency)
        for k, j in enumerate(js):
            alone, alone_decided, _ = engine(model, [j])
            assert decided[k] == alone_decided[0]
            assert len(together[k]) == len(alone[0])
            for a, b in zip(together[k], alone[0]):
                assert a.keys() == b.keys()
                assert all(torch.equal(a[br], b[br]) for br in a)
    s = cache.stats()
    assert s["open_requests"] == 0 and s["bytes"] == 0            # every request left: nothing held
    assert s["computed_rows"] + s["forecast_rows"] == s["rows"]
    assert s["model_calls"] <= s["ticks"]


def test_forecast_rows_cost_no_model_work_and_a_tick_is_one_call():
    model = Counted()
    js = [Job(12, 0, FixedPolicy(interval=3), True, 0, True), Job(12, 1, FixedPolicy(interval=3), False, 1, False)]
    calls.clear()
    with torch.no_grad():
        _, decided, cache = engine(model, js)
    s = cache.stats()
    assert s["forecast_rows"] > 0
    assert sum(calls) == s["computed_rows"]           # the model saw only the rows that compute
    assert len(calls) == s["model_calls"] <= s["ticks"]
    planned = FixedPolicy(interval=3).compute_steps(12)
    assert decided[0] == decided[1] == [i in planned for i in range(12)]


def test_closing_a_request_releases_its_state():
    model = RowWise()
    cache = BatchedCache(model, AutoPolicy(threshold=0.5), batch_args=("x", "timestep", "cond"))
    a, b = cache.open(10, branches=("cond", "uncond")), cache.open(10)
    x, c = torch.randn(3, D), torch.zeros(3, D)
    with torch.no_grad():
        for i in range(4):
            cache(x, torch.full((3,), 1 - i / 10), c, rows=[a["cond"], b, a["uncond"]])
    held = weakref.ref(a.state("cond").forecaster)
    assert a.memory_bytes() > 0 and b.memory_bytes() > 0
    a.close(audit=False)
    gc.collect()
    assert held() is None and a.memory_bytes() == 0
    assert cache.requests == [b] and cache.memory_bytes() == b.memory_bytes()
    with pytest.raises(ValueError, match="closed"):
        cache(x[:1], torch.ones(1), c[:1], rows=[a])
    with b:                                          # a request is a context manager: it closes on exit
        pass
    assert b.closed and cache.memory_bytes() == 0


def test_changed_weights_never_reach_a_forecast():
    model = RowWise()
    cache = BatchedCache(model, MaskPolicy([0, 1, 7]), batch_args=("x", "timestep", "cond"))
    req = cache.open(8)
    x, c = torch.randn(1, D), torch.zeros(1, D)
    with torch.no_grad():
        cache(x, torch.ones(1), c, rows=[req])                     # steps 0 and 1 compute
        cache(x, torch.full((1,), 0.9), c, rows=[req])
        model.w.mul_(2.0)                                          # the weights change (a LoRA swap)
        with pytest.warns(UserWarning, match="weights changed"):
            y = cache(x, torch.full((1,), 0.8), c, rows=[req])[0]  # step 2 was to forecast
        assert torch.equal(y, model(x, torch.full((1,), 0.8), c)[0])   # computed with the new weights
        cache(x, torch.full((1,), 0.7), c, rows=[req])             # step 3 forecasts, from the new state
    assert req.decisions == [True, True, False, False]
    assert cache.stats()["fallback_rows"] == 1 and req.tally.causes == {"weights": 1, "fallback": 1}


@pytest.mark.parametrize("pacing", ["even", "estimate"])
def test_a_budget_keeps_its_count_when_changed_weights_force_a_compute(pacing):
    """A LoRA swap mid-run makes a step compute that the budget decided to forecast (nothing valid to
    forecast from): the budget counts it and re-paces, so the request still computes exactly its
    budget -- an evenly spaced budget reads no estimate, so it is told, not left to find out."""
    model = RowWise()
    policy = AutoPolicy(budget="4x", pacing=pacing, form="newton", select_order=False)
    cache = BatchedCache(model, policy, batch_args=("x", "timestep", "cond"))
    req = cache.open(28)
    x, c = torch.randn(1, D), torch.zeros(1, D)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for s in range(28):
            if s == 2:
                model.w.mul_(2.0)
            cache(x, torch.full((1,), 1 - s / 28), c, rows=[req])
    assert cache.stats()["computed_rows"] == len(policy.compute_steps(28)) == 7


def test_a_request_that_never_forecast_says_why():
    model = RowWise()
    cache = BatchedCache(model, FixedPolicy(interval=2), batch_args=("x", "timestep", "cond"))
    req = cache.open(6)
    x, c = torch.randn(1, D), torch.zeros(1, D)
    for i in range(6):                       # grad enabled: every call runs uncached
        cache(x, torch.full((1,), 1 - i / 6), c, rows=[req])
    assert req.decisions == [True] * 6
    with pytest.warns(UserWarning, match="grad was enabled"):
        req.close()
    strict = BatchedCache(model, FixedPolicy(interval=2), batch_args=("x", "timestep", "cond"), strict=True)
    req = strict.open(4)
    for i in range(4):
        strict(x, torch.full((1,), 1 - i / 4), c, rows=[req])
    with pytest.raises(RuntimeError, match="strict"):
        req.close()


def test_told_sigmas_fixed_policies_and_evenly_spaced_budgets_read_nothing_on_the_host():
    model = RowWise()
    cache = BatchedCache(model, FixedPolicy(interval=2), batch_args=("x", "timestep", "cond"))
    reqs = [cache.open(8, sigmas=sigmas(8)), cache.open(8, sigmas=sigmas(8))]
    with torch.no_grad():
        for i in range(8):
            cache(torch.randn(2, D), torch.full((2,), sigmas(8)[i]), torch.zeros(2, D), rows=reqs)
    assert cache.stats()["host_reads"] == 0
    policy = AutoPolicy(threshold=0.3)          # coordinate "step": the timesteps are never read
    auto = BatchedCache(model, policy, batch_args=("x", "timestep", "cond"))
    reqs = [auto.open(8), auto.open(8)]
    with torch.no_grad():
        for i in range(8):
            auto(torch.ones(2, D), torch.full((2,), sigmas(8)[i]), torch.zeros(2, D), rows=reqs)
    # the two requests' estimates are read together, once per tick past the warm-up
    assert auto.stats()["host_reads"] == 8 - policy.warmup_steps
    even = BatchedCache(model, "auto-2x", batch_args=("x", "timestep", "cond"))   # a budget at even spacing
    reqs = [even.open(8), even.open(8)]
    with torch.no_grad():
        for i in range(8):
            even(torch.ones(2, D), torch.full((2,), sigmas(8)[i]), torch.zeros(2, D), rows=reqs)
    assert even.stats()["host_reads"] == 0 and reqs[0].decisions == [s in load_policy("auto-2x").compute_steps(8)
                                                                      for s in range(8)]


def _counting():
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    return graphs, backend


@pytest.mark.parametrize("buckets, most", [((1, 2, 4, 8), 4), (None, 3)])
def test_sub_batch_sizes_recompile_a_bounded_number_of_times(buckets, most):
    torch._dynamo.reset()
    graphs, backend = _counting()
    model = RowWise()
    compiled = torch.compile(model, backend=backend)
    cache = BatchedCache(compiled, FixedPolicy(interval=2), batch_args=("x", "timestep", "cond"), buckets=buckets)
    with torch.no_grad():
        reqs = []
        for tick in range(24):                       # a request joins every tick until 8 are in flight
            if len(reqs) < 8:
                reqs.append(cache.open(30))
            n = len(reqs)
            cache(torch.randn(n, D), torch.rand(n), torch.zeros(n, D), rows=reqs)
    sizes = cache.stats()["sub_batch_sizes"]
    assert set(sizes) <= set(buckets or range(1, 9)) and len(sizes) >= (4 if buckets else 5)
    assert 1 <= len(graphs) <= most                   # compiled at most this often


def test_demo_flux_engine_matches_each_request_alone():
    """The example's engine on the shipped Flux: mixed step counts, policies and CFG layouts; each
    request decides as it does alone, and its result differs from its solo run only by what the
    model's batch-size-dependent CPU kernels differ by."""
    ex = _example()
    BATCH_ARGS, FluxJob, serve = ex.BATCH_ARGS, ex.Job, ex.serve
    from taylorseer_fx.demo.flux_model import load_transformer

    torch.manual_seed(0)
    model = load_transformer()
    jobs = [FluxJob(3, 12, "auto-2x", 3.0, 0, 0), FluxJob(5, 10, "auto-3x", 1.0, 1, 1),
            FluxJob(7, 12, "official-flux", 3.0, 2, 3)]
    decided = []
    cache = BatchedCache(model, "auto-2x", batch_args=BATCH_ARGS)
    opened = cache.open
    cache.open = lambda *a, **k: decided.append(opened(*a, **k)) or decided[-1]
    together = serve(model, jobs, cache)
    for k, job in enumerate(jobs):
        solo = BatchedCache(model, "auto-2x", batch_args=BATCH_ARGS)
        alone = serve(model, [job], solo)
        assert solo.stats()["computed_rows"] < solo.stats()["rows"]             # it did forecast
        ref = alone["latents"][0]
        assert float((together["latents"][k] - ref).norm() / ref.norm()) < 1e-4
    assert [len(r.decisions) for r in decided] == [12, 10, 12]
    assert cache.stats()["bytes"] == 0 and together["calls"] <= together["ticks"]


def test_serve_batched_example_runs(capsys):
    _example().main(["--requests", "3", "--concurrency", "2"])
    out = capsys.readouterr().out
    assert "throughput" in out and "cached state left: 0 bytes" in out


def test_policies_per_request_and_presets():
    model = RowWise()
    cache = BatchedCache(model, "auto-2x", batch_args=("x", "timestep", "cond"))
    a = cache.open(10, policy=FixedPolicy(interval=5))
    b = cache.open(10)
    assert a.policy == FixedPolicy(interval=5) and b.policy == load_policy("auto-2x")


def test_a_request_decides_and_forecasts_as_the_host_policy_and_forecaster():
    """One request through the cache against a replay with the policy's schedule and a Forecaster of its
    own: the same decisions, and bit-equal outputs (the cache keeps exactly that forecaster)."""
    model = RowWise()
    policy = AutoPolicy(threshold=0.05)
    n = 16
    x = torch.linspace(-1, 1, D).reshape(1, D)
    c = torch.zeros(1, D)
    cache = BatchedCache(model, policy, batch_args=("x", "timestep", "cond"))
    req = cache.open(n)
    with torch.no_grad():
        got = [cache(x, torch.full((1,), sigmas(n)[i]), c, rows=[req])[0] for i in range(n)]
        sched = policy.start(n)
        f = Forecaster(**policy.forecaster_options())
        for i in range(n):
            est = (lambda: float(f.error_estimate(float(i), policy.error_estimator, degree=policy.order) or math.nan)) \
                if f.num_points else None
            if sched.decide(i, est):
                y = model(x, torch.full((1,), sigmas(n)[i]), c)[0]
                f.update(float(i), (y,), derivatives=sched.derivatives(i))
                assert req.decisions[i] and torch.equal(got[i], y)
            else:
                assert not req.decisions[i] and torch.equal(got[i], f.forecast(float(i))[0])
    assert 0 < sum(req.decisions) < n
