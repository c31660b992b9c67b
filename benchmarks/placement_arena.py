"""The placement bound on the arena's Flux: how low can *any* threshold rule with the auto forecaster go?

``benchmarks/placement.py`` does this for the DiT of quality.py; this is the same search on the model
and protocol of ``benchmarks/arena.py`` (the trained diffusers Flux, a real ``FluxPipeline``, true CFG 3,
``regions="stack"``). For each compute budget of the arena's targets (compute fraction 0.25 / 0.35 / 0.5
of 28 and 50 steps, i.e. ``floor(target * steps)`` computes) it runs the auto policy's forecaster
(``AutoPolicy().forecaster_options()``: pair of order 1, order 0-2 chosen per run by back-test) on
explicit compute sets (``MaskPolicy``), the auto presets' warm-up of 3 computed, and searches the set
with the lowest final error by coordinate descent from an even spread (``placement.search``: each
compute in turn moved to every step between its neighbours, until no move helps -- a local optimum,
an estimate of the bound, not a proof).

The search scores placements on ``--search-samples`` samples (default 10); the best placement found is
then run on the arena's 40 samples and compared with the arena's best peer and best fixed schedule at
the same compute (from ``benchmarks/results/arena.json``, so run arena.py first). A ratio to the best
peer above 0.5 means no threshold rule, probe or calibrated estimate that only moves the computes can
meet the arena target with this forecaster.

    python benchmarks/placement_arena.py                 # 28 and 50 steps (~40 min, 1 thread)
    python benchmarks/placement_arena.py --steps 28      # 28 steps only

Writes ``benchmarks/results/placement_arena.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arena import TARGETS, Arena  # noqa: E402
from common import ROOT, machine, setup, table, write_json  # noqa: E402
from placement import placed_auto, search  # noqa: E402

from taylorseer_fx import AutoPolicy, FixedPolicy, compile_pipeline  # noqa: E402

WARMUP = 3


def even(k: int, steps: int, warmup: int) -> list[int]:
    """``k`` computes: the warm-up, then the rest spread evenly over the remaining steps."""
    free = k - warmup
    span = steps - warmup
    return list(range(warmup)) + sorted({warmup + round((i + 1) * span / (free + 1)) - 1 for i in range(free)})


class Runner:
    """One compiled pipeline (eager inner) whose policy is swapped per run; errors vs uncached."""

    def __init__(self, arena: Arena, steps: int):
        from taylorseer_fx.demo.flux_pipeline import build_pipeline
        self.arena, self.steps = arena, steps
        self.ref, _, _ = arena.run_peer(steps, lambda p: None, lambda p: None)
        self.pipe = build_pipeline(copy.deepcopy(arena.base))
        torch._dynamo.reset()
        self.handle = compile_pipeline(self.pipe, policy=FixedPolicy(interval=2), regions="stack", inner="eager")
        self.backend = self.handle.backends["transformer"]

    def error(self, policy) -> float:
        self.backend.policy = policy
        self.handle.reset()
        x, _ = self.arena.sample(self.pipe, self.steps)
        return float(torch.linalg.vector_norm(x - self.ref) / torch.linalg.vector_norm(self.ref))


def arena_refs(steps: int) -> dict:
    """From arena.json: per target, the best peer and our best fixed schedule (non-auto) at <= target."""
    data = json.loads((ROOT / "benchmarks" / "results" / "arena.json").read_text())
    rows = [r for r in data["rows"] if r["steps"] == steps and r["rel_l2"] is not None]
    out = {}
    for t in TARGETS:
        ok = [r for r in rows if r["compute_fraction"] <= t + 1e-9]
        peers = [r for r in ok if r["family"] in ("diffusers", "cache-dit")]
        fixed = [r for r in ok if r["family"] == "taylorseer_fx" and not r["method"].startswith("auto")]
        auto = [r for r in ok if r["family"] == "taylorseer_fx" and r["method"].startswith("auto")]
        pick = (lambda rs: min(rs, key=lambda r: r["rel_l2"]) if rs else None)
        out[t] = {k: (None if (b := pick(v)) is None else {"setting": f"{b['method']}: {b['setting']}",
                                                            "rel_l2": b["rel_l2"], "fraction": b["compute_fraction"]})
                  for k, v in (("peer", peers), ("fixed", fixed), ("auto", auto))}
    return out


def run_steps(steps: int, search_samples: int, samples: int, max_sweeps: int, log) -> dict:
    t0 = time.perf_counter()
    auto = AutoPolicy(threshold=1.0, warmup=WARMUP)          # only its forecaster is used
    small, full = Runner(Arena(search_samples), steps), Runner(Arena(samples), steps)
    memo: dict[tuple, float] = {}

    def evaluate(cs: list[int]) -> float:
        key = tuple(cs)
        if key not in memo:
            memo[key] = small.error(placed_auto(cs, steps, auto))
        return memo[key]

    refs = arena_refs(steps)
    rows = []
    for target in TARGETS:
        k = int(target * steps + 1e-9)
        start = even(k, steps, WARMUP)
        n0 = len(memo)
        best, how = search(evaluate, start, WARMUP, steps, exhaustive=0, max_sweeps=max_sweeps)
        e_best, e_start = full.error(placed_auto(best, steps, auto)), full.error(placed_auto(start, steps, auto))
        ref = refs[target]
        row = {"target": target, "computes": k, "even_placement": start, "even_error": e_start,
               "best_placement": best, "best_error": e_best, "search": how, "evaluations": len(memo) - n0,
               "search_error": evaluate(best), "arena": ref,
               "best_over_peer": e_best / ref["peer"]["rel_l2"] if ref["peer"] else None,
               "best_over_fixed": e_best / ref["fixed"]["rel_l2"] if ref["fixed"] else None,
               "auto_over_peer": ref["auto"]["rel_l2"] / ref["peer"]["rel_l2"] if ref["auto"] and ref["peer"] else None}
        rows.append(row)
        log(row)
    return {"steps": steps, "rows": rows, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="28,50", help="comma list of step counts")
    ap.add_argument("--search-samples", type=int, default=10)
    ap.add_argument("--samples", type=int, default=40, help="samples of the final runs (the arena's 40)")
    ap.add_argument("--sweeps", type=int, default=3, help="coordinate-descent sweeps at most (default 3)")
    args = ap.parse_args()
    setup(1)
    import diffusers
    diffusers.utils.logging.set_verbosity_error()

    def log(r):
        print(f"  {r['target']}: {r['computes']} computes, even {r['even_error']:.4f}, best found "
              f"{r['best_error']:.4f} {r['best_placement'][WARMUP:]} ({r['evaluations']} runs); "
              f"best/peer {r['best_over_peer']:.3f}, best/fixed {r['best_over_fixed']:.3f}", flush=True)
    results = []
    for steps in [int(s) for s in args.steps.split(",")]:
        print(f"== {steps} steps", flush=True)
        res = run_steps(steps, args.search_samples, args.samples, args.sweeps, log)
        results.append(res)
        print(table(["target", "computes", "even placement", "best placement found", "error", "best peer",
                     "best / peer", "best fixed", "best / fixed", "auto / peer (arena)"],
                    [[r["target"], r["computes"], r["even_error"], str(r["best_placement"][WARMUP:]), r["best_error"],
                      r["arena"]["peer"]["rel_l2"], r["best_over_peer"], r["arena"]["fixed"]["rel_l2"],
                      r["best_over_fixed"], r["auto_over_peer"]] for r in res["rows"]],
                    title=f"### {steps} steps: the auto forecaster on searched placements (post-warm-up computes)"),
              flush=True)
    data = {"machine": machine(), "search_samples": args.search_samples, "samples": args.samples,
            "warmup": WARMUP, "forecaster": AutoPolicy(threshold=1.0).forecaster_options(), "results": results}
    print(f"wrote {write_json('placement_arena.json', data)}")


if __name__ == "__main__":
    main()
