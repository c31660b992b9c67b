"""``compile_pipeline`` where users put it (issue 24, item 1 in part): compile -> call -> remove
cycles keep caching, ``remove()`` gives back a user's own ``module.compile()``, and a denoiser that
another live handle compiled, or a ``torch.compile`` wrapper, is refused with a ValueError saying what
to do -- never a silent no-op."""

from __future__ import annotations

import pytest
import torch

from test_pipeline import _flux_pipe
from taylorseer_fx import FixedPolicy
from taylorseer_fx.pipeline import compile_pipeline

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")
diffusers = pytest.importorskip("diffusers")

POLICY = FixedPolicy(interval=3, order=1, warmup=2)


def test_many_compile_call_remove_cycles_keep_caching():
    """12 cycles on one pipeline (dynamo keeps 8 cache entries per code object): every cycle's call
    reaches its backend and forecasts at the policy's rate."""
    pipe, run = _flux_pipe()
    for cycle in range(12):
        handle = compile_pipeline(pipe, policy=POLICY, inner="eager", strict=True)
        run(6)
        total = handle.stats()["total"]
        assert total["calls"] == 6 and total["forecast"] == 6 - len(POLICY.compute_steps(6)), cycle
        handle.remove()


def test_remove_gives_back_the_users_own_compile():
    pipe, run = _flux_pipe()
    pipe.transformer.compile(backend="eager")
    users = pipe.transformer._compiled_call_impl
    handle = compile_pipeline(pipe, policy=POLICY, inner="eager")
    assert pipe.transformer._compiled_call_impl is not users
    run(6)
    assert handle.stats()["total"]["forecast"] > 0
    handle.remove()
    assert pipe.transformer._compiled_call_impl is users


def test_a_denoiser_compiled_by_another_live_handle_is_refused():
    pipe, run = _flux_pipe()
    other = diffusers.FluxPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=None,
                                   text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                   transformer=pipe.transformer)        # shares the transformer
    first = compile_pipeline(pipe, policy=POLICY, inner="eager")
    with pytest.raises(ValueError, match="another live compile_pipeline handle"):
        compile_pipeline(other, policy=POLICY, inner="eager")
    run(6)
    assert first.stats()["total"]["forecast"] > 0                       # the first handle untouched
    first.remove()
    second = compile_pipeline(other, policy=POLICY, inner="eager")      # free again
    second.remove()


def test_a_torch_compile_wrapper_is_refused_with_what_to_do():
    pipe, _ = _flux_pipe()
    pipe.transformer = torch.compile(pipe.transformer, backend="eager")
    with pytest.raises(ValueError, match=r"_orig_mod"):
        compile_pipeline(pipe, policy=POLICY, inner="eager")
