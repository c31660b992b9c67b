"""``session(schedule=...)``: each call placed at its timestep's index in the scheduler's schedule, so
step indices are the run's own for a model that joins mid-run (Wan 2.2's second transformer, img2img),
CFG calls are streams without being declared, and per-token timesteps use their largest value."""

from __future__ import annotations

import warnings

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")

from dit_plain import make_plain_dit, plain_dit_inputs
from taylorseer_fx import FixedPolicy, taylorseer_backend

SCHEDULE = [1000.0 - 1000.0 * i / 12 for i in range(12)]       # the scheduler's timesteps, 0..1000


def _steps(be):
    return [(r["step"], r["stream"], r["decision"]) for r in be.stats()["trace"]]


def _run(cm, x, y, values, calls_per_step=1, per_token=False):
    outs = []
    with torch.no_grad():
        for v in values:
            for _ in range(calls_per_step):
                t = torch.full((x.shape[0],), v)
                if per_token:
                    t = torch.cat([torch.zeros(1), t[1:]])      # a conditioning sample at 0
                outs.append(cm(x, t, y))
    return outs


@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_calls_are_placed_at_their_index_in_the_schedule(scale):
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend(FixedPolicy(interval=3, cooldown=2), inner="eager")
    cm = torch.compile(model, backend=be)
    with be.session(schedule=torch.tensor(SCHEDULE)):           # the model gets scale x the schedule
        _run(cm, x, y, [scale * v for v in SCHEDULE])
    want = FixedPolicy(interval=3, cooldown=2).compute_steps(12)
    assert [s for s, _, d in _steps(be) if d == "compute"] == want
    assert [s for s, _, _ in _steps(be)] == list(range(12))


def test_a_model_joining_mid_run_keeps_the_runs_step_indices_and_its_cooldown():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    policy = FixedPolicy(interval=3, cooldown=2)
    be = taylorseer_backend(policy, inner="eager")
    cm = torch.compile(model, backend=be)
    with be.session(schedule=SCHEDULE):                          # Wan 2.2's transformer_2: steps 5..11
        _run(cm, x, y, SCHEDULE[5:])
    got = _steps(be)
    assert [s for s, _, _ in got] == list(range(5, 12))
    computed = [s for s, _, d in got if d == "compute"]
    sched = policy.start(12, first_step=5)
    assert computed == [k for k in range(5, 12) if sched.decide(k)]
    assert {10, 11} <= set(computed) and {5, 6} <= set(computed)   # its own warm-up, the run's cooldown
    assert any(d == "forecast" for _, _, d in got)


def test_cfg_calls_are_streams_without_declaring_them():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend(FixedPolicy(interval=3), inner="eager")
    cm = torch.compile(model, backend=be)
    with be.session(schedule=SCHEDULE):
        _run(cm, x, y, SCHEDULE, calls_per_step=2)
    got = _steps(be)
    assert [(s, k) for s, k, _ in got] == [(s, k) for s in range(12) for k in (0, 1)]
    assert all(got[2 * s][2] == got[2 * s + 1][2] for s in range(12))      # one decision per step


def test_per_token_timesteps_use_their_largest_value():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    x, y = torch.cat([x, x]), torch.cat([y, y])
    be = taylorseer_backend(FixedPolicy(interval=3), inner="eager")
    cm = torch.compile(model, backend=be)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                           # no "timesteps differ" warning
        with be.session(schedule=SCHEDULE):
            _run(cm, x, y, SCHEDULE, per_token=True)
    assert [s for s, _, _ in _steps(be)] == list(range(12)) and be.stats()["forecast"] > 0


def test_a_value_not_in_the_schedule_is_placed_by_inference_with_a_warning():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend(FixedPolicy(interval=3), inner="eager")
    cm = torch.compile(model, backend=be)
    with pytest.warns(UserWarning, match="not in the session's schedule"):
        with be.session(schedule=SCHEDULE):
            _run(cm, x, y, [v + 5000.0 for v in SCHEDULE])     # outside it, at every scale
    assert [s for s, _, _ in _steps(be)] == list(range(12))


def test_timesteps_and_schedule_together_are_rejected():
    be = taylorseer_backend(FixedPolicy(interval=3), inner="eager")
    with pytest.raises(ValueError, match="not both"):
        with be.session(timesteps=SCHEDULE, schedule=SCHEDULE):
            pass
    with pytest.raises(ValueError, match="schedule must be finite"):
        with be.session(schedule=[1.0, float("nan")]):
            pass
