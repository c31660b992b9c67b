"""What the arena's rows say: the Pareto fronts, the best row at each compute target, the summary and the
plot (``arena.py`` measures the rows; ``arena_merge.py`` merges a partial run). Pure functions of the rows:
each row is a dict with ``steps``, ``family``, ``method``, ``setting``, ``compute_fraction`` and ``rel_l2``."""

from __future__ import annotations

import math
from pathlib import Path

from arena_forecast_peers import SPECTRUM

FAMILIES = ("taylorseer_fx", "diffusers", "cache-dit", "hicache-pp", "SmoothCache", SPECTRUM)
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
TARGETS = (0.25, 0.35, 0.5)
CFG = 3.0


def pareto(rows: list) -> list:
    """The rows no other row beats at <= its compute fraction (sorted by compute fraction)."""
    ok = sorted((r for r in rows if r["compute_fraction"] is not None and r["family"] != "uncached"),
                key=lambda r: (r["compute_fraction"], r["rel_l2"]))
    front, best = [], math.inf
    for r in ok:
        if r["rel_l2"] < best:
            front.append(r)
            best = r["rel_l2"]
    return front


def best_at(rows, target):
    ok = [r for r in rows if r["compute_fraction"] is not None and r["compute_fraction"] <= target + 1e-9]
    return min(ok, key=lambda r: r["rel_l2"]) if ok else None


def fronts_of(rows: list, steps_list) -> dict:
    """Per step count: the Pareto front's settings per family, and (setting, compute, error) per method."""
    return {str(s): {"family": {f: [r["setting"] for r in pareto([r for r in rows if r["steps"] == s and r["family"] == f])]
                                for f in FAMILIES},
                     "method": {m: [(r["setting"], r["compute_fraction"], r["rel_l2"]) for r in
                                    pareto([r for r in rows if r["steps"] == s and r["method"] == m])]
                                for m in sorted({r["method"] for r in rows if r["family"] in FAMILIES})}}
            for s in steps_list}


def summarize(rows: list, steps_list) -> list:
    out = []
    for steps in steps_list:
        rs = [r for r in rows if r["steps"] == steps]
        for t in TARGETS:
            b = {f: best_at([r for r in rs if r["family"] == f], t) for f in FAMILIES}
            auto = best_at([r for r in rs if r["family"] == "taylorseer_fx" and r["method"] == "auto"], t)
            peers = [b[f] for f in FAMILIES[1:] if b[f] is not None]
            peer = min(peers, key=lambda r: r["rel_l2"]) if peers else None
            ratio = (lambda a: a["rel_l2"] / peer["rel_l2"] if a and peer and peer["rel_l2"] > 0 else None)
            b = {k: _brief(v) for k, v in dict(b, auto=auto, best_peer=peer).items()}
            out.append({"steps": steps, "target": t, **b,
                        "auto_over_best_peer": ratio(auto), "ours_over_best_peer": ratio(b["taylorseer_fx"])})
    return out


def _brief(r):
    return None if r is None else {k: r[k] for k in ("family", "method", "setting", "unit", "compute_fraction", "rel_l2")}


def _finite(o):
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _cell(r):
    return "-" if r is None else f"{r['rel_l2']:.4f} @ {r['compute_fraction']:.3f} ({r['method']}: {r['setting']})"


def plot(rows, steps_list, path: Path, samples: int) -> None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6 * len(steps_list), 4.6))
    colors = dict(zip(FAMILIES, COLORS))
    for k, steps in enumerate(steps_list):
        ax = fig.add_subplot(1, len(steps_list), k + 1)
        rs = [r for r in rows if r["steps"] == steps and r["compute_fraction"] is not None and r["rel_l2"] > 0]
        for f in FAMILIES:
            pts = [r for r in rs if r["family"] == f]
            if not pts:
                continue
            ax.scatter([r["compute_fraction"] for r in pts], [r["rel_l2"] for r in pts], s=10, alpha=0.3,
                       color=colors[f])
            fr = pareto(pts)
            ax.plot([r["compute_fraction"] for r in fr], [r["rel_l2"] for r in fr], "-o", ms=3, color=colors[f],
                    label=f"{f} (Pareto front)")
        auto = [r for r in rs if r["family"] == "taylorseer_fx" and r["method"] == "auto"]
        ax.scatter([r["compute_fraction"] for r in auto], [r["rel_l2"] for r in auto], marker="x", color="navy",
                   label="taylorseer_fx auto")
        ax.set_yscale("log")
        ax.set_xlim(0, 1.02)
        ax.set_xlabel("compute fraction (block forwards; attn+ff forwards for module-level methods)")
        ax.set_ylabel("final-sample relative L2 vs uncached")
        ax.set_title(f"Flux digits, {steps} steps, true CFG {CFG:g}, {samples} samples")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
