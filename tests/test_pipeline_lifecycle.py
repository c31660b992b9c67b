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


def test_cycles_with_a_new_policy_each_time_keep_caching():
    """A user trying policies: 12 compile -> call -> remove cycles, each with another policy (and strict
    or not): one backend, so one dynamo cache entry, takes each cycle's policy."""
    pipe, run = _flux_pipe()
    for cycle in range(12):
        policy = FixedPolicy(interval=2 + cycle % 4, order=1, warmup=2)
        handle = compile_pipeline(pipe, policy=policy, inner="eager", strict=cycle % 2 == 0)
        run(8)
        total = handle.stats()["total"]
        assert total["calls"] == 8 and total["forecast"] == 8 - len(policy.compute_steps(8)), cycle
        assert handle.backends["transformer"].policy == policy
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


def test_accelerate_offload_hooks_are_seen_through():
    """accelerate's hooks (``enable_model_cpu_offload``) call the forward after a graph break, with the
    arguments ``pre_forward`` returned: the graph's timestep input is ``stack0[1]['timestep']``. The
    default finds it, ``timestep_arg="timestep"`` names it, and the calls forecast, in a pipeline and in
    a bare loop."""
    pytest.importorskip("accelerate")
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
    from taylorseer_fx import taylorseer_backend

    class Offload(ModelHook):             # what an offload hook does to the call (without moving weights)
        def pre_forward(self, module, *args, **kwargs):
            torch._dynamo.graph_break()    # accelerate's device moves break the graph here
            return args, kwargs

    pipe, run = _flux_pipe()
    ref = run(8)
    add_hook_to_module(pipe.transformer, Offload())
    handle = compile_pipeline(pipe, policy=POLICY, inner="eager", strict=True)
    out = run(8)
    total = handle.stats()["total"]
    assert total["forecast"] == 8 - len(POLICY.compute_steps(8)) and total["uncached_calls"] == 0
    assert ((out - ref).norm() / ref.norm()).item() < 0.2
    assert any(g.timestep == "l_stack0_1_timestep_" for g in handle.backends["transformer"].graphs)
    handle.remove()
    remove_hook_from_module(pipe.transformer)
    add_hook_to_module(pipe.transformer, Offload())
    for arg in (None, "timestep"):          # a bare loop: the coordinate is read from the graph input
        torch._dynamo.reset()
        be = taylorseer_backend(POLICY, inner="eager", timestep_arg=arg)
        model = torch.compile(pipe.transformer, backend=be)
        x, enc, pooled = torch.randn(1, 16, 16), torch.randn(1, 8, 32), torch.randn(1, 32)
        ids, txt = torch.zeros(16, 3), torch.zeros(8, 3)
        with torch.no_grad():
            for t in torch.linspace(1.0, 0.1, 8):
                model(hidden_states=x, encoder_hidden_states=enc, pooled_projections=pooled,
                      timestep=t.reshape(1), img_ids=ids, txt_ids=txt)
        assert be.stats()["forecast"] == 8 - len(POLICY.compute_steps(8)), arg
