"""Speed of the TaylorSeer backend against plain ``torch.compile`` (issue 3's benchmark).

Per model (the tiny Flux of ``examples/flux_tiny.py`` and a larger tiny DiT whose compute dominates
the Python overhead) and per region kind:

* **per call**: eager, plain ``torch.compile(model, backend=inner)``, the TaylorSeer backend with every
  step computed (``FixedPolicy(interval=1)``, pieces compiled with the same inner backend), and one
  TaylorSeer forecast call (after three computed warm-up steps);
* **Euler loops** of 28 and 50 steps: plain, and TaylorSeer at ``FixedPolicy(interval=N, warmup=3)``
  for N = 1, 2, 3, 5, as a ratio of wall time to plain measured side by side, next to the ideal
  ratio (full computes / steps) and the speedup target.

Targets: all-compute within 5 % of plain inductor (every region kind); loop speedup >= 0.9 x steps /
computes for ``stack`` on the largest model; first call (compile) through the backend <= 1.2 x plain
for ``stack`` and ``modules``, cold inductor cache, with no recompile in a second generation
(``compile_time.py``, run first, in fresh processes). Each is printed as PASS or MISS.

    python benchmarks/speed.py                 # full: both models, ~30 min on a 2-core VM
    python benchmarks/speed.py --quick         # tiny Flux only, fewer repetitions
    python benchmarks/speed.py --inner eager   # pieces and the plain reference without inductor

The compiled pieces do not depend on the policy (it is read at run time), so each (model, regions)
pair is compiled once and the policy is swapped between variants (``set_policy``); every loop checks
that the number of computed steps is the one the policy's schedule gives.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compile_time  # noqa: E402
from common import (MODELS, Clock, euler, interleave, iqr_rel, machine, med, rel_l2, setup,  # noqa: E402
                    sigmas, table, write_json)

from taylorseer_fx import FixedPolicy, taylorseer_backend  # noqa: E402

ALL_COMPUTE_TARGET = 1.05     # TaylorSeer all-compute / plain, per call
LOOP_TARGET = 0.9             # speedup >= 0.9 x steps / computes (stack, largest model)
WARMUP = 3
TARGET_MODEL = "dit-384x6"    # the loop-speedup target is stated for the largest tiny model
FORECAST_ONLY = 10 ** 9       # an interval no loop reaches: every step after warm-up is forecast


def set_policy(backend, policy) -> None:
    """Swap the backend's policy without recompiling (``backend.policy`` setter; the compiled pieces do
    not depend on it) and reset its state and stats."""
    backend.policy = policy
    backend.reset()


def pieces(backend) -> dict:
    g = backend.graphs[-1] if backend.graphs else {}
    gm = g.get("split_gm")
    n = sum(1 for name, _ in gm.named_children()) if gm is not None else 0
    return {"graphs": len(backend.graphs), "regions": len(g.get("regions", [])), "pieces": n}


# ----------------------------------------------------------------------------------- per call

def per_call(tm, plain, cached: dict, calls: int, reps: int) -> dict:
    """Seconds per call of every variant (median over ``reps`` samples, each the mean of ``calls``
    calls at the first sigmas of a 50-step schedule; TaylorSeer: a fresh generation per sample)."""
    s = sigmas(50)
    x = tm.noise()

    def timed(model, first):
        with torch.no_grad():
            clock = Clock()
            for i in range(first, first + calls):
                tm.call(model, x, s[i])
            w, c = clock.stop()
        return w / calls, c / calls

    def ts(backend, model, policy, warm):
        def f():
            set_policy(backend, policy)
            with torch.no_grad():
                for i in range(warm):            # computed warm-up steps, untimed
                    tm.call(model, x, s[i])
            out = timed(model, warm)
            st = backend.stats()
            ok = st["forecast"] == calls if policy.interval > 1 else st["compute"] == calls
            if not ok:
                raise AssertionError(f"{tm.name}: unexpected decisions {st['compute']} computed / "
                                     f"{st['forecast']} forecast for {policy!r}")
            return out
        return f

    variants = {"eager": lambda: timed(tm.model, 0), "plain": lambda: timed(plain, 0)}
    for regions, (backend, model) in cached.items():
        variants[f"ts-all-compute:{regions}"] = ts(backend, model, FixedPolicy(interval=1), 0)
        variants[f"ts-forecast:{regions}"] = ts(backend, model, FixedPolicy(interval=FORECAST_ONLY,
                                                                            warmup=WARMUP), WARMUP)
    times = interleave(variants, reps)
    return {n: {"median_s": med(v["wall"]), "iqr_rel": iqr_rel(v["wall"]), "cpu_median_s": med(v["cpu"]),
                "samples": len(v["wall"])} for n, v in times.items()}


# ----------------------------------------------------------------------------------- loops

def loops(tm, plain, cached: dict, steps_list, intervals, reps: int) -> list[dict]:
    noise = tm.noise()
    rows = []
    for steps in steps_list:
        outs, stats = {}, {}

        def run_plain():
            outs["plain"] = euler(tm, plain, noise, steps)

        variants = {"plain": run_plain}
        for regions, (backend, model) in cached.items():
            for n in intervals:
                key = f"{regions}:{n}"

                def run(backend=backend, model=model, pol=FixedPolicy(interval=n, warmup=WARMUP), key=key):
                    set_policy(backend, pol)             # outside the timed loop
                    clock = Clock()
                    outs[key] = euler(tm, model, noise, steps)
                    t = clock.stop()
                    stats[key] = backend.stats()
                    return t
                variants[key] = run
        times = interleave(variants, reps)
        tp, tp_cpu = med(times["plain"]["wall"]), med(times["plain"]["cpu"])
        for regions in cached:
            for n in intervals:
                key = f"{regions}:{n}"
                want = len(FixedPolicy(interval=n, warmup=WARMUP).compute_steps(steps))
                got = stats[key]["compute"]
                if got != want or stats[key]["steps"] != steps:
                    raise AssertionError(f"{tm.name} {key} {steps} steps: {got} computed, schedule says {want}")
                t, t_cpu = med(times[key]["wall"]), med(times[key]["cpu"])
                # ratio: median over repetitions of taylorseer / plain measured in the same round (paired,
                # robust to load drifting on the shared VM); ratio_of_medians kept for reference
                ratio = med([a / b for a, b in zip(times[key]["wall"], times["plain"]["wall"])])
                cpu_ratio = med([a / b for a, b in zip(times[key]["cpu"], times["plain"]["cpu"])])
                rows.append({
                    "model": tm.name, "regions": regions, "steps": steps, "interval": n, "computes": got,
                    "plain_s": tp, "taylorseer_s": t, "ratio": ratio, "ratio_of_medians": t / tp,
                    "ideal_ratio": got / steps, "speedup": 1 / ratio, "ideal_speedup": steps / got,
                    "speedup_vs_ideal": (1 / ratio) / (steps / got), "cpu_ratio": cpu_ratio,
                    "cpu_speedup_vs_ideal": (1 / cpu_ratio) / (steps / got), "plain_cpu_s": tp_cpu,
                    "taylorseer_cpu_s": t_cpu,
                    "noise_iqr_rel": max(iqr_rel(times["plain"]["wall"]), iqr_rel(times[key]["wall"])),
                    "rel_l2_vs_plain": rel_l2(outs[key], outs["plain"]),
                })
    return rows


# ----------------------------------------------------------------------------------- main

def compile_all(tm, inner: str, regions_list) -> tuple:
    info = {}
    torch._dynamo.reset()
    t0 = time.perf_counter()
    plain = torch.compile(tm.model, backend=inner)
    euler(tm, plain, tm.noise(), 2)
    info["plain_compile_s"] = time.perf_counter() - t0
    cached = {}
    for regions in regions_list:
        backend = taylorseer_backend(policy=FixedPolicy(interval=1), regions=regions, inner=inner)
        model = torch.compile(tm.model, backend=backend)   # its own cache entry
        t0 = time.perf_counter()
        euler(tm, model, tm.noise(), 2)
        info[f"{regions}_compile_s"] = time.perf_counter() - t0
        set_policy(backend, FixedPolicy(interval=FORECAST_ONLY, warmup=WARMUP))
        euler(tm, model, tm.noise(), WARMUP + 1)       # the forecast version compiles at its first use
        info[f"{regions}_forecast_compile_s"] = backend.compile_seconds()["forecast"]
        info[f"{regions}_pieces"] = pieces(backend)
        cached[regions] = (backend, model)
    return plain, cached, info


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny Flux only, fewer repetitions")
    ap.add_argument("--inner", default="inductor", help="inner backend of the pieces and of the plain reference")
    ap.add_argument("--models", default=None, help=f"comma-separated, from {list(MODELS)}")
    ap.add_argument("--regions", default=None, help="comma-separated region kinds (default: stack,"
                                                    "stack-residual,modules; --quick: stack)")
    ap.add_argument("--compile-reps", type=int, default=None,
                    help="rounds of the cold-start compile-time measurement (default 2, --quick 0: skipped)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions of each loop (median reported)")
    ap.add_argument("--out", default=None, help="JSON file name under benchmarks/results/")
    args = ap.parse_args(argv)

    setup(1)
    model_names = (args.models.split(",") if args.models else
                   ["flux-tiny"] if args.quick else list(MODELS))
    regions_list = (args.regions.split(",") if args.regions else
                    ["stack"] if args.quick else ["stack", "stack-residual", "modules"])
    compile_reps = args.compile_reps if args.compile_reps is not None else 0 if args.quick else 2
    loop_reps = args.reps or (3 if args.quick else 15)
    call_reps = 5 if args.quick else 15
    calls = 10 if args.quick else 20
    steps_list = (28, 50)
    intervals = (1, 2, 3, 5)

    result = {"benchmark": "speed", "machine": machine(), "inner": args.inner, "quick": args.quick,
              "warmup": WARMUP, "loop_reps": loop_reps, "call_reps": call_reps, "calls_per_sample": calls,
              "models": {}, "loops": [], "targets": []}
    t_start = time.perf_counter()
    call_rows, loop_rows, target_rows = [], [], []
    compile_res = None
    if compile_reps and args.inner == "inductor":
        print(f"cold-start compile time, {compile_reps} rounds of fresh processes ...", flush=True)
        kinds = tuple(k for k in ("stack", "modules") if k in regions_list) or ("stack",)
        compile_res = compile_time.run(model_names, kinds, compile_reps)
        result["compile_time"] = compile_res
        target_rows += [{**t, "cpu_value": t["value"], "cpu_ok": t["ok"]} for t in compile_res["targets"]]
    for name in model_names:
        tm = MODELS[name]()
        print(f"[{name}] {tm.describe}, {tm.params() / 1e6:.2f} M parameters; compiling ...", flush=True)
        plain, cached, info = compile_all(tm, args.inner, regions_list)
        print(f"[{name}] compiled: " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                                  for k, v in info.items()), flush=True)
        pc = per_call(tm, plain, cached, calls, call_reps)
        t_plain, c_plain = pc["plain"]["median_s"], pc["plain"]["cpu_median_s"]
        for v, d in pc.items():
            kind = v.split(":", 1)[1] if ":" in v else None
            n_pieces = info[f"{kind}_pieces"]["pieces"] if kind else 1 if v == "plain" else None
            call_rows.append([name, v, n_pieces, d["median_s"] * 1e3, d["median_s"] / t_plain,
                              d["cpu_median_s"] / c_plain, d["iqr_rel"]])
        for regions in regions_list:
            d = pc[f"ts-all-compute:{regions}"]
            r = d["median_s"] / t_plain
            target_rows.append({"model": name, "regions": regions, "target": "all-compute <= 1.05 x plain (per call)",
                                "value": r, "cpu_value": d["cpu_median_s"] / c_plain, "ok": r <= ALL_COMPUTE_TARGET,
                                "cpu_ok": d["cpu_median_s"] / c_plain <= ALL_COMPUTE_TARGET})
        print(f"[{name}] per-call done; loops ...", flush=True)
        rows = loops(tm, plain, cached, steps_list, intervals, loop_reps)
        for row in rows:   # what the per-call costs predict: computes x all-compute + forecasts x forecast
            ac = pc[f"ts-all-compute:{row['regions']}"]["median_s"]
            fc = pc[f"ts-forecast:{row['regions']}"]["median_s"]
            row["predicted_ratio"] = (row["computes"] * ac + (row["steps"] - row["computes"]) * fc) / (
                row["steps"] * t_plain)
        for row in rows:
            if row["interval"] == 1:
                target_rows.append({"model": name, "regions": row["regions"],
                                    "target": f"all-compute <= 1.05 x plain ({row['steps']}-step loop)",
                                    "value": row["ratio"], "cpu_value": row["cpu_ratio"],
                                    "ok": row["ratio"] <= ALL_COMPUTE_TARGET,
                                    "cpu_ok": row["cpu_ratio"] <= ALL_COMPUTE_TARGET})
            elif row["regions"] == "stack" and name == TARGET_MODEL:
                target_rows.append({"model": name, "regions": "stack",
                                    "target": f"speedup >= 0.9 x ideal ({row['steps']} steps, interval {row['interval']})",
                                    "value": row["speedup_vs_ideal"], "cpu_value": row["cpu_speedup_vs_ideal"],
                                    "ok": row["speedup_vs_ideal"] >= LOOP_TARGET,
                                    "cpu_ok": row["cpu_speedup_vs_ideal"] >= LOOP_TARGET})
        loop_rows += rows
        result["models"][name] = {"describe": tm.describe, "params": tm.params(), "compile": info,
                                  "per_call": pc}
        del plain, cached
        torch._dynamo.reset()

    result["loops"] = loop_rows
    result["targets"] = target_rows
    result["wall_s"] = time.perf_counter() - t_start

    m = result["machine"]
    print(f"\ncommit {m['commit']} ({m['date']}) | machine: {m['cpu']} ({m['cores']} cores), {m['threads']} "
          f"torch thread, torch {m['torch']}, diffusers {m['diffusers']}, inner={args.inner}")
    if compile_res is not None:
        print(compile_time.format_rows(compile_res))
    print(table(["model", "variant", "pieces", "ms / call", "x plain", "x plain (cpu)", "noise (IQR)"], call_rows,
                title=f"Per call (median of {call_reps} samples of {calls} calls; ts-forecast: a forecast "
                      f"call after {WARMUP} computed steps)"))
    print(table(["model", "regions", "steps", "interval", "computes", "plain s", "taylorseer s", "ratio",
                 "ratio (cpu)", "predicted", "ideal", "speedup", "x ideal", "rel L2 vs plain"],
                [[r["model"], r["regions"], r["steps"], r["interval"], r["computes"], r["plain_s"],
                  r["taylorseer_s"], r["ratio"], r["cpu_ratio"], r["predicted_ratio"], r["ideal_ratio"],
                  r["speedup"], r["speedup_vs_ideal"], r["rel_l2_vs_plain"]] for r in loop_rows],
                title=f"Euler loops (FixedPolicy(interval=N, warmup={WARMUP}), {loop_reps} interleaved rounds; "
                      "plain s / taylorseer s: medians; ratio = median over rounds of taylorseer / plain wall "
                      "time (cpu: thread CPU time); predicted = the ratio the per-call costs give; "
                      "ideal = computes / steps; x ideal = speedup / (steps / computes))"))
    print(table(["model", "regions", "target", "value", "result", "value (cpu)", "result (cpu)"],
                [[t["model"], t["regions"], t["target"], t["value"], "PASS" if t["ok"] else "MISS",
                  t["cpu_value"], "PASS" if t["cpu_ok"] else "MISS"] for t in target_rows],
                title="Targets (result: wall-time medians, as specified; cpu: the same on thread CPU time, "
                      "blind to other processes on the VM)"))
    if TARGET_MODEL not in model_names:
        print(f"(the loop-speedup target is stated for {TARGET_MODEL}, which this run did not include)")
    path = write_json(args.out or ("speed_quick.json" if args.quick else "speed.json"), result)
    print(f"\nwrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path} "
          f"({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
