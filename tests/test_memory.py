"""What the backend holds is freed when it says so, and bounded (issue 25, items 6-8)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from dit_plain import make_plain_dit, plain_dit_inputs
from taylorseer_fx import FixedPolicy, taylorseer_backend
from taylorseer_fx.graph.graph_record import GraphRecord
from taylorseer_fx.runtime.steps import MAX_STREAMS

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")


def _factors(be) -> list:
    """Weak references to every factor tensor the backend's owners hold."""
    refs = []
    for g in be.runtime.graphs:
        sc = g.ctx.scope()[0]
        for owner in list(sc.owners.values()):
            gen = owner.generation
            for st in gen.states.values():
                refs += [weakref.ref(f) for fs in st.forecaster._factors for f in fs]
    return refs


@pytest.mark.parametrize("regions", ["stack", "modules"])
def test_reset_frees_the_factor_tensors(regions):
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend("official-flux", regions=regions, inner="eager")
    cm = torch.compile(model, backend=be)
    with torch.no_grad():
        for t in torch.linspace(999, 100, 8):
            cm(x, t.reshape(1), y)
    refs = _factors(be)
    assert refs and be.memory_bytes() > 0
    be.reset()
    gc.collect()
    assert be.memory_bytes() == 0
    assert all(r() is None for r in refs), f"{sum(r() is not None for r in refs)} factor tensors outlived reset()"


def test_records_of_graphs_dynamo_dropped_do_not_pile_up():
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend(FixedPolicy(interval=3), inner="eager")

    def records():
        gc.collect()
        return sum(isinstance(o, GraphRecord) for o in gc.get_objects())
    for k in range(6):
        cm = torch.compile(model, backend=be)
        with torch.no_grad():
            for t in (999.0, 900.0, 800.0):
                cm(x, torch.tensor([t]), y)
        assert len(be.graphs) == 1
        if k == 1:
            before = records()
        del cm
        torch._dynamo.reset()
        assert be.graphs == []
    assert records() <= before


def test_one_call_generations_hold_at_most_max_streams_streams():
    """A bare loop that calls the model at its first timestep again and again: each call is taken as
    another stream of step 0 (CFG-like), up to MAX_STREAMS, then a new generation starts. The state is
    those streams' factors: bounded, and the live tensors stay flat."""
    model = make_plain_dit()
    x, y = plain_dit_inputs()
    be = taylorseer_backend("official-flux", inner="eager")
    cm = torch.compile(model, backend=be)
    sizes = []
    with torch.no_grad():
        for g in range(120):
            cm(x, torch.tensor([999.0]), y)
            sizes.append(be.memory_bytes())
    one = sizes[0]                              # one stream's factors and the scratch
    assert max(sizes) <= MAX_STREAMS * one
    assert max(sizes[60:]) <= max(sizes[:60])   # no growth past the first generations
