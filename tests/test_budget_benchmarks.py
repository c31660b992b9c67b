"""benchmarks/budget_forecasters.py and tune_dit.py (issue 27): every forecaster the budget table runs is
a valid budgeted AutoPolicy on both models' warm-ups and keeps the budget's count; the DiT tuner's
sampler draws its own noise per (seed, input), calls the model it is given and never reuses
quality.py's samples. No benchmark model runs here."""

from __future__ import annotations

import pytest
import torch

from bench_import import benchmark_module
from taylorseer_fx import AutoPolicy
from taylorseer_fx.integrations.targets import Case
from taylorseer_fx.policy.budget import target_computes

pytest.importorskip("diffusers")

with benchmark_module("budget_forecasters") as _bf:
    FORECASTERS = _bf.FORECASTERS
with benchmark_module("tune_dit") as _td:
    CONFIGS, sampler = _td.CONFIGS, _td.sampler


@pytest.mark.parametrize("name", list(FORECASTERS))
def test_each_forecaster_is_a_budget_with_the_cells_count(name):
    fields = FORECASTERS[name]
    for steps, k in ((28, 7), (28, 14), (50, 12), (50, 25)):          # the arena's cells
        p = AutoPolicy(budget=k / steps, **fields)
        assert target_computes(k / steps, steps, p.warmup_steps, p.cooldown, p.max_forecast_run) == k
    p = AutoPolicy(budget=0.3, **fields)        # on both models the warm-up the row names, else the budget's
    assert p.warmup_steps == fields.get("warmup", 1) and (str(p.warmup_steps) in name or "warmup" not in fields)


def test_the_dit_tuners_sampler_calls_its_model_with_noise_of_its_own():
    calls = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))      # sample() reads the model's dtype
            self.sample_size, self.in_channels, self.null_class = 16, 1, 10     # and the DiT's shape

        def forward(self, x, timestep, labels):
            calls.append((x.clone(), labels.clone()))
            return torch.zeros_like(x)

    run = sampler(1.0)
    run(Spy(), Case(steps=3, seed=0, input=1))
    first = calls[0]
    assert len(calls) == 3 and first[1][:2].tolist() == [2, 3]    # input 1: labels (2, 3), one call per step
    calls.clear()
    run(Spy(), Case(steps=3, seed=0, input=1))
    assert torch.equal(calls[0][0], first[0])                      # deterministic per (seed, input)
    calls.clear()
    run(Spy(), Case(steps=3, seed=1, input=1))
    assert not torch.equal(calls[0][0], first[0])                  # another seed, other noise
    bench_noise = torch.randn(20, 1, 16, 16, generator=torch.Generator().manual_seed(0))   # quality.py's
    assert not any(torch.allclose(first[0][i], bench_noise[j]) for i in range(2) for j in range(20))


def test_budget_row_runs_the_level_as_a_budget_and_compares_with_the_best_fixed_at_its_count():
    with benchmark_module("quality") as quality:
        budget_row = quality.budget_row
    runs = []

    class Bench:                                       # records the policy; computes what the budget says
        def run(self, policy, regions, steps, shift):
            runs.append((policy, regions, steps, shift))
            k = target_computes(policy.compute_fraction, steps, policy.warmup_steps, 0, None)
            return {"error": 0.02, "computes": k, "compute_steps": list(range(k))}

    fixed = [{"computes": 6, "error": 0.001}, {"computes": 7, "error": 0.05}, {"computes": 7, "error": 0.04},
             {"computes": 9, "error": 0.01}]
    row = budget_row(Bench(), 28, 3.0, 3, 7, fixed, form="taylor", order=2)
    policy, regions, steps, shift = runs[0]
    assert (policy.budget, policy.warmup_steps, policy.form, policy.order) == (7 / 28, 3, "taylor", 2)
    assert (regions, steps, shift) == ("stack", 28, 3.0)
    assert row["level"] == 7 and row["ref"]["error"] == 0.04        # the best at the count, never a cheaper one
    assert row["ratio"] == pytest.approx(0.02 / 0.04)
