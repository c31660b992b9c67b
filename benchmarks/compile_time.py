"""Compile time through the TaylorSeer backend against plain ``torch.compile(backend="inductor")``.

Every measurement is one fresh process with a fresh, empty inductor cache (``TORCHINDUCTOR_CACHE_DIR``
in a new temporary folder): a cold start, as a new server process on a new machine sees it. The
variants (plain, then each region kind) run as interleaved processes, ``--reps`` rounds. Each process
runs two 10-step generations (``FixedPolicy(interval=3, warmup=3)``: computes and forecasts, so the
forecast version is compiled too) and reports:

* **first call**: seconds of the first model call (dynamo + the backend + every eager inner compile);
* **first generation - second**: the extra seconds of the whole first generation over the second,
  i.e. every compile, the lazy ones included (the forecast version compiles at the first forecast
  step);
* **lazy**: what ``backend.compile_seconds()`` says was compiled after the first call;
* **recompiles**: graphs dynamo compiled during the second generation (must be 0).

Target (issue 11): first call through the backend <= 1.2 x plain, for ``stack`` and ``modules``.

    python benchmarks/compile_time.py                       # dit-384x6 and flux-tiny, 2 rounds
    python benchmarks/compile_time.py --models flux-tiny --reps 1

``benchmarks/speed.py`` runs it first and prints its table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

TARGET = 1.2
STEPS = 10
KINDS = ("stack", "modules")


def child(model_name: str, variant: str) -> dict:
    """One cold-start measurement in this process (called in a fresh process by :func:`measure`)."""
    import torch
    from common import MODELS, setup, sigmas
    from taylorseer_fx import FixedPolicy, taylorseer_backend

    setup(1)
    tm = MODELS[model_name]()
    backend = None
    if variant == "plain":
        model = torch.compile(tm.model, backend="inductor")
    else:
        backend = taylorseer_backend(FixedPolicy(interval=3, warmup=3), regions=variant, inner="inductor")
        model = torch.compile(tm.model, backend=backend)
    counters = torch._dynamo.utils.counters
    s, noise = sigmas(STEPS), tm.noise()
    gens, first = [], None
    for g in range(2):
        if g == 1:
            graphs_before = counters["stats"]["unique_graphs"]
        t0 = time.perf_counter()
        with torch.no_grad():
            x = noise.clone()
            for i in range(STEPS):
                v = tm.call(model, x, s[i])
                if first is None:
                    first = time.perf_counter() - t0
                x = x + (s[i + 1] - s[i]) * v
        gens.append(time.perf_counter() - t0)
    out = {"model": model_name, "variant": variant, "first_call_s": first, "gen1_s": gens[0], "gen2_s": gens[1],
           "recompiles": counters["stats"]["unique_graphs"] - graphs_before}
    if backend is not None:
        out["lazy_s"] = backend.compile_seconds()
        out["graphs"] = len(backend.graphs)
        out["forecast"] = backend.stats()["forecast"]
    return out


def measure(model_name: str, variant: str) -> dict:
    """:func:`child` in a fresh process with an empty inductor cache."""
    with tempfile.TemporaryDirectory(prefix="inductor-cold-") as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, TRITON_CACHE_DIR=os.path.join(cache, "triton"))
        code = (f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import compile_time; "
                f"print('RESULT ' + json.dumps(compile_time.child({model_name!r}, {variant!r})))")
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"{model_name}/{variant}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def run(model_names, kinds=KINDS, reps: int = 2, log=print) -> dict:
    """Interleaved cold-start processes; returns ``{"runs": [...], "rows": [...], "targets": [...]}``."""
    from common import med
    runs = []
    for name in model_names:
        for r in range(reps):
            for variant in ("plain",) + tuple(kinds):
                res = measure(name, variant)
                log(f"  [{name} round {r + 1}] {variant}: first call {res['first_call_s']:.1f} s, "
                    f"gen1 - gen2 {res['gen1_s'] - res['gen2_s']:.1f} s, recompiles {res['recompiles']}")
                runs.append(res)
    rows, targets = [], []
    for name in model_names:
        plain = [r for r in runs if r["model"] == name and r["variant"] == "plain"]
        p_first = med([r["first_call_s"] for r in plain])
        p_total = med([r["gen1_s"] - r["gen2_s"] for r in plain])
        rows.append({"model": name, "variant": "plain", "first_call_s": p_first, "first_ratio": 1.0,
                     "compile_s": p_total, "compile_ratio": 1.0, "lazy_s": 0.0,
                     "recompiles": max(r["recompiles"] for r in plain)})
        for kind in kinds:
            ours = [r for r in runs if r["model"] == name and r["variant"] == kind]
            first = med([r["first_call_s"] for r in ours])
            total = med([r["gen1_s"] - r["gen2_s"] for r in ours])
            lazy = med([sum(r["lazy_s"].values()) for r in ours])
            rec = max(r["recompiles"] for r in ours)
            rows.append({"model": name, "variant": kind, "first_call_s": first, "first_ratio": first / p_first,
                         "compile_s": total, "compile_ratio": total / p_total, "lazy_s": lazy, "recompiles": rec,
                         "forecast_steps": ours[0]["forecast"]})
            targets.append({"model": name, "regions": kind, "target": f"first call <= {TARGET} x plain",
                            "value": first / p_first, "ok": first / p_first <= TARGET and rec == 0})
    return {"runs": runs, "rows": rows, "targets": targets, "reps": reps, "steps": STEPS}


def format_rows(res: dict) -> str:
    from common import table
    return table(["model", "variant", "first call s", "x plain", "all compiles s", "x plain", "lazy s",
                  "recompiles (gen 2)"],
                 [[r["model"], r["variant"], r["first_call_s"], r["first_ratio"], r["compile_s"],
                   r["compile_ratio"], r["lazy_s"], r["recompiles"]] for r in res["rows"]],
                 title=f"Compile time, cold inductor cache, one process per measurement, median of "
                       f"{res['reps']} interleaved rounds (all compiles = first generation - second, "
                       f"{res['steps']} steps each; lazy = compiled after the first call)")


def main(argv=None) -> dict:
    from common import machine, table, write_json
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="dit-384x6,flux-tiny")
    ap.add_argument("--regions", default=",".join(KINDS))
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default="compile_time.json")
    args = ap.parse_args(argv)
    m = machine()
    print(f"commit {m['commit']} | {m['cpu']} ({m['cores']} cores), 1 torch thread, torch {m['torch']}")
    res = run(args.models.split(","), tuple(args.regions.split(",")), args.reps)
    print(format_rows(res))
    print(table(["model", "regions", "target", "value", "result"],
                [[t["model"], t["regions"], t["target"], t["value"], "PASS" if t["ok"] else "MISS"]
                 for t in res["targets"]]))
    res["machine"] = m
    path = write_json(args.out, {"benchmark": "compile_time", **res})
    print(f"wrote {path}")
    return res


if __name__ == "__main__":
    main()
