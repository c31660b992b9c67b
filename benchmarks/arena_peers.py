"""What ``arena.py`` needs besides the metrics: compute counting and the peers' settings.

* :class:`Counter` counts the transformer-block forwards and the attention / feed-forward forwards
  that actually ran. On a peer's model (eager) it wraps the instance ``forward`` of each block's first
  norm (``norm1`` / ``norm``: it runs iff the block runs) and of each unit (below) *before* the peer
  installs its hooks, so a peer that skips a module (diffusers' hooks keep the wrapped ``forward`` as
  the original and call it only when they compute; cache-dit calls only the blocks it computes) is
  not counted. On our compiled model Python wrappers would be traced into the graph, so
  :func:`counting_inner` wraps the inner ``eager`` backend instead: every graph the backend runs
  counts, per call, the blocks and units that have call nodes in it (``nn_module_stack``).
* **Units** (:data:`UNITS`): the modules ``regions="modules"`` forecasts on this Flux -- dual blocks'
  ``attn``, ``ff``, ``ff_context``, single blocks' ``attn``, ``proj_mlp``. Module-level methods are
  measured in units: the blocks' norms / modulation and the single blocks' ``proj_out`` still run.
* The settings: ours (:func:`ours_settings`, regions -> ``(method, setting, policy)``), diffusers hooks
  (``transformer.enable_cache``) and cache-dit (``cache_dit.enable_cache``), each a ``(method, setting,
  unit, enable, disable)`` tuple (the forecasting peers: ``arena_forecast_peers.py``).
* :func:`forward_patches` / :func:`restore_patches`: what a peer left patched on the model's forwards.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
from collections import Counter as _Counter

import torch

from taylorseer_fx import AutoPolicy, FixedPolicy, load_policy

os.environ.setdefault("CACHE_DIT_LOG_LEVEL", "error")

BLOCK_RE = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)$")
UNIT_RE = re.compile(r"^(transformer_blocks\.\d+\.(attn|ff|ff_context)|single_transformer_blocks\.\d+\.(attn|proj_mlp))$")
#: the same set as a diffusers identifier (re.fullmatch)
UNITS = UNIT_RE.pattern[2:-2]


class Counter:
    """Block and unit forwards counted; ``blocks()`` / ``units()`` are totals since ``clear()``."""

    def __init__(self):
        self.c = _Counter()

    def clear(self):
        self.c.clear()

    def blocks(self) -> int:
        return sum(v for k, v in self.c.items() if BLOCK_RE.match(k))

    def units(self) -> int:
        return sum(v for k, v in self.c.items() if UNIT_RE.match(k))

    def instrument(self, transformer) -> "Counter":
        """Wrap the instance forwards of the blocks' first norms and of the units (eager peers)."""
        for name, m in transformer.named_modules():
            parent, _, leaf = name.rpartition(".")
            key = parent if BLOCK_RE.match(parent) and leaf in ("norm1", "norm") else name if UNIT_RE.match(name) else None
            if key is None:
                continue
            f = m.forward

            @functools.wraps(f)
            def counted(*a, _f=f, _k=key, **k):
                self.c[_k] += 1
                return _f(*a, **k)
            m.forward = counted
        return self


def _norm_path(p: str) -> str:
    p = re.sub(r"__dict__\['_modules'\]\['([^']+)'\]", r"\1", p)
    p = re.sub(r"\[(\d+)\]", r".\1", p).replace("L['self'].", "")
    return re.sub(r"^L\['self'\]\.?", "", p)


def counting_inner(counter: Counter):
    """The ``eager`` inner backend, counting per call the blocks / units with call nodes in the graph."""
    def inner(gm, example_inputs):
        keys = set()
        for n in gm.graph.nodes:
            if n.op not in ("call_function", "call_method", "call_module"):
                continue
            for path, _cls in (n.meta.get("nn_module_stack") or {}).values():
                p = _norm_path(path)
                if BLOCK_RE.match(p) or UNIT_RE.match(p):
                    keys.add(p)
        f = gm.forward

        def run(*args):
            for k in keys:
                counter.c[k] += 1
            return f(*args)
        return run
    return inner


def forward_patches(model) -> dict:
    """The instance ``forward`` of every module of ``model`` (None: none) and each module class's own."""
    mods = {m: m.__dict__.get("forward") for m in model.modules()}
    return {"modules": mods, "classes": {c: vars(c).get("forward") for c in {type(m) for m in mods}}}


def restore_patches(before: dict) -> list[str]:
    """Put back what differs from :func:`forward_patches`'s ``before``; returns what that was. A bound
    class forward left as an instance attribute (diffusers' hooks leave them) counts as restored."""
    out = []
    for c, f in before["classes"].items():
        if vars(c).get("forward") is not f:
            out.append(f"{c.__name__}.forward")
            setattr(c, "forward", f)
    for m, f in before["modules"].items():
        g = m.__dict__.get("forward")
        if g is not f and not (f is None and getattr(g, "__func__", None) is type(m).forward
                               and getattr(g, "__self__", None) is m):
            out.append(f"{type(m).__name__}.forward (instance)")
            if f is None:
                del m.forward
            else:
                m.forward = f
    return out


# ------------------------------------------------------------------------------------------ ours

#: the AutoPolicy thresholds of the full sweep (regions stack) and every auto row's max_forecast_run
AUTO_THRESHOLDS = (0.05, 0.06, 0.08, 0.1, 0.12, 0.14, 0.16, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)
AUTO_MAX_RUN = 10


def ours_settings(quick: bool) -> dict[str, list[tuple]]:
    """regions -> [(method, setting, policy)]."""
    full = not quick
    out: dict[str, list] = {"stack": [], "output": [], "modules": []}

    def fixed(regions, intervals, orders, forms):
        for i in intervals:
            for o in orders:
                for f in forms:
                    out[regions].append((f"fixed {regions}", f"interval {i}, order {o}, {f}",
                                         FixedPolicy(interval=i, order=o, form=f)))
    fixed("stack", [3], [1], ["taylor"])               # first: the verification case
    if full:
        fixed("stack", [2, 4, 5, 6, 8], [1], ["taylor"])
        fixed("stack", [2, 3, 4, 5, 6, 8], [2], ["taylor"])
        fixed("stack", [2, 3, 4, 5, 6, 8], [1, 2], ["newton"])
        fixed("stack", [3, 4, 5, 6], [2], ["heun"])
        fixed("stack", [3, 4, 5, 6, 8], [1, 2], ["hermite"])
        for i in [3, 4, 5, 6, 8]:        # from a warm-up of one step: the step-recursion forms need one point
            for o in [1, 2]:
                for f in ["hermite", "taylor"]:
                    out["stack"].append(("fixed stack", f"interval {i}, order {o}, {f}, warm-up 1",
                                         FixedPolicy(interval=i, order=o, form=f, warmup=1)))
        out["stack"].append(("fixed stack", "interval 1 (never forecast: our overhead)", FixedPolicy(interval=1)))
    else:
        fixed("stack", [4], [2], ["newton"])
    fixed("output", [2, 3, 4, 6] if full else [3], [1, 2] if full else [1], ["taylor", "newton"] if full else ["taylor"])
    fixed("modules", [2, 3, 4, 6] if full else [3], [1, 2] if full else [1], ["taylor"])
    for name in ["official-flux", "openvino-lite", "diffusers-default"] if full else ["official-flux"]:
        out["stack"].append(("anchor preset", f"{name} (stack)", load_policy(name)))
    for name in ["openvino-lite", "diffusers-default"] if full else []:
        out["output"].append(("anchor preset", f"{name} (output)", load_policy(name)))
    for t in AUTO_THRESHOLDS if full else []:
        out["stack"].append(("auto", f"threshold {t} (stack)", AutoPolicy(threshold=t, max_forecast_run=AUTO_MAX_RUN)))
    for t in [0.06, 0.1, 0.18, 0.35] if full else []:   # the previous rule (each step's own estimate)
        out["stack"].append(("auto, per step (v2.1)", f"threshold {t} (stack)",
                             AutoPolicy(threshold=t, max_forecast_run=AUTO_MAX_RUN, accumulate="step")))
    for name in ["auto-quality", "auto-balanced", "auto-fast"] if full else ["auto-balanced", "auto-fast"]:
        out["stack"].append(("auto", f"{name} (stack)", load_policy(name)))
    for t in [0.08, 0.12, 0.2, 0.3] if full else []:
        out["output"].append(("auto", f"threshold {t} (output)", AutoPolicy(threshold=t, max_forecast_run=AUTO_MAX_RUN)))
    if full:
        out["output"].append(("auto", "auto-balanced (output)", load_policy("auto-balanced")))
    return out


# ------------------------------------------------------------------------------------------ diffusers

def magcache_ratios(arena, steps: int) -> list[float]:
    """diffusers' MagCache calibration (``calibrate=True``) on one uncached run of the arena's samples:
    the per-step magnitude ratios, averaged over the cond / uncond contexts."""
    from diffusers import MagCacheConfig
    from diffusers.hooks import mag_cache as mc

    stash: dict = {}
    orig = mc.MagCacheBlockHook._perform_calibration_step

    def keep(self, state, residual):
        orig(self, state, residual)
        stash[id(state)] = list(state.calibration_ratios)
    mc.MagCacheBlockHook._perform_calibration_step = keep
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            arena.run_peer(steps, lambda p: p.transformer.enable_cache(MagCacheConfig(calibrate=True,
                                                                                      num_inference_steps=steps)),
                           lambda p: p.transformer.disable_cache())
    finally:
        mc.MagCacheBlockHook._perform_calibration_step = orig
    runs = [r for r in stash.values() if len(r) == steps]
    if not runs:
        raise RuntimeError(f"MagCache calibration gave no {steps}-step ratios")
    return [sum(v) / len(v) for v in zip(*runs)]


def diffusers_settings(steps: int, quick: bool, mag_ratios) -> list[tuple]:
    """``(method, setting, unit, config factory (pipe) -> config)``; run with ``enable_cache``."""
    from diffusers import (FasterCacheConfig, FirstBlockCacheConfig, MagCacheConfig, PyramidAttentionBroadcastConfig,
                           TaylorSeerCacheConfig)
    f32 = torch.float32
    out = []

    def ts(method, unit, intervals, orders, **kw):
        for i in intervals:
            for o in orders:
                out.append((method, f"interval {i}, order {o}", unit,
                            lambda p, i=i, o=o: TaylorSeerCacheConfig(cache_interval=i, max_order=o,
                                                                      taylor_factors_dtype=f32, **kw)))
    full = not quick
    ts("TaylorSeer lite", "blocks", [2, 3, 4, 5, 6, 8] if full else [3], [1, 2] if full else [1], use_lite_mode=True)
    ts("TaylorSeer attn", "attn+ff", [2, 3, 5] if full else [], [1, 2])
    ts("TaylorSeer attn+ff", "attn+ff", [2, 3, 4, 6] if full else [3], [1, 2] if full else [1], cache_identifiers=[UNITS])
    if full:
        out.append(("TaylorSeer attn", "its defaults (interval 5, bf16 factors)", "attn+ff", lambda p: TaylorSeerCacheConfig()))
    for t in [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6] if full else [0.2]:
        out.append(("First-Block-Cache", f"threshold {t}", "blocks", lambda p, t=t: FirstBlockCacheConfig(threshold=t)))
    for k in [3, 6] if full else [3]:
        for t in [0.03, 0.06, 0.1, 0.2, 0.4] if full else [0.1]:
            out.append(("MagCache", f"threshold {t}, max_skip {k}", "blocks",
                        lambda p, t=t, k=k: MagCacheConfig(threshold=t, max_skip_steps=k, mag_ratios=mag_ratios(),
                                                           num_inference_steps=steps)))
    for r, rng in ([(2, (100, 800)), (3, (100, 800)), (4, (100, 800)), (2, (-1, 1001))] if full else [(2, (100, 800))]):
        out.append(("PAB", f"spatial skip {r}, timesteps {rng}", "attn+ff",
                    lambda p, r=r, rng=rng: PyramidAttentionBroadcastConfig(
                        spatial_attention_block_skip_range=r, spatial_attention_timestep_skip_range=rng,
                        current_timestep_callback=lambda: p.current_timestep)))
    if full:
        for r in [2, 3]:
            out.append(("FasterCache", f"attention skip {r} (is_guidance_distilled: no uncond batch skip)", "attn+ff",
                        lambda p, r=r: FasterCacheConfig(spatial_attention_block_skip_range=r, tensor_format="BCHW",
                                                         is_guidance_distilled=True,
                                                         current_timestep_callback=lambda: p.current_timestep)))
        out.append(("FasterCache", "attention skip 2 + uncond batch skip (needs batched CFG)", "attn+ff",
                    lambda p: FasterCacheConfig(spatial_attention_block_skip_range=2, tensor_format="BCHW",
                                                current_timestep_callback=lambda: p.current_timestep)))
    return [(m, s, u, (lambda p, f=f: p.transformer.enable_cache(f(p))), lambda p: p.transformer.disable_cache())
            for m, s, u, f in out]


# ------------------------------------------------------------------------------------------ cache-dit

def cache_dit_settings(steps: int, quick: bool) -> list[tuple]:
    """``(method, setting, unit, enable, disable)`` for cache-dit's DBCache (separate CFG: the pipeline
    makes a cond and an uncond call per step). Without cache-dit: one error row per method."""
    try:
        import cache_dit
        from cache_dit import DBCacheConfig, DMDCalibratorConfig, FoCaCalibratorConfig, TaylorSeerCalibratorConfig
    except ImportError as e:
        err = f"cache-dit not installed ({e}); pip install 'taylorseer-fx[peers]'"

        def fail(p, err=err):
            raise ImportError(err)
        return [(m, "-", "blocks", fail, lambda p: None) for m in ("DBCache", "DBCache+TaylorSeer", "DBCache+FoCa")]

    full = not quick
    grid = []

    def add(method, fn, bn, thresholds, cal=None, warmup=3, tag=""):
        for t in thresholds:
            grid.append((method, f"F{fn}B{bn}, threshold {t}, warm-up {warmup}{tag}", fn, bn, t, warmup, cal))
    add("DBCache", 1, 0, [0.04, 0.08, 0.12, 0.2, 0.3, 0.5, 0.8] if full else [0.12])
    add("DBCache", 8, 0, [0.08])
    if full:
        add("DBCache", 1, 0, [0.08, 0.2], warmup=8)
        add("DBCache", 2, 0, [0.08, 0.2, 0.4])
        add("DBCache", 1, 1, [0.08, 0.2, 0.4])
    th = [0.08, 0.12, 0.2, 0.3, 0.5, 0.8] if full else [0.2]
    add("DBCache+TaylorSeer", 1, 0, th, cal=lambda: TaylorSeerCalibratorConfig(taylorseer_order=1), tag=", order 1")
    if full:
        add("DBCache+TaylorSeer", 1, 0, [0.12, 0.3], cal=lambda: TaylorSeerCalibratorConfig(taylorseer_order=2),
            tag=", order 2")
    add("DBCache+FoCa", 1, 0, th, cal=FoCaCalibratorConfig)
    if full:
        add("DBCache+DMD", 1, 0, th, cal=DMDCalibratorConfig)
    out = []
    for method, setting, fn, bn, t, w, cal in grid:
        def enable(p, fn=fn, bn=bn, t=t, w=w, cal=cal):
            cfg = DBCacheConfig(Fn_compute_blocks=fn, Bn_compute_blocks=bn, residual_diff_threshold=t,
                                max_warmup_steps=w, enable_separate_cfg=True, num_inference_steps=steps)
            cache_dit.enable_cache(p, cache_config=cfg, calibrator_config=cal() if cal else None)
        out.append((method, setting, "blocks", enable, cache_dit.disable_cache))
    return out
