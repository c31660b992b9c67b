"""Caching at the model boundary (``regions="model"``, ``boundary.py``): UNet pipelines (Stable Diffusion
1.5, SDXL) and transformers none of whose graphs holds the block stack (graph breaks inside every block)
forecast the denoiser's whole output, decided before the compiled call, with the same policies, requests,
stats and audit as graph regions. Tiny random-weight models; ``output_type="latent"`` (no VAE)."""

from __future__ import annotations

import warnings

import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")

diffusers = pytest.importorskip("diffusers")

from taylorseer_fx import FixedPolicy, taylorseer_backend  # noqa: E402
from taylorseer_fx.integrations.pipeline import compile_pipeline  # noqa: E402
from test_pipeline import _flux_pipe  # noqa: E402  (a tiny FluxPipeline and run(steps))

FIXED = FixedPolicy(interval=3, warmup=2, order=1)


def _unet(xl: bool = False):
    torch.manual_seed(0)
    extra = dict(attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                 projection_class_embeddings_input_dim=80, cross_attention_dim=64) if xl else dict(cross_attention_dim=32)
    return diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32, **extra).eval()


def _sd_pipe(xl: bool = False):
    """A tiny StableDiffusion (or SDXL) pipeline and ``run(steps)`` -> latents, with CFG (batched)."""
    unet = _unet(xl)
    sch = diffusers.EulerDiscreteScheduler(steps_offset=1)
    g = torch.Generator().manual_seed(1)
    if xl:
        pipe = diffusers.StableDiffusionXLPipeline(vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                                   tokenizer_2=None, unet=unet, scheduler=sch)
        emb = dict(prompt_embeds=torch.randn(1, 7, 64, generator=g), negative_prompt_embeds=torch.randn(1, 7, 64, generator=g),
                   pooled_prompt_embeds=torch.randn(1, 32, generator=g),
                   negative_pooled_prompt_embeds=torch.randn(1, 32, generator=g))
    else:
        pipe = diffusers.StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=sch,
                                                 safety_checker=None, feature_extractor=None,
                                                 requires_safety_checker=False)
        emb = dict(prompt_embeds=torch.randn(1, 7, 32, generator=g), negative_prompt_embeds=torch.randn(1, 7, 32, generator=g))
    pipe.set_progress_bar_config(disable=True)

    def run(steps):
        return pipe(**emb, num_inference_steps=steps, height=32, width=32, output_type="latent",
                    generator=torch.Generator().manual_seed(3)).images
    return pipe, run


def _computed(be):
    return sorted({r["step"] for r in be.stats()["trace"] if r["decision"] == "compute"})


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("xl", [False, True], ids=["sd15", "sdxl"])
def test_unet_pipelines_forecast_at_the_model_boundary(xl):
    pipe, run = _sd_pipe(xl)
    ref = run(10)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="taylorseer")   # a normal run says nothing
        handle = compile_pipeline(pipe, policy="never", inner="eager")
        assert handle.kinds == {"unet": "model"}
        assert torch.equal(run(10), ref)          # never-forecast: bit-equal to the uncached pipeline
        assert handle.stats()["total"]["forecast"] == 0 and handle.stats()["total"]["compute"] == 10
        handle.remove()
        handle = compile_pipeline(pipe, policy=FIXED, inner="eager")
        for steps in (10, 7):
            handle.reset()
            out = run(steps)
            be = handle.backends["unet"]
            assert _computed(be) == FIXED.compute_steps(steps)
            total = handle.stats()["total"]
            assert total["forecast"] == steps - len(FIXED.compute_steps(steps)) > 0
            assert total["planned_forecasts"] == total["audited_forecasts"] == total["forecast"]
            assert torch.isfinite(out).all()
        assert _rel(run(10), ref) < 0.2
    handle.remove()
    assert pipe.unet._compiled_call_impl is None
    assert torch.equal(run(10), ref)


def test_a_unet_takes_only_the_model_kind():
    pipe, _ = _sd_pipe()
    with pytest.raises(ValueError, match="regions must be None or 'model'"):
        compile_pipeline(pipe, regions="stack", inner="eager")


def _break_every_block(transformer):
    """A graph break inside every block's forward (as HiDream, Mochi ...): no graph holds the block list."""
    for block in list(transformer.transformer_blocks) + list(transformer.single_transformer_blocks):
        forward = block.forward

        def broken(*args, _forward=forward, **kwargs):
            torch._dynamo.graph_break()
            return _forward(*args, **kwargs)
        block.forward = broken


def test_a_transformer_whose_graphs_hold_no_blocks_falls_back_to_the_model_boundary():
    pipe, run = _flux_pipe()
    _break_every_block(pipe.transformer)
    ref = run(8)
    handle = compile_pipeline(pipe, policy=FIXED, inner="eager")
    assert handle.kinds == {"transformer": "stack (model if no graph holds the blocks)"}
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="taylorseer")   # the default kind falls back quietly: no audit warning either
        run(8)
    assert handle.kinds == {"transformer": "model"}
    be = handle.backends["transformer"]
    assert be.graphs and not any(g.regions for g in be.graphs)
    handle.reset()
    out = run(8)
    assert _computed(be) == FIXED.compute_steps(8)
    assert handle.stats()["total"]["forecast"] == 8 - len(FIXED.compute_steps(8))
    assert torch.isfinite(out).all() and _rel(out, ref) < 0.2
    handle.remove()
    # a kind the user chose is announced when it falls back
    handle = compile_pipeline(pipe, policy=FIXED, regions="modules", inner="eager")
    with pytest.warns(UserWarning, match="cached at the model boundary"):
        run(8)
    assert handle.kinds == {"transformer": "model"}
    handle.remove()


def test_a_transformer_with_blocks_in_its_graph_keeps_its_graph_regions():
    pipe, run = _flux_pipe()
    handle = compile_pipeline(pipe, policy=FIXED, inner="eager")
    run(8)
    assert handle.kinds == {"transformer": "stack"}
    names = {n for r in handle.backends["transformer"].stats()["trace"] for n in r["regions"]}
    assert names and "model" not in names


def test_forecasts_keep_the_output_structure_and_are_fresh_tensors():
    unet = _unet()
    be = taylorseer_backend(FIXED, regions="model", inner="eager")
    be.compile_module(unet)
    x, enc = torch.randn(2, 4, 16, 16), torch.randn(2, 7, 32)
    kept, copies = [], []
    with torch.no_grad():
        for as_dict in (True, False):            # return_dict is in the call's signature: a new generation
            for t in torch.linspace(999, 0, 9):
                out = unet(x, t, enc, return_dict=as_dict)
                cls = diffusers.models.unets.unet_2d_condition.UNet2DConditionOutput if as_dict else tuple
                assert isinstance(out, cls)
                sample = out[0]
                assert sample.shape == x.shape and sample.dtype == x.dtype
                kept.append(sample)
                copies.append(sample.clone())
    st = be.stats()
    assert st["forecast"] == 2 * (9 - len(FIXED.compute_steps(9))) and st["generations"] == 2
    assert all(torch.equal(a, b) for a, b in zip(kept, copies))    # no forecast is overwritten later


def test_model_kind_checks_its_timestep_and_refuses_to_be_silent():
    unet = _unet()
    with pytest.raises(ValueError, match="timestep_arg='tt'.*sample"):
        taylorseer_backend(FIXED, regions="model", inner="eager", timestep_arg="tt").compile_module(unet)
    be = taylorseer_backend(FIXED, regions="model", inner="eager")
    compiled = torch.compile(unet, backend=be)           # torch.compile does not reach the boundary: said
    with pytest.warns(UserWarning, match="does not reach"), torch.no_grad():
        compiled(torch.randn(1, 4, 16, 16), torch.tensor(999.0), torch.randn(1, 7, 32))


def _boundary_unet():
    """``(unet, backend, x, encoder states, 8 timesteps)``: a tiny UNet cached at its boundary, computing
    steps 0, 1 and every 4th."""
    unet = _unet()
    be = taylorseer_backend(FixedPolicy(interval=4, warmup=2, order=1), regions="model", inner="eager")
    be.compile_module(unet)
    return unet, be, torch.randn(1, 4, 16, 16), torch.randn(1, 7, 32), torch.linspace(999, 0, 8)


def test_the_boundary_never_forecasts_from_changed_weights_or_with_grad():
    unet, be, x, enc, ts = _boundary_unet()
    with torch.no_grad():
        for t in ts[:3]:
            unet(x, t, enc)
        with torch.no_grad():
            unet.conv_out.bias.add_(1.0)                 # an in-place write: a LoRA fused mid-run
        with pytest.warns(UserWarning, match="weights changed"):
            out = unet(x, ts[3], enc).sample
    plain = unet._call_impl(x, ts[3], enc).sample        # the model itself, uncompiled
    assert torch.equal(out, plain)
    # weights replaced rather than written: a tensor swapped in its slot (as accelerate does), a module
    # replaced (a LoRA layer injected): never a forecast from the old ones
    for swap in ("slot", "module"):
        be.reset()
        with torch.no_grad():
            for t in ts[:3]:
                unet(x, t, enc)
            if swap == "slot":
                unet.conv_out._parameters["bias"] = torch.nn.Parameter(unet.conv_out.bias + 1.0)
            else:
                new = torch.nn.Conv2d(32, 4, 3, padding=1)
                new.load_state_dict(unet.conv_out.state_dict())
                with torch.no_grad():
                    new.weight.mul_(1.5)
                unet.conv_out = new
            out = unet(x, ts[3], enc).sample
            assert torch.equal(out, unet._call_impl(x, ts[3], enc).sample), swap
    be.reset()
    with torch.enable_grad():
        unet(x, ts[0], enc)
    st = be.stats()
    assert st["uncached_calls"] == 1 and st["forecast"] == 0


def test_the_unet_example_runs():
    import subprocess
    import sys
    from pathlib import Path
    example = Path(__file__).resolve().parent.parent / "examples" / "unet_pipeline.py"
    out = subprocess.run([sys.executable, str(example), "--xl", "--steps", "8"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "StableDiffusionXLPipeline {'unet': 'model'}" in out.stdout and "/8 steps computed" in out.stdout


def test_weights_moved_by_a_hook_inside_the_call_are_not_a_change_of_weights():
    """accelerate's offload hooks move the weights inside the model call (``param.data = ...``, new data
    pointers), at the first call of each pipeline call: the boundary takes the weights as the computed
    call left them, so the run keeps its forecasts and says nothing."""
    pipe, run = _sd_pipe()
    moved = []

    def offload_like(module, args):
        if not moved:                                   # once per pipeline call, like model_cpu_offload
            moved.append(True)
            for p in module.parameters():
                p.data = p.data.clone()
    pipe.unet.register_forward_pre_hook(offload_like)
    handle = compile_pipeline(pipe, policy=FIXED, inner="eager", strict=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="taylorseer")
        for _ in range(2):
            moved.clear()
            handle.reset()
            run(10)
            assert handle.stats()["total"]["forecast"] == 10 - len(FIXED.compute_steps(10))
    handle.remove()


def test_a_failed_compile_leaves_the_pipeline_as_it_was():
    pipe, run = _sd_pipe()
    cls = type(pipe)
    ref = run(4)
    with pytest.raises(ValueError, match="timestep_arg='tt'"):
        compile_pipeline(pipe, policy=FIXED, inner="eager", timestep_arg="tt")
    assert type(pipe) is cls and pipe.unet._compiled_call_impl is None and "_taylorseer" not in vars(pipe)
    assert torch.equal(run(4), ref)


def test_an_emptied_or_filled_parameter_slot_is_seen():
    unet, be, x, enc, ts = _boundary_unet()
    with torch.no_grad():
        for t in ts[:3]:
            unet(x, t, enc)
        unet.conv_out.bias = None                        # a slot emptied: a change of weights
        out = unet(x, ts[3], enc).sample
        assert torch.equal(out, unet._call_impl(x, ts[3], enc).sample)
        for t in ts[4:7]:
            unet(x, t, enc)
        unet.conv_out.bias = torch.nn.Parameter(torch.ones(4))   # filled again
        out = unet(x, ts[7], enc).sample
        assert torch.equal(out, unet._call_impl(x, ts[7], enc).sample)


def test_a_weight_write_between_two_computes_is_still_seen_at_the_next_forecast():
    """The boundary takes the weights a computed call left only when the call itself merely moved them:
    a write between two computed steps still drops the state before the next forecast."""
    unet, be, x, enc, ts = _boundary_unet()                 # computes steps 0, 1, 5; forecasts 2, 3, 4
    with torch.no_grad():
        unet(x, ts[0], enc)
        unet.conv_out.bias.add_(1.0)                         # between the computed steps 0 and 1
        unet(x, ts[1], enc)
        with pytest.warns(UserWarning, match="weights changed"):
            out = unet(x, ts[2], enc).sample
        assert torch.equal(out, unet._call_impl(x, ts[2], enc).sample)
