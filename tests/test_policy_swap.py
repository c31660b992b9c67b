"""A policy swapped while calls are in flight (``backend.policy = ...`` from another thread): a call
finishes with its own generation's policy, and the swap applies from each owner's next generation
(issue 25, item 4)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from taylorseer_fx import FixedPolicy, taylorseer_backend
from taylorseer_fx.runtime.region_state import Owner

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")


class Linear(torch.nn.Module):
    """Blocks whose stack output is linear in the timestep: on evenly spaced timesteps an order-1 newton
    forecast is exact in either coordinate (timestep or step index) -- and garbage when a step index is
    evaluated against timestep nodes."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(6, 6), torch.nn.Linear(6, 6)])
        for b in self.blocks:
            torch.nn.init.eye_(b.weight)
            torch.nn.init.zeros_(b.bias)
        self.w = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 6))

    def forward(self, x, timestep):
        h = x * 1.0
        for b in self.blocks:
            h = b(h + self.w * timestep[:, None] / 1000.0)
        return h * 1.0


TS = [1000.0 - 110.0 * k for k in range(9)]
BY_TIMESTEP = FixedPolicy(interval=3, order=1, warmup=2, form="newton", coordinate="timestep")
BY_STEP = FixedPolicy(interval=2, order=1, warmup=2, form="newton", coordinate="step")


def _compiled_linear():
    """``(x, the uncached outputs at TS, backend, compiled model)`` of the Linear stack under BY_TIMESTEP."""
    model = Linear().eval()
    x = torch.zeros(1, 6)
    with torch.no_grad():
        want = [model(x, torch.tensor([t])) for t in TS]
    be = taylorseer_backend(BY_TIMESTEP, inner="eager")
    return x, want, be, torch.compile(model, backend=be)


def test_a_swap_in_the_middle_of_a_call_does_not_change_that_call(monkeypatch):
    x, want, be, compiled = _compiled_linear()
    place, calls = Owner.place, [0]

    def swapping(self, *args, **kwargs):       # another thread swaps right after this call was placed
        out = place(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 3:                        # step 2: a forecast of the first generation
            be.policy = BY_STEP
        return out
    monkeypatch.setattr(Owner, "place", swapping)
    with torch.no_grad():
        got = [compiled(x, torch.tensor([t])) for t in TS]
    trace = be.stats()["trace"]
    assert trace[2]["decision"] == "forecast"
    assert torch.allclose(got[2], want[2], atol=1e-5), (got[2], want[2])      # the old policy's own coordinate
    assert all(torch.allclose(g, w, atol=1e-4) for g, w in zip(got, want))
    assert trace[3]["generation"] != trace[2]["generation"]                    # the next call: a new generation
    assert trace[3]["decision"] == "compute"


def test_swaps_from_another_thread_never_mix_coordinates():
    x, want, be, compiled = _compiled_linear()
    stop = threading.Event()

    def swapper():
        k = 0
        while not stop.is_set():
            be.policy = (BY_STEP, BY_TIMESTEP)[k % 2]
            k += 1
            time.sleep(0.0003)
    with torch.no_grad():
        compiled(x, torch.tensor([TS[0]]))       # compiled before the swaps start
    assert be.graphs[0].regions
    with torch.no_grad():
        t = threading.Thread(target=swapper)
        t.start()
        try:
            worst = 0.0
            for _ in range(12):
                for k, ts in enumerate(TS):
                    got = compiled(x, torch.tensor([ts]))
                    worst = max(worst, (got - want[k]).abs().max().item())
        finally:
            stop.set()
            t.join()
    # either policy forecasts this linear stack exactly in its own coordinate
    assert worst < 1e-4, worst
