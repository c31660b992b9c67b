"""The tuner (``taylorseer_fx.tune``): the placement search keeps the budget's count and never ends
worse than where it started; a tuned placement is what the policy then computes, exactly; the preset
round-trips through ``load_policy``; an interrupted tuning resumes from its checkpoint without
repeating a run, and a checkpoint of another tuning is refused."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

from taylorseer_fx import AutoPolicy, load_policy, policy_to_toml, tune
from taylorseer_fx.integrations.targets import Case
from taylorseer_fx.policy.budget import target_computes
from taylorseer_fx.policy.presets import policy_to_dict
from taylorseer_fx.tuning.forecasts import FORECASTS, KEEP, candidates, label, ranked
from taylorseer_fx.tuning.search import descend, even_placement, even_starts, feasible, pinned_steps
from taylorseer_fx.tuning.tuner import CHOICES, _base_policy, choose

runs = st.tuples(st.integers(2, 80), st.integers(2, 5), st.integers(0, 3), st.none() | st.integers(1, 8),
                 st.floats(0.05, 1.0))


# ------------------------------------------------------------------------------ the search
@settings(max_examples=300, deadline=None)
@given(runs)
def test_the_even_placement_keeps_the_count_the_pinned_steps_and_the_longest_run(run):
    steps, warmup, cooldown, max_run, fraction = run
    count = target_computes(fraction, steps, warmup, cooldown, max_run)
    p = even_placement(steps, count, warmup, cooldown, max_run)
    assert len(p) == count and pinned_steps(steps, warmup, cooldown) <= set(p)
    assert feasible(p, steps, max_run)
    gaps = [b - a - 1 for a, b in zip(p, p[1:] + (steps,)) if a >= warmup - 1 and b < steps - cooldown]
    assert not gaps or max(gaps) - min(gaps) <= 1 or cooldown > 0      # even: runs equal within one
    try:
        last = even_placement(steps, count, warmup, cooldown, max_run, final=True)
    except ValueError:           # only a bound on the forecast runs can rule it out
        assert max_run is not None and list(even_starts(steps, count, warmup, cooldown, max_run)) == ["even"]
        return
    assert list(even_starts(steps, count, warmup, cooldown, max_run).values()) == [p, last]
    assert len(last) == count and pinned_steps(steps, warmup, cooldown) <= set(last) and feasible(last, steps, max_run)
    if count > len(pinned_steps(steps, warmup, cooldown)):      # a compute to spare: the last step is one
        assert last[-1] == steps - 1
        inner = [b - a - 1 for a, b in zip(last, last[1:]) if a >= warmup - 1]
        assert not inner or max(inner) - min(inner) <= 1 or cooldown > 0


@settings(max_examples=200, deadline=None)
@given(runs, st.lists(st.floats(0, 1), min_size=80, max_size=80), st.integers(1, 3))
def test_descent_keeps_the_count_and_the_bounds_and_ends_no_worse_at_a_local_optimum(run, weights, reach):
    steps, warmup, cooldown, max_run, fraction = run
    count = target_computes(fraction, steps, warmup, cooldown, max_run)
    start = even_placement(steps, count, warmup, cooldown, max_run)
    pinned = pinned_steps(steps, warmup, cooldown)
    seen = []

    def value(p):
        seen.append(p)
        return sum(weights[s] for s in p)
    best, best_value = descend(value, start, steps, pinned=pinned, max_run=max_run, reach=reach, sweeps=100)
    assert len(best) == count and pinned <= set(best) and feasible(best, steps, max_run)
    assert best_value == value(best) <= value(start)
    assert all(feasible(p, steps, max_run) and len(p) == count for p in seen)
    for i, s in enumerate(best):       # no move within reach, between the neighbours, helps any more
        if s in pinned:
            continue
        lo, hi = best[i - 1] + 1, (best[i + 1] if i + 1 < len(best) else steps) - 1
        for q in range(max(lo, s - reach), min(hi, s + reach) + 1):
            cand = best[:i] + (q,) + best[i + 1:]
            if q != s and q not in pinned and feasible(cand, steps, max_run):
                assert value(cand) >= best_value


# ------------------------------------------------------------------ a tuned placement decides
@st.composite
def placed_policies(draw):
    steps, warmup, cooldown, max_run, fraction = draw(runs)
    count = target_computes(fraction, steps, warmup, cooldown, max_run)
    pinned = pinned_steps(steps, warmup, cooldown)
    free = [s for s in range(steps) if s not in pinned]
    chosen = draw(st.permutations(free))[: count - len(pinned)]
    placement = tuple(sorted(pinned | set(chosen)))
    assume(feasible(placement, steps, max_run))
    policy = AutoPolicy(budget=fraction, warmup=warmup, cooldown=cooldown, max_forecast_run=max_run,
                        placements={steps: list(placement)})
    return policy, steps, placement


@settings(max_examples=300, deadline=None)
@given(placed_policies(), st.integers(0, 5))
def test_a_tuned_placement_is_exactly_what_computes_from_the_runs_first_step(case, first):
    policy, steps, placement = case
    assert tuple(policy.compute_steps(steps)) == placement
    sched = policy.start(steps + first, first_step=first)          # joining mid-run: counted from there
    got = [s for s in range(first, steps + first) if sched.decide(s, lambda: float("nan"))]
    assert tuple(s - first for s in got) == placement


@settings(max_examples=200, deadline=None)
@given(case=placed_policies())
def test_a_tuned_preset_round_trips_through_load_policy(tmp_path_factory, case):
    policy, steps, placement = case
    path = tmp_path_factory.mktemp("presets") / "tuned.toml"
    path.write_text(policy_to_toml(policy, "tuned"))
    back = load_policy(str(path))
    assert policy_to_dict(back) == policy_to_dict(policy)
    assert tuple(back.compute_steps(steps)) == placement


@pytest.mark.parametrize("placements, match", [
    ({8: [0, 1, 5, 6]}, r"placements\[8\] must compute every warm-up and cooldown step: misses \[2\]"),
    ({8: [0, 1, 2, 5, 6]}, r"placements\[8\] computes 5 steps; the budget 0.5 computes 4 of 8"),
    ({8: [1, 2, 3, 4]}, r"placements\[8\] must be increasing ints in \[0, 8\) starting at 0"),
    ({8: [0, 1, 2, 9]}, r"placements\[8\] must be increasing ints in \[0, 8\)"),
    ({0: [0]}, r"placements keys must be step counts"),
    ({8: "0,1,2"}, r"placements\[8\] must be a list of compute steps"),
    ({}, r"placements is empty"),
    (7, r"placements must be a mapping"),
])
def test_a_bad_placement_is_refused_naming_the_step_count(placements, match):
    with pytest.raises(ValueError, match=match):
        AutoPolicy(budget=0.5, warmup=3, placements=placements)


def test_a_run_longer_than_max_forecast_run_is_refused():
    with pytest.raises(ValueError, match=r"placements\[12\] forecasts 5 steps in a row; max_forecast_run is 4"):
        AutoPolicy(budget=0.5, max_forecast_run=4, placements={12: [0, 1, 2, 3, 4, 10]})


def test_an_untuned_length_says_so_once_and_the_budget_keeps_its_count():
    policy = AutoPolicy(budget=0.5, placements={8: [0, 1, 2, 5]})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        a, b = policy.compute_steps(10), policy.compute_steps(10)
    said = [w for w in caught if "no tuned placement or threshold for a run of 10 steps (tuned: [8])" in str(w.message)]
    assert len(said) == 1 and "the budget places the computes" in str(said[0].message)
    assert len(a) == len(b) == 5


# ---------------------------------------------------------------------------- tune on a model
class Drift(torch.nn.Module):
    """A denoiser whose output curves with the timestep (so where the computes go matters)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(8, 8) for _ in range(2)])

    def forward(self, x, timestep):
        s = timestep[:, None] / 1000
        for b in self.blocks:
            x = torch.tanh(b(x)) * (1 + 3 * s * s) + torch.sin(6 * s)
        return x


@torch.no_grad()
def _sample(model, case: Case):
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(case.seed * 10 + case.input))
    for t in torch.linspace(999, 0, case.steps):
        x = x - 0.05 * model(x, t.reshape(1).expand(x.shape[0]))
    return x


def _tune(**kw):
    kw = {"budget": 0.4, "steps": [12], "inputs": range(3), "sweeps": 2, "progress": False, **kw}
    return tune(Drift(), sample=_sample, **kw)


@pytest.mark.usefixtures("one_thread_fresh_dynamo")
def test_tune_finds_a_placement_no_worse_than_its_start_and_the_preset_runs_it(tmp_path):
    said = []
    r = _tune(progress=said.append)
    cell = r.cells[0]
    assert len(cell["placement"]) == cell["computes"] == target_computes(0.4, 12, 3, 0, None) == 5
    assert cell["calibration"] <= cell["calibration_start"]
    assert cell["start"] in ("even", "even, last step", "budget-auto") and cell["heldout"] is not None   # 3 inputs: 1 held out
    assert any("run 1:" in m for m in said) and any("fresh noise" in m for m in said)
    assert cell["threshold"] is not None and cell["chosen"] in ("placement", "threshold", "budget")
    assert cell["gain_fresh"] == cell["fresh"] / cell["fresh_budget_auto"] and "placement / budget alone" in r.table()
    if cell["chosen"] == "placement":         # the one that validates best is the one the preset holds
        assert tuple(r.policy.compute_steps(12)) == tuple(cell["placement"]) and r.policy.thresholds is None
    elif cell["chosen"] == "budget":          # tuning that validates worse than none is not shipped
        assert r.policy.compute_steps(12) == AutoPolicy(budget=0.4).compute_steps(12) == cell["budget_placement"]
    else:
        assert dict(r.policy.thresholds) == {12: cell["threshold"]} and r.policy.placements is None
    validation = {"placement": (cell["heldout"] + cell["fresh"]) / 2,
                  "threshold": (cell["threshold_heldout"] + cell["threshold_fresh"]) / 2,
                  "budget": (cell["heldout_budget_auto"] + cell["fresh_budget_auto"]) / 2}
    assert validation[cell["chosen"]] == min(validation.values())
    path = r.write(tmp_path / "tuned.toml")
    back = load_policy(path)
    assert policy_to_dict(back) == policy_to_dict(r.policy)
    assert "calibration" in r.table() and "Tuned by taylorseer_fx.tune" in open(path).read()


@pytest.mark.usefixtures("one_thread_fresh_dynamo")
def test_an_interrupted_tuning_resumes_from_its_checkpoint_without_repeating_a_run(tmp_path):
    whole = _tune(checkpoint=tmp_path / "whole.json")
    ck = tmp_path / "cut.json"
    seen = []

    def stop_after_three(msg):
        seen.append(msg)
        if sum("run " in m for m in seen) == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        _tune(checkpoint=ck, progress=stop_after_three)
    again = []
    resumed = _tune(checkpoint=ck, progress=again.append)
    assert any("resuming from" in m and "3 runs already measured" in m for m in again)
    new_runs = [m for m in again if "] run " in m]
    assert len(new_runs) == whole.cells[0]["evaluations"] - 3          # none of the three ran again
    assert resumed.cells[0]["placement"] == whole.cells[0]["placement"]
    assert resumed.cells[0]["calibration"] == whole.cells[0]["calibration"]
    with pytest.raises(ValueError, match=r"was written for another tuning \(differs in \['fraction'"):
        _tune(checkpoint=ck, budget=0.5)


@pytest.mark.usefixtures("one_thread_fresh_dynamo")
def test_tune_searches_the_forecaster_and_the_preset_keeps_the_one_that_validates_best(tmp_path):
    """Every candidate is ranked by its best start, the best two are searched in full, and the preset
    holds the searched one with the lowest validation error -- its form, order and warm-up."""
    r = _tune()
    cell = r.cells[0]
    got = cell["forecasts"]
    assert list(got)[0] == label(_base_policy(None, 0.4)) and len(got) == 1 + len(FORECASTS)
    starts = {k: v["start"] for k, v in got.items()}
    searched = {k: v["validation"] for k, v in got.items() if v["validation"] is not None}
    assert sorted(searched) == sorted(sorted(starts, key=starts.get)[:KEEP])
    assert cell["forecast"] == min(searched, key=searched.get)
    assert label(r.policy) == cell["forecast"] and r.policy.budget == 0.4
    assert policy_to_dict(load_policy(r.write(tmp_path / "t.toml"))) == policy_to_dict(r.policy)
    assert cell["forecast"] in r.table() and cell["forecast"] in r.description()


@pytest.mark.usefixtures("one_thread_fresh_dynamo")
def test_tune_with_forecasts_none_keeps_the_policys_own_forecaster():
    base = AutoPolicy(budget=0.4, order=2, warmup=3)
    r = _tune(policy=base, forecasts=None)
    assert list(r.cells[0]["forecasts"]) == [label(base)] == [r.cells[0]["forecast"]]
    assert (r.policy.form, r.policy.order, r.policy.warmup_steps) == (base.form, 2, 3)


def test_forecasters_that_differ_in_any_field_are_kept_apart_and_the_checkpoint_keys_say_which(tmp_path):
    """Two candidates differing only in coordinate, max_order, order_margin or derivatives_from are
    different forecasters: each keeps its own name, so its own checkpoint entries (a shared name once
    read another forecaster's errors back as its own)."""
    import json
    base = AutoPolicy(budget=0.4)
    got = candidates(base, [{"form": "newton", "coordinate": "timestep"}, {"form": "newton", "coordinate": "step"},
                            {"max_order": 3}, {"order_margin": 0.5}, {"derivatives_from": 2}])
    assert len(got) == 6 and len(set(map(label, got.values()))) == 6
    r = _tune(checkpoint=tmp_path / "ck.json")
    keys = json.loads((tmp_path / "ck.json").read_text())["evaluations"]["12"]
    by_placement = {}
    for key, value in keys.items():
        name, _, placement = key.rpartition(": ")
        assert name in r.cells[0]["forecasts"], key          # every entry names its forecaster
        by_placement.setdefault(placement, {})[name] = value
    shared = [v for v in by_placement.values() if len(v) >= 2]
    assert shared and any(len(set(v.values())) > 1 for v in shared)   # one placement, two forecasters, two errors


def test_a_default_candidate_the_policy_refuses_is_left_out_and_said_a_given_one_is_an_error(monkeypatch):
    import taylorseer_fx.tuning.forecasts as fc
    refused, fine = {"form": "hermite", "coordinate": "timestep"}, {"form": "hermite", "order": 1, "warmup": 1}
    monkeypatch.setattr(fc, "FORECASTS", (refused, fine))
    said = []
    got = fc.candidates(AutoPolicy(budget=0.4), fc.FORECASTS, said.append)
    assert [p.form for p in got.values()] == ["heun", "hermite"] and "left out" in said[0] and "coordinate" in said[0]
    with pytest.raises(ValueError, match=r"forecasts\[0\] = \{'form': 'hermite', 'coordinate': 'timestep'\}: "
                                         r"AutoPolicy: coordinate"):
        fc.candidates(AutoPolicy(budget=0.4), [refused, fine])


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text("abc", min_size=1, max_size=3),
                       st.lists(st.floats(0, 10) | st.just(float("inf")), min_size=2, max_size=2),
                       min_size=1, max_size=6), st.integers(1, 4))
def test_forecasters_rank_by_the_geometric_mean_of_their_starts(scores, keep):
    top = ranked(scores, keep)
    assert len(top) == min(keep, len(scores)) and len(set(top)) == len(top)

    def geo(v):
        logs = [math.log(max(x, 1e-300)) for x in v]
        return math.inf if max(v) == math.inf else math.exp(sum(logs) / len(logs))
    assert [geo(scores[k]) for k in top] == sorted(geo(scores[k]) for k in top)
    rest = [geo(v) for k, v in scores.items() if k not in top]
    assert not rest or min(rest) >= geo(scores[top[-1]])


def test_a_tuned_preset_as_the_base_is_tuned_afresh():
    """Passing a tuned preset as ``policy`` keeps its forecaster, not its placements or thresholds."""
    tuned = AutoPolicy(budget=0.5, placements={8: [0, 1, 2, 5]}, thresholds={12: 0.1}, order=2, warmup=3)
    base = _base_policy(tuned, 0.25)
    assert base.placements is None and base.thresholds is None and base.budget == 0.25 and base.order == 2


@pytest.mark.parametrize("kw, match", [
    ({"budget": 1.5}, "budget must be a fraction"),
    ({"steps": [1]}, "tune: steps must be an int >= 2"),
    ({"steps": [6]}, r"steps \[6\] are below the policy's min_steps=8: .* min_steps=0"),
    ({"seeds": [0, 0]}, "tune: seeds must not repeat a value"),
    ({"holdout": 3}, r"holdout \(3\) must leave at least one"),
    ({"progress": "yes"}, "progress must be True, False or a callable"),
    ({"policy": "official-flux"}, "policy must be an AutoPolicy"),
    ({"forecasts": "hermite"}, "forecasts must be a sequence of dicts"),
    ({"forecasts": [{}]}, r"forecasts\[0\] must be a non-empty dict"),
    ({"forecasts": [{"form": "taylor"}, {"shape": 2}]}, r"forecasts\[1\] sets \['shape'\]; a candidate may set only"),
    ({"forecasts": [{"order": -1}]}, r"forecasts\[0\] = \{'order': -1\}: AutoPolicy: order must be"),
])
def test_bad_tune_arguments_are_refused_naming_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        _tune(**kw)


diffusers = pytest.importorskip("diffusers")


@pytest.mark.usefixtures("one_thread_fresh_dynamo")
def test_tune_on_a_flux_pipeline_and_the_compiled_pipeline_runs_the_placement(tmp_path):
    from taylorseer_fx import compile_pipeline
    from test_pipeline import _flux_embeds, _flux_pipe

    pipe, _ = _flux_pipe()
    cond, _ = _flux_embeds()
    inputs = [dict(cond, height=64, width=64, output_type="latent")]
    r = tune(pipe, inputs, budget=0.5, steps=10, sweeps=1, progress=False)
    cell = r.cells[0]
    assert cell["heldout"] is None and cell["fresh"] > 0 and len(cell["placement"]) == 5
    handle = compile_pipeline(pipe, policy=r.policy, inner="eager")
    try:
        pipe(**inputs[0], num_inference_steps=10, generator=torch.Generator().manual_seed(0))
        trace = handle.stats()["transformer"]["trace"]
        ran = [c["step"] for c in trace if c["stream"] == 0 and c["decision"] == "compute"]
        assert ran == cell["placement"] if cell["chosen"] == "placement" else len(ran) == 5
    finally:
        handle.remove()


def test_the_command_writes_a_preset_and_refuses_a_bad_budget(tmp_path):
    out = tmp_path / "tuned.toml"
    cmd = [sys.executable, "-m", "taylorseer_fx.tuning", "--budget", "2x", "--steps", "8", "--inputs", "2",
           "--sweeps", "1", "--out", str(out)]
    done = subprocess.run(cmd + ["--forecasts", "own"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "run 1:" in done.stderr and "chosen" in done.stdout and "threshold" in done.stderr
    back = load_policy(str(out))
    assert back.form == AutoPolicy(budget=0.5).form and "forecasters by their best start" not in done.stderr
    assert 8 in dict(back.placements or ()) or 8 in dict(back.thresholds or ())
    assert len(back.compute_steps(8, lambda s, k: 0.1 * k)) == 4
    assert (tmp_path / "tuned.toml.progress.json").exists()
    bad = subprocess.run(cmd[:4] + ["5"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "budget must be a fraction" in bad.stderr
    for extra, said in ((["--prompt", "a cat"], "--prompt needs a pipeline folder"),
                        ([str(tmp_path / "missing")], "no such folder here")):
        bad = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and said in bad.stderr, bad.stderr[-1000:]


def test_the_example_tunes_writes_and_runs_the_preset(tmp_path):
    example = __import__("pathlib").Path(__file__).resolve().parent.parent / "examples" / "tune_my_model.py"
    done = subprocess.run([sys.executable, str(example), str(tmp_path / "tuned.toml")], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    tuned = load_policy(str(tmp_path / "tuned.toml"))
    if tuned.placements:                     # the tuned placement is what runs, exactly
        assert f"16 steps: computed {list(dict(tuned.placements)[16])}" in done.stdout
    else:                                    # a tuned threshold: the budget's count, 6 of 16
        line = next(x for x in done.stdout.splitlines() if x.startswith("16 steps: computed "))
        ran = eval(line.split("computed ", 1)[1])
        assert 16 in dict(tuned.thresholds) and len(ran) == 6 and ran[0] == 0
    assert "no tuned placement or threshold for a run of 20 steps" in done.stderr


@settings(max_examples=300, deadline=None)
@given(runs, st.lists(st.integers(0, 79), max_size=30))
def test_fit_count_gives_exactly_the_count_with_the_pinned_steps_or_says_it_cannot(run, given_steps):
    from taylorseer_fx.tuning.search import fit_count

    steps, warmup, cooldown, max_run, fraction = run
    count = target_computes(fraction, steps, warmup, cooldown, max_run)
    pinned = pinned_steps(steps, warmup, cooldown)
    try:
        p = fit_count(given_steps, count, steps, pinned, max_run)
    except ValueError as e:
        assert "keeps max_forecast_run" in str(e) and max_run is not None
        return
    assert len(p) == count and pinned <= set(p) and feasible(p, steps, max_run)


@settings(max_examples=200, deadline=None)
@given(runs, st.floats(1e-4, 10), st.lists(st.floats(1e-6, 1.0), min_size=80, max_size=80))
def test_a_tuned_threshold_keeps_the_budgets_count_exactly_whatever_the_estimates(run, tau, rates):
    steps, warmup, cooldown, max_run, fraction = run
    policy = AutoPolicy(budget=fraction, warmup=warmup, cooldown=cooldown, max_forecast_run=max_run, min_steps=0,
                        thresholds={steps: tau})
    got = policy.compute_steps(steps, lambda s, k: rates[s] * k)
    assert len(got) == target_computes(fraction, steps, warmup, cooldown, max_run)
    assert pinned_steps(steps, warmup, cooldown) <= set(got) and feasible(got, steps, max_run)


def test_a_tuned_threshold_computes_where_the_estimate_crosses_it():
    """The threshold rule's own decisions where the budget leaves them free: a burst of fast growth
    in steps 12..17 is computed, the slow stretches are forecast."""
    p = AutoPolicy(budget=0.4, min_steps=0, thresholds={30: 0.1}, accumulate="step", final_compute=False)
    got = p.compute_steps(30, lambda s, k: (0.2 if 12 <= s < 18 else 0.001) * k)
    assert len(got) == 12 and set(range(12, 18)) <= set(got)


@pytest.mark.parametrize("kw, match", [
    ({"threshold": 0.1, "thresholds": {8: 0.1}}, "thresholds .tuned per step count. need a budget"),
    ({"budget": 0.5, "thresholds": {8: -1}}, r"thresholds\[8\] must be a finite number > 0"),
    ({"budget": 0.5, "thresholds": {8: 0.1}, "placements": {8: [0, 1, 2, 5]}}, "8 steps has both"),
    ({"budget": 0.5, "thresholds": {}}, "thresholds must be a non-empty mapping"),
])
def test_a_bad_tuned_threshold_is_refused_naming_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        AutoPolicy(**kw)


@given(st.dictionaries(st.sampled_from(CHOICES), st.sampled_from([0.1, 0.2, 0.3]), min_size=1))
def test_the_preset_keeps_the_variant_that_validates_best_and_a_tie_keeps_the_untuned_budget(options):
    got = choose(options)
    assert options[got] == min(options.values())
    assert all(CHOICES.index(got) <= CHOICES.index(k) for k, v in options.items() if v == options[got])
