"""Decisions on the device (``DeviceStepCache``): the threshold rule on the device decides exactly as the
host's policy does on the same estimates, the device forecaster's estimates and forecasts are the host
forecaster's, and a step reads nothing on the host (counted)."""

from __future__ import annotations

import contextlib
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings, strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from taylorseer_fx import AutoPolicy, FixedPolicy, Forecaster
from taylorseer_fx.serving.device_step import DeviceStepCache
from taylorseer_fx.testing.strategies import coordinates

FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


class Trajectory:
    """A smooth output y(t) (a quadratic and a sine, per element), computed on the tensor timestep."""

    def __init__(self, seed: int, wiggle: float):
        g = torch.Generator().manual_seed(seed)
        self.basis = torch.randn(4, 2, 16, generator=g, dtype=torch.float64)
        self.wiggle = wiggle

    def __call__(self, x, timestep):
        t = timestep.reshape(-1)[0].to(torch.float64)
        b = self.basis
        return (b[0] + b[1] * t + 0.5 * b[2] * t * t + b[3] * torch.sin(self.wiggle * t)).float() + 0.0 * x


@st.composite
def device_policies(draw):
    order = draw(st.integers(0, 3))
    form = draw(st.sampled_from(["newton", "heun"]))
    max_run = draw(st.one_of(st.none(), st.integers(1, 5)))
    common = dict(order=order, form=form, coordinate=draw(st.sampled_from(["step", "timestep"])),
                  warmup=draw(st.integers(order + 1, order + 3)), cooldown=draw(st.integers(0, 3)),
                  max_forecast_run=max_run)
    if draw(st.booleans()):
        return FixedPolicy(interval=draw(st.integers(1, 4)), **common)
    return AutoPolicy(threshold=draw(st.floats(1e-3, 0.5)), select_order=False,
                      estimator=draw(st.sampled_from(["pair", "remainder"])),
                      accumulate=draw(st.sampled_from(["step", "sum", "rss"])),
                      min_forecast_run=draw(st.integers(0, min(2, max_run or 2))), min_steps=draw(st.sampled_from([0, 8])), **common)


def run(policy, traj, ts, mode="cond"):
    cache = DeviceStepCache(traj, policy, num_steps=len(ts), mode=mode)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outs = [cache(torch.zeros(2, 16), torch.tensor([t])) for t in ts]
    return cache, outs


def host_replay(policy, traj, ts, decisions):
    """The host Forecaster through the same decisions: its estimate at each step and its forecasts."""
    f = Forecaster(policy.order, policy.forecast.form)
    est, outs = [], []
    for i, (t, computed) in enumerate(zip(ts, decisions)):
        x = float(i) if policy.forecast.coordinate == "step" else t
        if f.num_points:
            e = f.error_estimate(x, policy.error_estimator, degree=policy.order)
            est.append(math.nan if e is None else float(e))
        else:
            est.append(math.nan)
        if computed:
            y = traj(torch.zeros(2, 16), torch.tensor([t]))
            f.update(x, y)
            outs.append(y)
        else:
            outs.append(f.forecast(x))
    return est, outs


@FAST
@given(device_policies(), st.integers(8, 30), st.integers(0, 5), st.floats(0.5, 4.0), st.data())
def test_device_decisions_estimates_and_forecasts_are_the_hosts(policy, n, seed, wiggle, data):
    ts = data.draw(coordinates(n))
    traj = Trajectory(seed, wiggle)
    cache, outs = run(policy, traj, ts, "cond")
    decided, est = cache.decisions(), cache.estimates()
    assert decided[0] and len(decided) == n
    # the rule: the host policy's decisions on the device's own estimates
    if policy.reads_estimate:
        host = policy.compute_steps(n, estimate=lambda s, k: est[s])
    else:
        host = policy.compute_steps(n)
    assert decided == [i in host for i in range(n)]
    # the math: the host forecaster through the same decisions
    host_est, host_outs = host_replay(policy, traj, ts, decided)
    device_decided = policy.reads_estimate and not (policy.min_steps and n < policy.min_steps)
    for i, e in enumerate(est):
        if device_decided and policy.warmup_steps <= i < n - policy.cooldown:
            assert math.isnan(e) == math.isnan(host_est[i])       # None on the host: NaN here (computes)
        if not math.isnan(e):
            assert e == pytest.approx(host_est[i], rel=1e-3, abs=1e-7)
    for a, b in zip(outs, host_outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(b.abs().max()) + 1e-6)
    # select: the same run, bit for bit
    _, sel = run(policy, traj, ts, "select")
    assert all(torch.equal(a, b) for a, b in zip(outs, sel))


@contextlib.contextmanager
def python_reads(names, log: list):
    """Appends to ``log`` the name of every call in the block of the ``torch.Tensor`` methods ``names``
    (patched on the class, restored on exit)."""
    saved = {k: getattr(torch.Tensor, k) for k in names}

    def counting(k, fn):
        def counted(t, *a, **kw):
            log.append(k)
            return fn(t, *a, **kw)
        return counted
    for k in names:
        setattr(torch.Tensor, k, counting(k, saved[k]))
    try:
        yield log
    finally:
        for k, fn in saved.items():
            setattr(torch.Tensor, k, fn)


class HostReads(TorchDispatchMode):
    """Counts every scalar a tensor hands to the host: ``_local_scalar_dense`` (``item``, ``bool``,
    ``float``, ``int``) in the dispatcher, and ``tolist`` / ``numpy`` at the Python level."""

    def __init__(self):
        super().__init__()
        self.dispatched, self.python = 0, []

    @property
    def reads(self) -> int:
        return self.dispatched + len(self.python)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.dispatched += 1
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._patch = python_reads(("tolist", "numpy"), self.python)
        self._patch.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        self._patch.__exit__(*exc)
        return super().__exit__(*exc)


def _emulated_cond(pred, true_fn, false_fn, operands):
    """What a CUDA-graph capture records for ``torch.cond``: both branches, the predicate stays on the
    device (a conditional node runs one of them; here both run and the predicate selects)."""
    a, b = true_fn(*operands), false_fn(*operands)
    return tuple(torch.where(pred, x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("mode", ["select", "cond"])
def test_a_step_reads_nothing_on_the_host(mode, monkeypatch):
    policy = AutoPolicy(threshold=0.05, select_order=False)
    traj, n = Trajectory(0, 1.0), 24
    ts = [1 - i / n for i in range(n)]
    if mode == "cond":
        monkeypatch.setattr(torch, "cond", _emulated_cond)
    cache = DeviceStepCache(traj, policy, num_steps=n, mode=mode)
    with torch.no_grad(), HostReads() as counter:
        for t in ts:
            cache(torch.zeros(2, 16), torch.tensor([t]))
    assert counter.reads == 0
    decided = cache.decisions()              # one read, after the run
    assert 0 < sum(decided) < n              # it did forecast, and compute after the warm-up


@pytest.mark.usefixtures("one_thread_fresh_dynamo")   # the other tests' trajectories differ in a float attribute,
def test_eager_cond_reads_its_predicate_and_nothing_else():  # which dynamo would make a graph input read with item()
    """Outside a capture eager ``torch.cond`` reads its predicate on the host: one read per step the
    estimate decides -- what the host mode reads -- and nothing else (no guard on a tensor's value)."""
    policy = AutoPolicy(threshold=0.05, select_order=False)
    traj, n = Trajectory(0, 1.0), 24
    ts = [1 - i / n for i in range(n)]
    cache = DeviceStepCache(traj, policy, num_steps=n, mode="cond")
    names = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")
    reads = []
    with torch.no_grad():
        for t in ts[:policy.warmup_steps + 1]:        # the first device step traces the branches
            cache(torch.zeros(2, 16), torch.tensor([t]))
        with python_reads(names, reads):
            for t in ts[policy.warmup_steps + 1:]:
                cache(torch.zeros(2, 16), torch.tensor([t]))
    assert reads == ["__bool__"] * (n - policy.warmup_steps - 1)


def test_demo_flux_decides_on_the_device():
    """The shipped Flux in a bare Euler loop with batched CFG: the device mode forecasts, stays close to
    the uncached run, and its two modes agree bit for bit."""
    from taylorseer_fx.demo.flux_model import condition, image_ids, load_label_table, load_transformer, text_ids
    from taylorseer_fx.demo.flux_pipeline import initial_noise

    model, table = load_transformer(), load_label_table()
    n = 16
    sig = [1 - i / n for i in range(n + 1)]
    labels = torch.tensor([3, 10])

    def sample(step):
        x = initial_noise(1, 0)
        for i in range(n):
            v = step(torch.cat([x, x]), torch.full((2,), sig[i]))
            vc, vu = v.chunk(2)
            x = x + (sig[i + 1] - sig[i]) * (vu + 3.0 * (vc - vu))
        return x

    pe, pooled = condition(labels, table)        # outside the step: it checks the labels on the host
    ids = dict(img_ids=image_ids(), txt_ids=text_ids())

    def velocity(x, timestep):
        return model(hidden_states=x, encoder_hidden_states=pe, pooled_projections=pooled, timestep=timestep,
                     return_dict=False, **ids)[0]

    with torch.no_grad():
        ref = sample(velocity)
        got = {}
        for mode in ("cond", "select"):
            cache = DeviceStepCache(velocity, AutoPolicy(threshold=0.1, select_order=False), num_steps=n, mode=mode)
            got[mode] = sample(cache)
            assert 0 < n - sum(cache.decisions()) < n - 3
    assert torch.equal(got["cond"], got["select"])
    assert float((got["cond"] - ref).norm() / ref.norm()) < 0.1


@pytest.mark.parametrize("policy, match", [
    (AutoPolicy(threshold=0.1), "select_order must be False"),
    (AutoPolicy(budget=0.5, select_order=False, pacing="estimate"), "budget"),
    (FixedPolicy(interval=2, form="taylor"), "form must be one of"),
    (AutoPolicy(threshold=0.1, select_order=False, per_region=True), "per_region"),
    (FixedPolicy(interval=2, derivatives_from=2), "derivatives_from must be 0"),
])
def test_policies_the_device_cannot_follow_are_refused(policy, match):
    with pytest.raises(ValueError, match=match):
        DeviceStepCache(Trajectory(0, 1.0), policy, num_steps=10)


@pytest.mark.parametrize("budget, n", [(0.5, 10), ("3x", 28), (0.25, 50)])
def test_an_evenly_spaced_budget_is_decided_on_the_host_with_its_exact_count(budget, n):
    """A budget at even spacing reads no estimate: its schedule follows from the step count, so the
    device mode takes it as it takes a fixed schedule, and computes exactly the budget's steps."""
    policy = AutoPolicy(budget=budget, select_order=False)
    assert not policy.reads_estimate
    ts = [1.0 - i / n for i in range(n)]
    cache, _ = run(policy, Trajectory(0, 1.0), ts)
    assert [i for i, c in enumerate(cache.decisions()) if c] == policy.compute_steps(n)


def test_an_evenly_spaced_budget_keeps_its_count_when_changed_weights_force_a_compute():
    """The step after a LoRA swap computes whatever the schedule said; the budget counts it and
    re-paces the rest, so the run computes exactly the budget's steps."""
    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(8))

        def forward(self, x, timestep):
            return torch.tanh(x * self.w + timestep)
    model, policy = Module(), AutoPolicy(budget="4x", form="newton", select_order=False)
    cache = DeviceStepCache(model, policy, num_steps=28)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        for s in range(28):
            if s == 2:
                model.w.mul_(2.0)
            cache(torch.ones(8), torch.tensor(1 - s / 28))
    d = cache.decisions()
    assert d[2] and sum(d) == len(policy.compute_steps(28)) == 7


def test_bad_calls():
    traj = Trajectory(0, 1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        DeviceStepCache(traj, AutoPolicy(threshold=0.1, select_order=False), num_steps=4, mode="both")
    with pytest.raises(ValueError, match="num_steps must be"):
        DeviceStepCache(traj, AutoPolicy(threshold=0.1, select_order=False), num_steps=0)
    cache = DeviceStepCache(traj, FixedPolicy(interval=2, coordinate="timestep"), num_steps=2)
    with torch.no_grad():
        with pytest.raises(ValueError, match="must be a tensor"):
            cache(torch.zeros(2, 16), 0.5)
        cache(torch.zeros(2, 16), torch.ones(1))
        cache(torch.zeros(2, 16), torch.zeros(1))
        with pytest.raises(ValueError, match="num_steps=2 steps were taken"):
            cache(torch.zeros(2, 16), torch.zeros(1))
    cache.start(2)
    with pytest.raises(ValueError, match="no_grad"):
        cache(torch.zeros(2, 16), torch.ones(1))


def test_a_repeated_coordinate_restarts_the_table():
    """A compute at a timestep already stored (an unbatched CFG loop, a Heun stage): the device forecaster
    restarts from the repeated point (the host one merges it into the newest node) instead of dividing
    by zero; its forecasts are the host's through the same restart."""
    policy = FixedPolicy(interval=2, order=2, warmup=3, coordinate="timestep")
    traj = Trajectory(1, 1.0)
    ts = [1.0, 0.9, 0.8, 0.75, 0.8, 0.6, 0.5, 0.4]     # step 4 computes at step 2's timestep
    cache, outs = run(policy, traj, ts)
    decided = cache.decisions()
    assert decided[4] and all(torch.isfinite(o).all() for o in outs)
    f = Forecaster(2, "newton")
    for t, computed, got in zip(ts, decided, outs):
        if computed:
            f.update(t, traj(torch.zeros(2, 16), torch.tensor([t])), derivatives=t not in f.nodes)
        else:
            torch.testing.assert_close(got, f.forecast(t), rtol=1e-4, atol=1e-5)


def test_a_new_run_of_the_same_length_reuses_the_memory():
    """A captured step replays against fixed memory: ``start`` with the same step count resets the buffers
    in place, and the run is the one a fresh cache makes."""
    policy = AutoPolicy(threshold=0.05, select_order=False)
    traj, n = Trajectory(2, 1.5), 20
    ts = [1 - i / n for i in range(n)]
    cache, first = run(policy, traj, ts)
    where = [b.data_ptr() for b in cache._state + cache._buffers]
    cache.start(n)
    with torch.no_grad():
        again = [cache(torch.zeros(2, 16), torch.tensor([t])) for t in ts]
    assert [b.data_ptr() for b in cache._state + cache._buffers] == where
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    fresh, _ = run(policy, traj, ts)
    assert cache.decisions() == fresh.decisions() and 0 < sum(cache.decisions()) < n


def test_changed_weights_never_reach_a_forecast():
    """A LoRA swap mid-run: the next step computes with the new weights, warned, then forecasts resume
    from points made with them only."""
    class Module(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2, 16))

        def forward(self, x, timestep):
            return self.w * (1.0 + timestep.reshape(-1)[0])
    model = Module()
    cache = DeviceStepCache(model, FixedPolicy(interval=2, order=1, coordinate="timestep"), num_steps=8)
    ts = [1 - i / 8 for i in range(8)]
    with torch.no_grad():
        for t in ts[:3]:                                   # steps 0, 1 compute, 2 forecasts
            cache(torch.zeros(2, 16), torch.tensor([t]))
        model.w.mul_(2.0)
        with pytest.warns(UserWarning, match="weights changed"):
            y = cache(torch.zeros(2, 16), torch.tensor([ts[3]]))
        assert torch.equal(y, model(None, torch.tensor([ts[3]])))
        rest = [cache(torch.zeros(2, 16), torch.tensor([t])) for t in ts[4:]]
    assert cache.decisions() == [True, True, False, True, False, True, False, True]
    # step 4: one point since the change -- the new weights' value, not a line through an old point
    torch.testing.assert_close(rest[0], model(None, torch.tensor([ts[3]])))
    # step 6: a line through two points made with the new weights (the output is linear in t): exact
    torch.testing.assert_close(rest[2], model(None, torch.tensor([ts[6]])), rtol=1e-5, atol=1e-5)


@FAST
@given(st.sampled_from(["step", "sum", "rss"]), st.integers(0, 3), st.none() | st.integers(3, 6),
       st.lists(st.floats(0, 0.3) | st.just(math.nan) | st.just(math.inf), min_size=2, max_size=30))
@example("rss", 2, None, [math.inf, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])   # +inf inside min_forecast_run
def test_the_device_rule_decides_as_the_host_on_missing_and_impossible_estimates(rule, min_run, max_run, est):
    """NaN (no estimate) and +inf (cannot estimate yet) compute on the device as on the host, and
    inside ``min_forecast_run`` neither adds to the run's total (the host's rule, step by step)."""
    from taylorseer_fx.serving.device_math import DeviceRule
    if max_run is not None and max_run < min_run:
        max_run = min_run
    p = AutoPolicy(threshold=0.1, accumulate=rule, min_forecast_run=min_run, max_forecast_run=max_run,
                   form="hermite", warmup=1, select_order=False, min_steps=0)
    sched = p.start(len(est) + 1)
    sched.decide(0)                                     # the warm-up's compute
    device = DeviceRule(p)
    run, total = DeviceRule.empty("cpu")
    for step, e in enumerate(est, start=1):
        host = sched.decide(step, lambda e=e: e)
        forecast, run, total = device.decide(torch.tensor(e, dtype=torch.float64), run, total)
        assert host == (not bool(forecast)), (step, e)
