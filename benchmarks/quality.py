"""Quality of the TaylorSeer backend on the shipped digits DiT: final-sample error vs compute.

For every configuration (steps x sigma shift x warm-up) this runs, on a fixed set of samples with fixed
noise (CFG 2, batched), the uncached reference and:

* **fixed schedules** -- ``FixedPolicy(interval=N, warmup=w)`` for orders 1-3, forms ``taylor`` (step
  index) and ``newton`` (sigma), regions ``stack`` and ``modules``, and on ``stack`` ``heun`` order 2
  and ``hermite`` orders 1-2 (:mod:`taylorseer_fx.forecast.forms`), at the intervals whose compute
  fractions are nearest 0.22 / 0.26 / 0.30 / 0.38, plus interval 2 (~0.5) for the Pareto front.
  (With uniform sigmas newton order 1 is taylor order 1 and is not run twice; newton order 3 needs a
  warm-up of 4 and is compared at the compute count it has.)
* **the auto policy** (``AutoPolicy(threshold=tau, warmup=w)`` with the shipped defaults: pair
  estimate of order 1 combined over the forecast run as the root of the sum of squares, forecast order
  0-2 chosen per run by back-test; regions ``stack``) with tau found by a search so that it computes at
  most as many steps as each fixed level;
* **the budget** (``AutoPolicy(budget=k / steps)``, the shipped defaults: a warm-up of one step, the
  last step computed, the rest at the budget's even spacing): exactly the level's ``k`` computes, no
  threshold search, and compared with the best fixed schedule at the configuration's warm-up *or* at
  a warm-up of one (the fixed schedules are run again from one warm-up step for this row, so the
  budget's warm-up is no edge);
* the **presets** ``auto-fast`` / ``auto-balanced`` / ``auto-quality`` at 20, 28 and 50 steps (is the
  error independent of the step count, the computed fraction smaller at more steps?);
* the **losing variants** at the same levels (so the choice stays visible): each step's own estimate
  (the previous default, v2.1), the estimates summed over the run, the order choice with a switching
  margin of 0.5, order 1 only with each step's estimate (v2), and the first version (``remainder``
  summed, taylor order 2).

The error is the relative L2 distance of the final samples to the uncached ones
(:func:`taylorseer_fx.demo.metrics.relative_l2`). An auto result at ``k`` computes is compared with the best
fixed schedule (any order, form, region) at the smallest fixed compute count ``>= k``; the target is
auto / best fixed <= 0.8 as a geometric mean over the levels, per configuration.

    python benchmarks/quality.py            # full: 8 configurations, 20 samples (~17 min, 1 thread)
    python benchmarks/quality.py --quick    # one configuration, 8 samples, no losers (~1 min)
    python benchmarks/quality.py --configs 28:1:3,50:3:6 --samples 24

Writes ``benchmarks/results/quality.json`` for the full run (``quality_quick.json`` with --quick,
``quality_custom.json`` with --configs / --samples / --no-losers).

One compile per region kind (``inner="eager"``): the policy is swapped through ``backend.policy`` and
every sample run is one ``backend.session(timesteps=sigmas)`` (a fresh generation, step count known).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, parse_configs, setup, table, write_json  # noqa: E402

from taylorseer_fx import AutoPolicy, FixedPolicy, load_policy, taylorseer_backend  # noqa: E402
from taylorseer_fx.demo import load_model, sample, sigmas  # noqa: E402
from taylorseer_fx.forecast.forms import DIVIDED  # noqa: E402
from taylorseer_fx.demo.metrics import relative_l2  # noqa: E402

TARGET = 0.8
FRACTIONS = (0.22, 0.26, 0.30, 0.38)
CFG = 2.0

#: the auto policy measured (the shipped defaults) and the losing variants kept for comparison
AUTO_VARIANTS = {
    "auto (rss over the run)": dict(),
    "per step (v2.1)": dict(accumulate="step"),
    "summed over the run": dict(accumulate="sum"),
    "rss, margin 0.5": dict(order_margin=0.5),
    "per step, order 1 only (v2)": dict(accumulate="step", select_order=False),
    "remainder, summed, taylor 2 (v1)": dict(estimator="remainder", accumulate="sum", order=2, form="taylor"),
}
# measured in earlier full runs and dropped from the default run (docs/auto.md keeps their numbers):
# "per step, margin 0.5": dict(accumulate="step", order_margin=0.5)
# "order 1, summed": dict(accumulate="sum", select_order=False)
# "remainder, summed, order 1": dict(estimator="remainder", accumulate="sum", form="taylor")
# "auto, regions modules" (v2): dict(regions="modules") -> 1.15 / 1.06 at 28 steps uniform, warm-up 3 / 6
MAIN = "auto (rss over the run)"
#: AutoPolicy(budget=k / steps): the shipped defaults with the level's compute count as a budget
BUDGET = "auto, budget = the level"


class Bench:
    def __init__(self, samples: int, seed: int = 0):
        self.model = load_model()
        self.labels = torch.arange(samples) % 10
        self.noise = torch.randn(samples, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
        self.backends, self.compiled = {}, {}
        self.refs = {}
        self.runs = 0
        self.model_s = 0.0

    def _compiled(self, regions: str):
        if regions not in self.compiled:
            be = taylorseer_backend(FixedPolicy(interval=1), regions=regions, inner="eager")
            self.backends[regions] = be
            self.compiled[regions] = torch.compile(self.model, backend=be)
            with be.session(timesteps=sigmas(2)[:2].tolist()):   # compile outside any timing
                sample(self.compiled[regions], self.labels, num_steps=2, cfg_scale=CFG, noise=self.noise)
        return self.backends[regions], self.compiled[regions]

    def reference(self, steps: int, shift: float) -> torch.Tensor:
        key = (steps, shift)
        if key not in self.refs:
            self.refs[key] = sample(self.model, self.labels, num_steps=steps, cfg_scale=CFG, shift=shift,
                                    noise=self.noise)
        return self.refs[key]

    def run(self, policy, regions: str, steps: int, shift: float) -> dict:
        be, model = self._compiled(regions)
        be.policy = policy
        be.reset()
        t0 = time.perf_counter()
        with be.session(timesteps=sigmas(steps, shift)[:steps].tolist()):
            out = sample(model, self.labels, num_steps=steps, cfg_scale=CFG, shift=shift, noise=self.noise)
        self.model_s += time.perf_counter() - t0
        self.runs += 1
        st = be.stats()
        computed = [c["step"] for c in st["trace"] if c["stream"] == 0 and c["decision"] == "compute"]
        return {"error": relative_l2(out, self.reference(steps, shift)), "computes": len(computed),
                "compute_steps": computed}


def fixed_count(steps: int, warmup: int, interval: int) -> int:
    return FixedPolicy(interval=interval, warmup=warmup).compute_steps(steps).__len__()


def levels_for(steps: int, warmup: int) -> dict[float, int]:
    """Target fraction -> the fixed interval whose fraction is nearest, one distinct compute count per
    target (more than warm-up alone; ties go to the cheaper schedule)."""
    options = {}
    for i in range(2, steps):
        c = fixed_count(steps, warmup, i)
        if c > warmup and c not in options:
            options[c] = i
    out, used = {}, set()
    for f in sorted(FRACTIONS):
        c = min((c for c in options if c not in used), key=lambda c: (abs(c / steps - f), c))
        used.add(c)
        out[f] = options[c]
    return out


def fixed_family(shift: float):
    for regions in ("stack", "modules"):
        for order in (1, 2, 3):
            for form in ("taylor", "newton"):
                if form == "newton" and order == 1 and shift == 1.0:
                    continue            # identical to taylor order 1 on uniform sigmas
                yield regions, order, form
    yield from (("stack", 2, "heun"), ("stack", 1, "hermite"), ("stack", 2, "hermite"))


def match_tau(bench: Bench, make, k_target: int, steps: int, shift: float, tau0: float,
              max_evals: int = 7, regions: str = "stack", power: float = 0.6) -> dict:
    """Search on log(tau) for the largest number of computes <= k_target (ties: smaller error).

    Computes fall with tau roughly as a power law (k ~ tau^-p); the next tau comes from that model
    until the target is bracketed, then from interpolating log(tau) between the bracket's ends."""
    lo = hi = None   # (tau, computes): lo computes too many, hi computes <= k_target
    best, tau, evals = None, tau0, []
    for _ in range(max_evals):
        r = bench.run(make(tau), regions, steps, shift)
        r["threshold"] = tau
        k = r["computes"]
        evals.append((tau, k))
        if k <= k_target:
            if best is None or (k, -r["error"]) > (best["computes"], -best["error"]):
                best = r
            if k == k_target:
                break
            hi = (tau, k) if hi is None or tau < hi[0] else hi
        else:
            lo = (tau, k) if lo is None or tau > lo[0] else lo
        if lo is not None and hi is not None:
            (t1, k1), (t2, k2) = lo, hi
            w = (k1 - (k_target + 0.5)) / (k1 - k2) if k1 != k2 else 0.5
            w = min(max(w, 0.15), 0.85)               # stay inside the bracket
            tau = math.exp(math.log(t1) + w * (math.log(t2) - math.log(t1)))
        else:
            factor = (k / (k_target + 0.5)) ** (1 / power)  # k ~ tau^-power
            tau = tau * min(max(factor, 0.25), 4.0)
    while best is None and len(evals) < max_evals + 4:   # never at or below the level: raise tau
        tau *= 4.0
        r = bench.run(make(tau), regions, steps, shift)
        r["threshold"] = tau
        evals.append((tau, r["computes"]))
        if r["computes"] <= k_target:
            best = r
    if best is None:
        best = r
    best["evals"] = evals
    return best


#: first threshold tried per variant (afterwards: the previous configuration's match)
TAU0 = {MAIN: 0.15, "per step (v2.1)": 0.15, "summed over the run": 0.6, "rss, margin 0.5": 0.15,
        "per step, order 1 only (v2)": 0.15, "remainder, summed, taylor 2 (v1)": 0.1}


def _power(hist) -> float:
    """Exponent p of computes ~ tau^-p, least squares over the evaluations so far (0.6 without)."""
    pts = [(math.log(t), math.log(c)) for t, c in hist if c > 0]
    if len({c for _, c in pts}) < 2:
        return 0.6
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx else -0.6
    return min(max(-slope, 0.2), 1.5)


def geo(xs):
    xs = [x for x in xs if x and math.isfinite(x)]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def run_fixed(bench: Bench, steps: int, shift: float, warmup: int, lv: dict) -> list[dict]:
    """Every fixed schedule of :func:`fixed_family` at the levels' intervals (and interval 2)."""
    intervals = sorted(set(lv.values()) | {2})
    fixed = []
    for interval in intervals:
        fam = list(fixed_family(shift))
        if interval == 2 and interval not in lv.values():   # only the Pareto front's upper end
            fam = [f for f in fam if f[0] == "stack" and f[1] <= 2]
        for regions, order, form in fam:
            w = max(warmup, order + 1) if form in DIVIDED else warmup   # newton/heun need order + 1 points
            p = FixedPolicy(interval=interval, warmup=w, order=order, form=form)
            r = bench.run(p, regions, steps, shift)
            fixed.append(dict(r, interval=interval, regions=regions, order=order, form=form, warmup=w))
    return fixed


def best_fixed(fixed: list[dict], k: int) -> dict | None:
    """The fixed schedule with the lowest error at the smallest fixed compute count >= k."""
    level = min((f["computes"] for f in fixed if f["computes"] >= k), default=None)
    if level is None:
        return None
    return min((f for f in fixed if f["computes"] == level), key=lambda f: f["error"])


def budget_row(bench: Bench, steps: int, shift: float, warmup: int | None, k: int, fixed: list[dict],
               **fields) -> dict:
    """Budget-auto at level ``k`` (``AutoPolicy(budget=k / steps, warmup=warmup, **fields)``, exactly k
    computes; ``warmup=None``: the policy's default): its run, the level, the best fixed schedule of
    ``fixed`` at that count (``ref``) and ``ratio`` to it."""
    r = bench.run(AutoPolicy(budget=k / steps, **dict(fields, warmup=warmup)), "stack", steps, shift)
    ref = best_fixed(fixed, r["computes"])
    return dict(r, level=k, ref=ref, ratio=r["error"] / ref["error"] if ref else float("nan"))


def run_config(bench: Bench, steps: int, shift: float, warmup: int, variants: dict, taus: dict) -> dict:
    t0 = time.perf_counter()
    bench.reference(steps, shift)
    lv = levels_for(steps, warmup)
    fixed = run_fixed(bench, steps, shift, warmup, lv)

    autos = {}
    for name, kw in variants.items():
        rows, hist = [], []       # hist: (tau, computes) of this variant in this configuration
        for frac, interval in sorted(lv.items()):
            k = fixed_count(steps, warmup, interval)
            kw = dict(kw)
            regions = kw.pop("regions", "stack")
            make = lambda tau, kw=kw: AutoPolicy(threshold=tau, warmup=warmup, **kw)  # noqa: E731
            power = _power(hist)
            if (name, frac) in taus:                 # the same level in the previous configuration
                tau0 = taus[(name, frac)]
            elif hist:                               # this configuration's last level, moved along k ~ tau^-p
                t, c = hist[-1]
                tau0 = t * (c / k) ** (1 / power)
            else:
                tau0 = TAU0.get(name, 0.1)
            r = match_tau(bench, make, k, steps, shift, tau0, regions=regions, power=power)
            hist += [e for e in r["evals"]]
            taus[(name, frac)] = r["threshold"]
            ref = best_fixed(fixed, r["computes"])
            rows.append(dict(r, fraction_target=frac, level=k, ref=ref,
                             ratio=r["error"] / ref["error"] if ref else float("nan")))
        autos[name] = {"rows": rows, "geomean_ratio": geo([r["ratio"] for r in rows])}
    budget = []                     # the budget: exactly the level's computes, no threshold search
    fixed_w1 = run_fixed(bench, steps, shift, 1, lv) if warmup != 1 else []    # the budget's own warm-up
    for frac, interval in sorted(lv.items()):
        row = budget_row(bench, steps, shift, None, fixed_count(steps, warmup, interval), fixed + fixed_w1)
        budget.append(dict(row, fraction_target=frac))
    autos[BUDGET] = {"rows": budget, "geomean_ratio": geo([r["ratio"] for r in budget])}
    return {"steps": steps, "shift": shift, "warmup": warmup, "levels": lv, "fixed": fixed, "fixed_w1": fixed_w1,
            "auto": autos,
            "seconds": time.perf_counter() - t0}


def pareto(fixed: list[dict]) -> list[dict]:
    """The fixed schedules no cheaper (or equally cheap) schedule beats: best error per compute count,
    kept only where it improves on every cheaper count."""
    front, low = [], math.inf
    for f in sorted(fixed, key=lambda f: (f["computes"], f["error"])):
        if f["error"] < low:
            if front and front[-1]["computes"] == f["computes"]:
                continue
            low = f["error"]
            front.append(f)
    return front


def name_fixed(f: dict) -> str:
    return f"{f['regions']} {f['form']} {f['order']} /{f['interval']}, warm-up {f.get('warmup', '?')}"


def report(res: dict, variants: dict) -> str:
    n = res["steps"]
    title = f"### {n} steps, shift {res['shift']:g}, warm-up {res['warmup']}"
    out = [title]
    fams = sorted({(f["regions"], f["form"], f["order"]) for f in res["fixed"]})
    intervals = sorted({f["interval"] for f in res["fixed"]})
    rows = []
    for fam in fams:
        row = [f"{fam[0]} {fam[1]} {fam[2]}"]
        for i in intervals:
            f = next((f for f in res["fixed"] if (f["regions"], f["form"], f["order"]) == fam
                      and f["interval"] == i), None)
            row.append(f["error"] if f else None)
        rows.append(row)
    heads = ["fixed (error)"] + [
        f"/{i} ({next(f['computes'] for f in res['fixed'] if f['interval'] == i)}/{n})" for i in intervals]
    out.append(table(heads, rows, title="fixed schedules: final relative L2 error (interval: computes/steps)"))
    out.append(table(["computes", "fraction", "error", "best fixed schedule"],
                     [[f["computes"], f["computes"] / n, f["error"], name_fixed(f)] for f in pareto(res["fixed"])],
                     title="Pareto front of the fixed schedules"))
    rows = []
    for name in [*variants, BUDGET]:
        a = res["auto"][name]
        for r in a["rows"]:
            ref = r["ref"]
            rows.append([name, r["fraction_target"], f"{r['computes']}/{r['level']}", r["computes"] / n,
                         r.get("threshold"), r["error"], ref["error"] if ref else None,
                         name_fixed(ref) if ref else "-", r["ratio"]])
        rows.append([name, "geomean", "", None, None, None, None, "", a["geomean_ratio"]])
    out.append(table(["policy", "target", "computes", "fraction", "tau", "error", "best fixed", "which", "ratio"],
                     rows, title="auto vs the best fixed schedule at the same or higher compute"))
    return "\n".join(out)


PRESETS = ("auto-fast", "auto-balanced", "auto-quality")


def run_presets(bench: Bench, step_counts=(20, 28, 50), shifts=(1.0, 3.0)) -> list[dict]:
    """Step-count independence: each preset at 20, 28 and 50 steps (regions "stack")."""
    out = []
    for name in PRESETS:
        policy = load_policy(name)
        for shift in shifts:
            for steps in step_counts:
                r = bench.run(policy, "stack", steps, shift)
                out.append({"preset": name, "threshold": policy.threshold, "shift": shift, "steps": steps,
                            "computes": r["computes"], "fraction": r["computes"] / steps, "error": r["error"],
                            "compute_steps": r["compute_steps"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one configuration, 8 samples, no losers")
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--configs", default=None, help="comma list of steps:shift:warmup")
    ap.add_argument("--no-losers", action="store_true", help="measure only the shipped auto policy")
    args = ap.parse_args()
    setup(1)
    samples = args.samples or (8 if args.quick else 20)
    if args.configs:
        configs = parse_configs(args.configs)
    elif args.quick:
        configs = [(28, 1.0, 3)]
    else:
        configs = [(n, s, w) for w in (3, 6) for s in (1.0, 3.0) for n in (28, 50)]
    variants = {MAIN: AUTO_VARIANTS[MAIN]} if (args.quick or args.no_losers) else AUTO_VARIANTS
    bench = Bench(samples)
    t0 = time.perf_counter()
    taus: dict = {}
    results = []
    for steps, shift, warmup in configs:
        res = run_config(bench, steps, shift, warmup, variants, taus)
        results.append(res)
        print(report(res, variants), flush=True)
        print(f"({res['seconds']:.0f} s)", flush=True)
    presets = run_presets(bench, shifts=(1.0,) if args.quick else (1.0, 3.0))
    print(table(["preset", "tau", "shift", "steps", "computes", "fraction", "error"],
                [[p["preset"], p["threshold"], p["shift"], p["steps"], p["computes"], p["fraction"], p["error"]]
                 for p in presets], title="Presets at 20 / 28 / 50 steps (warm-up 3, regions stack)"))
    summary = []
    for res in results:
        row = [f"{res['steps']} / {res['shift']:g} / {res['warmup']}"]
        for name in [*variants, BUDGET]:
            row.append(res["auto"][name]["geomean_ratio"])
        row += ["PASS" if res["auto"][n]["geomean_ratio"] <= TARGET else "MISS" for n in (MAIN, BUDGET)]
        summary.append(row)
    print(table(["steps / shift / warm-up"] + list(variants) + [BUDGET, f"auto <= {TARGET}", f"budget <= {TARGET}"],
                summary,
                title="Summary: auto error / best fixed error at the same or higher compute (geomean over levels)"))
    total = time.perf_counter() - t0
    print(f"\n{bench.runs} sample runs, {total:.0f} s total, {samples} samples, CFG {CFG} batched")

    def clean(r):
        return {k: v for k, v in r.items() if k != "ref"} | (
            {"ref": {k: r["ref"][k] for k in ("error", "computes", "regions", "order", "form", "interval")}}
            if r.get("ref") else {})
    data = {
        "machine": machine(), "samples": samples, "cfg": CFG, "target": TARGET, "fractions": FRACTIONS,
        "variants": {k: v for k, v in variants.items()}, "seconds": total, "presets": presets,
        "configs": [{**{k: v for k, v in res.items() if k not in ("auto", "levels")},
                     "levels": {str(k): v for k, v in res["levels"].items()},
                     "pareto": [{k: f[k] for k in ("computes", "error", "regions", "order", "form", "interval")}
                                for f in pareto(res["fixed"])],
                     "auto": {n: {"geomean_ratio": a["geomean_ratio"], "rows": [clean(r) for r in a["rows"]]}
                              for n, a in res["auto"].items()}} for res in results],
    }
    custom = args.configs or args.samples or args.no_losers
    path = write_json("quality_quick.json" if args.quick else "quality_custom.json" if custom else "quality.json", data)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
