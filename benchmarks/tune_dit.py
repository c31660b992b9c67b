"""The tuner on the second model: does ``taylorseer_fx.tune`` reach issue 27's DiT target where budget-auto does not?

``benchmarks/quality.py`` (the project's DiT, Euler flow matching, CFG 2, ``regions="stack"``) measures
``AutoPolicy(budget=k / N)`` against the best fixed schedule at each level ``k`` of eight
configurations (steps / shift / warm-up); issue 27 wants the geomean over a configuration's levels
<= 0.8. Here, per configuration and level:

1. ``taylorseer_fx.tune`` searches a placement and a threshold (and, with ``--forecasts search``, a
   forecaster among the policy's own and Hermite / Taylor orders 2 and 1 **at the configuration's
   warm-up**, so the fixed schedules and the tuned preset compute the same first steps) on
   **calibration inputs**: ``--inputs`` pairs of digit labels, the last ``--holdout`` held out, with
   noise of their own seeds;
2. the tuned preset, budget-auto and every fixed schedule of ``quality.py`` then run on quality.py's
   own ``--samples`` samples and noise (never seen by the search), scored as quality.py scores them:
   relative L2 to the uncached samples, against the best fixed schedule at the same or a higher count.

    python benchmarks/tune_dit.py                              # 8 configurations x 4 levels
    python benchmarks/tune_dit.py --configs 28:1:6 --levels 1   # one configuration, its second level

Writes ``benchmarks/results/tune_dit.json`` (``tune_dit_custom.json`` for a partial run); the tuner's
checkpoints go to ``benchmarks/results/presets/tune_dit_*.progress.json`` (a rerun resumes, ignored by
git). Units: steps are 0-based step indices; ``k`` is a compute count.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, parse_configs, setup, table, write_json  # noqa: E402
from quality import CFG, TARGET, Bench, budget_row, fixed_count, geo, levels_for, run_fixed  # noqa: E402

from taylorseer_fx import AutoPolicy, tune  # noqa: E402
from taylorseer_fx.demo import sample  # noqa: E402
from taylorseer_fx.tuning.forecasts import FORECASTS  # noqa: E402

CONFIGS = [(n, s, w) for w in (3, 6) for s in (1.0, 3.0) for n in (28, 50)]


def sampler(shift: float):
    """``sample(model, case)`` for the tuner: input ``i`` is the label pair ``(2i, 2i + 1) mod 10``, its
    noise drawn from ``case.seed`` and ``i`` (a stream quality.py's samples never use)."""
    def run(model, case):
        labels = torch.tensor([(2 * case.input) % 10, (2 * case.input + 1) % 10])
        gen = torch.Generator().manual_seed(10_000 + 100 * case.seed + case.input)
        noise = torch.randn(2, 1, 16, 16, generator=gen)
        return sample(model, labels, num_steps=case.steps, cfg_scale=CFG, shift=shift, noise=noise)
    return run


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default=None, help="comma list of steps:shift:warmup (default: quality.py's 8)")
    ap.add_argument("--levels", default=None, help="comma list of level indices 0-3 (default: all)")
    ap.add_argument("--inputs", type=int, default=5, help="calibration + held-out inputs (2 labels each)")
    ap.add_argument("--holdout", type=int, default=1)
    ap.add_argument("--sweeps", type=int, default=2)
    ap.add_argument("--forecasts", choices=("search", "own"), default="search")
    ap.add_argument("--samples", type=int, default=20, help="quality.py's evaluation samples")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    setup(1)
    configs = parse_configs(args.configs) if args.configs else CONFIGS
    pick = None if args.levels is None else {int(x) for x in args.levels.split(",")}
    bench = Bench(args.samples)
    presets = ROOT / "benchmarks" / "results" / "presets"
    presets.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = []
    for steps, shift, warmup in configs:
        bench.reference(steps, shift)
        lv = levels_for(steps, warmup)
        fixed = run_fixed(bench, steps, shift, warmup, lv)
        levels = sorted(fixed_count(steps, warmup, interval) for interval in lv.values())   # quality.py's
        rows = []
        for i, k in enumerate(levels):
            if pick is not None and i not in pick:
                continue
            t1 = time.perf_counter()
            forecasts = None if args.forecasts == "own" else [dict(f, warmup=warmup) for f in FORECASTS]
            r = tune(bench.model, list(range(args.inputs)), sample=sampler(shift), budget=k / steps, steps=steps,
                     holdout=args.holdout, sweeps=args.sweeps, policy=AutoPolicy(budget=k / steps, warmup=warmup),
                     forecasts=forecasts, regions="stack", progress=False,
                     checkpoint=presets / f"tune_dit_{steps}_{shift:g}_{warmup}_{k}.progress.json")
            c = r.cells[0]
            tuned = bench.run(r.policy, "stack", steps, shift)
            auto = budget_row(bench, steps, shift, warmup, k, fixed)
            ref = auto["ref"]
            row = {"level": k, "forecast": c["forecast"], "chosen": c["chosen"], "placement": c["placement"],
                   "threshold": c["threshold"], "calibration": c["calibration"], "fresh": c["fresh"],
                   "tuned": tuned["error"], "tuned_computes": tuned["computes"], "tuned_steps": tuned["compute_steps"],
                   "budget_auto": auto["error"], "budget_steps": auto["compute_steps"],
                   "best_fixed": {key: ref[key] for key in ("error", "computes", "regions", "order", "form", "interval")},
                   "tuned_over_fixed": tuned["error"] / ref["error"], "budget_over_fixed": auto["error"] / ref["error"],
                   "tune_seconds": time.perf_counter() - t1}
            rows.append(row)
            print(f"{steps}/{shift:g}/{warmup} k={k}: tuned {tuned['error']:.4g} ({c['forecast']}, {c['chosen']}), "
                  f"budget-auto {auto['error']:.4g}, best fixed {ref['error']:.4g} -> {row['tuned_over_fixed']:.3f} / "
                  f"{row['budget_over_fixed']:.3f} ({row['tune_seconds']:.0f} s)", flush=True)
        results.append({"steps": steps, "shift": shift, "warmup": warmup, "rows": rows,
                        "tuned_geomean": geo([r["tuned_over_fixed"] for r in rows]),
                        "budget_geomean": geo([r["budget_over_fixed"] for r in rows])})
    summary = [[f"{r['steps']} / {r['shift']:g} / {r['warmup']}", " ".join(str(x["level"]) for x in r["rows"]),
                r["budget_geomean"], r["tuned_geomean"], "PASS" if r["tuned_geomean"] <= TARGET else "MISS"]
               for r in results]
    print(table(["steps / shift / warm-up", "levels (computes)", "budget-auto / best fixed", "tuned / best fixed",
                 f"tuned <= {TARGET}"], summary,
                title=f"The tuner on the DiT ({args.samples} samples, CFG {CFG:g}, stack; geomean over levels; "
                      f"tuned on {args.inputs - args.holdout} inputs of 2 labels)"))
    data = {"machine": machine(), "samples": args.samples, "inputs": args.inputs, "holdout": args.holdout,
            "sweeps": args.sweeps, "forecasts": args.forecasts, "configs": results,
            "tuned_geomean": geo([r["tuned_geomean"] for r in results]),
            "budget_geomean": geo([r["budget_geomean"] for r in results]),
            "seconds": time.perf_counter() - t0}
    default = (args.configs, args.levels, args.inputs, args.holdout, args.sweeps, args.forecasts, args.samples) == \
        (None, None, 5, 1, 2, "search", 20)
    print(f"wrote {write_json(args.out or ('tune_dit.json' if default else 'tune_dit_custom.json'), data)}")
    return data


if __name__ == "__main__":
    main()
