"""taylorseer_fx side by side with diffusers' own TaylorSeer hook (issue 5's peer benchmark).

The tiny Flux of ``examples/flux_tiny.py`` (random weights), a 28-step flow-matching Euler loop from
fixed noise, run:

* **uncached** (the reference for the error): eager, ``torch.compile(backend="eager")`` and
  ``torch.compile`` with inductor;
* **diffusers** ``TaylorSeerCacheConfig`` through ``model.enable_cache(config)`` (every call wrapped in
  ``model.cache_context("cond")`` as diffusers pipelines do; ``model._reset_stateful_cache()`` between
  runs), eager and under ``torch.compile`` (inductor);
* **taylorseer_fx** with ``FixedPolicy.diffusers(cache_interval=, disable_cache_before_step=,
  max_order=)`` -- diffusers' step pattern and its taylor recursion -- compiled with the inner backend
  ``eager`` and ``inductor``;

at an equal number of full computes, for three region pairs:

============  =========================================  ==========================================
pair          diffusers                                  taylorseer_fx
============  =========================================  ==========================================
``attn``      default: the blocks' attention modules      the same modules, by regex
``modules``   ``cache_identifiers`` = our module regions  ``regions="modules"`` (attention + MLPs)
``lite``      ``use_lite_mode``: blocks return zeros,     ``regions="stack"``: the stack's output is
              ``proj_out``'s output is forecast           forecast, norm_out/proj_out run
============  =========================================  ==========================================

``attn`` and ``modules`` select the same modules on both sides, so the two errors must agree (to float
rounding); ``lite`` vs ``stack`` differ by design. diffusers stores factors in bfloat16 by default; the
comparison uses float32 (``taylor_factors_dtype=torch.float32``, ours is float32), and one extra row
shows the default.

    python benchmarks/peers.py            # ~5 min on a 2-core VM (diffusers under compile: ~40 s per hook set)
    python benchmarks/peers.py --quick    # one config, eager only, fewer repetitions

Under ``torch.compile`` the diffusers hook graph-breaks at its ``@torch.compiler.disable`` pieces
(``_measure_should_compute`` and ``predict``); the break inside Flux's block loop makes dynamo skip the
model's ``forward`` frame and compile each block separately. The schedule parameters
(``cache_interval``, ``disable_cache_before_step``) are only read inside the disabled function, so the
benchmark changes them on the hooks in place instead of recompiling; its errors are checked against the
eager hook's.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (Clock, euler, interleave, iqr_rel, machine, make_flux_tiny, med, rel_l2, setup,  # noqa: E402
                    table, write_json)

from taylorseer_fx import FixedPolicy, taylorseer_backend  # noqa: E402

STEPS = 28
ATTN_REGEX = r"(single_)?transformer_blocks\.\d+\.attn"   # diffusers' default hook set on Flux


def diffusers_compute_steps(num_steps: int, interval: int, before: int, after=None) -> list[int]:
    """diffusers ``TaylorSeerCacheHook._measure_should_compute``, transcribed."""
    return [s for s in range(num_steps)
            if s < before or (s - before - 1) % interval == 0 or (after is not None and s >= after)]


def hooked_names(model) -> list[str]:
    from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK
    return [n for n, m in model.named_modules()
            if getattr(m, "_diffusers_hook", None) is not None and _TAYLORSEER_CACHE_HOOK in m._diffusers_hook.hooks]


def hooks_of(model) -> list:
    from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK
    return [m._diffusers_hook.hooks[_TAYLORSEER_CACHE_HOOK] for n, m in model.named_modules()
            if getattr(m, "_diffusers_hook", None) is not None and _TAYLORSEER_CACHE_HOOK in m._diffusers_hook.hooks]


def set_schedule(model, interval: int, before: int) -> None:
    """Change the schedule of every TaylorSeer hook in place (read only in a compiler-disabled function)."""
    for h in hooks_of(model):
        h.cache_interval = interval
        h.disable_cache_before_step = before


def isolate_forward(model) -> None:
    """Give ``model`` its own copy of its class's ``forward`` code object.

    Under ``torch.compile`` the hook's graph break inside Flux's block loop makes dynamo skip the frame;
    that decision is stored on the code object, which every instance of the class shares (and the
    ``apply_lora_scale`` wrapper's code, which most diffusers models share). Without this copy, every
    other Flux compiled afterwards in the process -- plain inductor and taylorseer_fx included -- is
    traced per block instead of as one graph."""
    import types
    f = type(model).forward
    g = types.FunctionType(f.__code__.replace(), f.__globals__, f.__name__, f.__defaults__, f.__closure__)
    g.__kwdefaults__ = f.__kwdefaults__
    g.__dict__.update(f.__dict__)
    model.forward = types.MethodType(g, model)


class UpdateCounter:
    """Counts ``TaylorSeerState.update`` calls (one per hooked module and full compute) in eager runs."""

    def __enter__(self):
        from diffusers.hooks.taylorseer_cache import TaylorSeerState
        self.cls, self.orig, self.n = TaylorSeerState, TaylorSeerState.update, 0

        def update(state, outputs):
            self.n += 1
            return self.orig(state, outputs)
        TaylorSeerState.update = update
        return self

    def __exit__(self, *exc):
        self.cls.update = self.orig


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one config, eager only, fewer repetitions")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions of each loop (median reported)")
    ap.add_argument("--out", default=None, help="JSON file name under benchmarks/results/")
    args = ap.parse_args(argv)
    setup(1)
    from diffusers import TaylorSeerCacheConfig

    # Several compiled variants of one model class live side by side (each its own cache entry).
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)

    reps = args.reps or (3 if args.quick else 15)
    configs = [(5, 3, 1)] if args.quick else [(3, 3, 1), (5, 3, 1)]   # (cache_interval, before, max_order)
    modes = ["eager"] if args.quick else ["eager", "compiled"]
    pairs = ["attn", "modules", "lite"]
    t_start = time.perf_counter()

    tm = make_flux_tiny()
    noise = tm.noise()
    base = tm.model

    # ---- our backends (one compile per region kind and inner backend; the policy is swapped) -----------
    ours_regions = {"attn": ATTN_REGEX, "modules": "modules", "lite": "stack"}
    inner_of = {"eager": "eager", "compiled": "inductor"}
    ours = {}
    print("compiling taylorseer_fx backends ...", flush=True)
    for mode in modes:
        for pair in pairs:
            be = taylorseer_backend(policy=FixedPolicy.diffusers(), regions=ours_regions[pair], inner=inner_of[mode])
            model = torch.compile(base, backend=be)
            euler(tm, model, noise, 2)
            ours[(mode, pair)] = (be, model)
    module_regions = ours[(modes[0], "modules")][0].graphs[-1]["regions"]
    attn_regions = ours[(modes[0], "attn")][0].graphs[-1]["regions"]

    # ---- diffusers: one hooked copy per region pair ----------------------------------------------------
    def dcfg(pair, interval, before, order, dtype=torch.float32):
        kw = dict(cache_interval=interval, disable_cache_before_step=before, max_order=order,
                  taylor_factors_dtype=dtype)
        if pair == "modules":
            kw["cache_identifiers"] = [re.escape(n) for n in module_regions]
        if pair == "lite":
            kw["use_lite_mode"] = True
        return TaylorSeerCacheConfig(**kw)

    hooked = {}
    for pair in pairs:
        m = copy.deepcopy(base)
        m.enable_cache(dcfg(pair, *configs[0]))
        if "" in hooked_names(m):
            raise AssertionError("a hook on the root module: isolate_forward would drop it")
        isolate_forward(m)
        hooked[pair] = m
    selection = {pair: {"diffusers": hooked_names(hooked[pair]),
                        "taylorseer_fx": ours[(modes[0], pair)][0].graphs[-1]["regions"]} for pair in pairs}
    for pair in ("attn", "modules"):
        if sorted(selection[pair]["diffusers"]) != sorted(selection[pair]["taylorseer_fx"]):
            raise AssertionError(f"{pair}: module sets differ: {selection[pair]}")
    assert sorted(attn_regions) == sorted(selection["attn"]["diffusers"])

    def run_diffusers(m):
        m._reset_stateful_cache()
        clock = Clock()
        out = euler(tm, m, noise, STEPS, before_call=lambda i: m.cache_context("cond"))
        t = clock.stop()
        m._reset_stateful_cache()
        return out, t

    # ---- references and the eager validation of diffusers' step count --------------------------------
    ref = euler(tm, base, noise, STEPS)
    counts = {}
    for cfg in configs:
        for pair in pairs:
            set_schedule(hooked[pair], cfg[0], cfg[1])
            with UpdateCounter() as c:
                run_diffusers(hooked[pair])
            counts[(cfg, pair)] = c.n / len(hooks_of(hooked[pair]))
            want = len(diffusers_compute_steps(STEPS, cfg[0], cfg[1]))
            ours_want = len(FixedPolicy.diffusers(cache_interval=cfg[0], disable_cache_before_step=cfg[1],
                                                  max_order=cfg[2]).compute_steps(STEPS))
            if not counts[(cfg, pair)] == want == ours_want:
                raise AssertionError(f"{cfg} {pair}: diffusers computed {counts[(cfg, pair)]}, formula {want}, "
                                     f"FixedPolicy.diffusers {ours_want}")

    compiled_hooked, compile_info = {}, {}
    plain = {}
    if "compiled" in modes:
        print("compiling uncached inductor and diffusers-hooked models (graph breaks: slow) ...", flush=True)
        plain["compiled"] = torch.compile(base)
        euler(tm, plain["compiled"], noise, 2)
        from torch._dynamo.utils import counters
        for pair in pairs:
            counters.clear()
            clock = Clock()
            compiled_hooked[pair] = torch.compile(hooked[pair])
            set_schedule(hooked[pair], configs[0][0], configs[0][1])
            run_diffusers(compiled_hooked[pair])
            breaks = sum(counters["graph_break"].values())
            compile_info[pair] = {"first_run_s": clock.stop()[0], "graph_breaks": breaks,
                                  "unique_graphs": counters["stats"]["unique_graphs"],
                                  "break_reasons": sorted({k.splitlines()[0] for k in counters["graph_break"]})}
            print(f"  diffusers {pair}: first run {compile_info[pair]['first_run_s']:.0f} s, "
                  f"{compile_info[pair]['unique_graphs']} graphs, {breaks} graph breaks", flush=True)
    plain["eager-dynamo"] = torch.compile(base, backend="eager")
    euler(tm, plain["eager-dynamo"], noise, 2)

    # ---- timed, interleaved -------------------------------------------------------------------------------
    rows = []
    for cfg in configs:
        interval, before, order = cfg
        if order != configs[0][2]:
            raise AssertionError("the hooks are built once, with the max_order of the first config")
        pol = FixedPolicy.diffusers(cache_interval=interval, disable_cache_before_step=before, max_order=order)
        outs, stats = {}, {}
        variants = {}

        def v_plain(key, model):
            def f():
                clock = Clock()
                outs[key] = euler(tm, model, noise, STEPS)
                return clock.stop()
            return f
        variants[("eager", "uncached", "-")] = v_plain(("eager", "uncached", "-"), base)
        variants[("eager", "uncached (dynamo eager)", "-")] = v_plain(("eager", "uncached (dynamo eager)", "-"),
                                                                      plain["eager-dynamo"])
        if "compiled" in modes:
            variants[("compiled", "uncached", "-")] = v_plain(("compiled", "uncached", "-"), plain["compiled"])
        for mode in modes:
            for pair in pairs:
                def v_d(key, m=hooked[pair] if mode == "eager" else compiled_hooked[pair], h=hooked[pair]):
                    def f():
                        set_schedule(h, interval, before)
                        outs[key], t = run_diffusers(m)
                        return t
                    return f

                def v_o(key, be=ours[(mode, pair)][0], m=ours[(mode, pair)][1]):
                    def f():
                        be.policy = pol
                        be.reset()
                        clock = Clock()
                        outs[key] = euler(tm, m, noise, STEPS)
                        t = clock.stop()
                        stats[key] = be.stats()
                        return t
                    return f
                kd, ko = (mode, "diffusers", pair), (mode, "taylorseer_fx", pair)
                variants[kd] = v_d(kd)
                variants[ko] = v_o(ko)
        times = interleave(variants, reps)
        want = len(pol.compute_steps(STEPS))
        for key, tv in times.items():
            mode, method, pair = key
            if method == "taylorseer_fx":
                if stats[key]["compute"] != want:
                    raise AssertionError(f"{key}: {stats[key]['compute']} computes, expected {want}")
            computes = STEPS if method.startswith("uncached") else want
            t, tc = med(tv["wall"]), med(tv["cpu"])
            # x uncached: median over rounds of variant / uncached (same mode) timed in the same round
            bw, bc = times[(mode, "uncached", "-")]["wall"], times[(mode, "uncached", "-")]["cpu"]
            x_w = med([a / b for a, b in zip(tv["wall"], bw)])
            x_c = med([a / b for a, b in zip(tv["cpu"], bc)])
            rows.append({
                "config": f"interval {interval}, before {before}, order {order}", "cache_interval": interval,
                "disable_cache_before_step": before, "max_order": order, "mode": mode, "method": method,
                "regions": pair, "diffusers_regions": "-" if pair == "-" else
                ("lite (blocks zeros, proj_out forecast)" if pair == "lite" else pair),
                "taylorseer_regions": "-" if pair == "-" else ours_regions[pair],
                "computes": computes, "steps": STEPS, "wall_s": t, "cpu_s": tc,
                "x_uncached": x_w, "cpu_x_uncached": x_c,
                "noise_iqr_rel": iqr_rel(tv["wall"]), "rel_l2": rel_l2(outs[key], ref),
            })
        # the default factor dtype of diffusers (bfloat16), eager, the same schedule
        for pair in ("attn", "lite"):
            m = copy.deepcopy(base)
            m.enable_cache(dcfg(pair, interval, before, order, dtype=torch.bfloat16))
            out, _ = run_diffusers(m)
            rows.append({"config": f"interval {interval}, before {before}, order {order}", "cache_interval": interval,
                         "disable_cache_before_step": before, "max_order": order, "mode": "eager",
                         "method": "diffusers (bf16 factors, its default)", "regions": pair,
                         "computes": want, "steps": STEPS, "wall_s": None, "x_uncached": None,
                         "rel_l2": rel_l2(out, ref)})
            del m

    # our backends must each have seen the model as one graph (no leak of dynamo's frame skip)
    for key, (be, _) in ours.items():
        if len(be.graphs) != 1 or be.stats()["uncached_calls"]:
            raise AssertionError(f"taylorseer_fx {key}: {len(be.graphs)} graphs, "
                                 f"{be.stats()['uncached_calls']} uncached calls (expected one graph)")

    # the compiled diffusers hook must follow the same schedule as the eager one
    checks = []
    if "compiled" in modes:
        for r in rows:
            if r["mode"] == "compiled" and r["method"] == "diffusers":
                e = next(x for x in rows if x["mode"] == "eager" and x["method"] == "diffusers"
                         and x["regions"] == r["regions"] and x["config"] == r["config"])
                ok = abs(r["rel_l2"] - e["rel_l2"]) <= 1e-3 * max(e["rel_l2"], 1e-6) + 1e-6
                checks.append({"config": r["config"], "regions": r["regions"], "eager": e["rel_l2"],
                               "compiled": r["rel_l2"], "ok": ok})
                if not ok:
                    print(f"WARNING: compiled diffusers {r['regions']} {r['config']}: error {r['rel_l2']:.3e} "
                          f"!= eager {e['rel_l2']:.3e}")

    result = {"benchmark": "peers", "machine": machine(), "model": tm.describe, "steps": STEPS, "reps": reps,
              "quick": args.quick, "selection": selection, "diffusers_compile": compile_info,
              "compiled_vs_eager_checks": checks, "rows": rows, "wall_s": time.perf_counter() - t_start}

    mch = result["machine"]
    print(f"\nmachine: {mch['cpu']} ({mch['cores']} cores), {mch['threads']} torch thread, torch {mch['torch']}, "
          f"diffusers {mch['diffusers']}; {tm.describe}; {STEPS}-step Euler; median of {reps}")
    print(table(["pair", "diffusers hooks", "taylorseer_fx regions"],
                [[p, ", ".join(selection[p]["diffusers"]), ", ".join(selection[p]["taylorseer_fx"])] for p in pairs],
                title="Region pairs"))
    order_key = {"uncached": 0, "uncached (dynamo eager)": 1, "diffusers": 2, "taylorseer_fx": 3,
                 "diffusers (bf16 factors, its default)": 4}
    for cfg in configs:
        name = f"interval {cfg[0]}, before {cfg[1]}, order {cfg[2]}"
        sel = sorted((r for r in rows if r["config"] == name),
                     key=lambda r: (modes.index(r["mode"]), (["-"] + pairs).index(r["regions"]),
                                    order_key[r["method"]]))
        print(table(["mode", "regions", "method", "computes", "wall s", "x uncached", "x uncached (cpu)",
                     "rel L2 vs uncached"],
                    [[r["mode"], r["regions"], r["method"], f"{r['computes']}/{r['steps']}", r["wall_s"],
                      r["x_uncached"], r.get("cpu_x_uncached"), r["rel_l2"]] for r in sel],
                    title=f"diffusers TaylorSeerCacheConfig(cache_interval={cfg[0]}, disable_cache_before_step="
                          f"{cfg[1]}, max_order={cfg[2]}, taylor_factors_dtype=float32) vs "
                          f"FixedPolicy.diffusers(same)"))
    if compile_info:
        print(table(["diffusers pair", "first run (compile) s", "graphs", "graph breaks", "break reasons"],
                    [[p, d["first_run_s"], d["unique_graphs"], d["graph_breaks"], "; ".join(d["break_reasons"])]
                     for p, d in compile_info.items()], title="diffusers hook under torch.compile (inductor)"))
    path = write_json(args.out or ("peers_quick.json" if args.quick else "peers.json"), result)
    print(f"\nwrote {path} ({result['wall_s']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
