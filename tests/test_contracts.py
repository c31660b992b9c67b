"""The runtime's internal contracts, explicit: what GraphRuntime uses of the runtime (a Protocol),
what the runtime asks a policy (capabilities, not type probes), what a RegionState says of its
outputs, and the backend's per-graph record (a dataclass whose ``in`` tells the truth)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

from dit_plain import make_plain_dit, plain_dit_inputs
from taylorseer_fx import AutoPolicy, FixedPolicy, MaskPolicy, taylorseer_backend
from taylorseer_fx.graph.graph_record import GraphRecord
from taylorseer_fx.forecast.forecaster import Forecaster
from taylorseer_fx.runtime.graph_runtime import RuntimeContext
from taylorseer_fx.runtime.region_state import RegionState
from taylorseer_fx.runtime.runtime import Runtime


def test_the_runtime_is_what_a_graph_runtime_uses():
    assert isinstance(Runtime(FixedPolicy(interval=2)), RuntimeContext)


@given(interval=st.integers(1, 6))
def test_fixed_policy_never_forecasts_exactly_at_interval_1(interval):
    p = FixedPolicy(interval=interval)
    assert p.never_forecasts == (interval == 1) == (p.compute_steps(30) == list(range(30)))
    assert Runtime(p).never == p.never_forecasts


@given(mask=st.lists(st.booleans(), min_size=3, max_size=20))
def test_mask_policy_never_forecasts_when_every_step_computes(mask):
    mask = [True, True] + mask
    p = MaskPolicy(mask=mask)
    assert p.never_forecasts == all(mask)


def test_capabilities_of_the_auto_policy():
    assert AutoPolicy(threshold=0.1, per_region=True).decides_per_region
    assert not AutoPolicy(threshold=0.1).decides_per_region
    assert AutoPolicy(threshold=0.1, estimator="remainder").error_estimator == "remainder"
    assert AutoPolicy(threshold=0.1).error_estimator == "pair"
    assert FixedPolicy(interval=2).error_estimator == "remainder" and not FixedPolicy(interval=2).decides_per_region
    assert Runtime(AutoPolicy(threshold=0.1, per_region=True)).per_region


def test_region_state_says_what_its_outputs_are():
    st_ = RegionState(Forecaster(order=1))
    assert not st_.all_forecast and st_.all_constant and not st_.ready
    st_.absorb((torch.ones(2), 3, torch.tensor([1])), (), {}, 0.0, True)
    assert st_.ready and not st_.all_forecast and not st_.all_constant
    only = RegionState(Forecaster(order=1))
    only.absorb(torch.ones(2), (), {}, 0.0, True)
    assert only.all_forecast and not only.all_constant


@pytest.mark.usefixtures("one_thread_fresh_dynamo")
def test_graph_record_fields_and_membership_agree():
    be = taylorseer_backend(FixedPolicy(interval=2), inner="eager")
    model = torch.compile(make_plain_dit(), backend=be)
    x, y = plain_dit_inputs()
    with torch.no_grad():
        model(x, torch.full((2,), 900.0), y)
    rec = be.graphs[0]
    assert isinstance(rec, GraphRecord)
    for key in GraphRecord.FIELDS:
        assert key in rec and rec[key] is getattr(rec, key)
    assert rec["whole_graph"] is not None and rec.reason is None and rec.regions
    assert "nope" not in rec and rec.get("nope", 7) == 7
    with pytest.raises(KeyError):
        rec["nope"]
    torch._dynamo.reset()
    import gc
    gc.collect()
    assert rec.whole_graph is None and rec.get("whole_graph") is None      # never kept alive by the record
