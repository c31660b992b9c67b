"""The arena's placement bound: how low can the auto forecaster's error go on the trained Flux at each target?

``benchmarks/placement.py`` does this for the DiT; this is the same search on the arena's model
(``arena.py``: the shipped Flux, a real ``FluxPipeline``, true CFG 3, ``regions="stack"``). The auto
policy decides *where* to compute (its threshold) and *how* to forecast between computes; here the
second part stays as shipped and the first is replaced by a search:

1. every arena auto threshold is run on the search samples; per target compute fraction (0.25 / 0.35
   / 0.5) the best one at or below the target gives the **start**: the auto policy's own placement;
2. **coordinate descent** from it: each post-warm-up compute in turn moved by up to ``--reach`` steps
   (between its neighbours), repeated while a move helps (at most ``--sweeps`` sweeps) -- a local
   optimum, an estimate of the bound, not a proof. The compute count never changes, so the compute
   fraction stays that of the start;
3. by default the search runs on the arena's own 40 samples, as ``placement.py`` searches on
   ``quality.py``'s (``--search-samples`` smaller: the start and the best placement found are run
   again on the 40; a placement found on 10 samples does not carry over, measured: 28 steps, target
   0.5, 0.0054 -> 0.0051 on the 10, 0.0081 -> 0.0054 on the 40). Both are compared with the best
   peer of the arena's results at the same target (``benchmarks/results/arena.json``): what a
   threshold rule with this forecaster could reach, vs the issue's target of 0.5.

    python benchmarks/placement_arena.py                 # 28 and 50 steps (~60 min, 1 thread)
    python benchmarks/placement_arena.py --steps 28 --out placement_arena_28.json   # one step count
    python benchmarks/placement_arena.py --steps 28 --search-samples 6 --sweeps 1   # ~10 min
    python benchmarks/placement_arena.py --check 1 --results placement_arena_28.json,placement_arena_50.json
                                                         # both placements on fresh noise (seed 1, ~4 min)

Writes ``benchmarks/results/placement_arena.json`` (``placement_arena_custom.json`` with other options,
or ``--out``).
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
from arena import AUTO_MAX_RUN, AUTO_THRESHOLDS, CFG, TARGETS, Arena  # noqa: E402
from arena_peers import Counter, counting_inner  # noqa: E402
from common import ROOT, machine, setup, table, write_json  # noqa: E402

from taylorseer_fx import AutoPolicy, FixedPolicy, MaskPolicy, compile_pipeline  # noqa: E402
from taylorseer_fx.demo import metrics  # noqa: E402


class Runner:
    """One compiled pipeline (stack, eager inner) on one arena sample set; ``run(policy, steps)`` ->
    (relative L2 to the uncached samples, block compute fraction, stream-0 compute steps)."""

    def __init__(self, samples: int):
        from taylorseer_fx.demo.flux_pipeline import build_pipeline
        self.arena = a = Arena(samples)
        self.counter = Counter()
        self.pipe = build_pipeline(copy.deepcopy(a.base))
        torch._dynamo.reset()
        self.handle = compile_pipeline(self.pipe, policy=FixedPolicy(interval=2), regions="stack",
                                       inner=counting_inner(self.counter))
        self.backend = self.handle.backends["transformer"]

    def reference(self, steps: int) -> None:
        a = self.arena
        if steps not in a.ref:          # uncached: a peer run that enables nothing
            a.ref[steps], _, c = a.run_peer(steps, lambda pipe: None, lambda pipe: None)
            a.den[steps] = (c.blocks(), c.units())

    def run(self, policy, steps: int) -> tuple[float, float, list[int]]:
        self.reference(steps)
        self.backend.policy = policy
        self.handle.reset()
        self.counter.clear()
        x, _ = self.arena.sample(self.pipe, steps)
        trace = self.handle.stats()["transformer"]["trace"]
        computed = [c["step"] for c in trace if c["stream"] == 0 and c["decision"] == "compute"]
        return (metrics.relative_l2(x, self.arena.ref[steps]), self.counter.blocks() / self.arena.den[steps][0],
                computed)


def placed(compute_steps: list[int], steps: int) -> MaskPolicy:
    """An explicit compute set with the auto policy's forecast (form, order choice, coordinate)."""
    return MaskPolicy(compute_steps, num_steps=steps).with_forecast(AutoPolicy(threshold=1.0))


def descend(evaluate, start: list[int], warmup: int, steps: int, reach: int, sweeps: int) -> list[int]:
    """Coordinate descent over the post-warm-up computes of ``start`` (moves of <= reach steps)."""
    best = list(start)
    for _ in range(sweeps):
        moved = False
        for i in range(warmup, len(best)):
            lo = best[i - 1] + 1
            hi = best[i + 1] - 1 if i + 1 < len(best) else steps - 1
            for p in range(max(lo, best[i] - reach), min(hi, best[i] + reach) + 1):
                cand = best[:i] + [p] + best[i + 1:]
                if p != best[i] and evaluate(cand) < evaluate(best):
                    best, moved = cand, True
        if not moved:
            break
    return best


def peers_at(path: Path) -> dict:
    """``{(steps, target): (best peer rel L2, its method, its setting, our best rel L2)}`` from the
    arena's results."""
    data = json.loads(path.read_text())
    out = {}
    for s in data.get("summary", []):
        p = s.get("best_peer")
        if p:
            out[(s["steps"], s["target"])] = (p["rel_l2"], p["method"], p["setting"], s["taylorseer_fx"]["rel_l2"])
    return out


def check(args) -> dict:
    """The placements of earlier results on fresh noise: their errors and best / start ratio."""
    from arena import Arena
    runner = Runner(args.samples)
    runner.arena = Arena(args.samples, seed=args.check)
    cells = []
    for name in args.results.split(","):
        for c in json.loads((ROOT / "benchmarks" / "results" / name).read_text())["cells"]:
            start = runner.run(placed(c["start"], c["steps"]), c["steps"])[0]
            best = runner.run(placed(c["best"], c["steps"]), c["steps"])[0]
            cells.append({"steps": c["steps"], "target": c["target"], "start": c["start"], "best": c["best"],
                          "start_error": start, "best_error": best, "ratio": best / start,
                          "ratio_searched": c["best_error"] / c["start_error"]})
    print(table(["steps", "target", "auto placement", "best found", "best / auto", "on the searched samples"],
                [[c["steps"], c["target"], f"{c['start_error']:.4f}", f"{c['best_error']:.4f}", c["ratio"],
                  c["ratio_searched"]] for c in cells],
                title=f"The placements on fresh noise (seed {args.check}, {args.samples} samples)"))
    data = {"machine": machine(), "seed": args.check, "samples": args.samples, "results": args.results,
            "cells": cells}
    print(f"wrote {write_json(args.out or f'placement_arena_check{args.check}.json', data)}")
    return data


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="28,50")
    ap.add_argument("--search-samples", type=int, default=40)
    ap.add_argument("--samples", type=int, default=40, help="evaluation samples (the arena's)")
    ap.add_argument("--reach", type=int, default=2)
    ap.add_argument("--sweeps", type=int, default=2)
    ap.add_argument("--out", default=None, help="name of the JSON written under benchmarks/results/")
    ap.add_argument("--check", type=int, default=None, metavar="SEED",
                    help="instead of searching: run the start and best placements of --results on the same "
                         "labels with fresh noise from SEED (does what was found carry over?)")
    ap.add_argument("--results", default="placement_arena.json",
                    help="comma list of result files under benchmarks/results/ for --check")
    args = ap.parse_args(argv)
    setup(1)
    if args.check is not None:
        return check(args)
    steps_list = [int(s) for s in args.steps.split(",")]
    t0 = time.perf_counter()
    search = Runner(args.search_samples)
    warmup = AutoPolicy(threshold=1.0).warmup_steps
    cells, memos = [], {}
    for steps in steps_list:
        runs = [(t, *search.run(AutoPolicy(threshold=t, max_forecast_run=AUTO_MAX_RUN), steps)) for t in AUTO_THRESHOLDS]
        memo = memos[steps] = {}

        def evaluate(cs, steps=steps, memo=memo):
            if tuple(cs) not in memo:
                memo[tuple(cs)] = search.run(placed(cs, steps), steps)[0]
            return memo[tuple(cs)]
        for target in TARGETS:
            ok = [r for r in runs if r[2] <= target + 1e-9]
            if not ok:
                continue
            tau, err, frac, start = min(ok, key=lambda r: r[1])
            n0 = len(memo)
            best = descend(evaluate, start, warmup, steps, args.reach, args.sweeps)
            cells.append({"steps": steps, "target": target, "threshold": tau, "fraction": frac,
                          "start": start, "start_search_error": err, "start_as_mask_error": evaluate(start),
                          "best": best, "best_search_error": evaluate(best), "evaluations": len(memo) - n0})
            print(f"{steps} steps, target {target}: auto tau {tau} ({len(start)} computes, {frac:.3f}) "
                  f"{err:.4f} (as a mask {evaluate(start):.4f}) -> best found {evaluate(best):.4f} "
                  f"{best[warmup:]} ({len(memo) - n0} runs)", flush=True)
    ev = None if args.search_samples == args.samples else Runner(args.samples)
    peers = peers_at(ROOT / "benchmarks" / "results" / "arena.json")
    for c in cells:          # the compute count (so the fraction) is the start's
        for k in ("start", "best"):
            c[f"{k}_error"] = (memos[c["steps"]][tuple(c[k])] if ev is None
                               else ev.run(placed(c[k], c["steps"]), c["steps"])[0])
        peer = peers.get((c["steps"], c["target"]))
        c["peer"] = peer
        c["ratio_start"] = None if peer is None else c["start_error"] / peer[0]
        c["ratio_best"] = None if peer is None else c["best_error"] / peer[0]
        c["ratio_best_over_ours"] = None if peer is None else c["best_error"] / peer[3]
    rows = [[c["steps"], c["target"], len(c["start"]), c["fraction"], f"{c['start_error']:.4f}",
             f"{c['best_error']:.4f}",
             "-" if c["peer"] is None else f"{c['peer'][0]:.4f} ({c['peer'][1]}: {c['peer'][2]})",
             c["ratio_start"], c["ratio_best"], c["ratio_best_over_ours"], str(c["best"][warmup:])] for c in cells]
    print(table(["steps", "target", "computes", "fraction", "auto placement", "best found", "best peer",
                 "auto / peer", "best found / peer", "best found / our best (arena)",
                 "best placement (after warm-up)"], rows,
                title=f"Placement bound on the arena Flux ({args.samples} evaluation samples, search on "
                      f"{args.search_samples}, CFG {CFG:g}, stack)"))
    data = {"machine": machine(), "search_samples": args.search_samples, "samples": args.samples,
            "reach": args.reach, "sweeps": args.sweeps, "thresholds": AUTO_THRESHOLDS,
            "forecaster": AutoPolicy(threshold=1.0).forecaster_options(), "cells": cells,
            "seconds": time.perf_counter() - t0}
    custom = (args.steps, args.search_samples, args.samples, args.reach, args.sweeps) != ("28,50", 40, 40, 2, 2)
    name = args.out or ("placement_arena_custom.json" if custom else "placement_arena.json")
    print(f"wrote {write_json(name, data)}")
    return data


if __name__ == "__main__":
    main()
