"""Draw docs/auto_trace*.png: AutoPolicy's estimate vs the actual relative error of the forecast region
output, per step, on the shipped digits DiT (16 samples, CFG 2 batched, regions "stack").

The actual error is measured in the same closed-loop run: at every forecast step the region is also
computed (on the very inputs the cached run has there) and compared with the forecast it returned.

    python docs/auto_figure.py        # ~30 s on one thread
"""

from __future__ import annotations

from pathlib import Path

import torch

from taylorseer_fx import load_policy, taylorseer_backend
from taylorseer_fx.demo import load_model, sample, sigmas
from taylorseer_fx.runtime.report import decision_trace, format_table, plot_trace

HERE = Path(__file__).resolve().parent


def measured_trace(model, labels, noise, policy, steps: int, shift: float) -> list[dict]:
    # the split pieces (not a whole-graph call), so that every region call passes run_region
    be = taylorseer_backend(policy, regions="stack", inner="eager", whole_graph=False)
    compiled = torch.compile(model, backend=be)
    with be.session(timesteps=sigmas(2)[:2].tolist()):
        sample(compiled, labels, num_steps=2, noise=noise)       # compile
    be.reset()
    g = be.runtime.graphs[0]
    run_region, actual = g.run_region, {}

    def recording(index, compiled_piece, args):
        out = run_region(index, compiled_piece, args)
        call = g.current
        if call is not None and call.stream == 0 and call.regions.get(g.names[index]) == "forecast":
            true = compiled_piece(*args)
            a = [o for o in (out if isinstance(out, (tuple, list)) else (out,)) if torch.is_tensor(o)]
            b = [o for o in (true if isinstance(true, (tuple, list)) else (true,)) if torch.is_tensor(o)]
            num = sum(float((x.double() - y.double()).norm()) ** 2 for x, y in zip(a, b)) ** 0.5
            den = sum(float(y.double().norm()) ** 2 for y in b) ** 0.5
            actual[call.step] = max(actual.get(call.step, 0.0), num / den)
        return out

    g.run_region = recording
    with be.session(timesteps=sigmas(steps, shift)[:steps].tolist()):
        sample(compiled, labels, num_steps=steps, shift=shift, noise=noise)
    rows = decision_trace(be.stats(), threshold=policy.threshold)
    for r in rows:
        r["actual"] = actual.get(r["step"])
    torch._dynamo.reset()
    return rows


def main() -> None:
    torch.set_num_threads(1)
    model = load_model()
    labels = torch.arange(16) % 10
    noise = torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    policy = load_policy("auto-balanced")
    for steps, shift, name in ((50, 1.0, "auto_trace.png"), (28, 3.0, "auto_trace_shift3.png")):
        rows = measured_trace(model, labels, noise, policy, steps, shift)
        n = sum(r["decision"] == "compute" for r in rows)
        title = f"auto-balanced, {steps} steps, shift {shift:g}"
        plot_trace(rows, HERE / name, title=title)
        print(f"\n{title}: {n}/{steps} computed -> docs/{name}")
        print(format_table(rows, ["step", "coordinate", "decision", "order", "estimate", "actual"], floatfmt=".3g"))
        pairs = [(r["estimate"], r["actual"]) for r in rows if r["actual"] and r["estimate"]]
        ratios = sorted(e / a for e, a in pairs)
        if ratios:
            print(f"estimate / actual over {len(ratios)} forecast steps: median {ratios[len(ratios) // 2]:.2f}, "
                  f"range {ratios[0]:.2f} .. {ratios[-1]:.2f}; actual <= threshold at "
                  f"{sum(a <= policy.threshold for _, a in pairs)}/{len(pairs)}")


if __name__ == "__main__":
    main()
