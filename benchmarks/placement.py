"""How low can the auto policy's error go at a given compute count? A search over compute placements.

The auto policy decides *where* to compute (its threshold) and *how* to forecast between computes (the
order chosen per run by back-test). This benchmark takes the second part as shipped and replaces the
first by a search: for each level of ``benchmarks/quality.py`` (same model, samples, noise, CFG and
levels) it runs the auto policy's forecaster on explicit compute sets (``MaskPolicy``, warm-up
computed) and looks for the set with the lowest final error:

* up to ``--exhaustive`` (default 2) computes after warm-up: **every** placement (an exact bound for
  any threshold rule with this forecaster);
* more: coordinate descent from the fixed schedule's placement (each compute in turn moved to every
  step between its neighbours, repeated until no move helps) -- a local optimum, i.e. an estimate
  of the bound, not a proof.

The ratio is the best error found / the best fixed schedule's error at the same compute count (any
order, form, region: ``quality.best_fixed``), geometric mean over the levels -- the quantity the
target ``<= 0.8`` of quality.py is about. A ratio above 0.8 here means no threshold rule with this
forecaster can meet the target in that configuration.

    python benchmarks/placement.py      # the three 28-step configurations quality.py misses (~20 min, 1 thread)
    python benchmarks/placement.py --configs 28:1:6 --exhaustive 3 --out placement_28-1-6_exhaustive3.json
                                        # every placement up to 3 computes after warm-up (~32 min)

Writes ``benchmarks/results/placement.json`` (``placement_custom.json`` with other options, or
``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, parse_configs, setup, table, write_json  # noqa: E402
from quality import Bench, best_fixed, geo, levels_for, name_fixed, run_fixed  # noqa: E402

from taylorseer_fx import AutoPolicy, FixedPolicy, MaskPolicy  # noqa: E402

DEFAULT_CONFIGS = "28:1:3,28:3:3,28:1:6"


def placed_auto(compute_steps, num_steps: int, auto: AutoPolicy) -> MaskPolicy:
    """An explicit compute set with the forecast (how) of the auto policy ``auto``."""
    return MaskPolicy(compute_steps, num_steps=num_steps).with_forecast(auto)


def search(evaluate, start: list[int], warmup: int, steps: int, exhaustive: int, max_sweeps: int = 4):
    """Lowest ``evaluate(compute_steps)`` over placements of ``start``'s post-warm-up computes."""
    head = list(range(warmup))
    free = [c for c in start if c >= warmup]
    if len(free) <= exhaustive:
        cands = [head + list(c) for c in itertools.combinations(range(warmup, steps), len(free))]
        return min(cands, key=evaluate), "exhaustive"
    best = head + free
    for _ in range(max_sweeps):
        moved = False
        for i in range(len(free)):
            lo = free[i - 1] + 1 if i else warmup
            hi = free[i + 1] - 1 if i + 1 < len(free) else steps - 1
            for p in range(lo, hi + 1):
                cand = head + free[:i] + [p] + free[i + 1:]
                if evaluate(cand) < evaluate(best):
                    best, moved = cand, True
            free = best[warmup:]
        if not moved:
            break
    return best, "coordinate descent"


def run_config(bench: Bench, steps: int, shift: float, warmup: int, exhaustive: int) -> dict:
    t0 = time.perf_counter()
    lv = levels_for(steps, warmup)
    fixed = run_fixed(bench, steps, shift, warmup, lv)
    auto = AutoPolicy(threshold=1.0, warmup=warmup)    # only its forecaster is used
    memo: dict[tuple, float] = {}

    def evaluate(cs: list[int]) -> float:
        key = tuple(cs)
        if key not in memo:
            memo[key] = bench.run(placed_auto(cs, steps, auto), "stack", steps, shift)["error"]
        return memo[key]

    rows = []
    for frac, interval in sorted(lv.items()):
        start = FixedPolicy(interval=interval, warmup=warmup).compute_steps(steps)
        n0 = len(memo)
        best, how = search(evaluate, start, warmup, steps, exhaustive)
        ref = best_fixed(fixed, len(best))
        rows.append({"fraction_target": frac, "computes": len(best), "fixed_placement": start,
                     "fixed_placement_error": evaluate(start), "best_placement": best,
                     "best_error": evaluate(best), "search": how, "evaluations": len(memo) - n0,
                     "ref": {k: ref[k] for k in ("error", "computes", "regions", "order", "form", "interval")},
                     "ratio_fixed_placement": evaluate(start) / ref["error"],
                     "ratio_best": evaluate(best) / ref["error"]})
    return {"steps": steps, "shift": shift, "warmup": warmup, "rows": rows,
            "geomean_fixed_placement": geo([r["ratio_fixed_placement"] for r in rows]),
            "geomean_best": geo([r["ratio_best"] for r in rows]), "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma list of steps:shift:warmup")
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--exhaustive", type=int, default=2,
                    help="search every placement up to this many computes after warm-up (default 2)")
    ap.add_argument("--out", default=None, help="name of the JSON written under benchmarks/results/")
    args = ap.parse_args()
    if args.samples < 1 or args.exhaustive < 0:
        ap.error("--samples must be >= 1 and --exhaustive >= 0")
    setup(1)
    configs = parse_configs(args.configs)
    bench = Bench(args.samples)
    results = []
    for steps, shift, warmup in configs:
        res = run_config(bench, steps, shift, warmup, args.exhaustive)
        results.append(res)
        print(table(["computes", "best fixed", "which", "fixed placement", "ratio", "best placement found",
                     "error", "ratio", "search (runs)"],
                    [[r["computes"], r["ref"]["error"], name_fixed(r["ref"]), str(r["fixed_placement"][warmup:]),
                      r["ratio_fixed_placement"], str(r["best_placement"][warmup:]), r["best_error"],
                      r["ratio_best"], f"{r['search']} ({r['evaluations']})"] for r in res["rows"]],
                    title=f"### {steps} steps, shift {shift:g}, warm-up {warmup}: the auto forecaster on "
                          f"searched placements (post-warm-up computes shown)"), flush=True)
        print(f"geomean ratio: fixed placement {res['geomean_fixed_placement']:.3f}, best found "
              f"{res['geomean_best']:.3f} ({res['seconds']:.0f} s)", flush=True)
    data = {"machine": machine(), "samples": args.samples, "exhaustive": args.exhaustive,
            "forecaster": AutoPolicy(threshold=1.0).forecaster_options(), "configs": results}
    custom = args.configs != DEFAULT_CONFIGS or args.samples != 20 or args.exhaustive != 2
    name = args.out or ("placement_custom.json" if custom else "placement.json")
    print(f"wrote {write_json(name, data)}")


if __name__ == "__main__":
    main()
