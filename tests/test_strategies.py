"""``taylorseer_fx.testing.strategies``: the schedules and layouts are what they claim, and the runtime
places every call of any drawn schedule and CFG layout at its step, computing exactly the policy's
schedule."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from dit_plain import make_plain_dit, plain_dit_inputs
from taylorseer_fx import taylorseer_backend
from taylorseer_fx.testing import strategies as S

FAST = settings(max_examples=200, deadline=None, derandomize=True, database=None)


@FAST
@given(S.schedules(max_steps=50))
def test_every_schedule_is_noisiest_first_and_counts_its_steps(s):
    assert len(s.timesteps) == s.num_steps >= 1
    assert all(math.isfinite(t) for t in s.timesteps)
    pairs = list(zip(s.timesteps, s.timesteps[1:]))
    if s.kind == "heun":           # t0, t1, t1, t2, t2, ...: non-increasing, each inner value twice
        assert all(a >= b for a, b in pairs) and len(set(s.timesteps)) == (s.num_steps + 1) // 2
    else:
        assert all(a > b for a, b in pairs)
    if s.sigmas is not None:
        assert len(s.sigmas) == s.num_steps and all(a > b > 0 for a, b in zip(s.sigmas, s.sigmas[1:]))


@FAST
@given(S.img2img())
def test_img2img_runs_the_strengths_tail_of_the_schedule(s):
    n, strength = s.params["nominal_steps"], s.params["strength"]
    assert s.first_step == n - min(int(n * strength), n) and s.num_steps == n - s.first_step >= 1


@FAST
@given(S.cfg_layouts(), st.integers(0, 40))
def test_a_cfg_layout_gives_each_step_its_calls(layout, step):
    calls = layout.calls(step)
    guided = layout.kind in ("batched", "split") or (layout.kind == "truncated" and step < layout.cfg_steps)
    assert sum(b for _, b in calls) == layout.batch * (2 if guided else 1)
    assert len(calls) == (2 if guided and (layout.kind == "split" or layout.split) else 1)


@pytest.mark.usefixtures("one_thread_fresh_dynamo")
@settings(max_examples=20, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(S.flow_matching_sigmas(2, 16), S.ddim_timesteps(2, 16), S.karras_sigmas(2, 16),
                 S.custom_sigmas(2, 16)),
       S.cfg_layouts(max_batch=2).filter(lambda c: c.kind != "truncated"), S.fixed_policies(max_interval=4))
def test_any_schedule_and_layout_computes_exactly_the_policys_steps(schedule, layout, policy):
    torch._dynamo.reset()
    model = make_plain_dit()
    x1, y1 = plain_dit_inputs(batch=1)
    be = taylorseer_backend(policy, inner="eager")
    cm = torch.compile(model, backend=be)
    with torch.no_grad(), be.session(schedule=list(schedule.timesteps)):
        for step, t in enumerate(schedule.timesteps):
            for _, b in layout.calls(step):
                x, y = x1.expand(b, *x1.shape[1:]), y1.expand(b, *y1.shape[1:])
                cm(x, torch.full((b,), t), y)
    rows = [r for r in be.stats()["trace"] if r["stream"] == 0]
    assert [r["step"] for r in rows] == list(range(schedule.num_steps))
    assert [r["step"] for r in rows if r["decision"] == "compute"] == policy.compute_steps(schedule.num_steps)
