"""The TaylorSeer backend under diffusers' context parallelism (Ulysses / ring attention), with torchrun.

Every rank runs the same FluxPipeline call; ``transformer.enable_parallelism`` splits the sequence across
the ranks, and ``compile_pipeline`` forecasts the block stack of each rank's shard. No download: a tiny
random-weight Flux with ``prompt_embeds`` given (no text encoder) and latents out (no VAE)::

    torchrun --nproc-per-node=2 examples/context_parallel.py                     # CPU, gloo, Ulysses
    torchrun --nproc-per-node=2 examples/context_parallel.py --ring 2            # CPU, gloo, ring (see below)
    torchrun --nproc-per-node=2 examples/context_parallel.py --device cuda       # one GPU per rank, nccl
    torchrun --nproc-per-node=4 examples/context_parallel.py --device cuda --ulysses 2 --ring 2 \\
        --attention _native_cudnn --dtype bfloat16                                 # ring needs an LSE backend

Each rank prints the steps it computed ("c") and forecast ("f") and the relative L2 distance of the
final latents from the same call uncached; rank 0 checks that every rank took the same decisions.

On CPU (trying it out) two stand-ins are installed, on this process only:

* ``torch.accelerator.device_count()`` is 0 without an accelerator and diffusers' ``enable_parallelism``
  computes ``rank % device_count()``: it is made to report 1 (the device mesh is then built on "cpu").
* ring attention needs the attention's log-sum-exp from the backend; on CPU no diffusers backend that
  supports context parallelism returns one, so ``--ring`` on CPU swaps the ``native`` backend's op for
  torch's CPU flash kernel, which does. On CUDA pick a backend that returns it (``_native_cudnn``,
  ``flash``, ``_native_flash``, ``sage`` with their dtype constraints); Ulysses works with ``native``.

With a real checkpoint the lines that matter are::

    dist.init_process_group("nccl"); torch.cuda.set_device(local_rank)
    pipe = FluxPipeline.from_pretrained(..., torch_dtype=torch.bfloat16).to(f"cuda:{local_rank}")
    pipe.transformer.set_attention_backend("_native_cudnn")      # ring; "native" is enough for Ulysses
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world_size))
    handle = compile_pipeline(pipe, policy="auto-balanced")      # the same policy on every rank
    image = pipe(prompt, num_inference_steps=28, generator=torch.Generator("cuda").manual_seed(0)).images[0]
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist


def tiny_flux_pipeline(dtype: torch.dtype):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)                  # the same weights on every rank
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=4, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=False, axes_dims_rope=(4, 6, 6))
    transformer = transformer.eval() if dtype == torch.float32 else transformer.eval().to(dtype)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cpu_stand_ins(ring: bool) -> None:
    """What diffusers' context parallelism needs on a machine without an accelerator (see the module doc)."""
    torch.accelerator.device_count = lambda: 1
    if not ring:
        return
    import diffusers.models.attention_dispatch as dispatch

    def forward_op(ctx, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                   enable_gqa=False, return_lse=False, _save_ctx=True, _parallel_config=None):
        q, k, v = (x.transpose(1, 2) for x in (query, key, value))           # (B, S, H, D) -> (B, H, S, D)
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)
        out = out.transpose(1, 2)
        return (out, lse.transpose(1, 2)) if return_lse else out

    dispatch._native_attention_forward_op = forward_op


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--ulysses", type=int, default=None, help="Ulysses degree (default: the world size, "
                    "or world size / --ring)")
    ap.add_argument("--ring", type=int, default=1, help="ring degree (default 1)")
    ap.add_argument("--attention", default="native", help="diffusers attention backend (default native)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--policy", default="auto-balanced", help="a preset name or TOML path (the same on every rank)")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--inner", default="eager", help="inner backend: eager (fast to start) or inductor")
    ap.add_argument("--size", type=int, default=128, help="image side in pixels (tokens: (size / 16) ** 2)")
    args = ap.parse_args()

    cuda = args.device == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        torch.set_num_threads(1)
        device = torch.device("cpu")
        cpu_stand_ins(ring=args.ring > 1)
    ulysses = args.ulysses or max(world // args.ring, 1)

    from diffusers import ContextParallelConfig
    from taylorseer_fx import compile_pipeline

    dtype = getattr(torch, args.dtype)
    pipe = tiny_flux_pipeline(dtype).to(device)
    pipe.transformer.set_attention_backend(args.attention)
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=ulysses, ring_degree=args.ring))

    g = torch.Generator().manual_seed(1)  # the same prompt embeddings on every rank
    embeds = dict(prompt_embeds=torch.randn(1, 8, 32, generator=g).to(device, dtype),
                  pooled_prompt_embeds=torch.randn(1, 32, generator=g).to(device, dtype))

    def run():
        return pipe(**embeds, num_inference_steps=args.steps, height=args.size, width=args.size,
                    output_type="latent", generator=torch.Generator(device).manual_seed(3)).images

    want = run()                                                       # context parallel, uncached
    handle = compile_pipeline(pipe, policy=args.policy, inner=args.inner)   # after enable_parallelism
    got = run()
    backend = handle.backends["transformer"]
    decisions = "".join(r["decision"][0] for r in backend.stats()["trace"] if r["stream"] == 0)
    err = float((got.float() - want.float()).norm() / want.float().norm())
    print(f"rank {rank}/{world} (ulysses {ulysses}, ring {args.ring}, {args.policy}): {decisions}  "
          f"{decisions.count('c')}/{len(decisions)} computed, rel. L2 to uncached {err:.2e}", flush=True)

    everyone = [None] * world
    dist.all_gather_object(everyone, decisions)
    if rank == 0:
        same = all(d == decisions for d in everyone)
        print("every rank took the same decisions" if same else f"DECISIONS DIFFER: {everyone}", flush=True)
    handle.remove()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
