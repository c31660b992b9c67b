"""``compile_pipeline`` is told each call's step and branch by the pipeline and its scheduler.

Tiny random-weight diffusers pipelines (``inner="eager"``). Heun-type schedulers evaluate the model
twice per step at repeated timesteps: both evaluations are cached, each stage with its own history;
a scheduler replaced after ``compile_pipeline`` (the diffusers idiom) is followed.
"""

from __future__ import annotations

import copy

import pytest
import torch

from test_pipeline import _computed, _flux_pipe, _sd3
from taylorseer_fx import FixedPolicy
from taylorseer_fx.integrations.pipeline import compile_pipeline

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")
diffusers = pytest.importorskip("diffusers")


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def _sd3_run(pipe, kw, steps):
    return pipe(**kw, num_inference_steps=steps, output_type="latent",
                generator=torch.Generator().manual_seed(3)).images


def test_heun_scheduler_forecasts_both_evaluations_at_the_policys_rate():
    """SD3 with FlowMatchHeunDiscreteScheduler (2N - 1 model calls for N steps): each stage computes
    exactly the policy's steps, and the error at matched compute is within 2x of the Euler
    scheduler's on the same pipeline."""
    torch.manual_seed(0)
    pipe, kw, _ = _sd3()
    pipe.set_progress_bar_config(disable=True)
    policy = FixedPolicy(interval=3, order=1, warmup=2)
    n = 12
    errors = {}
    for name, sched in (("euler", diffusers.FlowMatchEulerDiscreteScheduler()),
                        ("heun", diffusers.FlowMatchHeunDiscreteScheduler())):
        pipe.scheduler = sched
        want = _sd3_run(pipe, kw, n)
        handle = compile_pipeline(pipe, policy=policy, inner="eager")
        got = _sd3_run(pipe, kw, n)
        be = handle.backends["transformer"]
        trace = be.stats()["trace"]
        for stage in {r["stream"] for r in trace}:
            rows = [r for r in trace if r["stream"] == stage]
            steps = [r["step"] for r in rows]
            assert steps == list(range(len(steps)))
            assert [r["step"] for r in rows if r["decision"] == "compute"] == \
                [s for s in policy.compute_steps(n) if s < len(steps)]
        assert len({r["stream"] for r in trace}) == (2 if name == "heun" else 1)
        assert be.stats()["forecast"] > 0
        errors[name] = _rel(got, want)
        handle.remove()
    print("errors", errors)
    assert errors["heun"] <= 2 * errors["euler"], errors


def test_a_scheduler_replaced_after_compile_pipeline_is_followed():
    """``pipe.scheduler = X.from_config(pipe.scheduler.config)`` after compile_pipeline: the run is
    still one generation with the pipeline's step count (a cool-down preset needs it)."""
    pipe, run = _flux_pipe()
    handle = compile_pipeline(pipe, policy="openvino-lite", inner="eager")
    pipe.scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    run(10)
    be = handle.backends["transformer"]
    assert [r["step"] for r in be.stats()["trace"]] == list(range(10))
    assert _computed(be) == handle.backends["transformer"].policy.compute_steps(10)
    handle.remove()
    assert "set_timesteps" not in vars(pipe.scheduler)


def test_never_forecast_stays_bit_equal_with_heun():
    torch.manual_seed(0)
    pipe, kw, _ = _sd3()
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = diffusers.FlowMatchHeunDiscreteScheduler()
    want = _sd3_run(pipe, kw, 6)
    compile_pipeline(pipe, policy="never", inner="eager")
    assert torch.equal(_sd3_run(pipe, kw, 6), want)


class _Rising(diffusers.SD3Transformer2DModel):
    """What the pipeline calls instead of its (compiled) transformer: the same transformer, fed a
    rising, rescaled coordinate (1 - t / 1000) instead of the scheduler's falling timestep -- a model
    input that says nothing the schedule could match."""

    def __call__(self, *args, timestep, **kw):
        return self.real(*args, timestep=1.0 - timestep / 1000.0, **kw)


def _rising(pipe):
    proxy = copy.copy(pipe.transformer)
    proxy.__class__ = _Rising
    vars(proxy)["real"] = pipe.transformer
    vars(pipe)["transformer"] = proxy          # the pipeline calls the proxy; the real one is compiled


def test_a_rising_rescaled_coordinate_places_every_step_at_its_index():
    """SD3 (no ``cache_context``, a scheduler that keeps no index before its first step) whose
    transformer receives 1 - t / 1000: every call is placed at its step index, so the policy's
    schedule (cool-down included) is computed exactly, and the never-forecast policy is bit-equal."""
    torch.manual_seed(0)
    pipe, kw, _ = _sd3()
    pipe.set_progress_bar_config(disable=True)
    real = pipe.transformer
    _rising(pipe)
    want = _sd3_run(pipe, kw, 10)
    vars(pipe)["transformer"] = real
    handle = compile_pipeline(pipe, policy="never", inner="eager")
    _rising(pipe)
    assert torch.equal(_sd3_run(pipe, kw, 10), want)
    vars(pipe)["transformer"] = real
    handle.remove()
    policy = FixedPolicy(interval=3, order=1, warmup=2, cooldown=2)
    handle = compile_pipeline(pipe, policy=policy, inner="eager")
    _rising(pipe)
    _sd3_run(pipe, kw, 10)
    trace = handle.backends["transformer"].stats()["trace"]
    assert [r["step"] for r in trace] == list(range(10))
    assert _computed(handle.backends["transformer"]) == policy.compute_steps(10)
