"""``AutoPolicy(budget=...)``: exactly ``round(budget * N)`` computes whenever N is known (raised to what
warm-up, cooldown and max_forecast_run force), spent where the estimate grows fastest, a clear error
without N, presets that round-trip."""

from __future__ import annotations

import math
import warnings

import pytest
from hypothesis import assume, given, settings, strategies as st

from taylorseer_fx import AutoPolicy, load_policy, policy_to_toml
from taylorseer_fx.policy.budget import (budget_fraction, computes_needed, least_computes, longest_run,
                                         target_computes)
from taylorseer_fx.policy.presets import policy_from_dict, policy_to_dict
from taylorseer_fx.testing import strategies as S

from policy_helpers import forecast_runs

FAST = settings(max_examples=300, deadline=None, derandomize=True, database=None)


def _estimates(draw, n):
    """An estimate per (step, steps since the compute): random, with NaN (no estimate) now and then."""
    values = draw(st.lists(st.one_of(st.floats(0, 2), st.just(math.nan)), min_size=n, max_size=n))
    return lambda s, k: values[s] * k


@FAST
@given(S.budget_policies(), st.integers(1, 80), st.data())
def test_the_budget_is_met_exactly_for_every_step_count(policy, n, data):
    steps = policy.compute_steps(n, _estimates(data.draw, n))
    frac = policy.compute_fraction
    least = least_computes(n, policy.warmup_steps, policy.cooldown, policy.max_forecast_run)
    want = int(math.floor(frac * n + 0.5))
    if n < policy.min_steps:                 # too short to forecast well: every step computes
        assert steps == list(range(n))
        return
    assert len(steps) == max(want, least) == target_computes(frac, n, policy.warmup_steps, policy.cooldown,
                                                               policy.max_forecast_run)
    assert set(range(min(policy.warmup_steps, n))) <= set(steps)                 # warm-up
    assert set(range(max(n - policy.cooldown, 0), n)) <= set(steps)              # cooldown
    if policy.max_forecast_run is not None:
        assert all(r <= policy.max_forecast_run for r in forecast_runs(steps, n))


@FAST
@given(S.budget_policies(), st.integers(2, 60), st.integers(0, 20), st.data())
def test_a_schedule_starting_mid_run_spends_the_budget_over_its_own_steps(policy, n, first, data):
    first = min(first, n - 1)
    est = _estimates(data.draw, n)
    sched = policy.start(n, first_step=first)
    got = []
    for s in range(first, n):
        k = s - sched.last_compute if sched.last_compute is not None else 0
        if sched.decide(s, lambda s=s, k=k: est(s, k)):
            got.append(s)
    if n - first < policy.min_steps:         # the run's own steps are too few: all compute
        assert got == list(range(first, n))
        return
    assert len(got) == target_computes(policy.compute_fraction, n - first, policy.warmup_steps, policy.cooldown,
                                       policy.max_forecast_run)


@FAST
@given(S.budget_policies(), st.integers(1, 60), st.data())
def test_a_failed_estimate_computes_wherever_a_compute_fits(policy, n, data):
    """+inf (a non-finite output: the forecaster cannot estimate) computes at every free step where the
    budget can still afford a compute (and ``min_forecast_run`` is over), wherever the estimate is read
    (``pacing="estimate"``, or a threshold); the count stays exact."""
    assume(policy.pacing == "estimate" or policy.threshold is not None)
    missing = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    rates = data.draw(st.lists(st.floats(1e-4, 2), min_size=n, max_size=n))
    sched, got = policy.start(n), []
    for s in range(n):
        k = s - sched.last_compute if sched.last_compute is not None else 0
        fits = False
        if sched.target is not None and s >= policy.warmup_steps and k - 1 >= policy.min_forecast_run:
            end = sched.end if sched.end is not None else n
            free_budget = sched.target - sched.spent - (n - end)
            m = policy.max_forecast_run if sched.soft is None else sched.soft
            fits = s < end and free_budget >= 1 and free_budget - 1 >= computes_needed(end - s - 1, 0, m)
        if sched.decide(s, lambda s=s, k=k: math.inf if missing[s] else rates[s] * k):
            got.append(s)
        elif missing[s] and fits:
            raise AssertionError(f"step {s} forecast with +inf while a compute fitted: {got}")
    if n >= policy.min_steps:
        assert len(got) == target_computes(policy.compute_fraction, n, policy.warmup_steps, policy.cooldown,
                                           policy.max_forecast_run)


@FAST
@given(st.floats(0.05, 1.0), st.integers(8, 80), st.integers(0, 3), st.sampled_from([None, True, False]),
       st.sampled_from(["heun", "newton", "taylor"]))
def test_with_no_estimate_yet_a_budget_spaces_its_computes_evenly(budget, n, cooldown, final, form):
    """NaN (no estimate yet: fewer computes stored than the estimator needs) is not a reason to compute:
    with no estimate at all, the free computes are spread at the budget's even spacing (the forecast
    runs between them differ by at most one step), and the count is exact."""
    policy = AutoPolicy(budget=budget, warmup=1, cooldown=cooldown, final_compute=final, form=form)
    steps = policy.compute_steps(n, lambda s, k: math.nan)
    assert len(steps) == target_computes(budget, n, 1, cooldown, None)
    runs = forecast_runs(steps, n)
    if len(runs) >= 2:
        assert max(runs) - min(runs) <= 1, (steps, runs)


def test_a_budget_with_a_warm_up_of_one_forecasts_from_one_compute_at_its_spacing():
    """After a warm-up of one the estimate needs a second compute (the pair: two points): until then
    the budget forecasts the first output at its even spacing instead of computing the next step
    (measured on the arena Flux: 0.77x the best peer, geomean of six cells, against 1.33x computing it)."""
    p = AutoPolicy(budget=0.25, warmup=1, pacing="estimate")      # the pacer reads the estimate: NaN first
    steps = p.compute_steps(28, lambda s, k: math.nan if s <= 4 else 0.02 * k)
    assert steps[0] == 0 and steps[1] in (4, 5) and len(steps) == 7


def test_a_budget_with_a_warm_up_of_one_computes_while_it_cannot_estimate():
    """A step whose estimate cannot be made (+inf: a non-finite output) after a warm-up of one computes,
    and the computes are spread over the run, not piled at its end."""
    p = AutoPolicy(budget=0.25, form="hermite", order=2, warmup=1, pacing="estimate")
    steps = p.compute_steps(28, lambda s, k: math.inf if s == 1 else 0.02 * k)
    assert steps[:2] == [0, 1] and len(steps) == 7
    assert max(forecast_runs(steps, 28)) <= longest_run(28, 7)
    assert sum(s >= 24 for s in steps) <= 2


def test_computes_go_where_the_estimate_grows_fastest():
    """The same budget on 40 steps: an estimate growing 10x faster in steps 14..23 than elsewhere gets
    more computes there than in the ten steps before or after; one growing faster in the first half
    gets most of them there; the counts are exact, and no forecast run is longer than twice the
    budget's mean spacing (the pacer alone: final_compute=False)."""
    p = AutoPolicy(budget=0.3, warmup=2, select_order=False, final_compute=False, pacing="estimate")
    burst = p.compute_steps(40, lambda s, k: k * (0.1 if 14 <= s < 24 else 0.01))
    early = p.compute_steps(40, lambda s, k: k * (0.1 if s < 20 else 0.01))
    assert len(burst) == len(early) == 12
    inside = sum(14 <= s < 24 for s in burst)
    assert inside > sum(4 <= s < 14 for s in burst) and inside > sum(24 <= s < 34 for s in burst)
    assert sum(s < 20 for s in early) > sum(s >= 20 for s in early)
    longest = longest_run(40, 12)
    assert longest == 6 and max(forecast_runs(burst, 40)) <= longest and max(forecast_runs(early, 40)) <= longest


def test_even_pacing_reads_no_estimate_unless_a_threshold_asks():
    """The default pacing places the free computes at the budget's even spacing and never calls the
    estimate (no host read); with a threshold it reads it, and an estimate reaching the threshold
    computes at once, the count kept."""
    def never(s, k):
        raise AssertionError("the estimate was read")
    p = AutoPolicy(budget=0.25)
    assert p.pacing == "even" and p.warmup_steps == 1
    steps = p.compute_steps(28, never)
    assert len(steps) == 7 and steps[0] == 0 and steps[-1] == 27             # the final step computes
    runs = forecast_runs(steps, 28)
    assert max(runs) - min(runs) <= 1
    spiky = AutoPolicy(budget=0.25, threshold=0.5).compute_steps(28, lambda s, k: 1.0 if s == 2 else 0.0)
    assert 2 in spiky and len(spiky) == 7
    with pytest.raises(ValueError, match="pacing must be one of"):
        AutoPolicy(budget=0.25, pacing="uniform")
    for field in ({"pacing": "estimate"}, {"final_compute": True}):     # would do nothing without a budget
        with pytest.raises(ValueError, match=f"{next(iter(field))}=.* applies to a budget's computes"):
            AutoPolicy(threshold=0.1, **field)


def test_the_budget_needs_the_step_count_and_says_so():
    p = AutoPolicy(budget="3x")
    with pytest.raises(ValueError, match="num_steps"):
        p.start()
    assert len(AutoPolicy(budget="3x", num_steps=30).compute_steps(30)) == 10


@pytest.mark.parametrize("bad", [0, 1.5, -0.1, "0.5x", "fast", True, math.nan, "x"])
def test_a_bad_budget_is_a_value_error_naming_it(bad):
    with pytest.raises(ValueError, match="budget"):
        AutoPolicy(budget=bad)


def test_a_threshold_or_a_budget_is_required():
    with pytest.raises(ValueError, match="threshold.*budget"):
        AutoPolicy()
    assert AutoPolicy(budget=0.25).compute_fraction == 0.25 and budget_fraction("4x") == 0.25


def test_computes_needed_is_the_fewest_that_keep_every_run_short():
    for m in range(1, 6):
        for steps in range(0, 30):
            for run in range(0, m + 1):
                # brute force: compute as late as allowed
                need, r = 0, run
                for _ in range(steps):
                    if r == m:
                        need, r = need + 1, 0
                    else:
                        r += 1
                assert computes_needed(steps, run, m) == need, (steps, run, m)
    assert computes_needed(100, 0, None) == 0


@pytest.mark.parametrize("name, fraction", [("auto-2x", 0.5), ("auto-3x", 1 / 3), ("auto-4x", 0.25)])
def test_the_budget_presets_load_and_round_trip(name, fraction, tmp_path):
    p = load_policy(name)
    assert isinstance(p, AutoPolicy) and p.compute_fraction == pytest.approx(fraction)
    assert policy_from_dict(policy_to_dict(p)) == p
    path = tmp_path / "p.toml"
    path.write_text(policy_to_toml(p))
    assert load_policy(str(path)) == p
    assert len(p.compute_steps(28)) == target_computes(p.compute_fraction, 28, p.warmup_steps, p.cooldown,
                                                       p.max_forecast_run)


def test_steps_past_the_told_run_compute():
    """A run longer than its num_steps (a pipeline told the wrong count): the extra steps compute."""
    sched = AutoPolicy(budget=0.5, min_steps=0).start(6)
    decisions = [sched.decide(s, lambda: 0.001) for s in range(9)]
    assert decisions[6:] == [True, True, True] and sum(decisions[:6]) == 3


@settings(max_examples=300, deadline=None)
@given(S.budget_policies(), st.integers(8, 80))
def test_the_final_step_computes_where_the_budget_affords_it_and_the_count_stays_exact(policy, n):
    from taylorseer_fx.policy.budget import final_free

    assume(n >= policy.min_steps)                           # shorter runs compute every step (test_auto)
    got = policy.compute_steps(n, lambda s, k: 0.01 * k)
    target = target_computes(policy.compute_fraction, n, policy.warmup_steps, policy.cooldown,
                             policy.max_forecast_run)
    assert len(got) == target
    if policy.cooldown:                                     # a cooldown computes it anyway
        return
    free = target - min(policy.warmup_steps, n)
    affordable = least_computes(n, policy.warmup_steps, 1, policy.max_forecast_run) <= target
    want = affordable and (policy.final_compute is True or (policy.final_compute is None and free >= final_free(policy.warmup_steps)))
    if want:
        assert got[-1] == n - 1


def test_the_final_step_is_reserved_from_four_free_computes_after_a_warm_up_of_one():
    """Measured (docs/auto.md): after a warm-up of one, 4 free computes reserve the last step (the arena
    Flux's error 0.44-0.75x of not reserving it), 3 do not; after a warm-up of three it takes 5."""
    assert AutoPolicy(budget=5 / 20).compute_steps(20)[-1] == 19
    assert AutoPolicy(budget=4 / 20).compute_steps(20)[-1] != 19
    assert AutoPolicy(budget=7 / 28, warmup=3).compute_steps(28)[-1] != 27
    assert AutoPolicy(budget=8 / 28, warmup=3).compute_steps(28)[-1] == 27


def test_a_tuned_threshold_paces_a_step_with_no_estimate_yet_like_a_given_one():
    """NaN ("no estimate yet", after a warm-up of one) is placed at the budget's even spacing whether
    the threshold was given or tuned for this length: a tuned one does not spend a compute on it."""
    def estimate_after_two_computes(sched):
        steps = []
        for s in range(28):
            value = math.nan if sum(steps) < 2 else 1e-4
            steps.append(sched.decide(s, lambda v=value: v))
        return [s for s, c in enumerate(steps) if c]
    given_ = estimate_after_two_computes(AutoPolicy(budget=0.25, threshold=10.0).start(28))
    tuned = estimate_after_two_computes(AutoPolicy(budget=0.25, thresholds={28: 10.0}).start(28))
    assert tuned[:2] == given_[:2] == [0, 4]          # then each rule decides on the estimates it reads
    assert len(tuned) == len(given_) == 7


def test_a_budget_preset_written_before_pacing_says_how_it_now_decides(tmp_path):
    """A preset written by an older version pins every field it knew, not ``pacing``: it loads with
    even pacing, and the loader says so and how to keep the old placement. A preset written now
    pins ``pacing`` and loads silently, deciding as written."""
    old = ('kind = "auto"\norder = 1\nform = "heun"\ncoordinate = "step"\nwarmup = 3\nmax_forecast_run = 8\n'
           'select_order = true\nmax_order = 2\nbudget = "4x"\nestimator = "pair"\naccumulate = "rss"\n')
    (tmp_path / "old.toml").write_text(old)
    with pytest.warns(UserWarning, match='pacing = "estimate"'):
        assert load_policy(tmp_path / "old.toml").pacing == "even"
    (tmp_path / "kept.toml").write_text(old + 'pacing = "estimate"\n')
    (tmp_path / "new.toml").write_text(policy_to_toml(AutoPolicy(budget=0.3, pacing="estimate", warmup=2)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_policy(tmp_path / "kept.toml").pacing == "estimate"
        est = lambda s, k: 0.01 * k * (1 + s % 3)          # noqa: E731
        assert load_policy(tmp_path / "new.toml").compute_steps(28, est) == \
            AutoPolicy(budget=0.3, pacing="estimate", warmup=2).compute_steps(28, est)
        assert load_policy("auto-4x").pacing == "even"          # a shipped preset pins it
