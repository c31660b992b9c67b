"""Samplers that inject noise (DDPM, ancestral, SDE): the features between steps are rough, so a fixed
schedule's forecasts are worse than with a deterministic sampler on the same model, while the auto
policy sees it in its estimate and computes more, keeping its error small (issue 25, item 14).
A tiny Stable Diffusion pipeline (random weights, cached at the model boundary), 16 steps, batched CFG."""

from __future__ import annotations

import warnings

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")

diffusers = pytest.importorskip("diffusers")

from taylorseer_fx import FixedPolicy, compile_pipeline  # noqa: E402
from test_model_boundary import _sd_pipe  # noqa: E402

STEPS = 16
FIXED = FixedPolicy(interval=3, warmup=2, order=1)
SAMPLERS = {
    "euler": (diffusers.EulerDiscreteScheduler, {}),
    "ancestral": (diffusers.EulerAncestralDiscreteScheduler, {}),
    "ddpm": (diffusers.DDPMScheduler, {}),
    "sde-dpmsolver++": (diffusers.DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++"}),
}


@pytest.fixture(scope="module")
def measured():
    """{sampler: {policy: (computes, relative error of the final latents)}}; the same noise per sampler."""
    pipe, run = _sd_pipe()
    config = pipe.scheduler.config
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, (cls, extra) in SAMPLERS.items():
            pipe.scheduler = cls.from_config(config, **extra)
            ref = run(STEPS)
            out[name] = {}
            for label, policy in (("fixed", FIXED), ("auto", "auto-balanced")):
                handle = compile_pipeline(pipe, policy=policy, inner="eager")
                got = run(STEPS)
                out[name][label] = (handle.stats()["total"]["compute"], ((got - ref).norm() / ref.norm()).item())
                handle.remove()
    return out


def test_a_fixed_schedule_forecasts_worse_with_a_sampler_that_injects_noise(measured):
    base = measured["euler"]["fixed"][1]
    for name in ("ancestral", "ddpm", "sde-dpmsolver++"):
        computes, err = measured[name]["fixed"]
        assert computes == len(FIXED.compute_steps(STEPS))
        assert err > 1.5 * base, (name, err, base)


def test_the_auto_policy_computes_more_there_and_keeps_its_error_small(measured):
    euler_computes, euler_err = measured["euler"]["auto"]
    for name in ("ancestral", "ddpm", "sde-dpmsolver++"):
        computes, err = measured[name]["auto"]
        assert computes >= euler_computes, (name, computes, euler_computes)
        assert err < 0.02 and err < measured[name]["fixed"][1] / 5, (name, err)
    assert measured["ddpm"]["auto"][0] > euler_computes
