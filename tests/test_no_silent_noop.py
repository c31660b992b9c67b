"""No silent no-op: when a request ends and fewer than half of the forecasts its policy planned
happened, the backend says so once, naming the first cause (``strict=True``: a RuntimeError every
time); ``stats()["audit"]`` counts planned and actual forecasts and every cause. Never on a normal run.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, strategies as st

from dit_plain import make_plain_dit, plain_dit_inputs
from taylorseer_fx import AutoPolicy, FixedPolicy, taylorseer_backend
from taylorseer_fx.runtime.tally import CAUSES, Tally

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")
SCHEDULE = [1000.0 - 90.0 * k for k in range(10)]


# ----------------------------------------------------------------- the tally itself
@given(interval=st.integers(1, 5), warmup=st.integers(2, 4), n=st.integers(1, 30), first=st.integers(0, 5))
def test_planned_is_the_policys_schedule_over_the_steps_seen(interval, warmup, n, first):
    policy = FixedPolicy(interval=interval, order=1, warmup=warmup)
    t = Tally()
    steps = range(first, first + n)
    want = policy.start(None, first)
    for s in steps:
        t.record("cond", s, False, False)
    assert t.planned(policy, None) == sum(not want.decide(s, lambda: 0.0) for s in steps)


@given(planned=st.integers(0, 20), done=st.integers(0, 20))
def test_a_shortfall_is_fewer_than_half(planned, done):
    policy = FixedPolicy(interval=1)            # planned counted from the decisions below
    t = Tally()
    for s in range(max(planned, done)):
        t.record(0, s, s < done, s < planned)
    t.cause("restart")
    policy = AutoPolicy(threshold=0.1)          # adaptive: planned = the forecasts decided
    short = t.shortfall(policy, None)
    assert (short is not None) == (planned > 0 and 2 * done < planned)
    if short is not None:
        assert short.cause == "restart" and CAUSES["restart"] in short.message()


def test_an_unknown_cause_is_rejected():
    with pytest.raises(ValueError, match="unknown cause"):
        Tally().cause("gremlins")


# ----------------------------------------------------------------- through a backend
def _run(be, model, change=None, batches=(2,)):
    """A 10-step session; ``change(model)`` before every call; the batch size cycles through
    ``batches`` (a change at every step restarts the graph's cached state)."""
    x, y = plain_dit_inputs(batch=max(batches))
    with torch.no_grad(), be.session(schedule=SCHEDULE):
        for k, t in enumerate(SCHEDULE):
            if change is not None:
                change(model)
            b = batches[k % len(batches)]
            model(x[:b], torch.full((b,), t), y[:b])


def _compiled(**kw):
    be = taylorseer_backend(FixedPolicy(interval=3, order=1, warmup=2), inner="eager", **kw)
    return be, torch.compile(make_plain_dit(), backend=be)


def test_a_normal_run_says_nothing_and_counts_its_forecasts():
    be, model = _compiled(strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(be, model)
    audit = be.stats()["audit"]
    assert audit["runs"] == 1 and audit["planned"] == 10 - len(be.policy.compute_steps(10)) == audit["forecasts"]
    assert audit["causes"] == {}


def _bump(model):
    with torch.no_grad():
        next(model.parameters()).add_(0.0)      # an in-place write: a new version, as a LoRA fuse makes


@pytest.mark.parametrize("how, cause", [("weights", "weights"), ("batch", "restart")])
def test_a_run_that_loses_its_forecasts_says_why_once(how, cause):
    be, model = _compiled()
    kw = dict(change=_bump) if how == "weights" else dict(batches=(2, 1))
    with pytest.warns(UserWarning, match=f"forecasts the policy planned happened.*{CAUSES[cause][:30]}"):
        _run(be, model, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        if how == "weights":
            warnings.filterwarnings("ignore", message=".*weights changed")
        _run(be, model, **kw)                   # once per backend
    audit = be.stats()["audit"]
    assert audit["runs"] == 2 and audit["forecasts"] < audit["planned"] / 2 and audit["causes"][cause] > 0


def test_strict_raises_every_time():
    be, model = _compiled(strict=True)
    for _ in range(2):
        with pytest.raises(RuntimeError, match="strict=True"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*weights changed")
            _run(be, model, change=_bump)


def test_an_exception_in_the_run_is_not_audited():
    be, model = _compiled(strict=True)
    x, y = plain_dit_inputs()
    with pytest.raises(KeyError):
        with be.session(schedule=SCHEDULE):
            with torch.enable_grad():
                model(x, torch.full((2,), SCHEDULE[0]), y)
            raise KeyError("the user's own error")
    assert be.stats()["audit"]["runs"] == 0


def test_strict_must_be_a_bool():
    with pytest.raises(ValueError, match="strict"):
        taylorseer_backend("never", inner="eager", strict="yes")


# ----------------------------------------------------------------- through compile_pipeline
diffusers = pytest.importorskip("diffusers")


def test_a_pipeline_whose_calls_never_reach_the_backend_says_so():
    """Forcing the silent no-op of the 9th compile_pipeline (the denoiser runs uncompiled): the
    pipeline call warns that no call reached the backend; strict raises; a normal call says nothing."""
    from test_pipeline import _flux_pipe
    from taylorseer_fx.integrations.pipeline import compile_pipeline
    pipe, run = _flux_pipe()
    handle = compile_pipeline(pipe, policy=FixedPolicy(interval=3, order=1, warmup=2), inner="eager", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        run(8)
    total = handle.stats()["total"]
    assert total["planned_forecasts"] == total["audited_forecasts"] > 0 and total["causes"] == {}
    compiled = pipe.transformer._compiled_call_impl
    pipe.transformer._compiled_call_impl = None           # the old silent no-op
    with pytest.raises(RuntimeError, match="no model call reached the backend"):
        run(8)
    assert handle.stats()["total"]["causes"] == {"never-reached": 1}
    handle.backends["transformer"].runtime.strict = False
    with pytest.warns(UserWarning, match="no model call reached the backend"):
        run(8)
    pipe.transformer._compiled_call_impl = compiled


def test_a_session_whose_backend_no_call_reached_says_so():
    """A session of one backend around a loop whose model was compiled with another backend: the
    session's end says no call reached it."""
    be, _ = _compiled()
    other = torch.compile(make_plain_dit(), backend="eager")
    x, y = plain_dit_inputs()
    with pytest.warns(UserWarning, match="no model call reached the backend"):
        with torch.no_grad(), be.session(schedule=SCHEDULE):
            for t in SCHEDULE:
                other(x, torch.full((2,), t), y)
    assert be.stats()["audit"]["causes"] == {"never-reached": 1}
