"""Step-level batching: many requests in one transformer call per tick, each at its own step, each with
its own cache.

    python examples/serve_batched.py [--requests 8] [--concurrency 4]

Runs on the CPU with the shipped demo Flux transformer (a real ``diffusers.FluxTransformer2DModel``, no
download). Requests arrive on a schedule (one every two ticks), each with its own step count, policy and
CFG layout (true CFG: a cond and an uncond row; or one row). Every tick the engine makes **one** call with
a row per active request branch; :class:`~taylorseer_fx.serving.batched.BatchedCache` runs the model on
the rows whose request computes at its step and forecasts the others from that request's own factors.
It prints each request's latency and error against its uncached run, and the throughput with and
without the cache. It shows the API; it is not a server framework.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import torch

from taylorseer_fx.serving.batched import BatchedCache
from taylorseer_fx.demo.flux_model import (NULL_LABEL, condition, image_ids, load_label_table, load_transformer,
                                           text_ids)
from taylorseer_fx.demo.flux_pipeline import build_scheduler, initial_noise

#: the demo Flux's arguments that carry the batch (img_ids / txt_ids do not: one per token, shared)
BATCH_ARGS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep")
MU = 0.4675            # FluxPipeline's calculate_shift for the demo's 64 image tokens


@dataclass
class Job:
    """One request as the engine sees it: a digit ``label``, ``steps`` Euler steps, a ``policy`` (a
    preset name; None: the cache's), true CFG ``cfg`` (1: one row), arriving at tick ``arrive``."""
    label: int
    steps: int
    policy: str | None = None
    cfg: float = 3.0
    seed: int = 0
    arrive: int = 0
    # filled by the engine
    x: torch.Tensor | None = field(default=None, repr=False)
    step: int = 0
    sigmas: list = field(default_factory=list, repr=False)
    handle: object = field(default=None, repr=False)
    started: float = 0.0
    latency: float = 0.0


def flux_sigmas(steps: int) -> list:
    """The demo FluxPipeline's sigmas for ``steps`` steps (``steps + 1`` values, the last 0)."""
    sched = build_scheduler()
    sched.set_timesteps(sigmas=[1.0 - i * (1.0 - 1.0 / steps) / max(steps - 1, 1) for i in range(steps)], mu=MU)
    return [float(s) for s in sched.sigmas]


def serve(transformer, jobs: list, cache: BatchedCache | None = None, concurrency: int = 8, table=None) -> dict:
    """Run ``jobs`` (copies are made) through one step-level batching loop; ``cache=None``: the plain
    transformer. Returns ``{"latents": [per job, packed], "latency": [s], "wall": s, "calls": n,
    "ticks": n}``."""
    table = table if table is not None else load_label_table()
    jobs = [Job(j.label, j.steps, j.policy, j.cfg, j.seed, j.arrive) for j in jobs]
    queue = sorted(range(len(jobs)), key=lambda i: jobs[i].arrive)
    active: list = []
    ids = dict(img_ids=image_ids(), txt_ids=text_ids())
    tick = calls = 0
    per_tick = []
    t0 = time.perf_counter()
    while queue or active:
        while queue and jobs[queue[0]].arrive <= tick and len(active) < concurrency:      # admit
            j = jobs[queue.pop(0)]
            j.x, j.sigmas, j.started = initial_noise(1, j.seed), flux_sigmas(j.steps), time.perf_counter()
            if cache is not None:
                branches = ("cond", "uncond") if j.cfg != 1 else ("cond",)
                j.handle = cache.open(j.steps, policy=j.policy, branches=branches, sigmas=j.sigmas[:-1])
            active.append(j)
        tick += 1
        if not active:
            continue
        rows, x, sigma, labels = [], [], [], []
        for j in active:                               # one row per branch of every active request
            for branch, label in (("cond", j.label), ("uncond", NULL_LABEL))[: 2 if j.cfg != 1 else 1]:
                rows.append(j.handle[branch] if cache is not None else None)
                x.append(j.x), sigma.append(j.sigmas[j.step]), labels.append(label)
        pe, pooled = condition(torch.tensor(labels), table)
        kw = dict(hidden_states=torch.cat(x), encoder_hidden_states=pe, pooled_projections=pooled,
                  timestep=torch.tensor(sigma), return_dict=False, **ids)
        with torch.no_grad():
            v = (cache(**kw, rows=rows) if cache is not None else transformer(**kw))[0]
        calls += 1
        per_tick.append(len(rows))
        i = 0
        for j in list(active):                         # each request's own Euler step
            vc = v[i:i + 1]
            vu = v[i + 1:i + 2] if j.cfg != 1 else vc
            i += 2 if j.cfg != 1 else 1
            j.x = j.x + (j.sigmas[j.step + 1] - j.sigmas[j.step]) * (vu + j.cfg * (vc - vu))
            j.step += 1
            if j.step == j.steps:                      # done: it leaves the batch, its state is released
                j.latency = time.perf_counter() - j.started
                if cache is not None:
                    j.handle.close()
                active.remove(j)
    return {"latents": [j.x for j in jobs], "latency": [j.latency for j in jobs], "wall": time.perf_counter() - t0,
            "calls": calls, "ticks": tick, "rows": per_tick}


def demo_jobs(n: int, spacing: int = 2) -> list:
    """``n`` requests, one every ``spacing`` ticks: step counts 20 and 28, budget presets auto-2x and
    auto-3x, true CFG on three in four."""
    return [Job(label=k % 10, steps=(20, 28)[k % 2], policy=("auto-2x", "auto-3x")[(k // 2) % 2],
                cfg=1.0 if k % 4 == 3 else 3.0, seed=k, arrive=spacing * k) for k in range(n)]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    model = load_transformer()
    jobs = demo_jobs(args.requests)
    cache = BatchedCache(model, "auto-2x", batch_args=BATCH_ARGS)
    plain = serve(model, jobs, None, args.concurrency)
    cached = serve(model, jobs, cache, args.concurrency)
    print(f"{'request':>7} {'steps':>5} {'policy':>8} {'cfg':>4} {'latency plain':>13} {'cached':>7} {'rel. error':>10}")
    for k, j in enumerate(jobs):
        ref, got = plain["latents"][k], cached["latents"][k]
        err = float((got - ref).norm() / ref.norm())
        print(f"{k:>7} {j.steps:>5} {j.policy:>8} {j.cfg:>4.0f} {plain['latency'][k]:>12.2f}s "
              f"{cached['latency'][k]:>6.2f}s {err:>10.4f}")
    s = cache.stats()
    print(f"throughput: {len(jobs) / plain['wall']:.2f} req/s plain, {len(jobs) / cached['wall']:.2f} req/s cached "
          f"({plain['wall'] / cached['wall']:.2f}x); {plain['calls']} vs {cached['calls']} transformer calls; "
          f"{s['computed_rows']} of {s['rows']} rows computed; cached state left: {s['bytes']} bytes")


if __name__ == "__main__":
    main()
