"""The runtime's own cost per model call: tiny Flux through the backend with the eager inner backend
(so the model's work is the same in every variant), against plain ``torch.compile(backend="eager")``.

    python benchmarks/runtime_call.py [--calls 40] [--reps 15]

Variants, interleaved: ``plain``; ``all-compute`` (FixedPolicy(interval=1): every call computes,
the runtime places it and stores nothing); ``compute`` (a caching policy's compute step: the factors
are updated); ``forecast`` (every call forecast); ``told`` (``compute`` inside
``Request.context(step_index=...)``); ``model: all-compute`` and ``model: forecast`` (a second instance
cached at its model boundary, ``backend.compile_module`` with ``regions="model"``: a forecast call
does not run the model at all). Prints per-call medians in microseconds and the runtime's
overhead over ``plain``; writes ``results/runtime_call.json`` with the commit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Clock, interleave, machine, make_flux_tiny, med, setup, sigmas, table, write_json  # noqa: E402

from taylorseer_fx import FixedPolicy, taylorseer_backend  # noqa: E402

FORECAST_ONLY = 10_000


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--reps", type=int, default=15)
    args = ap.parse_args(argv)
    setup()
    tm = make_flux_tiny()
    x = tm.noise()
    s = sigmas(args.calls + 2)
    plain = torch.compile(tm.model, backend="eager")
    be = taylorseer_backend(FixedPolicy(interval=1), inner="eager")
    cached = torch.compile(tm.model, backend=be)
    try:
        from taylorseer_fx import Request
    except ImportError:                      # an older commit: no told variant
        Request = None

    def loop(model, policy, warm=0, told=False):
        def f():
            if policy is not None:
                be.policy = policy
                be.reset()
            req = Request(num_steps=args.calls + warm) if told else None
            with torch.no_grad():
                for i in range(warm):
                    tm.call(model, x, s[i])
                clock = Clock()
                for i in range(warm, warm + args.calls):
                    if req is None:
                        tm.call(model, x, s[i])
                    else:
                        with req.context(step_index=i, sigma=s[i]):
                            tm.call(model, x, s[i])
                w, c = clock.stop()
            return w / args.calls, c / args.calls
        return f
    variants = {
        "plain": loop(plain, None),
        "all-compute": loop(cached, FixedPolicy(interval=1)),
        "compute": loop(cached, FixedPolicy(interval=FORECAST_ONLY, order=1, warmup=FORECAST_ONLY)),
        "forecast": loop(cached, FixedPolicy(interval=FORECAST_ONLY, order=1, warmup=2), warm=2),
    }
    if hasattr(be, "compile_module"):        # the model boundary (a second instance: compiled in place)
        tm2 = make_flux_tiny()
        be2 = taylorseer_backend(FixedPolicy(interval=1), regions="model", inner="eager")
        be2.compile_module(tm2.model)

        def boundary(policy, warm=0):
            def f():
                be2.policy = policy
                be2.reset()
                with torch.no_grad():
                    for i in range(warm):
                        tm2.call(tm2.model, x, s[i])
                    clock = Clock()
                    for i in range(warm, warm + args.calls):
                        tm2.call(tm2.model, x, s[i])
                    w, c = clock.stop()
                return w / args.calls, c / args.calls
            return f
        variants["model: all-compute"] = boundary(FixedPolicy(interval=1))
        variants["model: forecast"] = boundary(FixedPolicy(interval=FORECAST_ONLY, order=1, warmup=2), warm=2)
    if Request is not None:
        variants["told"] = loop(cached, FixedPolicy(interval=FORECAST_ONLY, order=1, warmup=FORECAST_ONLY),
                                told=True)
    for f in variants.values():
        f()                                  # compile, warm
    times = interleave(variants, args.reps)
    us = {n: med(v["wall"]) * 1e6 for n, v in times.items()}
    rows = [[n, f"{v:.0f}", f"{v - us['plain']:+.0f}"] for n, v in us.items()]
    print(table(["variant", "us / call", "vs plain"], rows, title=f"runtime per call, flux-tiny, inner eager "
                f"({machine()['commit']})"))
    data = {"machine": machine(), "us_per_call": us, "calls": args.calls, "reps": args.reps}
    write_json("runtime_call.json", data)
    return data


if __name__ == "__main__":
    main()
