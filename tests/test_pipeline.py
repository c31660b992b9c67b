"""``compile_pipeline`` on real diffusers pipelines (tiny random-weight denoisers, ``prompt_embeds``
passed so no tokenizer or text encoder is needed, ``output_type="latent"`` so no VAE)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")

diffusers = pytest.importorskip("diffusers")

from taylorseer_fx import FixedPolicy, load_policy  # noqa: E402
from taylorseer_fx.integrations.pipeline import compile_pipeline  # noqa: E402


def _flux_embeds():
    """(cond, neg): the tiny Flux's prompt embeddings and its negative ones, seeded."""
    g = torch.Generator().manual_seed(1)
    cond = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g))
    neg = dict(negative_prompt_embeds=torch.randn(1, 8, 32, generator=g),
               negative_pooled_prompt_embeds=torch.randn(1, 32, generator=g))
    return cond, neg


def _flux_pipe():
    torch.manual_seed(0)
    tr = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=False,
        axes_dims_rope=(4, 6, 6)).eval()
    pipe = diffusers.FluxPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=None,
                                  text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None,
                                  transformer=tr)
    pipe.set_progress_bar_config(disable=True)
    cond, neg = _flux_embeds()

    def run(steps, cfg=False, **kw):
        extra = dict(neg, true_cfg_scale=2.0) if cfg else {}
        return pipe(**cond, **extra, num_inference_steps=steps, height=64, width=64, output_type="latent",
                    generator=torch.Generator().manual_seed(3), **kw).images
    return pipe, run


def _computed(be):
    return [r["step"] for r in be.stats()["trace"] if r["decision"] == "compute" and r["stream"] == 0]


def test_never_forecast_is_bit_equal_and_remove_restores_the_pipeline():
    pipe, run = _flux_pipe()
    cls = type(pipe)
    want = run(8)
    handle = compile_pipeline(pipe, policy="never", inner="eager")
    assert type(pipe) is not cls and isinstance(pipe, cls)
    assert torch.equal(run(8), want)
    assert handle.stats()["total"]["compute"] == 8 and handle.stats()["total"]["forecast"] == 0
    handle.remove()
    assert type(pipe) is cls and "set_timesteps" not in vars(pipe.scheduler)
    assert torch.equal(run(8), want)


@pytest.mark.parametrize("preset", ["openvino-lite", "official-flux"])
def test_every_call_computes_exactly_its_schedule_at_any_step_count(preset):
    pipe, run = _flux_pipe()
    handle = compile_pipeline(pipe, policy=preset, inner="eager")       # no num_steps anywhere
    be = handle.backends["transformer"]
    policy = load_policy(preset)
    for steps in (28, 20, 28):
        handle.reset()
        run(steps)
        assert _computed(be) == policy.compute_steps(steps), steps
        assert handle.stats()["total"]["steps"] == steps


def test_cooldown_policy_and_true_cfg_streams():
    pipe, run = _flux_pipe()
    policy = FixedPolicy(interval=3, cooldown=3)
    handle = compile_pipeline(pipe, policy=policy, inner="eager")
    be = handle.backends["transformer"]
    run(12, cfg=True)                       # two transformer calls per step: cond and uncond
    trace = be.stats()["trace"]
    assert [(r["step"], r["stream"]) for r in trace] == [(s, k) for s in range(12) for k in (0, 1)]
    assert _computed(be) == policy.compute_steps(12)
    assert all(trace[2 * s]["decision"] == trace[2 * s + 1]["decision"] for s in range(12))


def test_two_calls_in_a_row_are_equal_and_an_interrupted_call_leaves_nothing():
    pipe, run = _flux_pipe()
    handle = compile_pipeline(pipe, policy=FixedPolicy(interval=3), inner="eager")
    first, second = run(10), run(10)
    assert torch.equal(first, second)
    assert handle.memory_bytes() == 0          # the end of a pipeline call releases its generation

    def stop(pipe_, step, t, kw):
        if step == 5:
            raise KeyboardInterrupt
        return kw
    with pytest.raises(KeyboardInterrupt):
        run(10, callback_on_step_end=stop)
    assert handle.memory_bytes() == 0
    assert torch.equal(run(10), first)
    assert handle.stats()["total"]["forecast"] > 0


def test_compile_pipeline_validates():
    pipe, _ = _flux_pipe()
    compile_pipeline(pipe, policy="never", inner="eager")
    with pytest.raises(ValueError, match="compiled already"):
        compile_pipeline(pipe, inner="eager")
    with pytest.raises(ValueError, match="no denoiser"):
        compile_pipeline(object(), inner="eager")


def _wan22_pipe():
    torch.manual_seed(0)
    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
               out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    t1, t2 = diffusers.WanTransformer3DModel(**cfg).eval(), diffusers.WanTransformer3DModel(**cfg).eval()
    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=t1, transformer_2=t2,
                                 scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), boundary_ratio=0.5)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    pe, ne = torch.randn(1, 8, 32, generator=g), torch.randn(1, 8, 32, generator=g)

    def run(steps):
        return pipe(prompt_embeds=pe, negative_prompt_embeds=ne, num_inference_steps=steps, height=32, width=32,
                    num_frames=5, guidance_scale=2.0, guidance_scale_2=2.0, output_type="latent",
                    generator=torch.Generator().manual_seed(3)).frames
    return pipe, run


def test_wan22_each_transformer_has_its_backend_and_the_runs_step_indices():
    pipe, run = _wan22_pipe()
    want = run(10)
    policy = FixedPolicy(interval=2, cooldown=2)
    handle = compile_pipeline(pipe, policy="never", inner="eager")
    assert torch.equal(run(10), want)
    handle.remove()
    handle = compile_pipeline(pipe, policy=policy, inner="eager")
    run(10)
    s1 = [r["step"] for r in handle.backends["transformer"].stats()["trace"] if r["stream"] == 0]
    s2 = [r["step"] for r in handle.backends["transformer_2"].stats()["trace"] if r["stream"] == 0]
    assert s1 and s2 and s1 + s2 == list(range(10))             # high noise, then low noise
    first = s2[0]
    sched = policy.start(10, first_step=first)                 # its own warm-up, the run's cooldown
    assert _computed(handle.backends["transformer_2"]) == [k for k in s2 if sched.decide(k)]
    assert {8, 9} <= set(_computed(handle.backends["transformer_2"]))


def _sd3():
    tr = diffusers.SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=4, num_layers=2,
                                         attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
                                         joint_attention_dim=32, pooled_projection_dim=64, out_channels=4).eval()
    pipe = diffusers.StableDiffusion3Pipeline(transformer=tr, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
                                              vae=None, text_encoder=None, tokenizer=None, text_encoder_2=None,
                                              tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    g = torch.Generator().manual_seed(1)
    kw = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), negative_prompt_embeds=torch.randn(1, 8, 32, generator=g),
              pooled_prompt_embeds=torch.randn(1, 64, generator=g),
              negative_pooled_prompt_embeds=torch.randn(1, 64, generator=g), guidance_scale=2.0, height=32, width=32)
    return pipe, kw, "images"                                   # batched CFG: one call per step


def _qwen():
    tr = diffusers.QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                                               attention_head_dim=16, num_attention_heads=3, joint_attention_dim=16,
                                               guidance_embeds=False, axes_dims_rope=(8, 4, 4)).eval()
    pipe = diffusers.QwenImagePipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=None,
                                       text_encoder=None, tokenizer=None, transformer=tr)
    g = torch.Generator().manual_seed(1)
    m = torch.ones(1, 8, dtype=torch.long)
    kw = dict(prompt_embeds=torch.randn(1, 8, 16, generator=g), prompt_embeds_mask=m,
              negative_prompt_embeds=torch.randn(1, 8, 16, generator=g), negative_prompt_embeds_mask=m,
              true_cfg_scale=2.0, height=32, width=32)              # timestep / 1000, two calls per step
    return pipe, kw, "images"


def _pixart_sigma():
    tr = diffusers.PixArtTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
                                            num_attention_heads=3, caption_channels=32, in_channels=4,
                                            cross_attention_dim=24, out_channels=8, attention_bias=True,
                                            activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                            norm_type="ada_norm_single", norm_elementwise_affine=False,
                                            norm_eps=1e-6).eval()
    pipe = diffusers.PixArtSigmaPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=tr,
                                         scheduler=diffusers.DDIMScheduler())      # integer timesteps
    g = torch.Generator().manual_seed(1)
    m = torch.ones(1, 8, dtype=torch.long)
    kw = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), prompt_attention_mask=m, negative_prompt=None,
              negative_prompt_embeds=torch.randn(1, 8, 32, generator=g), negative_prompt_attention_mask=m,
              guidance_scale=2.0, height=64, width=64, use_resolution_binning=False)
    return pipe, kw, "images"


def _wan21():
    cfg = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
               out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
               qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    pipe = diffusers.WanPipeline(tokenizer=None, text_encoder=None, vae=None,
                                 transformer=diffusers.WanTransformer3DModel(**cfg).eval(),
                                 scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    g = torch.Generator().manual_seed(1)
    kw = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g), negative_prompt_embeds=torch.randn(1, 8, 32, generator=g),
              guidance_scale=2.0, height=32, width=32, num_frames=5)
    return pipe, kw, "frames"


@pytest.mark.parametrize("family", [_sd3, _qwen, _pixart_sigma, _wan21],
                         ids=["sd3", "qwenimage", "pixart-sigma", "wan2.1"])
def test_pipeline_families(family):
    torch.manual_seed(0)
    pipe, kw, out = family()
    pipe.set_progress_bar_config(disable=True)

    def run(steps):
        return getattr(pipe(**kw, num_inference_steps=steps, output_type="latent",
                            generator=torch.Generator().manual_seed(3)), out)
    want = run(12)
    handle = compile_pipeline(pipe, policy="never", inner="eager")
    assert torch.equal(run(12), want)
    handle.remove()
    policy = FixedPolicy(interval=3, cooldown=2)
    handle = compile_pipeline(pipe, policy=policy, inner="eager")
    for steps in (12, 9):
        handle.reset()
        run(steps)
        assert _computed(handle.backends["transformer"]) == policy.compute_steps(steps), steps
        assert handle.stats()["total"]["steps"] == steps and handle.stats()["total"]["forecast"] > 0


def test_the_pipeline_example_runs():
    import subprocess
    import sys
    from pathlib import Path
    example = Path(__file__).resolve().parent.parent / "examples" / "diffusers_pipeline.py"
    out = subprocess.run([sys.executable, str(example), "--steps", "10"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "steps computed" in out.stdout and "/10 steps" in out.stdout


def test_lite_is_an_alias_of_output():
    from taylorseer_fx import taylorseer_backend
    assert taylorseer_backend(regions="lite", inner="eager").regions == "output"
    with pytest.raises(ValueError, match="attn1"):
        taylorseer_backend(regions="blocks", inner="eager")


@pytest.mark.inductor
def test_compile_pipeline_with_inductor_matches_the_eager_inner():
    """The default inner backend: the forecast version compiles lazily inside a pipeline call."""
    pipe, run = _flux_pipe()
    handle = compile_pipeline(pipe, policy="openvino-lite", inner="eager")
    want = run(12)
    want_trace = [(r["step"], r["decision"]) for r in handle.backends["transformer"].stats()["trace"]]
    handle.remove()
    torch._dynamo.reset()
    handle = compile_pipeline(pipe, policy="openvino-lite")              # inner="inductor"
    got = run(12)
    be = handle.backends["transformer"]
    assert [(r["step"], r["decision"]) for r in be.stats()["trace"]] == want_trace
    assert be.graphs[0]["whole_graph"].forecast_compiled.done and not be.graphs[0]["pieces"].done
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
