"""A tiny random-weight Flux sampled with flow-matching Euler, compiled with the TaylorSeer backend.

Runs the same 28-step loop twice from the same noise: once uncached (plain ``torch.compile`` with the
inner backend) and once with ``taylorseer_backend(policy=..., regions=...)``, then prints which steps
were computed and which forecast, the wall time of each run, and the relative L2 error of the final
latent against the uncached run.

    python examples/flux_tiny.py --inner eager            # fast (< 1 min on one CPU thread)
    python examples/flux_tiny.py                          # inner inductor (compiles; slower to start)
    python examples/flux_tiny.py --policy official-flux --regions modules

The weights are random, so the "image" means nothing: the example shows the mechanics and the
size of the forecast error, not quality.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from taylorseer_fx import FixedPolicy, load_policy, taylorseer_backend

H = W = 8  # latent tokens per side (64 image tokens)
TXT = 16  # text tokens
CH = 16  # latent channels (packed Flux latents)


def make_flux(seed: int = 0):
    """A 2 + 2 block Flux with hidden size 64 and random weights (float32, eval)."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed)
    model = FluxTransformer2DModel(
        patch_size=1,
        in_channels=CH,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=4,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),
    )
    return model.eval().requires_grad_(False)


def conditioning(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed + 1)
    img_ids = torch.zeros(H, W, 3)
    img_ids[..., 1] = torch.arange(H)[:, None]
    img_ids[..., 2] = torch.arange(W)[None, :]
    return dict(
        encoder_hidden_states=torch.randn(1, TXT, 32, generator=g),
        pooled_projections=torch.randn(1, 32, generator=g),
        img_ids=img_ids.reshape(H * W, 3),
        txt_ids=torch.zeros(TXT, 3),
    )


def sigmas(num_steps: int, shift: float = 3.0) -> torch.Tensor:
    """Flow-matching sigmas from 1 to 0 with the SD3/Flux time shift (num_steps + 1 values)."""
    s = torch.linspace(1.0, 0.0, num_steps + 1)
    return shift * s / (1 + (shift - 1) * s)


@torch.no_grad()
def sample(model, cond: dict, noise: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Euler: x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v(x_i, sigma_i). Flux takes sigma as its timestep."""
    s = sigmas(num_steps)
    x = noise.clone()
    for i in range(num_steps):
        t = s[i].expand(x.shape[0])  # a tensor timestep: no recompile per step
        v = model(hidden_states=x, timestep=t, return_dict=False, **cond)[0]
        x = x + (s[i + 1] - s[i]) * v
    return x


def parse_policy(spec: str):
    """'fixed:N' (compute every N-th step after warm-up, order 1) or a preset name / TOML path."""
    if spec.startswith("fixed:"):
        return FixedPolicy(interval=int(spec.split(":", 1)[1]), order=1, warmup=3)
    return load_policy(spec)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inner", default="inductor", help="inner backend for the pieces (inductor, eager, ...)")
    ap.add_argument("--policy", default="fixed:3", help="'fixed:N', a preset name (official-flux, ...) or a TOML path")
    ap.add_argument("--regions", default="stack", help="stack | stack-residual | modules | a regex")
    ap.add_argument("--steps", type=int, default=28)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each loop (median reported)")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*should be kept in float32.*")
    model = make_flux(args.seed)
    cond = conditioning(args.seed)
    noise = torch.randn(1, H * W, CH, generator=torch.Generator().manual_seed(args.seed + 2))

    # Reference: the same loop, uncached, compiled with the inner backend alone.
    torch._dynamo.reset()
    plain = torch.compile(model, backend=args.inner)
    sample(plain, cond, noise, 2)  # compile outside the timing

    backend = taylorseer_backend(policy=parse_policy(args.policy), regions=args.regions, inner=args.inner)
    cached = torch.compile(model, backend=backend)  # a second OptimizedModule: its own cache entry
    sample(cached, cond, noise, 2)

    # Interleave the two runs and keep the median wall time of each (tiny models: noisy timings).
    t_ref, t_cached = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ref = sample(plain, cond, noise, args.steps)
        t_ref.append(time.perf_counter() - t0)
        backend.reset()
        t0 = time.perf_counter()
        out = sample(cached, cond, noise, args.steps)
        t_cached.append(time.perf_counter() - t0)
    st = backend.stats()  # the last generation (reset before it)
    t_ref, t_cached = statistics.median(t_ref), statistics.median(t_cached)

    trace = [c for c in st.get("trace", []) if c.get("stream", 0) == 0]
    pattern = "".join("F" if any(v == "forecast" for v in c.get("regions", {}).values()) else "C" for c in trace)
    rel = ((out - ref).norm() / ref.norm()).item()
    print(f"backend     : {backend!r}")
    print(f"steps       : {args.steps}  computed {st['compute']}  forecast {st['forecast']}")
    if pattern:
        print(f"pattern     : {pattern}   (C = computed, F = forecast)")
    print(f"wall time   : uncached {t_ref:.3f} s   taylorseer {t_cached:.3f} s   (median of {args.repeats})   ratio {t_cached / t_ref:.2f}")
    print(f"final latent: relative L2 error vs uncached = {rel:.3e}   finite: {bool(torch.isfinite(out).all())}")


if __name__ == "__main__":
    main()
