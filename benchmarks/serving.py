"""Serving throughput at matched quality: step-level batching with and without the cache.

The engine is ``examples/serve_batched.py``'s (one transformer call per tick, a row per active request
branch) on the shipped demo Flux (true CFG 3: two rows per request). ``--requests`` requests (step counts
20 and 28 alternating, digits 0..9, their own noise) all arrive at tick 0 and are admitted as slots free,
``concurrency`` at a time (1, 4, 8). Variants, interleaved in one process (round-robin, order rotated):

* ``plain``: the transformer, no cache;
* ``never``: ``BatchedCache`` with the ``never`` preset (what the wrapper costs when it forecasts nothing);
* each ``--policies`` preset (default ``auto-2x``, ``auto-3x``: budgets of 1/2 and 1/3 of the computes).

Per cell: requests per second (``--requests`` / the run's median wall time), the gain over ``plain``,
each request's error (relative L2 of its final latent against its ``plain`` run at the same concurrency:
median and max over the requests), the compute fraction (rows computed / rows), and two ideals: the
compute fraction's (``1 / fraction``: a model whose cost is proportional to its rows) and this model's
(the ``plain`` run's ticks priced with the measured cost of a call at each batch size, over the cached
run's sub-batches priced the same way: a forecast-only tick costs no call).

    python benchmarks/serving.py                          # ~3 min on one CPU thread
    python benchmarks/serving.py --concurrency 8 --reps 5

Writes ``benchmarks/results/serving.json`` (with the commit).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time

import torch

from common import ROOT, machine, med, rel_l2, setup, table, write_json


def _example():
    path = ROOT / "examples" / "serve_batched.py"
    spec = importlib.util.spec_from_file_location("serve_batched", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_batched"] = module
    spec.loader.exec_module(module)
    return module


def call_costs(model, table_, sizes, reps: int = 9) -> dict:
    """Median seconds of one transformer call at each batch size (one thread)."""
    from taylorseer_fx.demo.flux_model import predict_velocity

    out = {}
    with torch.no_grad():
        for b in sizes:
            x, s, lab = torch.randn(b, 64, 4), torch.rand(b), torch.arange(b) % 11
            for _ in range(2):
                predict_velocity(model, x, s, lab, table_)
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                predict_velocity(model, x, s, lab, table_)
                ts.append(time.perf_counter() - t0)
            out[b] = statistics.median(ts)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--policies", default="auto-2x,auto-3x")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="serving.json")
    args = ap.parse_args(argv)
    setup()
    ex = _example()
    from taylorseer_fx.demo.flux_model import load_label_table, load_transformer
    from taylorseer_fx.serving.batched import BatchedCache

    model, labels = load_transformer(), load_label_table()
    jobs = [ex.Job(label=k % 10, steps=(20, 28)[k % 2], cfg=3.0, seed=k) for k in range(args.requests)]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    policies = args.policies.split(",")
    costs = call_costs(model, labels, range(1, 2 * max(concurrency) + 1))
    rows, results = [], []
    for c in concurrency:
        names = ["plain", "never"] + policies
        walls = {n: [] for n in names}
        last: dict = {}
        for r in range(args.reps):
            k = r % len(names)
            for n in names[k:] + names[:k]:            # interleaved, order rotated every repetition
                cache = None if n == "plain" else BatchedCache(model, n, batch_args=ex.BATCH_ARGS)
                got = ex.serve(model, jobs, cache, concurrency=c, table=labels)
                walls[n].append(got["wall"])
                last[n] = (got, cache)
        plain = last["plain"][0]
        plain_cost = sum(costs[b] for b in plain["rows"])
        base = med(walls["plain"])
        for n in names:
            got, cache = last[n]
            errs = [rel_l2(a, b) for a, b in zip(got["latents"], plain["latents"])]
            s = cache.stats() if cache is not None else None
            frac = s["computed_rows"] / s["rows"] if s else 1.0
            model_cost = (sum(costs[b] * k for b, k in s["sub_batch_sizes"].items()) if s else plain_cost)
            rps = args.requests / med(walls[n])
            res = dict(concurrency=c, variant=n, requests_per_s=rps, gain=base / med(walls[n]), walls=walls[n],
                       err_median=statistics.median(errs), err_max=max(errs), compute_fraction=frac,
                       ideal_fraction=1.0 / frac, ideal_model=plain_cost / model_cost if model_cost else float("inf"),
                       calls=got["calls"], ticks=got["ticks"], stats=s)
            results.append(res)
            rows.append([c, n, rps, res["gain"], res["err_median"], res["err_max"], frac, res["ideal_fraction"],
                         res["ideal_model"], got["ticks"], s["model_calls"] if s else got["calls"]])
    print(table(["concurrency", "variant", "req/s", "gain", "err median", "err max", "compute fraction",
                 "ideal 1/fraction", "ideal (this model)", "ticks", "model calls"], rows,
                title=f"serving: {args.requests} requests (20/28 steps, true CFG 3), demo Flux, 1 CPU thread, "
                      f"median of {args.reps}"))
    path = write_json(args.out, dict(machine=machine(), requests=args.requests, reps=args.reps,
                                     call_costs_s={str(k): v for k, v in costs.items()}, results=results))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
