"""``compile_pipeline`` where users put it (issue 24, item 1 in part): compile -> call -> remove
cycles keep caching, ``remove()`` gives back a user's own ``module.compile()``, and a denoiser that
another live handle compiled, or a ``torch.compile`` wrapper, is refused with a ValueError saying what
to do -- never a silent no-op."""

from __future__ import annotations

import pytest
import torch

from test_pipeline import _flux_pipe
from taylorseer_fx import FixedPolicy
from taylorseer_fx.integrations.pipeline import compile_pipeline

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


def _call(pipe, steps):
    g = torch.Generator().manual_seed(1)
    return pipe(prompt_embeds=torch.randn(1, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g),
                num_inference_steps=steps, height=64, width=64, output_type="latent",
                generator=torch.Generator().manual_seed(3)).images


def test_a_denoiser_held_by_another_live_handle_is_shared_or_refused():
    """Two pipelines around one transformer: the second compile_pipeline with other arguments is refused
    (one module, one backend); with the same arguments it shares the backend, each pipeline's calls are
    requests of their own, and the transformer stays compiled until the last handle is removed."""
    pipe, run = _flux_pipe()
    other = diffusers.FluxPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=None,
                                   text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                   transformer=pipe.transformer)        # shares the transformer
    other.set_progress_bar_config(disable=True)
    first = compile_pipeline(pipe, policy=POLICY, inner="eager")
    with pytest.raises(ValueError, match="another live compile_pipeline handle with other arguments"):
        compile_pipeline(other, policy=FixedPolicy(interval=4, order=1, warmup=2), inner="eager")
    run(6)
    assert first.stats()["total"]["forecast"] == 6 - len(POLICY.compute_steps(6))   # the first handle untouched
    second = compile_pipeline(other, policy=POLICY, inner="eager", strict=False)
    assert second.backends["transformer"] is first.backends["transformer"]
    first.reset()
    _call(other, 6)
    assert first.stats()["total"]["forecast"] == 6 - len(POLICY.compute_steps(6))
    first.remove()
    assert pipe.transformer._compiled_call_impl is not None         # still held by the second handle
    first.reset()
    _call(other, 6)
    assert second.stats()["total"]["forecast"] == 6 - len(POLICY.compute_steps(6))
    second.remove()
    assert pipe.transformer._compiled_call_impl is None and "cache_context" not in vars(pipe.transformer)


def test_a_from_pipe_pipeline_is_told_what_to_do_and_then_shares():
    """``from_pipe`` shares the transformer and the scheduler. Called as it is, its set_timesteps says
    that its calls are placed by inference, with no step count (a cool-down policy needs one); compiled
    too, it shares the backend and every preset works."""
    pipe, run = _flux_pipe()
    cooldown = FixedPolicy(interval=3, order=1, warmup=2, cooldown=2)
    first = compile_pipeline(pipe, policy=cooldown, inner="eager", strict=True)
    run(8)
    assert first.stats()["total"]["forecast"] == 8 - len(cooldown.compute_steps(8))
    derived = diffusers.FluxPipeline.from_pipe(pipe)
    assert derived.transformer is pipe.transformer and derived.scheduler is pipe.scheduler
    with pytest.warns(UserWarning, match="outside a call of the pipeline compile_pipeline compiled"):
        with pytest.raises(ValueError, match="num_steps"):
            _call(derived, 8)
    handle = compile_pipeline(derived, policy=cooldown, inner="eager", strict=True)
    first.reset()
    _call(derived, 8)
    computed = sorted({r["step"] for r in handle.backends["transformer"].stats()["trace"] if r["decision"] == "compute"})
    assert computed == cooldown.compute_steps(8)
    run(8)                                              # the first pipeline still caches
    handle.remove()
    first.remove()
    assert "set_timesteps" not in vars(pipe.scheduler)


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


def test_a_handle_dropped_without_remove_does_not_become_what_was_there_before():
    import gc
    pipe, run = _flux_pipe()
    transformer = pipe.transformer
    compile_pipeline(pipe, policy=POLICY, inner="eager")
    del pipe, run
    gc.collect()
    other = diffusers.FluxPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=None,
                                   text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                   transformer=transformer)
    handle = compile_pipeline(other, policy=POLICY, inner="eager")
    handle.remove()
    assert transformer._compiled_call_impl is None


def test_remove_releases_the_denoiser_it_compiled_even_if_the_pipeline_swapped_it():
    pipe, run = _flux_pipe()
    compiled = pipe.transformer
    handle = compile_pipeline(pipe, policy=POLICY, inner="eager")
    pipe.transformer = _flux_pipe()[0].transformer
    handle.remove()
    assert compiled._compiled_call_impl is None and "cache_context" not in vars(compiled)
