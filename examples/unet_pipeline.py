"""A UNet pipeline (Stable Diffusion 1.5 or SDXL) through taylorseer_fx: cached at the model boundary.

A UNet has no block stack to cut out of its graph, so ``compile_pipeline`` caches its whole output
(``regions="model"``): before every UNet call the policy decides, and a forecast step does not run the
compiled UNet at all. Runs anywhere with no download: a tiny random-weight UNet (configs as in diffusers'
own tests), ``prompt_embeds`` given (no text encoder), latents out (no VAE). With a real checkpoint::

    pipe = StableDiffusionXLPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0",
                                                     torch_dtype=torch.float16).to("cuda")
    handle = compile_pipeline(pipe, policy="openvino-lite")       # handle.kinds == {"unet": "model"}
    image = pipe("a cat", num_inference_steps=30).images[0]

    python examples/unet_pipeline.py [--xl] [--policy openvino-lite] [--steps 20] [--inner eager|inductor]
"""

from __future__ import annotations

import argparse

import torch
from diffusers import (EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)

from taylorseer_fx import compile_pipeline


def tiny_unet_pipeline(xl: bool = False):
    """``(pipe, prompt embeddings)``: a tiny SD 1.5 (or SDXL) pipeline with random weights."""
    torch.manual_seed(0)
    extra = dict(attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                 addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                 projection_class_embeddings_input_dim=80, cross_attention_dim=64) if xl else dict(cross_attention_dim=32)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=32, **extra).eval()
    scheduler = EulerDiscreteScheduler(steps_offset=1)
    if xl:
        pipe = StableDiffusionXLPipeline(vae=None, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                         tokenizer_2=None, unet=unet, scheduler=scheduler)
        embeds = dict(prompt_embeds=torch.randn(1, 7, 64), negative_prompt_embeds=torch.randn(1, 7, 64),
                      pooled_prompt_embeds=torch.randn(1, 32), negative_pooled_prompt_embeds=torch.randn(1, 32))
    else:
        pipe = StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=unet, scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        embeds = dict(prompt_embeds=torch.randn(1, 7, 32), negative_prompt_embeds=torch.randn(1, 7, 32))
    pipe.set_progress_bar_config(disable=True)
    return pipe, embeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--xl", action="store_true", help="StableDiffusionXLPipeline instead of StableDiffusionPipeline")
    ap.add_argument("--policy", default="openvino-lite")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--inner", default="eager", help="inner backend: eager (fast to start) or inductor")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe, embeds = tiny_unet_pipeline(args.xl)
    run = lambda: pipe(**embeds, num_inference_steps=args.steps, height=32, width=32, output_type="latent",  # noqa: E731
                       generator=torch.Generator().manual_seed(3)).images

    want = run()                                                   # uncached
    handle = compile_pipeline(pipe, policy=args.policy, inner=args.inner)
    got = run()
    total = handle.stats()["total"]
    err = float((got - want).norm() / want.norm())
    print(f"{type(pipe).__name__} {handle.kinds}, {args.policy}: {total['compute']}/{total['steps']} steps "
          f"computed, {total['forecast']} forecast; relative L2 to the uncached latents {err:.2e}")
    handle.remove()


if __name__ == "__main__":
    main()
