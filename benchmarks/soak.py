"""Soak: many generations through one compiled model; memory must stay flat.

1,000 generations (default) through ONE backend: step counts 1-30, batch 1 or 2, two resolutions,
float32 / bfloat16 / float16 (one compiled model per dtype), raw loops and sessions mixed, a policy
swap (fixed -> auto) a quarter of the way, and a generation interrupted now and then. The first 12
generations go through every input variant once (every graph compiled); then the variants are drawn
at random. At generation 12 and at 10 %, 50 % and 100 % of the run it prints the process RSS,
``backend.memory_bytes()``, the live tensors (``gc``) and the backend's trace length, and exits
non-zero if any of them grew after generation 12 (RSS: by more than ``--rss-slack-mb``).

    python benchmarks/soak.py                     # 1,000 generations (~2 min on one CPU thread)
    python benchmarks/soak.py --generations 60    # the short version the test suite runs
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_json  # noqa: E402

from taylorseer_fx import AutoPolicy, FixedPolicy, taylorseer_backend  # noqa: E402


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.mod = nn.Linear(dim, 2 * dim)

    def forward(self, x, c):
        shift, scale = self.mod(c).chunk(2, dim=-1)
        h = self.norm1(x) * (1 + scale[:, None]) + shift[:, None]
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class SoakDiT(nn.Module):
    """A small token model: any number of tokens (the resolution), a ``timestep`` input."""

    def __init__(self, dim: int = 32, depth: int = 3):
        super().__init__()
        self.inp, self.out = nn.Linear(8, dim), nn.Linear(dim, 8)
        self.temb = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList([Block(dim) for _ in range(depth)])

    def forward(self, x, timestep):
        c = self.temb(timestep[:, None].to(x.dtype))
        h = self.inp(x)
        for b in self.blocks:
            h = b(h, c)
        return self.out(h)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def live_tensors() -> int:
    import warnings
    gc.collect()
    n = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for o in gc.get_objects():
            try:
                if isinstance(o, torch.Tensor):
                    n += 1
            except Exception:  # pragma: no cover - objects that fail isinstance
                pass
    return n


def main(argv=None) -> int:
    saved = {k: getattr(torch._dynamo.config, k) for k in ("recompile_limit", "cache_size_limit")
             if hasattr(torch._dynamo.config, k)}
    try:
        return _main(argv)
    finally:                                                   # leave dynamo's settings as they were
        for k, v in saved.items():
            setattr(torch._dynamo.config, k, v)


def _main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generations", type=int, default=1000, help="at least 13")
    ap.add_argument("--rss-slack-mb", type=float, default=40.0, help="RSS growth tolerated after the first checkpoint")
    ap.add_argument("--out", default="soak.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for name in ("recompile_limit", "cache_size_limit"):      # 12 input variants: one graph each
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    torch._dynamo.reset()
    n = args.generations
    warm = 12
    marks = sorted({warm} | {max(warm, round(n * f)) for f in (0.1, 0.5, 1.0)})
    variants = [(dt, b, tok) for dt in (torch.float32, torch.bfloat16, torch.float16) for b in (1, 2) for tok in (16, 36)]
    rng = random.Random(0)
    models = {dt: SoakDiT().eval().to(dt) for dt in (torch.float32, torch.bfloat16, torch.float16)}
    be = taylorseer_backend(FixedPolicy(interval=3), inner="eager")
    compiled = {dt: torch.compile(m, backend=be) for dt, m in models.items()}
    rows, t0, interrupted = [], time.perf_counter(), 0
    for g in range(1, n + 1):
        if g == n // 4:
            be.policy = AutoPolicy(threshold=0.05)          # a policy swap, no recompile
        dt, batch, tokens = variants[g - 1] if g <= warm else rng.choice(variants)
        steps = rng.randint(1, 30) if g > warm else 6
        x = torch.randn(batch, tokens, 8, dtype=dt)
        ts = torch.linspace(1.0, 1.0 / steps, steps)
        session = be.session(schedule=ts) if g % 2 else None
        stop = rng.randint(0, steps - 1) if g % 17 == 0 else None   # an interrupted generation
        with torch.no_grad():
            try:
                with session if session is not None else _nothing():
                    for i in range(steps):
                        if i == stop:
                            raise KeyboardInterrupt
                        v = compiled[dt](x, ts[i:i + 1].expand(batch))
                        x = x - v / steps
            except KeyboardInterrupt:
                interrupted += 1
        if not torch.isfinite(x.float()).all():
            print(f"generation {g}: non-finite latents", file=sys.stderr)
            return 1
        if g in marks:
            s = be.stats()
            rows.append({"generation": g, "rss_mb": rss_mb(), "memory_bytes": be.memory_bytes(),
                         "live_tensors": live_tensors(), "trace_rows": len(s["trace"]),
                         "graphs": len(be.graphs), "forecast_steps": s["forecast"], "s": time.perf_counter() - t0})
            print(f"  generation {g}: " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in rows[-1].items() if k != "generation"), flush=True)
    first = rows[0]
    grew = []
    for r in rows[1:]:
        if r["rss_mb"] > first["rss_mb"] + args.rss_slack_mb:
            grew.append(f"RSS {first['rss_mb']:.0f} -> {r['rss_mb']:.0f} MB at {r['generation']}")
        if r["live_tensors"] > first["live_tensors"] + 50:
            grew.append(f"live tensors {first['live_tensors']} -> {r['live_tensors']} at {r['generation']}")
        if r["memory_bytes"] > max(first["memory_bytes"], 1) * 4 + 2 ** 20:
            grew.append(f"memory_bytes {first['memory_bytes']} -> {r['memory_bytes']} at {r['generation']}")
    m = machine()
    print(f"commit {m['commit']} | {n} generations ({interrupted} interrupted), 12 input variants, one backend")
    print(table(["generation", "RSS MB", "memory_bytes", "live tensors", "trace rows", "graphs", "forecast steps",
                 "s"], [[r["generation"], r["rss_mb"], r["memory_bytes"], r["live_tensors"], r["trace_rows"],
                         r["graphs"], r["forecast_steps"], r["s"]] for r in rows]))
    write_json(args.out, {"benchmark": "soak", "machine": m, "generations": n, "rows": rows, "grew": grew})
    print("FLAT" if not grew else "GREW: " + "; ".join(grew))
    return 1 if grew else 0


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    sys.exit(main())
