"""How far ahead can the demo model's features be extrapolated? Forecast error vs horizon, per method.

The ``stack`` region output (the hidden states after the last block) of the shipped digits DiT is
recorded along the uncached trajectory (20 samples, fixed noise, CFG 2 batched, as in
``benchmarks/quality.py``). Every method then forecasts steps ``w, w+1, ...`` from the warm-up computes
``0 .. w-1`` only -- the first forecast run of a cached generation -- and the table gives the relative
L2 error ``||forecast - output|| / ||output||`` at horizons 1..12 steps:

* ``newton k (step)``: the degree-k interpolant through the last k+1 computes in the step index
  (``Forecaster(k, "newton")``; k = 1 is also taylor order 1); degrees that need more points than the
  warm-up has are left out;
* ``newton k (sigma)`` / ``(log-SNR)``: the same in the noise level sigma / in log((1 - sigma) / sigma);
* ``taylor k``: the official recursion (``Forecaster(k, "taylor")``);
* ``newton 1, damped phi``: the slope of the last two computes applied with weights phi^i (a damped
  trend: y_n + slope * sum_{i=1..h} phi^i);
* ``auto's choice``: the auto policy's forecaster (degree 0-2 chosen by back-test, ``Forecaster(2,
  select=1)``).

This is the first forecast run only, on exact points, so it measures the extrapolation, not the
feedback of a cached run. Where no method is much better than order 1 at the long horizons a low
compute budget forces, no forecaster of this kind can buy a large error reduction there.

    python benchmarks/extrapolation.py                  # 28 steps: uniform and shift 3, warm-up 3 and 6 (~1 min)
    python benchmarks/extrapolation.py --configs 50:1:3

Writes ``benchmarks/results/extrapolation.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, parse_configs, setup, table, write_json  # noqa: E402

from taylorseer_fx import Forecaster  # noqa: E402
from taylorseer_fx.demo import load_model, sample, sigmas  # noqa: E402

HORIZON = 12
CFG = 2.0


def stack_outputs(model, steps: int, shift: float, samples: int, seed: int = 0) -> torch.Tensor:
    """[steps, 2 * samples, tokens, hidden]: the last block's output at every step (uncached run)."""
    labels = torch.arange(samples) % 10
    noise = torch.randn(samples, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    rec = []
    handle = model.blocks[-1].register_forward_hook(lambda mod, args, out: rec.append(out.detach().clone()))
    try:
        with torch.no_grad():
            sample(model, labels, num_steps=steps, cfg_scale=CFG, shift=shift, noise=noise)
    finally:
        handle.remove()
    return torch.stack(rec)


def _fitted(points, coords, order: int, form: str = "newton", **kw):
    """The forecast function of a Forecaster filled with ``points`` at ``coords`` (oldest first)."""
    fc = Forecaster(order, form, **kw)
    for t, y in zip(coords, points):
        fc.update(t, y)
    return fc.forecast


def methods(sig: torch.Tensor) -> dict:
    """name -> (points needed, fit); ``fit(points, steps)`` (the warm-up computes, oldest first) returns
    ``predict(step)``."""
    s = [float(v) for v in sig]
    lsnr = [math.log(max(1 - v, 1e-12) / v) for v in s]

    def fitted(k, coord, form="newton", **kw):
        def fit(P, S):
            predict = _fitted(P, [coord[i] for i in S], k, form, **kw)
            return lambda t: predict(coord[t])
        return k + 1, fit

    def damped(phi):
        def fit(P, S):
            slope = (P[-1] - P[-2]) / (S[-1] - S[-2])
            return lambda t: P[-1] + slope * sum(phi ** i for i in range(1, t - S[-1] + 1))
        return 2, fit

    steps = list(range(len(s)))
    out = {f"newton {k} (step)": fitted(k, steps) for k in range(4)}
    out |= {f"newton {k} (sigma)": fitted(k, s) for k in (1, 2)}
    out |= {f"newton {k} (log-SNR)": fitted(k, lsnr) for k in (1, 2)}
    out |= {f"taylor {k}": fitted(k, steps, "taylor") for k in (2, 3)}
    out |= {f"newton 1, damped {phi}": damped(phi) for phi in (0.9, 0.8)}
    out["auto's choice"] = fitted(2, steps, select=1)
    return out


def run_config(model, steps: int, shift: float, warmup: int, samples: int) -> dict:
    ys = stack_outputs(model, steps, shift, samples)
    sig = sigmas(steps, shift)[:steps].double()
    warm = list(range(warmup))
    horizon = range(warmup, min(steps, warmup + HORIZON))
    rows = {}
    for name, (needs, fit) in methods(sig).items():
        if needs > warmup:          # not enough warm-up points for this degree (it would equal a lower one)
            continue
        predict = fit([ys[i] for i in warm], warm)
        rows[name] = [float((predict(t).double() - ys[t].double()).norm() / ys[t].double().norm())
                      for t in horizon]
    return {"steps": steps, "shift": shift, "warmup": warmup, "horizons": [t - warmup + 1 for t in horizon],
            "errors": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="28:1:3,28:3:3,28:1:6,28:3:6", help="comma list of steps:shift:warmup")
    ap.add_argument("--samples", type=int, default=20)
    args = ap.parse_args()
    if args.samples < 1:
        ap.error("--samples must be >= 1")
    setup(1)
    model = load_model()
    results = []
    for steps, shift, warmup in parse_configs(args.configs):
        if not 3 <= warmup < steps:
            ap.error(f"--configs: warm-up must be in [3, steps), got {steps}:{shift:g}:{warmup}")
        res = run_config(model, steps, shift, warmup, args.samples)
        results.append(res)
        base = res["errors"]["newton 1 (step)"]
        hs = [h for h in (1, 4, 8, 12) if h <= len(base)]
        rows = [[name] + [e[h - 1] for h in hs] + [sum(e) / len(e), sum(e) / sum(base)]
                for name, e in res["errors"].items()]
        print(table(["method"] + [f"h={h}" for h in hs] + ["mean", "mean / newton 1"], rows,
                    title=f"### {steps} steps, shift {shift:g}, warm-up {warmup}: relative error of the "
                          f"forecast stack output, h steps after warm-up"), flush=True)
    print(f"wrote {write_json('extrapolation.json', {'machine': machine(), 'samples': args.samples, 'configs': results})}")


if __name__ == "__main__":
    main()
