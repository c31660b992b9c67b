"""AutoPolicy end to end: determinism, threshold monotonicity, forced computes under generated
trajectories, exact (polynomial) trajectories, jumps, the three region kinds, presets and validation.

Two levels, both fast: the runtime alone (``Runtime`` / ``GraphRuntime`` driven by hand with a region
that returns a given trajectory; hypothesis generates trajectories and policies) and the backend on
toy modules whose block output is an explicit function of the timestep (``inner="eager"``).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taylorseer_fx import AutoPolicy, load_policy, taylorseer_backend
from taylorseer_fx.policy.auto import ACCUMULATE
from taylorseer_fx.forecast.estimates import ESTIMATORS
from taylorseer_fx.policy.presets import policy_from_dict
from taylorseer_fx.runtime.report import decision_trace
from taylorseer_fx.testing import strategies as S
from taylorseer_fx.runtime.runtime import Runtime
from taylorseer_fx.graph.transform import RegionInfo

from policy_helpers import forecast_runs

torch.set_num_threads(1)

FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


# ================================================================= runtime alone

def call_graph(graph, body, args):
    """One model call of a hand-driven GraphRuntime whose split graph is ``body`` (no whole graph)."""
    graph.pieces = body
    return graph(args)


def drive(policy, outputs, coords=None, num_steps=None) -> list[dict]:
    """One generation through a one-region GraphRuntime whose region returns ``outputs[step]``
    (computed or not, the trajectory is the same: decisions only depend on the policy and it).
    Returns the trace rows (step, decision, estimate)."""
    n = len(outputs)
    coords = coords if coords is not None else [1.0 - k / n for k in range(n)]
    rt = Runtime(policy, num_steps=num_steps)
    g = rt.new_graph([RegionInfo(0, "r")], timestep_index=0, dynamic_indices=(0,))
    with torch.no_grad():
        for k in range(n):
            call_graph(g, lambda ts, k=k: g.run_region(0, lambda ts: (outputs[k],), (ts,))[0],
              (torch.full((1,), float(coords[k])),))
    return [{"step": c["step"], "decision": c["decision"], "estimate": c["estimate"]}
            for c in rt.stats()["trace"]]


def computes(trace) -> list[int]:
    return [c["step"] for c in trace if c["decision"] == "compute"]


trajectories = S.random_walks


def auto_policies(n=None):
    """Any AutoPolicy (``taylorseer_fx.testing.strategies.auto_policies``; ``n`` unused)."""
    return S.auto_policies()


@FAST
@given(st.data())
def test_forced_computes_honoured(data):
    """Warm-up and cooldown steps are computed, no forecast run is longer than max_forecast_run, and
    no compute interrupts a forecast run shorter than min_forecast_run outside warm-up/cooldown."""
    outputs = data.draw(trajectories())
    n = len(outputs)
    p = data.draw(auto_policies(n))
    steps = computes(drive(p, outputs, num_steps=n))
    if n < p.min_steps:                      # too short to forecast well: every step computes
        assert steps == list(range(n))
        return
    end = n - p.cooldown
    assert set(range(min(p.warmup_steps, n))) <= set(steps)
    assert set(range(max(end, 0), n)) <= set(steps)
    if p.max_forecast_run is not None:
        assert all(r <= p.max_forecast_run for r in forecast_runs(steps, n))
    for a, b in zip(steps, steps[1:]):       # a compute b that nothing forces ends a run >= min_run
        if p.warmup_steps <= b < end:
            assert b - a - 1 >= p.min_forecast_run


@FAST
@given(S.auto_policies() | S.budget_policies(), st.integers(1, 13), st.integers(0, 4))
def test_a_run_shorter_than_min_steps_never_forecasts_and_says_so_once(policy, n, first):
    """Counted from the run's first step (img2img, a model joining mid-run): fewer than min_steps steps
    compute every step, whatever the estimate, and one warning per length says so; longer runs give
    no such warning."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(2):
            sched = policy.start(n + first, first_step=first)
            got = [s for s in range(first, n + first) if sched.decide(s, lambda: 1e-9)]
    said = [w for w in caught if f"a run of {n} steps is shorter than min_steps={policy.min_steps}" in str(w.message)]
    if n < policy.min_steps:
        assert got == list(range(first, n + first)) and len(said) == 1
    else:
        assert said == []


@FAST
@given(st.data())
def test_deterministic(data):
    """The same trajectory and policy give the same decisions and estimates, run after run."""
    outputs = data.draw(trajectories())
    p = data.draw(auto_policies(len(outputs)))
    a = drive(p, outputs, num_steps=len(outputs))
    b = drive(p, outputs, num_steps=len(outputs))
    assert a == b
    assert p == AutoPolicy(**{f: getattr(p, f) for f in p.__dataclass_fields__}) and hash(p) == hash(
        AutoPolicy(**{f: getattr(p, f) for f in p.__dataclass_fields__}))


# Smaller tau never computes fewer steps. On a fixed trajectory the estimate at a step depends on
# which steps were computed, so monotonicity is a property of the rule, proven here for estimates
# that are a function of (step, steps since the last compute), non-decreasing in the latter -- the
# model of a trajectory the policy cannot change -- for every estimator/accumulate/min/max/cooldown.
@FAST
@given(st.lists(st.floats(0, 0.2, allow_nan=False), min_size=40, max_size=40), st.floats(1e-3, 0.5),
       st.floats(1e-3, 0.5), st.sampled_from([False, True, *ACCUMULATE]), st.one_of(st.none(), st.integers(1, 8)),
       st.integers(0, 3),
       st.integers(0, 2), st.integers(1, 40), st.sampled_from(ESTIMATORS))
def test_threshold_monotone(base, t1, t2, accumulate, max_run, min_run, cooldown, n, estimator):
    lo, hi = sorted((t1, t2))
    if max_run is not None:
        min_run = min(min_run, max_run)
    est = lambda s, k: base[s] * k  # noqa: E731
    kw = dict(accumulate=accumulate, max_forecast_run=max_run, min_forecast_run=min_run, cooldown=cooldown,
              estimator=estimator)
    steps_lo = AutoPolicy(threshold=lo, **kw).compute_steps(n, est)
    steps_hi = AutoPolicy(threshold=hi, **kw).compute_steps(n, est)
    assert len(steps_lo) >= len(steps_hi)
    assert AutoPolicy(threshold=lo, **kw).compute_steps(n, est) == steps_lo


@FAST
@given(st.lists(st.floats(0, 0.3, allow_nan=False), min_size=30, max_size=30), st.floats(1e-3, 0.6),
       st.sampled_from(ACCUMULATE), st.integers(2, 5))
def test_each_forecast_run_is_the_longest_the_rule_allows(base, tau, rule, warmup):
    """What ``accumulate`` means: every forecast run's estimates combined (``step``: the last one;
    ``sum``; ``rss``: sqrt of the sum of squares) stay <= threshold, and the compute that ends a run
    (outside the warm-up) is the step whose estimate would have taken the combination above it."""
    n = len(base)
    est = lambda s, k: base[s] * k  # noqa: E731 - grows with the distance from the last compute
    combine = {"step": lambda v: v[-1], "sum": sum, "rss": lambda v: math.sqrt(sum(x * x for x in v))}[rule]
    steps = AutoPolicy(threshold=tau, accumulate=rule, warmup=warmup).compute_steps(n, est)
    for a, b in zip(steps, steps[1:] + [n]):
        run = [est(s, s - a) for s in range(a + 1, b)]
        if run:
            assert combine(run) <= tau
        if b < n and b >= warmup:
            assert combine(run + [est(b, b - a)]) > tau


def test_threshold_monotone_on_demo_like_trajectory():
    """The same on a real forecaster: a smooth trajectory with a fast start and end (like the demo
    model's features); the estimates depend on the computed points, and the counts still order."""
    n = 40
    s = torch.linspace(0, 1, n)
    shape = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    outputs = [shape * (1 + 0.5 * torch.tanh(8 * (v - 0.05)) + 0.3 * v ** 6) + 1.0 for v in s]
    counts = []
    for tau in (0.3, 0.1, 0.03, 0.01, 0.003, 0.001):
        counts.append(len(computes(drive(AutoPolicy(threshold=tau), outputs))))
    assert counts == sorted(counts) and counts[0] < counts[-1]


# ================================================================= backend on toy modules

class Explicit(torch.nn.Module):
    """A block whose output is an explicit function of the timestep: h + fn(t) (same for all tokens)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, h, t):
        return h + self.fn(t)[:, None]


class Toy(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.blocks = torch.nn.ModuleList([Explicit(fn)])

    def forward(self, x, timestep):
        h = x * 1.0
        for block in self.blocks:
            h = block(h, timestep)
        return h


def run_toy(policy, fn, coords, x=None) -> tuple[list[dict], list[torch.Tensor], list[torch.Tensor]]:
    """The toy compiled with the backend (eager pieces) along ``coords``: (trace, outputs, exact)."""
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(3)) if x is None else x
    torch._dynamo.reset()    # every toy is a fresh compile (dynamo's per-code cache limit)
    be = taylorseer_backend(policy, regions="stack", inner="eager", num_steps=len(coords))
    model = torch.compile(Toy(fn), backend=be)
    plain = Toy(fn)
    outs, exact = [], []
    with torch.no_grad():
        for c in coords:
            t = torch.full((2,), float(c))
            outs.append(model(x, t))
            exact.append(plain(x, t))
    LAST_STATS.clear()
    LAST_STATS.update(be.stats())
    trace = [{"step": c["step"], "decision": c["decision"], "estimate": c["estimate"]}
             for c in LAST_STATS["trace"]]
    return trace, outs, exact


LAST_STATS: dict = {}   # backend.stats() of the last run_toy


def _poly(coeffs):
    return lambda t: sum(c * t ** k for k, c in enumerate(coeffs))


@pytest.mark.parametrize("estimator,order,degree,form", [
    ("remainder", 1, 1, "newton"), ("remainder", 2, 2, "newton"), ("remainder", 2, 1, "newton"),
    ("remainder", 1, 1, "taylor"), ("pair", 1, 0, "newton"), ("pair", 2, 1, "newton"),
    ("pair", 1, 0, "taylor"), ("pair", 3, 2, "newton")])
@pytest.mark.parametrize("max_run", [None, 4])
def test_polynomial_trajectory_is_not_recomputed(estimator, order, degree, form, max_run):
    """A trajectory the forecast reproduces exactly has estimate ~0: after warm-up only
    max_forecast_run forces computes. (The remainder needs order + 2 points, the pair 2, so the warm-up
    is made long enough for the estimator to exist.) Non-uniform coordinates for newton."""
    n = 24
    coords = [1.0 - k / n * (0.7 + 0.3 * k / n) for k in range(n)] if form == "newton" else [1.0 - k / n for k in range(n)]
    warmup = order + 2 if estimator == "remainder" else max(order + 1, 2)
    coordinate = "timestep" if form == "newton" else "step"
    policy = AutoPolicy(threshold=1e-2, order=order, form=form, coordinate=coordinate, estimator=estimator,
                        warmup=warmup, max_forecast_run=max_run)
    trace, outs, exact = run_toy(policy, _poly([1.0, -2.0, 3.0, 0.5][:degree + 1]), coords)
    steps = computes(trace)
    forced = list(range(warmup)) + (list(range(warmup - 1 + max_run + 1, n, max_run + 1)) if max_run else [])
    assert steps == forced
    # zero up to float32 rounding of the outputs, amplified by the divided differences and the horizon
    assert all(c["estimate"] < 1e-3 for c in trace if c["decision"] == "forecast")
    for o, e in zip(outs, exact):
        torch.testing.assert_close(o, e, rtol=5e-3, atol=5e-3)


@pytest.mark.parametrize("select_order", [True, False])
def test_order_selection_finds_a_quadratic(select_order):
    """A region output quadratic in the step: from the first compute whose back-test could see degree 2
    (three earlier points), the policy (order 1, select_order, form newton: exact for quadratics)
    forecasts with degree 2 and is exact; without select_order the order-1 forecasts are not."""
    n = 20
    coords = [1.0 - k / n for k in range(n)]
    policy = AutoPolicy(threshold=10.0, max_forecast_run=3, select_order=select_order, form="newton")
    trace, outs, exact = run_toy(policy, lambda t: 3.0 * t ** 2 - 2.0 * t + 1.0, coords)
    assert computes(trace) == [0, 1, 2, 6, 10, 14, 18]          # warm-up, then max_forecast_run
    late = [(o - e).abs().max().item() for c, o, e in zip(trace, outs, exact)
            if c["decision"] == "forecast" and c["step"] > 6]
    if select_order:
        assert max(late) < 1e-4
    else:
        assert min(late) > 1e-3
    # the chosen degrees are in the trace (read by stats(), not during the run) and in the report
    rows = decision_trace({"trace": LAST_STATS["trace"]})
    orders = {r["step"]: r["order"] for r in rows if r["decision"] == "compute"}
    if select_order:
        assert orders[2] in (0, 1) and all(orders[s] == 2 for s in (6, 10, 14, 18))
    else:
        assert set(orders.values()) == {None}


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_coordinate_jump_triggers_a_compute_at_the_jump(estimator):
    """A smooth trajectory sampled with one large coordinate step (newton in the timestep): the
    estimate, which grows with the distance to the stored nodes, passes tau exactly at the jump."""
    n, jump = 20, 12
    coords = [1.0 - 0.01 * k if k < jump else 0.5 - 0.01 * k for k in range(n)]
    # the pair sees the slope, the remainder the curvature: a trajectory with a little of each
    fn = (lambda t: 0.05 * t) if estimator == "pair" else (lambda t: 0.05 * t + 0.2 * t ** 2)
    policy = AutoPolicy(threshold=0.02, order=1, form="newton", coordinate="timestep", warmup=3,
                        estimator=estimator)
    trace, _, _ = run_toy(policy, fn, coords, x=torch.ones(2, 6))
    assert computes(trace) == [0, 1, 2, jump]
    est = {c["step"]: c["estimate"] for c in trace}
    assert est[jump] > 0.02 > max(v for s, v in est.items() if v is not None and s != jump)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_output_jump_is_caught_at_the_next_compute(estimator):
    """A jump in the output itself cannot be seen before a compute shows it; the compute that does
    shows a large difference, and the policy keeps computing until the trajectory is smooth again."""
    n, jump = 30, 12
    coords = [1.0 - k / n for k in range(n)]
    t_jump = coords[jump]
    policy = AutoPolicy(threshold=0.02, order=1, estimator=estimator, max_forecast_run=4,
                        warmup=3)
    trace, outs, exact = run_toy(policy, lambda t: 0.2 * t + 5.0 * (t <= t_jump + 1e-6).float(), coords)
    steps = computes(trace)
    first = min(s for s in steps if s >= jump)
    assert first <= jump + 4                                 # max_forecast_run bounds the blind run
    assert first + 1 in steps or first + 2 in steps          # the jump shows: compute again soon
    late = [s for s in steps if s > first + 3]
    assert len(late) < len(range(first + 4, n)) - 2          # then smooth again: forecasts resume


@pytest.mark.parametrize("order,form", [(1, "taylor"), (1, "newton"), (2, "newton")])
def test_threshold_bounds_the_relative_error_on_smooth_trajectories(order, form):
    """What the threshold means (docs/auto.md): the estimate of a forecast step is an estimate of the
    relative error of the forecast region output. On a smooth trajectory whose derivatives shrink
    with their order (exp(2t) on [0, 1]) the pair is an upper-side estimate, so every forecast step's
    actual relative error is <= estimate <= tau. (Not for taylor order >= 2 with uneven gaps: its
    factors then mix gaps, and its error is not the last term.)"""
    n = 60
    coords = [1.0 - k / n for k in range(n)]
    policy = AutoPolicy(threshold=0.1, order=order, form=form)
    trace, outs, exact = run_toy(policy, lambda t: torch.exp(2.0 * t), coords, x=torch.zeros(2, 6))
    checked = 0
    for c, o, e in zip(trace, outs, exact):
        if c["decision"] == "forecast":
            actual = float((o - e).norm() / e.norm())
            assert actual <= c["estimate"] <= 0.1
            checked += 1
    assert checked > n // 3


# ================================================================= region kinds, per region

def _plain_dit():
    from dit_plain import make_plain_dit, plain_dit_inputs
    model = make_plain_dit(seed=0)
    x, y = plain_dit_inputs(batch=2, seed=1)
    return model, x, y


@pytest.mark.parametrize("regions", ["stack", "stack-residual", "modules"])
@pytest.mark.parametrize("per_region", [False, True])
def test_region_kinds_share_the_estimate(regions, per_region):
    """The same AutoPolicy runs on every region kind: one finite estimate per decided step (the max
    over regions), some steps forecast, and with per_region the regions decide on their own."""
    model, x, y = _plain_dit()
    torch._dynamo.reset()
    be = taylorseer_backend(AutoPolicy(threshold=0.3, per_region=per_region), regions=regions, inner="eager")
    compiled = torch.compile(model, backend=be)
    with torch.no_grad():
        for k in range(16):
            compiled(x, torch.full((2,), 1000.0 * (1 - k / 16)), y)
    s = be.stats()
    decided = [c for c in s["trace"] if c["step"] >= 3]
    assert decided and all(c["estimate"] is not None and math.isfinite(c["estimate"]) for c in decided)
    assert s["forecast"] > 0
    assert (len(s["regions"]) == 1) == (regions != "modules")
    if not per_region:      # one decision per step for all regions
        for c in s["trace"]:
            assert len(set(c["regions"].values()) - {"fallback"}) <= 1


# ================================================================= presets, validation

def test_presets_are_ordered():
    fast, bal, qual = (load_policy(f"auto-{k}") for k in ("fast", "balanced", "quality"))
    for p in (fast, bal, qual):
        assert isinstance(p, AutoPolicy) and p.estimator in ESTIMATORS and p.cooldown == 0
        assert p.num_steps is None and not p.needs_num_steps()   # presets need no step count
    assert fast.threshold > bal.threshold > qual.threshold


@pytest.mark.parametrize("kw,field", [
    (dict(threshold=0), "threshold"), (dict(threshold=-0.1), "threshold"),
    (dict(threshold=float("nan")), "threshold"), (dict(threshold=float("inf")), "threshold"),
    (dict(threshold="0.1"), "threshold"), (dict(threshold=True), "threshold"),
    (dict(threshold=0.1, estimator="embedded"), "estimator"),
    (dict(threshold=0.1, accumulate=1), "accumulate"), (dict(threshold=0.1, per_region="no"), "per_region"),
    (dict(threshold=0.1, order=-1), "order"), (dict(threshold=0.1, order=1.5), "order"),
    (dict(threshold=0.1, form="euler"), "form"), (dict(threshold=0.1, warmup=0), "warmup"),
    (dict(threshold=0.1, order=2, form="newton", warmup=2.5), "warmup"),
    (dict(threshold=0.1, cooldown=-1), "cooldown"), (dict(threshold=0.1, max_forecast_run=0), "max_forecast_run"),
    (dict(threshold=0.1, min_forecast_run=-1), "min_forecast_run"),
    (dict(threshold=0.1, min_forecast_run=3, max_forecast_run=2), "min_forecast_run"),
    (dict(threshold=0.1, select_order="yes"), "select_order"), (dict(threshold=0.1, order=2, max_order=1), "max_order"),
    (dict(threshold=0.1, max_order=2.0), "max_order"), (dict(threshold=0.1, order_margin=0), "order_margin"),
    (dict(threshold=0.1, order_margin=1.2), "order_margin"), (dict(threshold=0.1, order_margin=True), "order_margin"),
    (dict(threshold=0.1, form="newton", coordinate="sigma"), "coordinate"),
])
def test_bad_fields_raise_naming_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        AutoPolicy(**kw)


def test_bad_preset_fields_raise():
    with pytest.raises(ValueError, match="estimator"):
        policy_from_dict({"kind": "auto", "threshold": 0.1, "estimator": "x"})
    with pytest.raises(ValueError, match="tolerance"):
        policy_from_dict({"kind": "auto", "tolerance": 0.1})
    with pytest.raises(ValueError, match="threshold"):
        policy_from_dict({"kind": "auto"})


@pytest.mark.parametrize("per_region", [False, True])
def test_one_host_read_per_step(monkeypatch, per_region):
    """Many regions (modules of a 3-block DiT), one host read per decided step: the stacked estimates
    (max over regions, or the per-region vector), and none in warm-up. In a session the coordinate is
    counted, not read, so that is all the syncing the runtime does."""
    model, x, y = _plain_dit()
    torch._dynamo.reset()
    be = taylorseer_backend(AutoPolicy(threshold=0.3, per_region=per_region), regions="modules", inner="eager")
    compiled = torch.compile(model, backend=be)
    steps = 12
    ts = [1000.0 * (1 - k / steps) for k in range(steps)]
    with torch.no_grad(), be.session(timesteps=ts):
        compiled(x, torch.full((2,), ts[0]), y)               # compile outside the count
    be.reset()
    reads = []
    for name in ("tolist", "item", "__float__", "__int__", "__bool__"):
        orig = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=orig, _n=name, **k: (reads.append(_n), _o(self, *a, **k))[1])
    per_step = []
    with torch.no_grad(), be.session(timesteps=ts):
        for t in ts:
            n = len(reads)
            compiled(x, torch.full((2,), t), y)
            per_step.append(reads[n:])
    monkeypatch.undo()
    assert len(be.stats()["regions"]) == 6
    assert per_step[:3] == [[], [], []]                       # warm-up: nothing read
    assert all(r == ["tolist"] for r in per_step[3:])         # one read per decided step


def test_a_warm_up_below_the_divided_forms_order_is_gated_by_the_estimate():
    """AutoPolicy takes any warm-up >= 1 for newton / heun too (a fixed schedule needs order + 1): with
    one compute stored there is no estimate yet, so a threshold computes the next step, and the first
    forecast comes once the pair of the stored points says it may."""
    p = AutoPolicy(threshold=0.1, order=2, form="newton", warmup=1)
    assert p.warmup_steps == 1
    sched = p.start(10)
    assert sched.decide(0) and sched.decide(1, lambda: math.nan)        # no estimate yet: compute
    assert not sched.decide(2, lambda: 0.01)                              # an estimate under the threshold
