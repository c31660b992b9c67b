"""A diffusers pipeline through taylorseer_fx in one call: ``compile_pipeline(pipe, policy=...)``.

Runs anywhere with no download: a FluxPipeline around a tiny random-weight FluxTransformer2DModel, with
``prompt_embeds`` given (no text encoder) and latents out (no VAE). With a real checkpoint the two
lines in the middle are all you add::

    pipe = FluxPipeline.from_pretrained("black-forest-labs/FLUX.1-dev", torch_dtype=torch.bfloat16).to("cuda")
    handle = compile_pipeline(pipe, policy="openvino-lite")       # inner="inductor" by default
    image = pipe("a cat", num_inference_steps=28).images[0]

    python examples/diffusers_pipeline.py [--policy auto-balanced] [--steps 28] [--inner eager|inductor]
"""

from __future__ import annotations

import argparse

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

from taylorseer_fx import compile_pipeline


def tiny_flux_pipeline() -> FluxPipeline:
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=4, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=False, axes_dims_rope=(4, 6, 6))
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer.eval())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="openvino-lite")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--inner", default="eager", help="inner backend: eager (fast to start) or inductor")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = tiny_flux_pipeline()
    pipe.set_progress_bar_config(disable=True)
    embeds = dict(prompt_embeds=torch.randn(1, 8, 32), pooled_prompt_embeds=torch.randn(1, 32))
    run = lambda: pipe(**embeds, num_inference_steps=args.steps, height=64, width=64, output_type="latent",  # noqa: E731
                       generator=torch.Generator().manual_seed(3)).images

    want = run()                                                   # uncached
    handle = compile_pipeline(pipe, policy=args.policy, inner=args.inner)
    got = run()                                                    # every call: one generation
    total = handle.stats()["total"]
    err = float((got - want).norm() / want.norm())
    print(f"{args.policy}: {total['compute']}/{total['steps']} steps computed, {total['forecast']} forecast; "
          f"relative L2 to the uncached latents {err:.2e}")
    handle.remove()                                                # the pipeline as it was


if __name__ == "__main__":
    main()
