"""Which forecaster should an untuned budget run? Budget-auto with each, on both models, and the bound.

Issue 27 asks ``AutoPolicy(budget=k / N)`` (no tuning) for <= 0.5x the best peer in every cell of the
arena (the trained Flux, ``arena.py``) and <= 0.8x the best fixed schedule in every configuration of
``quality.py`` (the DiT). This runs the budget with each forecaster below on both models (the
shipped one: ``heun``, order 1 preferred, chosen per run among 0-2 by back-test, under a budget a
warm-up of one step):

* **Flux**: the arena's 40 samples and noise (``placement_arena.Runner``: one compiled pipeline,
  ``regions="stack"``), at the arena's six cells (``k = floor(fraction * N)`` computes, as
  ``tune_arena.py``); error / the best peer's (``benchmarks/results/arena.json``);
* **DiT**: ``quality.py``'s ``Bench`` (20 samples) at its four levels of each of its eight
  configurations, with the warm-up the row names (else the budget's default, one step); error / the
  best fixed schedule at the same or a higher count, at the configuration's warm-up (3 or 6) or at
  a warm-up of one, whichever is better there.

``--oracle`` instead searches the placement itself on the Flux, per cell: coordinate descent
(``placement_arena.descend``) on the arena's own 40 samples -- the samples scored, so an optimistic
bound for any rule that places the same computes for every sample -- with the Taylor / Hermite
forecasters from a warm-up of one, each started from the better of the tuned presets' placements
(``benchmarks/results/presets/tune_arena*.toml``) and the even placement that computes the last step.

    python benchmarks/budget_forecasters.py                 # ~15 min, 1 thread
    python benchmarks/budget_forecasters.py --oracle        # ~30 min

Writes ``benchmarks/results/budget_forecasters.json`` (``--oracle``: ``budget_oracle.json``). Units:
steps are 0-based step indices; errors are relative L2 to the uncached samples.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine, setup, table, write_json  # noqa: E402
from placement_arena import Runner, descend  # noqa: E402
from quality import Bench, budget_row, fixed_count, geo, levels_for, run_fixed  # noqa: E402
from tune_dit import CONFIGS  # noqa: E402

from taylorseer_fx import AutoPolicy, MaskPolicy, load_policy  # noqa: E402
from taylorseer_fx.tuning.search import even_starts  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
#: name -> AutoPolicy fields (with the budget added); the warm-up each row names, on both models
FORECASTERS = {
    "shipped (heun 1, order chosen in 0-2; warm-up 1, even pacing)": {},
    "shipped forecaster, warm-up 1, estimate pacing": dict(pacing="estimate"),
    "shipped forecaster, warm-up 1, estimate pacing, estimates summed": dict(pacing="estimate", accumulate="sum"),
    "shipped forecaster, warm-up 3, estimate pacing (the budget before 0b4bc62)": dict(warmup=3, pacing="estimate"),
    "taylor 2, warm-up 1": dict(form="taylor", order=2, warmup=1, select_order=False),
    "taylor 2, order chosen, warm-up 1": dict(form="taylor", order=2, warmup=1),
    "taylor 2, warm-up 3": dict(form="taylor", order=2, warmup=3, select_order=False),
    "heun 2, warm-up 3": dict(form="heun", order=2, warmup=3, select_order=False),
    "taylor 1, warm-up 1": dict(form="taylor", order=1, warmup=1, select_order=False),
    "hermite 2, order chosen, warm-up 1": dict(form="hermite", order=2, warmup=1),
}
#: the forecasters of the placement search (``--oracle``): (form, order), fixed order, warm-up 1
ORACLE_FORMS = (("taylor", 2), ("hermite", 2), ("taylor", 1))


def arena_cells() -> list[dict]:
    """The arena's six cells: steps, fraction, computes and the best peer's error (tune_arena.json's)."""
    cells = json.loads((RESULTS / "tune_arena.json").read_text())["cells"]
    return [{"steps": c["steps"], "fraction": c["fraction"], "computes": c["computes"],
             "peer": c["best_peer"]["rel_l2"], "peer_method": c["best_peer"]["method"]} for c in cells]


def flux_rows(runner: Runner, fields: dict) -> list[dict]:
    out = []
    for c in arena_cells():
        n, k = c["steps"], c["computes"]
        err, frac, steps = runner.run(AutoPolicy(budget=k / n, **fields), n)
        out.append(dict(c, error=err, over_peer=err / c["peer"], compute_steps=steps))
    return out


def dit_rows(bench, fields: dict, fixed: dict) -> list[dict]:
    """quality.py's budget rows with ``fields`` (its warm-up as the row names it, else the budget's
    default); ``fixed``: {configuration: its fixed rows at its warm-up and at a warm-up of one}, filled
    once, so the best fixed schedule is the better of the two warm-ups at each count."""
    out = []
    for steps, shift, warmup in CONFIGS:
        key = (steps, shift, warmup)
        if key not in fixed:
            bench.reference(steps, shift)
            lv = levels_for(steps, warmup)
            fixed[key] = run_fixed(bench, steps, shift, warmup, lv) + run_fixed(bench, steps, shift, 1, lv)
        for interval in sorted(levels_for(steps, warmup).values()):
            r = budget_row(bench, steps, shift, fields.get("warmup"), fixed_count(steps, warmup, interval), fixed[key],
                           **{k: v for k, v in fields.items() if k != "warmup"})
            out.append({"config": f"{steps}/{shift:g}/{warmup}", "level": r["level"], "error": r["error"],
                        "best_fixed": r["ref"]["error"], "best_fixed_warmup": r["ref"]["warmup"],
                        "over_fixed": r["ratio"], "compute_steps": r["compute_steps"]})
    return out


def forecasters(args) -> dict:
    runner, bench, fixed = Runner(args.samples), Bench(args.dit_samples), {}
    rows = []
    for name, fields in FORECASTERS.items():
        t0 = time.perf_counter()
        flux, dit = flux_rows(runner, fields), dit_rows(bench, fields, fixed)
        rows.append({"forecaster": name, "fields": fields, "flux": flux, "dit": dit,
                     "flux_geomean": geo([r["over_peer"] for r in flux]),
                     "dit_geomean": geo([r["over_fixed"] for r in dit]), "seconds": time.perf_counter() - t0})
        print(f"{name}: Flux {rows[-1]['flux_geomean']:.3f}, DiT {rows[-1]['dit_geomean']:.3f} "
              f"({rows[-1]['seconds']:.0f} s)", flush=True)
    print(table(["forecaster", "Flux 28: 0.25 / 0.35 / 0.5", "Flux 50: 0.25 / 0.35 / 0.5", "Flux geomean",
                 "DiT geomean", "DiT worst configuration"],
                [[r["forecaster"], " / ".join(f"{x['over_peer']:.2f}" for x in r["flux"][:3]),
                  " / ".join(f"{x['over_peer']:.2f}" for x in r["flux"][3:]), r["flux_geomean"], r["dit_geomean"],
                  "{} ({:.2f})".format(*max(((c, geo([x["over_fixed"] for x in r["dit"] if x["config"] == c]))
                                            for c in dict.fromkeys(x["config"] for x in r["dit"])),
                                           key=lambda t: t[1]))]
                 for r in rows],
                title="Budget-auto (no tuning) per forecaster: Flux error / best peer, DiT error / best fixed"))
    return {"rows": rows}


def oracle(args) -> dict:
    runner = Runner(args.samples)
    rows = []
    for c in arena_cells():
        n, k = c["steps"], c["computes"]
        starts = {"even, last step": tuple(even_starts(n, k, 1, 0, None)["even, last step"])}
        for path in sorted((RESULTS / "presets").glob(f"tune_arena*_{n}_{k}.toml")):
            starts[path.stem] = tuple(dict(load_policy(path).placements)[n])
        for form, order in ORACLE_FORMS:
            cache: dict = {}

            def evaluate(placement) -> float:
                key = tuple(placement)
                if key not in cache:
                    policy = MaskPolicy(list(key), num_steps=n, order=order, form=form, warmup=1)
                    cache[key] = runner.run(policy, n)[0]
                return cache[key]
            t0 = time.perf_counter()
            name, start = min(starts.items(), key=lambda kv: evaluate(kv[1]))
            best = descend(evaluate, list(start), 1, n, args.reach, args.sweeps)
            rows.append(dict(c, forecaster=f"{form} {order}, warm-up 1", start=name, start_error=evaluate(start),
                             placement=list(best), error=evaluate(best), over_peer=evaluate(best) / c["peer"],
                             evaluations=len(cache), seconds=time.perf_counter() - t0))
            print(f"{n} steps / {c['fraction']}: {form} {order}: {evaluate(start):.4g} -> {evaluate(best):.4g} "
                  f"({rows[-1]['over_peer']:.2f}x the best peer)", flush=True)
    best = [min((r for r in rows if (r["steps"], r["fraction"]) == (c["steps"], c["fraction"])),
                key=lambda r: r["error"]) for c in arena_cells()]
    print(table(["steps", "fraction (computes)", "best peer", "best placement found", "forecaster", "/ best peer"],
                [[r["steps"], f"{r['fraction']} ({r['computes']})", f"{r['peer']:.4f} ({r['peer_method']})",
                  f"{r['error']:.4f}", r["forecaster"], r["over_peer"]] for r in best],
                title="The best placement found on the arena's own samples, per cell"))
    return {"rows": rows, "best": best, "reach": args.reach, "sweeps": args.sweeps}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--oracle", action="store_true", help="search the placement instead (the bound)")
    ap.add_argument("--samples", type=int, default=40, help="the arena's samples")
    ap.add_argument("--dit-samples", type=int, default=20, help="quality.py's samples")
    ap.add_argument("--reach", type=int, default=3)
    ap.add_argument("--sweeps", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    setup(1)
    t0 = time.perf_counter()
    data = oracle(args) if args.oracle else forecasters(args)
    data = {"machine": machine(), "samples": args.samples, **data, "seconds": time.perf_counter() - t0}
    name = args.out or ("budget_oracle.json" if args.oracle else "budget_forecasters.json")
    print(f"wrote {write_json(name, data)}")
    return data


if __name__ == "__main__":
    main()
