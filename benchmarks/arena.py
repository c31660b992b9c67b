"""The arena (issue 14): every cache method side by side at equal compute, on the trained diffusers Flux.

The shipped ``FluxTransformer2DModel`` (class-conditional digits, 2 dual + 4 single blocks) sampled by a
real ``FluxPipeline`` (FLUX.1's scheduler, true CFG 3: a cond and an uncond transformer call per step),
all samples in one pipeline call, the same labels and noise for every run:

* **uncached** (the reference of every error);
* **taylorseer_fx** (``compile_pipeline(pipe, policy=..., regions=..., inner=eager)``): fixed schedules
  (intervals, orders 1-2, taylor / newton, and on ``stack`` the heun and hermite forms; regions
  ``stack``, ``output``, ``modules``), the anchor
  presets, ``AutoPolicy`` thresholds and the auto presets;
* **diffusers** hooks (``pipe.transformer.enable_cache``): TaylorSeer (lite, attention, attention +
  feed-forward), First-Block-Cache, MagCache (calibrated on one uncached run of the same samples),
  PAB, FasterCache;
* **cache-dit** 1.5.3 (``cache_dit.enable_cache``): DBCache without calibrator, with the TaylorSeer,
  FoCa and DMD calibrators;
* **hicache-pp** 1.3.0 (HiCache Hermite, HiCache++ DMD), **SmoothCache** (dit-smoothcache 0.1.1,
  branch-aware) and **Spectrum (our implementation)** (Chebyshev ridge forecast):
  ``arena_forecast_peers.py``. A family whose package is missing is skipped with one line (cache-dit:
  error rows). Every peer run checks that the model's forwards (the transformer's, its modules', their
  classes') and ``FluxPipeline.__call__`` are back as before; what is not is put back and listed in the
  row's ``leaked``.

Per run: the **compute fraction** (transformer-block forwards executed / (blocks x calls) of the
uncached run; module-level methods -- ``modules``, diffusers' attention / attention+ff TaylorSeer, PAB,
FasterCache -- in attention + feed-forward forwards instead, their blocks' norms / modulation still run:
``arena_peers.py``), the final samples' relative L2 and PSNR against the uncached samples, the
classifier's accuracy and mean log-probability of the intended label, the Frechet distance of the
classifier's penultimate features to the uncached samples' (few samples: a rough indication only) and
the wall time (eager, one run, a shared VM: indicative). The classifier labels almost every sample
right, so the summary ranks by relative L2. Our compute fraction is counted like the peers' (from the
graphs that ran) and checked against the one ``handle.stats()`` gives.

    python benchmarks/arena.py                   # 40 samples, 28 and 50 steps, the full sweep
    python benchmarks/arena.py --quick           # 10 samples, 28 steps, a handful per family (< 3 min)
    python benchmarks/arena.py --families hicache,smooth,spectrum --out benchmarks/results/arena_new.json
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arena_forecast_peers import SETTINGS as FORECAST_SETTINGS, missing  # noqa: E402
from arena_peers import (AUTO_MAX_RUN, AUTO_THRESHOLDS, Counter, UNIT_RE, cache_dit_settings,  # noqa: E402,F401
                         counting_inner, diffusers_settings, forward_patches, magcache_ratios, ours_settings,
                         restore_patches)
from arena_summary import CFG, FAMILIES, TARGETS, _cell, _finite, best_at, fronts_of, pareto, plot, summarize  # noqa: E402,F401
from common import ROOT, _json_default, machine, setup, table  # noqa: E402

from taylorseer_fx import FixedPolicy, compile_pipeline  # noqa: E402
from taylorseer_fx.demo import metrics  # noqa: E402



class Arena:
    def __init__(self, samples: int, seed: int = 0):
        from taylorseer_fx.demo.flux_model import load_label_table, load_transformer
        from taylorseer_fx.demo.flux_pipeline import initial_noise
        from taylorseer_fx.demo.sampling import load_classifier

        self.base = load_transformer()
        self.table = load_label_table()
        self.clf = load_classifier()
        self.labels = torch.arange(samples) % 10
        self.noise = initial_noise(samples, seed)
        self.ref = {}
        self.den = {}
        self.leaked = []            # what the last run_peer had to put back

    def sample(self, pipe, steps):
        from taylorseer_fx.demo.flux_pipeline import sample
        t0 = time.perf_counter()
        x = sample(pipe, self.labels, num_steps=steps, cfg_scale=CFG, table=self.table, noise=self.noise)
        return x, time.perf_counter() - t0

    def run_peer(self, steps, enable, disable):
        """One run on a fresh instrumented copy of the model: (images, wall s, Counter)."""
        from diffusers import FluxPipeline
        from taylorseer_fx.demo.flux_pipeline import build_pipeline
        call = FluxPipeline.__call__
        counter = Counter()
        transformer = copy.deepcopy(self.base)
        counter.instrument(transformer)
        pipe = build_pipeline(transformer)
        before = forward_patches(transformer)
        try:
            enable(pipe)
            x, wall = self.sample(pipe, steps)
        finally:
            try:
                disable(pipe)
            except Exception:  # noqa: BLE001 - nothing was enabled
                pass
            self.leaked = [] if FluxPipeline.__call__ is call else ["FluxPipeline.__call__"]
            FluxPipeline.__call__ = call            # cache-dit patches the class; never leak it
            self.leaked += restore_patches(before)
        return x, wall, counter

    def evaluate(self, x, steps) -> dict:
        ref = self.ref[steps]
        logp = torch.log_softmax(self.clf(x), -1)[torch.arange(len(self.labels)), self.labels]
        return {"rel_l2": metrics.relative_l2(x, ref), "psnr_db": metrics.psnr(x, ref),
                "accuracy": metrics.classifier_accuracy(x, self.labels, self.clf), "logp": float(logp.mean()),
                "fd": metrics.frechet_distance(x, ref, self.clf) if len(self.labels) >= 2 else float("nan")}

    def fractions(self, counter, steps) -> dict:
        b, u = self.den[steps]
        return {"block_fraction": counter.blocks() / b, "module_fraction": counter.units() / u}


def select(spec: str | None) -> list[str]:
    """The families named by comma-separated case-insensitive prefixes (None: all), in FAMILIES order."""
    if not spec:
        return list(FAMILIES)
    out = set()
    for tok in filter(None, (t.strip().lower() for t in spec.split(","))):
        hit = [f for f in FAMILIES if f.lower().startswith(tok)]
        if len(hit) != 1:
            raise SystemExit(f"--families: {tok!r} matches {hit or 'none'} of {', '.join(FAMILIES)}")
        out.add(hit[0])
    return [f for f in FAMILIES if f in out]


def row(steps, family, method, setting, unit, **kw) -> dict:
    r = {"steps": steps, "family": family, "method": method, "setting": setting, "unit": unit,
         "compute_fraction": None, "rel_l2": None, "error": None}
    r.update(kw)
    if r.get("block_fraction") is not None and r["error"] is None:
        r["compute_fraction"] = r["module_fraction"] if unit == "attn+ff" else r["block_fraction"]
    return r


def err_row(steps, family, method, setting, unit, e) -> dict:
    msg = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    print(f"  [{family}] {method} {setting}: ERROR {msg}", flush=True)
    return row(steps, family, method, setting, unit, error=msg, trace=traceback.format_exc(limit=3)[-800:])


def run_ours(arena: Arena, steps: int, settings: dict, rows: list, log) -> dict:
    from taylorseer_fx.demo.flux_pipeline import build_pipeline
    info = {}
    for regions, group in settings.items():
        if not group:
            continue
        unit = "attn+ff" if regions == "modules" else "blocks"
        counter = Counter()
        pipe = build_pipeline(copy.deepcopy(arena.base))
        handle = None
        try:
            torch._dynamo.reset()
            handle = compile_pipeline(pipe, policy=FixedPolicy(interval=2), regions=regions,
                                      inner=counting_inner(counter))
            arena.sample(pipe, steps)               # compiles both graphs (not timed)
            be = handle.backends["transformer"]
            info[regions] = be.graphs[-1]["regions"]
        except Exception as e:  # noqa: BLE001
            rows += [err_row(steps, "taylorseer_fx", m, s, unit, e) for m, s, _ in group]
            if handle is not None:
                handle.remove()
            continue
        for method, setting, policy in group:
            try:
                be.policy = policy
                handle.reset()
                counter.clear()
                x, wall = arena.sample(pipe, steps)
                st = handle.stats()["transformer"]
                comp = sum(v["compute"] for v in st["regions"].values())
                tot = sum(v["compute"] + v["forecast"] for v in st["regions"].values())
                r = row(steps, "taylorseer_fx", method, setting, unit, regions=regions, wall_s=wall,
                        stats_fraction=comp / tot, computed_steps=st["compute"], **arena.fractions(counter, steps),
                        **arena.evaluate(x, steps))
                rows.append(r)
                log(r)
            except Exception as e:  # noqa: BLE001
                rows.append(err_row(steps, "taylorseer_fx", method, setting, unit, e))
        handle.remove()
    return info


def run_peers(arena: Arena, steps: int, family: str, settings: list, rows: list, log) -> None:
    for method, setting, unit, enable, disable in settings:
        try:
            x, wall, counter = arena.run_peer(steps, enable, disable)
            r = row(steps, family, method, setting, unit, wall_s=wall, **arena.fractions(counter, steps),
                    **arena.evaluate(x, steps), leaked=sorted(set(arena.leaked)) or None)
            rows.append(r)
            log(r)
            if arena.leaked:
                print(f"  [{family}] {method} {setting}: left patched (put back): {r['leaked']}", flush=True)
        except Exception as e:  # noqa: BLE001
            rows.append(err_row(steps, family, method, setting, unit, e))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="28 steps, 10 samples, a handful of settings per family")
    ap.add_argument("--samples", type=int, default=None, help="samples (labels 0..9 in turn; default 40, quick 10)")
    ap.add_argument("--steps", default=None, help="comma-separated step counts (default 28,50; quick 28)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/arena.json; quick: arena_quick.json)")
    ap.add_argument("--png", default=None, help="plot path (default docs/arena.png; quick: none)")
    ap.add_argument("--families", default=None, help="comma-separated prefixes of the families to run (case-insensitive; "
                    f"default all: {', '.join(FAMILIES)}); the uncached reference always runs")
    args = ap.parse_args(argv)
    families = select(args.families)
    setup(1)
    import diffusers
    diffusers.utils.logging.set_verbosity_error()
    samples = args.samples or (10 if args.quick else 40)
    steps_list = [int(s) for s in (args.steps or ("28" if args.quick else "28,50")).split(",")]
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / ("arena_quick.json" if args.quick else "arena.json")
    png = Path(args.png) if args.png else (None if args.quick else ROOT / "docs" / "arena.png")
    t_start = time.perf_counter()
    mch = machine()
    try:
        import cache_dit
        mch["cache_dit"] = cache_dit.__version__
    except ImportError:
        mch["cache_dit"] = None
    for dist in ("hicache-pp", "dit-smoothcache"):
        try:
            mch[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            mch[dist] = None
    print(f"machine: {mch['cpu']} ({mch['cores']} cores), {mch['threads']} torch thread, torch {mch['torch']}, "
          f"diffusers {mch['diffusers']}, cache-dit {mch['cache_dit']}, hicache-pp {mch['hicache-pp']}, "
          f"dit-smoothcache {mch['dit-smoothcache']}, commit {mch['commit']}", flush=True)
    skipped = {f: why for f in families if (why := missing(f))}
    for f, why in skipped.items():
        print(f"[{f}] skipped: {why}", flush=True)
    arena = Arena(samples)
    rows, regions_info = [], {}

    def log(r):
        print(f"  [{r['family']}] {r['method']} {r['setting']}: compute {r['compute_fraction']:.3f} ({r['unit']}), "
              f"rel L2 {r['rel_l2']:.4f}, acc {r['accuracy']:.2f}, {r['wall_s']:.1f} s", flush=True)
    for steps in steps_list:
        print(f"\n== {steps} steps, {samples} samples", flush=True)
        arena.run_peer(steps, lambda p: None, lambda p: None)  # warm-up: the first call pays one-time costs
        x, wall, counter = arena.run_peer(steps, lambda p: None, lambda p: None)
        arena.ref[steps] = x
        arena.den[steps] = (counter.blocks(), counter.units())
        rows.append(row(steps, "uncached", "uncached", "-", "blocks", wall_s=wall, block_fraction=1.0,
                        module_fraction=1.0, **arena.evaluate(x, steps)))
        log(rows[-1])
        if "taylorseer_fx" in families:
            regions_info[steps] = run_ours(arena, steps, ours_settings(args.quick), rows, log)
        ratios = {}

        def mag():
            if "r" not in ratios:
                ratios["r"] = magcache_ratios(arena, steps)
            return ratios["r"]
        peers = dict(FORECAST_SETTINGS, **{"diffusers": lambda s, q: diffusers_settings(s, q, mag),
                                           "cache-dit": cache_dit_settings})
        for f in families:
            if f != "taylorseer_fx" and f not in skipped:
                run_peers(arena, steps, f, peers[f](steps, args.quick), rows, log)
        if "r" in ratios:
            regions_info[f"magcache_ratios_{steps}"] = ratios["r"]
    for r in rows:
        if r["rel_l2"] is not None:
            r["speedup"] = next(u["wall_s"] for u in rows if u["family"] == "uncached" and u["steps"] == r["steps"]) / r["wall_s"]

    ours = [r for r in rows if r["family"] == "taylorseer_fx" and r["error"] is None]
    case = next((r for r in ours if r["method"] == "fixed stack"), None)
    diffs = [abs(r["compute_fraction"] - r["stats_fraction"]) for r in ours]
    verification = {"case": None if case is None else f"{case['steps']} steps, {case['method']}: {case['setting']}",
                    "counted": None if case is None else case["compute_fraction"],
                    "stats": None if case is None else case["stats_fraction"],
                    "agree": case is not None and abs(case["compute_fraction"] - case["stats_fraction"]) < 1e-9,
                    "max_abs_diff_all_ours": max(diffs) if diffs else None}
    module_regions = next((v.get("modules") for v in regions_info.values() if isinstance(v, dict) and v.get("modules")), None)
    fronts = fronts_of(rows, steps_list)
    summary = summarize(rows, steps_list)

    # ---- print -------------------------------------------------------------------------------------------
    print(f"\nmachine: {mch['cpu']} ({mch['cores']} cores), {mch['threads']} torch thread; torch {mch['torch']}, "
          f"diffusers {mch['diffusers']}, cache-dit {mch['cache_dit']}, hicache-pp {mch['hicache-pp']}, dit-smoothcache "
          f"{mch['dit-smoothcache']}; commit {mch['commit']}; {samples} samples, true CFG {CFG:g}; errors: relative L2 "
          f"of the final samples vs uncached")
    if case is not None:
        print(f"verification (ours, {verification['case']}): counted compute fraction {verification['counted']}, "
              f"from handle.stats() {verification['stats']}: {'agree' if verification['agree'] else 'DISAGREE'}; "
              f"max |counted - stats| over all our runs {verification['max_abs_diff_all_ours']}")
    if module_regions is not None and sorted(module_regions) != sorted(filter(UNIT_RE.match, module_regions)):
        print(f"WARNING: regions='modules' selected {module_regions}, not the counted units")
    ran = [f for f in FAMILIES if f in families and f not in skipped]
    keys = ran[:1] + ["auto"] + ran[1:] if ran[:1] == ["taylorseer_fx"] else ran
    print(table(["steps", "target", *("taylorseer_fx auto" if k == "auto" else k for k in keys), "auto / best peer",
                 "ours best / best peer"],
                [[s["steps"], f"<= {s['target']}", *(_cell(s[k]) for k in keys), s["auto_over_best_peer"],
                  s["ours_over_best_peer"]] for s in summary],
                title="Summary: best relative L2 at compute fraction <= target (value @ fraction (method: setting))"))
    cols = ["method", "setting", "unit", "compute", "rel L2", "PSNR dB", "acc", "log p", "FD", "wall s", "x uncached"]

    def line(r):
        return [r["method"], r["setting"], r["unit"], r["compute_fraction"], r["rel_l2"], r["psnr_db"], r["accuracy"],
                r["logp"], r["fd"], r["wall_s"], r["speedup"]]
    for s in steps_list:
        base = [r for r in rows if r["steps"] == s and r["family"] == "uncached"]
        print(table(cols, [line(r) for r in base], title=f"{s} steps: uncached"))
        for f in ran:
            print(table(cols, [line(r) for r in pareto([r for r in rows if r["steps"] == s and r["family"] == f])],
                        title=f"{s} steps: Pareto front of {f}"))
    errs = [r for r in rows if r["error"]]
    if errs:
        print(table(["steps", "family", "method", "setting", "error"],
                    [[r["steps"], r["family"], r["method"], r["setting"], r["error"]] for r in errs], title="Failed runs"))
    if png is not None:
        plot(rows, steps_list, png, samples)
        print(f"\nwrote {png}")
    result = {"benchmark": "arena", "machine": mch, "samples": samples, "steps": steps_list, "cfg": CFG,
              "quick": args.quick, "targets": list(TARGETS), "families": families, "skipped": skipped,
              "verification": verification,
              "module_units": "dual blocks: attn, ff, ff_context; single blocks: attn, proj_mlp",
              "regions": {str(k): v for k, v in regions_info.items()}, "summary": summary, "fronts": fronts,
              "rows": rows, "wall_s": time.perf_counter() - t_start}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(result), indent=1, default=_json_default) + "\n")
    print(f"wrote {out} ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
