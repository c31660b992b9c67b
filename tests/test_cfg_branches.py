"""Told CFG branches decide together. diffusers pipelines tell each denoiser call its branch
(``cache_context("cond"|"uncond")``); each branch keeps its own cached state, and every branch of a
step computes or forecasts together: their forecast errors are then alike and cancel in
``cond - uncond`` instead of being amplified by the guidance scale (a schedule per branch made the
arena Flux's error 5x worse at CFG 3: 0.088 against 0.017)."""

from __future__ import annotations

import warnings

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from taylorseer_fx import AutoPolicy, Request, compile_pipeline, taylorseer_backend  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")


def _decisions(trace) -> dict:
    out: dict = {}
    for r in trace:
        out.setdefault(r["stream"], {})[r["step"]] = r["decision"]
    return out


@pytest.mark.parametrize("policy", [AutoPolicy(threshold=0.25, max_forecast_run=10), AutoPolicy(budget=0.35),
                                    AutoPolicy(threshold=0.25, per_region=True)])
def test_true_cfg_branches_compute_and_forecast_at_the_same_steps(policy):
    """The demo Flux (trained: its cond and uncond estimates differ enough that schedules of their own
    part ways, at 28 steps with threshold 0.25 from step 14 on)."""
    from taylorseer_fx.demo.flux_model import PIXEL_SIZE
    from taylorseer_fx.demo.flux_pipeline import build_pipeline, pipeline_inputs

    pipe = build_pipeline()
    handle = compile_pipeline(pipe, policy=policy, regions="stack", inner="eager")
    try:
        for labels in ([0, 1], [2, 3]):          # a second call: a fresh request, the same rule
            pipe(**pipeline_inputs(labels, cfg_scale=3.0), num_inference_steps=28, height=PIXEL_SIZE,
                 width=PIXEL_SIZE, output_type="latent", generator=torch.Generator().manual_seed(0))
            by_stream = _decisions(handle.stats()["transformer"]["trace"])
            assert sorted(by_stream) == [0, 1]                      # cond and uncond, told
            assert by_stream[0] == by_stream[1]
            assert "forecast" in by_stream[0].values()
            handle.reset()
    finally:
        handle.remove()


class _Denoiser(torch.nn.Module):
    """A block stack whose output depends on the timestep (so the auto policy has something to forecast)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(),
                                                               torch.nn.Linear(8, 8))])

    def forward(self, x, timestep):
        for b in self.blocks:
            x = b(x) * (1 + timestep[:, None] / 1000)
        return x


def _told(order) -> tuple:
    """``(backend, warnings)`` after one request of 10 steps whose cond/uncond calls come in ``order``:
    ``[(branch, step index), ...]``, with ``"reset"`` entries calling ``backend.reset()``."""
    backend = taylorseer_backend(policy=AutoPolicy(threshold=0.5, min_steps=0), inner="eager")
    compiled = torch.compile(_Denoiser(), backend=backend)
    x, ts = torch.randn(2, 8), torch.linspace(999, 0, 10)
    with torch.no_grad(), Request(num_steps=10) as req, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for item in order:
            if item == "reset":
                assert_together(backend)
                backend.reset()
                continue
            branch, i = item
            with req.context(branch=branch, step_index=i):
                compiled(x, ts[i].reshape(1).expand(2))
    return backend, [w for w in caught if "not called step by step together" in str(w.message)]


def assert_together(backend) -> None:
    by_stream = _decisions(backend.stats()["trace"])
    assert by_stream[0] == by_stream[1] and len(by_stream[0]) == 10


def test_branches_called_one_after_the_other_decide_on_their_own_and_say_so():
    """A caller that runs every cond step, then every uncond step, of one request (not step by step
    together): the second branch goes back to step 0, so it decides with a schedule of its own."""
    backend, said = _told([(b, i) for b in ("cond", "uncond") for i in range(10)])
    assert len(said) >= 1
    by_stream = _decisions(backend.stats()["trace"])
    assert sorted(by_stream) == [0, 1] and len(by_stream[1]) == 10


def test_after_a_reset_the_branches_share_a_fresh_schedule():
    """backend.reset() inside a request forgets the owners and the schedules they shared: the next
    steps start over together, with no warning about branches out of step."""
    run = [(b, i) for i in range(10) for b in ("cond", "uncond")]
    _, said = _told(run + ["reset"] + run + ["reset"])
    assert not said


@pytest.mark.parametrize("budget, n", [(0.5, 12), (0.25, 12), (0.5, 20)])
def test_a_budget_is_exact_with_untold_cfg_calls_in_a_bare_loop(budget, n):
    """A bare loop with cond and uncond as two calls per step and only ``num_steps`` told: step 1 must
    compute (its streams are not known until step 2, ``steps.py``). The budget counts that compute
    and re-paces the rest, so the run computes exactly the budget's count, not one more."""
    backend = taylorseer_backend(policy=AutoPolicy(budget=budget), inner="eager", num_steps=n)
    compiled = torch.compile(_Denoiser(), backend=backend)
    x, ts = torch.randn(2, 8), torch.linspace(999, 0, n)
    with torch.no_grad():
        for t in ts:
            for _ in ("cond", "uncond"):
                compiled(x, t.reshape(1).expand(2))
    by_stream = _decisions(backend.stats()["trace"])
    assert by_stream[0][1] == "compute" and by_stream[0] == by_stream[1]
    assert sum(d == "compute" for d in by_stream[0].values()) == len(AutoPolicy(budget=budget).compute_steps(n))
