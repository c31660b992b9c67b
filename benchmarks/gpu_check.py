"""CUDA readiness in one command: the checks that need a GPU, and their CPU stand-ins where there is none.

1. **cuda tests**: ``pytest -m cuda`` (skipped without a GPU).
2. **hot path without syncs**: a diffusers Flux through the backend in a ``session(timesteps=...)``
   (sync-free coordinate), fixed policy: after one generation (every version compiled), a second one
   runs under ``torch.cuda.set_sync_debug_mode("error")`` -- no device-to-host copy at all. Without a
   session, one read per call is allowed (the timestep). On the CPU the same loops run with host reads
   counted (``Tensor.item`` / ``tolist`` / ``__float__`` / ``__bool__`` patched).
3. **CUDA graphs**: ``torch.compile(model, backend=taylorseer_backend(...), mode="reduce-overhead")``
   agrees with plain ``mode="reduce-overhead"`` on computed steps and forecasts (GPU only).
4. **speed table**, bf16: a diffusers Flux large enough for the GPU to matter (default 4 dual + 8 single
   blocks, hidden 2048, 1024 image + 256 text tokens): plain inductor vs the backend, per call and in
   a 28-step loop at interval 3. On the CPU: the tiny Flux, fp32, eager inner (a smoke run).

Budget: under 8 minutes on one H200 (most of it inductor compiles). Exits non-zero when a check fails.

    python benchmarks/gpu_check.py            # everything this machine can run
    python benchmarks/gpu_check.py --no-pytest
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import counted_host_reads, machine, med, table, write_json  # noqa: E402

from taylorseer_fx import FixedPolicy, taylorseer_backend  # noqa: E402

CUDA = torch.cuda.is_available()


def make_flux(device, dtype, layers: int, single: int, heads: int, side: int, txt: int, seed: int = 0):
    """A random-weight diffusers Flux and a ``call(model, x, step_value)`` for it."""
    from diffusers import FluxTransformer2DModel
    torch.manual_seed(seed)
    model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=layers, num_single_layers=single,
                                   attention_head_dim=128 if CUDA else 16, num_attention_heads=heads,
                                   joint_attention_dim=4096 if CUDA else 32, pooled_projection_dim=768 if CUDA else 32,
                                   guidance_embeds=False, axes_dims_rope=(16, 56, 56) if CUDA else (4, 6, 6))
    model = model.to(device, dtype).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.zeros(side, side, 3)
    ids[..., 1] = torch.arange(side)[:, None]
    ids[..., 2] = torch.arange(side)[None, :]
    cond = dict(encoder_hidden_states=torch.randn(1, txt, model.config.joint_attention_dim, generator=g),
                pooled_projections=torch.randn(1, model.config.pooled_projection_dim, generator=g),
                img_ids=ids.reshape(-1, 3), txt_ids=torch.zeros(txt, 3))
    cond = {k: v.to(device, dtype if v.is_floating_point() and "ids" not in k else v.dtype) for k, v in cond.items()}
    x = torch.randn(1, side * side, 64, generator=g).to(device, dtype)

    def call(m, x, t):
        return m(hidden_states=x, timestep=t, return_dict=False, **cond)[0]
    return model, x, call


def timesteps(n: int, device) -> torch.Tensor:
    return torch.linspace(1.0, 1.0 / n, n, device=device)


def loop(model, call, x, ts, session_of=None, inside=None):
    """One generation, Euler; ``session_of``: a backend whose session gives the schedule (read once,
    at entry); ``inside``: a context manager entered inside the session, around the calls."""
    ctx = session_of.session(timesteps=ts) if session_of is not None else contextlib.nullcontext()
    with torch.no_grad(), ctx, inside or contextlib.nullcontext():
        for i in range(len(ts)):
            v = call(model, x, ts[i:i + 1])
            x = x + (-1.0 / len(ts)) * v
    return x


@contextlib.contextmanager
def host_reads(counter: dict):
    """Counts device-to-host reads into ``counter["reads"]``: on CUDA the sync debug mode raises at the
    first one; on the CPU the Tensor methods that read a value are counted."""
    counter["reads"] = 0
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield counter
        finally:
            torch.cuda.set_sync_debug_mode(0)
        return
    with counted_host_reads(counter):
        yield counter


def check_hot_path(device, dtype, inner, size) -> dict:
    model, x, call = make_flux(device, dtype, **size)
    be = taylorseer_backend(FixedPolicy(interval=3, warmup=3), inner=inner)
    cm = torch.compile(model, backend=be)
    ts = timesteps(10, device)
    loop(cm, call, x, ts, be)                       # compiles every version the loop needs
    loop(cm, call, x, ts)
    c, c2 = {}, {"reads": None}
    loop(cm, call, x, ts, be, inside=host_reads(c))   # the schedule is read at session entry only
    if not CUDA:                                       # no session: the timestep is read, once per call
        loop(cm, call, x, ts, inside=host_reads(c2))
    else:
        loop(cm, call, x, ts)
    st = be.stats()
    session_reads = c["reads"]
    ok = session_reads == 0 and (c2["reads"] is None or c2["reads"] <= len(ts)) and st["forecast"] > 0
    return {"session_reads": session_reads, "raw_loop_reads": c2["reads"], "forecast_steps": st["forecast"],
            "ok": ok}


def check_cuda_graphs(size) -> dict:
    model, x, call = make_flux("cuda", torch.bfloat16, **size)
    ts = timesteps(10, "cuda")
    plain = torch.compile(model, mode="reduce-overhead")
    torch._dynamo.reset()
    be = taylorseer_backend(FixedPolicy(interval=3, warmup=3), inner="inductor")
    ours = torch.compile(model, backend=be, mode="reduce-overhead")
    never = taylorseer_backend("never", inner="inductor")
    ours_never = torch.compile(model, backend=never, mode="reduce-overhead")
    want = [loop(plain, call, x, ts, None) for _ in range(2)][-1]
    got_never = [loop(ours_never, call, x, ts, never) for _ in range(2)][-1]
    got = [loop(ours, call, x, ts, be) for _ in range(2)][-1]
    err_never = float((got_never.float() - want.float()).norm() / want.float().norm())
    err = float((got.float() - want.float()).norm() / want.float().norm())
    return {"never_rel_err": err_never, "forecast_rel_err": err, "forecast_steps": be.stats()["forecast"],
            "ok": err_never < 2e-2 and err < 0.5 and be.stats()["forecast"] > 0}


def speed_table(device, dtype, inner, size, reps: int) -> dict:
    model, x, call = make_flux(device, dtype, **size)
    sync = torch.cuda.synchronize if CUDA else (lambda: None)
    variants = {}
    t0 = time.perf_counter()
    plain = torch.compile(model, backend=inner)
    loop(plain, call, x, timesteps(2, device))
    compile_plain = time.perf_counter() - t0
    be = taylorseer_backend(FixedPolicy(interval=3, warmup=3), inner=inner)
    ours = torch.compile(model, backend=be)
    t0 = time.perf_counter()
    loop(ours, call, x, timesteps(6, device), be)
    compile_ours = time.perf_counter() - t0
    ts = timesteps(28, device)
    variants["plain"] = lambda: loop(plain, call, x, ts)
    variants["taylorseer interval 3"] = lambda: loop(ours, call, x, ts, be)
    times = {k: [] for k in variants}
    for r in range(reps):
        for k, fn in (list(variants.items())[r % 2:] + list(variants.items())[:r % 2]):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t)
    p = med(times["plain"])
    rows = [[k, med(v), med(v) / p] for k, v in times.items()]
    computes = len(FixedPolicy(interval=3, warmup=3).compute_steps(28))
    return {"rows": rows, "computes": computes, "compile_plain_s": compile_plain,
            "compile_taylorseer_s": compile_ours, "ok": True}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-pytest", action="store_true", help="skip the pytest -m cuda part")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default="gpu_check.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    device, dtype = ("cuda", torch.bfloat16) if CUDA else ("cpu", torch.float32)
    inner = "inductor" if CUDA else "eager"
    size = (dict(layers=4, single=8, heads=16, side=32, txt=256) if CUDA
            else dict(layers=2, single=2, heads=4, side=8, txt=16))
    m = machine()
    print(f"commit {m['commit']} | {torch.cuda.get_device_name() if CUDA else 'no GPU: CPU stand-ins'} | "
          f"torch {m['torch']}")
    results, t_start = {}, time.perf_counter()
    if not args.no_pytest:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"],
                              cwd=HERE.parent, capture_output=True, text=True)
        tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-500:]
        results["cuda tests"] = {"summary": tail, "ok": proc.returncode in (0, 5)}   # 5: none collected
    results["hot path"] = check_hot_path(device, dtype, inner, size)
    torch._dynamo.reset()
    if CUDA:
        results["cuda graphs"] = check_cuda_graphs(size)
        torch._dynamo.reset()
    results["speed"] = speed_table(device, dtype, inner, size, args.reps)
    print(table(["check", "result", "details"],
                [[k, "PASS" if v["ok"] else "FAIL", {kk: vv for kk, vv in v.items() if kk not in ("ok", "rows")}]
                 for k, v in results.items()]))
    sp = results["speed"]
    print(table(["variant", "28-step loop s", "x plain"], sp["rows"],
                title=f"Flux {size}, {dtype}, inner={inner}; {sp['computes']} computes of 28 at interval 3 "
                      f"(ideal x plain {sp['computes'] / 28:.3f}); compile s: plain {sp['compile_plain_s']:.1f}, "
                      f"taylorseer {sp['compile_taylorseer_s']:.1f}"))
    write_json(args.out, {"benchmark": "gpu_check", "machine": m, "cuda": CUDA, "results": results,
                          "wall_s": time.perf_counter() - t_start})
    failed = [k for k, v in results.items() if not v["ok"]]
    print(f"{'FAILED: ' + ', '.join(failed) if failed else 'all checks passed'} "
          f"({time.perf_counter() - t_start:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
