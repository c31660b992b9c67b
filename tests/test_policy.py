"""Tests of taylorseer_fx.policy.policies and .auto: reference schedules, schedule invariants, AutoPolicy, presets, validation.

Hypothesis settings (profile below, applied to every property test of this module): ``max_examples=60``,
``deadline=None``, ``derandomize=True`` (the same examples on every run, so CI is reproducible), no
example database. The whole module runs in a few seconds on one CPU core.

The public schedules are checked twice: against the step indices in ``tests/data/schedules.json`` and,
for random parameters, against direct transcriptions of the public rules (``_ref_*`` below).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from taylorseer_fx.policy.auto import AutoPolicy
from taylorseer_fx.policy.policies import FixedPolicy, MaskPolicy
from taylorseer_fx.policy.base import Policy
from taylorseer_fx.policy.presets import available_policies, load_policy, policy_from_dict

from taylorseer_fx.testing import strategies as S

from policy_helpers import forecast_runs

FAST = settings(max_examples=60, deadline=None, derandomize=True, database=None)
DATA = json.loads((Path(__file__).parent / "data" / "schedules.json").read_text())
REPO_POLICIES = Path(__file__).resolve().parent.parent / "policies"


def trace(policy: Policy, n: int, estimate=None) -> list[int]:
    """Compute steps by stepping a fresh schedule's decide() directly (independent of compute_steps)."""
    sched = policy.start(n)
    out, last = [], None
    for s in range(n):
        est = None if estimate is None or last is None else (lambda s=s, k=s - last: estimate(s, k))
        if sched.decide(s, est):
            out.append(s)
            last = s
    return out


# ---- direct transcriptions of the public rules ----

def _ref_official(n, first_enhance, fresh_threshold):
    out, counter = [], 0
    for s in range(n):
        if s < first_enhance or counter == fresh_threshold - 1:
            out.append(s)
            counter = 0
        else:
            counter += 1
    return out


def _ref_openvino(n, cache_interval, before, after):
    """TaylorSeerState::initialize + should_compute_at_step (openvino.genai, m_max_order = 2)."""
    everything = list(range(n))
    if before >= n:
        return everything
    if after < 0:
        after = n + after
        if after < 0:
            return everything
    if after <= before:
        return everything
    b = max(before, 2)
    out = []
    for s in range(n):
        if s < b or s >= after:
            out.append(s)
            continue
        offset = s - b
        if offset >= cache_interval - 1 and (offset - cache_interval + 1) % cache_interval == 0:
            out.append(s)
    return out


def _ref_diffusers(n, cache_interval, before, after):
    return [s for s in range(n) if s < before or (s - before - 1) % cache_interval == 0
            or (after is not None and s >= after)]


def _ref_seed(n, warmup_steps, skip_interval_steps):
    return [s for s in range(n) if s < warmup_steps or (s - warmup_steps + 1) % skip_interval_steps == 0]


# ---- reference cases ----

_ANCHOR_CASES = [
    ("official_taylorseer", FixedPolicy.official, ("first_enhance", "fresh_threshold")),
    ("openvino_taylorseer_lite", FixedPolicy.openvino,
     ("cache_interval", "disable_cache_before_step", "disable_cache_after_step")),
    ("diffusers_taylorseer_cache", FixedPolicy.diffusers,
     ("cache_interval", "disable_cache_before_step", "disable_cache_after_step")),
    ("seed_decorator", FixedPolicy.seed, ("warmup_steps", "skip_interval_steps", "n_derivatives")),
]
_CASES = [(key, ctor, keys, case) for key, ctor, keys in _ANCHOR_CASES for case in DATA[key]]


@pytest.mark.parametrize("key,ctor,keys,case", _CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(_CASES)])
def test_reference_schedules(key, ctor, keys, case):
    policy = ctor(**{k: case[k] for k in keys})
    n = case["num_steps"]
    assert policy.compute_steps(n) == case["compute_steps"]
    assert trace(policy, n) == case["compute_steps"]
    # the rule transcriptions agree with the reference data too
    ref = {"official_taylorseer": lambda: _ref_official(n, case["first_enhance"], case["fresh_threshold"]),
           "openvino_taylorseer_lite": lambda: _ref_openvino(n, case["cache_interval"],
                                                             case["disable_cache_before_step"],
                                                             case["disable_cache_after_step"]),
           "diffusers_taylorseer_cache": lambda: _ref_diffusers(n, case["cache_interval"],
                                                                case["disable_cache_before_step"],
                                                                case["disable_cache_after_step"]),
           "seed_decorator": lambda: _ref_seed(n, case["warmup_steps"], case["skip_interval_steps"])}[key]
    assert ref() == case["compute_steps"]


def test_anchor_fields():
    p = FixedPolicy.official(first_enhance=3, fresh_threshold=6, max_order=2)
    assert (p.form, p.forecast.coordinate, p.order, p.derivatives_from) == ("taylor", "step", 2, 2)
    s = p.start()
    assert [s.derivatives(i) for i in range(4)] == [False, False, True, True]
    assert FixedPolicy.seed().derivatives_from == 2
    assert FixedPolicy.diffusers().derivatives_from == 0
    assert FixedPolicy.openvino().order == 1
    newton_seed = FixedPolicy.seed(warmup_steps=4, n_derivatives=1, form="newton")
    assert (newton_seed.forecast.coordinate, newton_seed.derivatives_from) == ("timestep", 0)
    assert newton_seed.compute_steps(10) == [0, 1, 2, 3, 5, 7, 9]
    # anchors are plain FixedPolicy values: equality and hashing by fields
    assert FixedPolicy.seed() == FixedPolicy(interval=2, warmup=4, order=1, form="taylor", derivatives_from=2)
    assert len({FixedPolicy.seed(), FixedPolicy.seed()}) == 1
    assert "interval=2" in repr(FixedPolicy.seed())


# ---- invariants of every fixed schedule ----

fixed_policies = S.fixed_policies


def _check_invariants(policy: FixedPolicy, n: int, steps: list[int]) -> None:
    assert steps == trace(policy, n)
    assert steps == sorted(set(steps)) and all(0 <= s < n for s in steps)
    assert 0 in steps
    assert set(range(min(policy.warmup_steps, n))) <= set(steps)
    assert set(range(max(n - policy.cooldown, 0), n)) <= set(steps)
    if policy.compute_from is not None:
        assert set(range(policy.compute_from, n)) <= set(steps)
    assert all(r <= policy.interval - 1 for r in forecast_runs(steps, n))
    if policy.max_forecast_run is not None:
        assert all(r <= policy.max_forecast_run for r in forecast_runs(steps, n))
    forecasts = [s for s in range(n) if s not in steps]
    if forecasts and policy.form == "newton":
        assert len([s for s in steps if s < forecasts[0]]) >= policy.order + 1


@FAST
@given(fixed_policies(), st.integers(1, 40))
def test_fixed_invariants(policy, n):
    steps = policy.compute_steps(n)
    _check_invariants(policy, n, steps)
    # the grid: after warm-up, first gap = phase or interval, then interval (no other constraint active)
    if policy.max_forecast_run is None and policy.compute_from is None and policy.cooldown == 0:
        w, first = policy.warmup_steps, policy.phase or policy.interval
        expect = [s for s in range(n) if s < w or (s - (w - 1) >= first
                                                   and (s - (w - 1) - first) % policy.interval == 0)]
        assert steps == expect


@FAST
@given(st.integers(1, 8), st.integers(1, 9), st.integers(0, 3), st.integers(1, 60))
def test_official_random(first_enhance, fresh_threshold, max_order, n):
    p = FixedPolicy.official(first_enhance=first_enhance, fresh_threshold=fresh_threshold, max_order=max_order)
    steps = p.compute_steps(n)
    assert steps == _ref_official(n, first_enhance, fresh_threshold)
    _check_invariants(p, n, steps)


@FAST
@given(st.integers(2, 8), st.integers(0, 12), st.integers(-45, 45), st.integers(1, 40))
def test_openvino_random(cache_interval, before, after, n):
    p = FixedPolicy.openvino(cache_interval=cache_interval, disable_cache_before_step=before,
                             disable_cache_after_step=after)
    steps = p.compute_steps(n)
    assert steps == _ref_openvino(n, cache_interval, before, after)
    _check_invariants(p, n, steps)
    assert set(range(min(2, n))) <= set(steps)  # at least 2 warm-up steps


@FAST
@given(st.integers(1, 8), st.integers(0, 12), st.one_of(st.none(), st.integers(-3, 45)),
       st.integers(0, 3), st.integers(1, 50))
def test_diffusers_random(cache_interval, before, after, max_order, n):
    p = FixedPolicy.diffusers(cache_interval=cache_interval, disable_cache_before_step=before,
                              disable_cache_after_step=after, max_order=max_order)
    steps = p.compute_steps(n)
    # diffusers itself would forecast step 0 (and fail) when before = 0; here step 0 is computed
    assert steps == sorted(set(_ref_diffusers(n, cache_interval, before, after)) | {0})
    _check_invariants(p, n, steps)


@FAST
@given(st.integers(1, 8), st.integers(1, 8), st.integers(0, 3), st.integers(1, 50))
def test_seed_random(warmup_steps, skip_interval_steps, n_derivatives, n):
    p = FixedPolicy.seed(warmup_steps=warmup_steps, skip_interval_steps=skip_interval_steps,
                         n_derivatives=n_derivatives)
    steps = p.compute_steps(n)
    assert steps == _ref_seed(n, warmup_steps, skip_interval_steps)
    _check_invariants(p, n, steps)


def test_fixed_defaults_and_never():
    assert FixedPolicy().compute_steps(7) == list(range(7))  # interval 1 = never forecast
    p = FixedPolicy(interval=3, order=2)  # newton, warmup defaults to order + 1
    assert p.warmup_steps == 3 and p.forecast.coordinate == "timestep"
    assert p.compute_steps(10) == [0, 1, 2, 5, 8]
    assert FixedPolicy(interval=4, max_forecast_run=2, warmup=1, order=0).compute_steps(9) == [0, 3, 6]
    assert load_policy("never").compute_steps(12) == list(range(12))


def test_schedule_step_order():
    s = FixedPolicy(interval=3, warmup=2, order=1).start()
    assert [s.decide(i) for i in range(5)] == [True, True, False, False, True]
    assert s.decide(4) is True  # a repeated step answers the same
    with pytest.raises(ValueError, match="step"):
        s.decide(2)
    assert s.last_compute == 4


def test_cooldown_needs_num_steps():
    p = FixedPolicy(interval=3, cooldown=2)
    assert p.needs_num_steps()
    with pytest.raises(ValueError, match="num_steps"):
        p.start()
    assert p.start(10) is not None
    assert FixedPolicy(interval=3, cooldown=2, num_steps=10).compute_steps(10) == [0, 1, 4, 7, 8, 9]
    ov = FixedPolicy.openvino(disable_cache_after_step=-2)
    with pytest.raises(ValueError, match="num_steps"):
        ov.start()
    assert FixedPolicy.openvino(disable_cache_after_step=-2, num_steps=28).start() is not None
    assert not FixedPolicy.openvino(disable_cache_after_step=20).needs_num_steps()


# ---- mask ----

def test_mask_policy():
    p = MaskPolicy([0, 1, 2, 5], num_steps=8)
    assert p.compute_steps(8) == [0, 1, 2, 5]
    assert p.compute_steps(10) == [0, 1, 2, 5, 8, 9]  # beyond the mask: compute
    assert p == MaskPolicy(mask=[True, True, True, False, False, True, False, False])
    assert p.warmup_steps == 3
    assert MaskPolicy(compute_steps=[0, 2], form="taylor").compute_steps(5) == [0, 2, 3, 4]
    assert "compute_steps=[0, 1, 2, 5]" in repr(p)
    assert load_policy(p) is p


@FAST
@given(st.lists(st.booleans(), min_size=1, max_size=30))
def test_mask_roundtrip(bits):
    mask = [True] + bits
    p = MaskPolicy(mask=mask, form="taylor")
    assert p.compute_steps(len(mask)) == [i for i, b in enumerate(mask) if b]
    assert trace(p, len(mask)) == [i for i, b in enumerate(mask) if b]


# ---- auto ----

def _auto(**kw):
    kw.setdefault("threshold", 0.1)
    return AutoPolicy(**kw)


def test_auto_zero_estimate_forecasts_everything():
    n = 30
    assert _auto().compute_steps(n, lambda s, k: 0.0) == [0, 1, 2]
    steps = _auto(max_forecast_run=4).compute_steps(n, lambda s, k: 0.0)
    assert steps == [0, 1, 2] + list(range(7, n, 5))
    steps = _auto(max_forecast_run=4, cooldown=3).compute_steps(n, lambda s, k: 0.0)
    assert steps == [0, 1, 2, 7, 12, 17, 22, 27, 28, 29]


@pytest.mark.parametrize("accumulate", [True, False])
def test_auto_jump_triggers_compute(accumulate):
    est = lambda s, k: 5.0 if s == 11 else 0.001  # noqa: E731
    steps = _auto(accumulate=accumulate).compute_steps(20, est)
    assert 11 in steps and steps[:3] == [0, 1, 2]


def test_auto_accumulates():
    est = lambda s, k: 0.03  # noqa: E731
    assert _auto(accumulate=True).compute_steps(12, est) == [0, 1, 2, 6, 10]
    assert _auto(accumulate=False).compute_steps(12, est) == [0, 1, 2]


def test_auto_estimate_calls():
    """estimate is called lazily: never on forced steps, at most once per step; no estimator computes."""
    calls = []
    sched = _auto(max_forecast_run=2, threshold=1.0).start(10)
    for s in range(10):
        sched.decide(s, lambda s=s: calls.append(s) or 0.0)
        sched.decide(s, lambda s=s: calls.append(s) or 0.0)  # repeated step: cached
    assert calls == [3, 4, 6, 7, 9]
    assert _auto().compute_steps(10) == list(range(10))
    none_est = _auto().start(6)
    assert [none_est.decide(s, lambda: None) for s in range(6)] == [True] * 6


def test_auto_min_forecast_run():
    est = lambda s, k: 1e9  # noqa: E731
    assert _auto(min_forecast_run=2, warmup=1, order=0).compute_steps(10, est) == [0, 3, 6, 9]
    assert _auto(min_forecast_run=2, cooldown=2, order=0, warmup=1).compute_steps(10, est) == [0, 3, 6, 8, 9]


estimate_tables = st.lists(st.floats(0, 0.2, allow_nan=False), min_size=40, max_size=40)


@FAST
@given(estimate_tables, st.floats(0.001, 0.5), st.floats(0.001, 0.5), st.booleans(),
       st.one_of(st.none(), st.integers(1, 8)), st.integers(0, 3), st.integers(1, 40))
def test_auto_monotone_in_threshold(base, t1, t2, accumulate, max_run, cooldown, n):
    """Smaller threshold never computes fewer steps. The estimate is a function of (step, steps since the
    last compute), non-negative and non-decreasing in the second argument, so trajectories are defined."""
    lo, hi = sorted((t1, t2))
    est = lambda s, k: base[s] * k  # noqa: E731
    kw = dict(accumulate=accumulate, max_forecast_run=max_run, cooldown=cooldown)
    steps_lo = AutoPolicy(threshold=lo, **kw).compute_steps(n, est)
    steps_hi = AutoPolicy(threshold=hi, **kw).compute_steps(n, est)
    assert len(steps_lo) >= len(steps_hi)
    # determinism: same inputs, same trace, also when stepping decide() directly
    assert AutoPolicy(threshold=lo, **kw).compute_steps(n, est) == steps_lo
    assert trace(AutoPolicy(threshold=lo, **kw), n, est) == steps_lo
    for steps in (steps_lo, steps_hi):
        assert set(range(min(3, n))) <= set(steps)
        assert set(range(max(n - cooldown, 0), n)) <= set(steps)
        if max_run is not None:
            assert all(r <= max_run for r in forecast_runs(steps, n))


def test_auto_defaults():
    p = AutoPolicy(threshold=0.02)
    assert (p.order, p.warmup_steps, p.form, p.forecast.coordinate, p.accumulate, p.rule, p.per_region) == (
        1, 3, "heun", "step", "rss", "rss", False)
    assert AutoPolicy(threshold=0.02, accumulate=False).rule == "step"
    assert AutoPolicy(threshold=0.02, accumulate=True).rule == "sum"
    assert (p.forecast.select_order, p.forecast.max_order, p.order_margin) == (True, 2, 1.0)
    assert p.forecaster_options() == {"order": 2, "form": "heun", "select": 1, "select_margin": 1.0}
    assert p.estimator == "pair" and AutoPolicy(threshold=0.02, order=3).warmup_steps == 4
    q = AutoPolicy(threshold=0.02, estimator="remainder")
    assert (q.forecast.select_order, q.forecast.max_order) == (False, 1) and q.forecaster_options() == {"order": 1, "form": "heun"}
    assert p == AutoPolicy(threshold=0.02) and hash(p) == hash(AutoPolicy(threshold=0.02))
    assert "threshold=0.02" in repr(p)


# ---- presets ----

def test_every_preset_loads():
    names = available_policies()
    files = sorted(p.stem for p in REPO_POLICIES.glob("*.toml"))
    assert names == files
    assert {"official-flux", "official-hunyuanvideo", "openvino-lite", "diffusers-default", "auto-fast",
            "auto-balanced", "auto-quality", "never"} <= set(names)
    for name in names:
        by_name = load_policy(name)
        assert isinstance(by_name, Policy)
        assert load_policy(REPO_POLICIES / f"{name}.toml") == by_name
        assert load_policy(str(REPO_POLICIES / f"{name}.toml")) == by_name


def test_presets_match_anchors():
    assert load_policy("official-flux") == FixedPolicy.official(first_enhance=3, fresh_threshold=6, max_order=1)
    assert load_policy("official-flux").compute_steps(50) == DATA["official_taylorseer"][0]["compute_steps"]
    assert load_policy("official-hunyuanvideo").compute_steps(50) == DATA["official_taylorseer"][1]["compute_steps"]
    assert load_policy("openvino-lite").compute_steps(28) == DATA["openvino_taylorseer_lite"][0]["compute_steps"]
    assert load_policy("diffusers-default").compute_steps(50) == DATA["diffusers_taylorseer_cache"][0]["compute_steps"]
    thresholds = [load_policy(f"auto-{k}").threshold for k in ("fast", "balanced", "quality")]
    assert thresholds == sorted(thresholds, reverse=True)


def test_package_preset_dir():
    pkg = Path(__import__("taylorseer_fx").__file__).resolve().parent / "policies"
    assert pkg.is_dir() and sorted(p.stem for p in pkg.glob("*.toml")) == available_policies()


def test_preset_errors(tmp_path):
    with pytest.raises(ValueError, match="no-such-preset") as e:
        load_policy("no-such-preset")
    assert "official-flux" in str(e.value)  # lists the known names
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "fixed"\ninterval = 3\nintervall = 4\n')
    with pytest.raises(ValueError, match="intervall"):
        load_policy(bad)
    bad.write_text('kind = "official"\nfirst_enhance = 3\ncache_interval = 4\n')
    with pytest.raises(ValueError, match="cache_interval"):
        load_policy(bad)
    bad.write_text('kind = "fancy"\n')
    with pytest.raises(ValueError, match="kind"):
        load_policy(bad)
    bad.write_text('kind = "fixed"\ninterval = 0\n')
    with pytest.raises(ValueError, match="interval"):
        load_policy(bad)
    bad.write_text('kind = "fixed"\ninterval = [\n')
    with pytest.raises(ValueError, match="bad.toml"):
        load_policy(bad)
    with pytest.raises(ValueError, match="not found"):
        load_policy(tmp_path / "missing.toml")
    good = tmp_path / "mine.toml"
    good.write_text('kind = "openvino"\ncache_interval = 4\nnum_steps = 20\nmax_forecast_run = 2\n')
    assert load_policy(good) == FixedPolicy.openvino(cache_interval=4, num_steps=20, max_forecast_run=2)
    assert policy_from_dict({"kind": "mask", "compute_steps": [0, 1, 3]}) == MaskPolicy([0, 1, 3])


# ---- validation ----

@pytest.mark.parametrize("make,field", [
    (lambda: FixedPolicy(interval=0), "interval"),
    (lambda: FixedPolicy(interval=3, phase=3), "phase"),
    (lambda: FixedPolicy(order=-1), "order"),
    (lambda: FixedPolicy(form="chebyshev"), "form"),
    (lambda: FixedPolicy(coordinate="sigma"), "coordinate"),
    (lambda: FixedPolicy(form="taylor", coordinate="timestep"), "coordinate"),
    (lambda: FixedPolicy(warmup=0, form="taylor"), "warmup"),
    (lambda: FixedPolicy(warmup=2, order=2), "warmup"),  # newton needs order + 1
    (lambda: FixedPolicy(cooldown=-1), "cooldown"),
    (lambda: FixedPolicy(max_forecast_run=0), "max_forecast_run"),
    (lambda: FixedPolicy(num_steps=0), "num_steps"),
    (lambda: FixedPolicy(compute_from=-1), "compute_from"),
    (lambda: FixedPolicy(derivatives_from=-1), "derivatives_from"),
    (lambda: FixedPolicy.official(first_enhance=0), "first_enhance"),
    (lambda: FixedPolicy.official(fresh_threshold=0), "fresh_threshold"),
    (lambda: FixedPolicy.official(max_order=-1), "max_order"),
    (lambda: FixedPolicy.official(cache_interval=3), "cache_interval"),
    (lambda: FixedPolicy.openvino(cache_interval=1), "cache_interval"),
    (lambda: FixedPolicy.openvino(disable_cache_before_step=-1), "disable_cache_before_step"),
    (lambda: FixedPolicy.openvino(disable_cache_after_step=1.5), "disable_cache_after_step"),
    (lambda: FixedPolicy.diffusers(cache_interval=0), "cache_interval"),
    (lambda: FixedPolicy.seed(warmup_steps=0), "warmup_steps"),
    (lambda: FixedPolicy.seed(skip_interval_steps=0), "skip_interval_steps"),
    (lambda: FixedPolicy.seed(n_derivatives=-1), "n_derivatives"),
    (lambda: FixedPolicy.seed(warmup_steps=1, n_derivatives=2, form="newton"), "warmup"),
    (lambda: MaskPolicy([1, 2]), "step 0"),
    (lambda: MaskPolicy([0, 2, 1]), "compute_steps"),
    (lambda: MaskPolicy(mask=[True, 1]), "mask"),
    (lambda: MaskPolicy([0, 5], num_steps=4), "num_steps"),
    (lambda: MaskPolicy(), "compute_steps"),
    (lambda: MaskPolicy([0, 2], order=1), "order \\+ 1"),
    (lambda: AutoPolicy(threshold=0), "threshold"),
    (lambda: AutoPolicy(threshold=-1.0), "threshold"),
    (lambda: AutoPolicy(threshold=float("nan")), "threshold"),
    (lambda: AutoPolicy(threshold=0.1, form="x"), "form"),
    (lambda: AutoPolicy(threshold=0.1, min_forecast_run=-1), "min_forecast_run"),
    (lambda: AutoPolicy(threshold=0.1, min_forecast_run=3, max_forecast_run=2), "min_forecast_run"),
    (lambda: AutoPolicy(threshold=0.1, accumulate="yes"), "accumulate"),
    (lambda: FixedPolicy(interval=2).start(0), "num_steps"),
])
def test_bad_values_raise(make, field):
    with pytest.raises(ValueError, match=field):
        make()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(interval=st.integers(1, 5), order=st.integers(0, 2), extra=st.integers(0, 3), phase=st.integers(0, 4),
       first=st.integers(1, 30), n=st.integers(1, 25), form=st.sampled_from(["newton", "taylor"]))
def test_a_schedule_started_mid_generation_is_the_same_schedule_shifted(interval, order, extra, phase, first, n,
                                                                         form):
    """start(first_step=s): warm-up, phase and derivative gating count from s (a batch change or a
    second model instance joining mid-run), so the decisions are those of a fresh run, shifted."""
    policy = FixedPolicy(interval=interval, order=order, warmup=order + 1 + extra, phase=phase % interval,
                         form=form)
    fresh, late = policy.start(), policy.start(first_step=first)
    assert [fresh.decide(k) for k in range(n)] == [late.decide(first + k) for k in range(n)]
    assert [fresh.derivatives(k) for k in range(n)] == [late.derivatives(first + k) for k in range(n)]


def test_first_step_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="first_step"):
        FixedPolicy(interval=2).start(first_step=-1)
