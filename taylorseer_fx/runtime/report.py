"""Reports on what a backend did: the per-step decision trace as data, a text table and a PNG plot.

Works on the dict that ``taylorseer_backend(...).stats()`` returns. Steps are 0-based step indices of
a generation; the "estimate" is the policy's estimated relative error of forecasting that step
(adaptive policies only; ``None`` where none was formed), in the same units as the policy threshold.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

__all__ = ["decision_trace", "stats_table", "plot_trace", "format_table"]


def decision_trace(stats: dict, threshold: float | None = None, generation: int | None = None) -> list[dict]:
    """One row per step of one generation: ``{"step", "coordinate", "decision", "estimate", "threshold",
    "order"}``; ``order`` (order-selecting policies, computed steps) is the forecast degree chosen there
    for the next run (the largest over regions), else None.

    Args:
        stats: ``backend.stats()``.
        threshold: the policy threshold to show beside the estimates (``AutoPolicy.threshold``).
        generation: which generation to report (default: the last one in the trace).

    Only the first stream of each step is reported (all streams of a step share one decision).
    """
    calls = [c for c in stats.get("trace", []) if c.get("stream", 0) == 0]
    if not calls:
        return []
    if generation is None:
        generation = calls[-1]["generation"]
    rows = []
    for c in calls:
        if c["generation"] != generation:
            continue
        rows.append({
            "step": c["step"],
            "coordinate": c.get("coordinate"),
            "decision": c["decision"],
            "estimate": c.get("estimate"),
            "threshold": threshold,
            "order": max(c["orders"].values()) if c.get("orders") else None,
        })
    return rows


def format_table(rows: Iterable[dict], columns: list[str], floatfmt: str = ".4g") -> str:
    """A plain-text table with aligned columns (numbers formatted with ``floatfmt``)."""
    rows = list(rows)

    def cell(v):
        if isinstance(v, float):
            return format(v, floatfmt)
        return "-" if v is None else str(v)

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(b[i]) for b in body]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(b) for b in body])


def stats_table(stats: dict) -> str:
    """Per-region compute/forecast counts and the step totals, as text."""
    rows = [{"region": name, **counts} for name, counts in stats.get("regions", {}).items()]
    rows.append({"region": "(steps)", "compute": stats["compute"], "forecast": stats["forecast"]})
    return format_table(rows, ["region", "compute", "forecast"])


def plot_trace(rows: list[dict], path: str | Path, title: str = "taylorseer decisions") -> Path:
    """Draw the decision trace (from :func:`decision_trace`) to a PNG and return its path.

    Top: the estimate per step (log scale) and the threshold -- and, where rows carry an ``"actual"``
    value (the measured relative error of the forecast region output, e.g. from a validation run),
    that too; bottom: computed (1) vs forecast (0). Needs matplotlib (the ``plot`` extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover
        raise ImportError("plot_trace needs matplotlib: pip install 'taylorseer-fx[plot]'") from e
    if not rows:
        raise ValueError("rows: the decision trace is empty (run the model through the backend first)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = [r["step"] for r in rows]
    computed = [1 if r["decision"] == "compute" else 0 for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    est = [(r["step"], r["estimate"]) for r in rows if r.get("estimate") is not None and r["estimate"] > 0]
    if est:
        ax1.semilogy([s for s, _ in est], [e for _, e in est], "o-", ms=3, label="estimated rel. error")
    act = [(r["step"], r["actual"]) for r in rows if r.get("actual") is not None and r["actual"] > 0]
    if act:
        ax1.semilogy([s for s, _ in act], [a for _, a in act], "s", ms=4, mfc="none", color="C1",
                     label="actual rel. error (forecast steps)")
    thr = next((r["threshold"] for r in rows if r.get("threshold") is not None), None)
    if thr is not None:
        ax1.axhline(thr, color="C3", ls="--", label=f"threshold {thr:g}")
    ax1.set_ylabel("relative error")
    ax1.set_title(f"{title}: {sum(computed)}/{len(rows)} steps computed")
    if est or act or thr is not None:
        ax1.legend(loc="best", fontsize=8)
    ax2.bar(steps, computed, width=0.8, color=["C2" if c else "C7" for c in computed])
    ax2.set_yticks([0, 1], ["forecast", "compute"])
    ax2.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
