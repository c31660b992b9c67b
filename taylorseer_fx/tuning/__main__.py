"""``python -m taylorseer_fx.tuning``: tune where a compute budget's computes go, and write the preset.

With no path it tunes the shipped demo Flux (no download; the inputs are digit labels with true CFG).
With a folder it loads ``DiffusionPipeline.from_pretrained(PATH)`` and uses ``--prompt`` (repeatable).
Prints a line per run on stderr, then the table; writes the preset TOML (``--out``) and the result as
JSON (``--json``). Every run is recorded in ``--checkpoint`` (default: the preset's path +
``.progress.json``): interrupted (Ctrl-C, exit 130), the same command resumes. Exit 2 on bad arguments.
See :func:`taylorseer_fx.tune`.
"""

from __future__ import annotations

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m taylorseer_fx.tuning", description=__doc__.split("\n\n")[0])
    p.add_argument("path", nargs="?", default=None, help="a diffusers pipeline folder (default: the demo Flux)")
    p.add_argument("--budget", required=True, help="the share of steps that compute (0.25) or a speed-up (4x)")
    p.add_argument("--steps", default="28", help="step counts to tune, comma-separated (default 28)")
    p.add_argument("--inputs", type=int, default=6, help="demo Flux: how many digit labels (default 6)")
    p.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable; pipeline folders)")
    p.add_argument("--holdout", type=int, default=None, help="inputs held out for validation (default a third)")
    p.add_argument("--seeds", default="0", help="calibration noise seeds, comma-separated (default 0)")
    p.add_argument("--policy", default=None, help="the base AutoPolicy preset or TOML (default AutoPolicy(budget))")
    p.add_argument("--forecasts", choices=("search", "own"), default="search",
                   help="search: try Hermite and Taylor forecasters beside the policy's own and keep the one that "
                        "validates better (default); own: the policy's own forecaster only")
    p.add_argument("--reach", type=int, default=2, help="how far one compute moves per try, in steps (default 2)")
    p.add_argument("--sweeps", type=int, default=2, help="passes of the descent (default 2)")
    p.add_argument("--inner", default="eager", help="inner backend: eager (default) or inductor")
    p.add_argument("--device", default="cpu", help="device of the pipeline (default cpu)")
    p.add_argument("--out", default="tuned.toml", help="the preset written (default %(default)s)")
    p.add_argument("--checkpoint", default=None, help="the record of runs (default OUT.progress.json)")
    p.add_argument("--json", default=None, help="also write the result as JSON here")
    return p


def _ints(text: str, name: str) -> list:
    try:
        return [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated ints, got {text!r}") from None


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        import torch

        from ..check import load_pipeline
        from ..policy.budget import budget_fraction
        from .forecasts import FORECASTS
        from .tuner import tune

        try:
            budget = args.budget if args.budget.strip().lower().endswith("x") else float(args.budget)
        except ValueError:
            raise ValueError(f"--budget must be a fraction (0.25) or a speed-up (4x), got {args.budget!r}") from None
        budget_fraction(budget)
        steps, seeds = _ints(args.steps, "steps"), _ints(args.seeds, "seeds")
        if args.path is None and not 1 <= args.inputs <= 100:
            raise ValueError(f"--inputs must be in [1, 100], got {args.inputs}")
        torch.set_num_threads(max(1, torch.get_num_threads()))
        pipe, inputs, _ = load_pipeline(args.path, args.device, args.prompt, [k % 10 for k in range(args.inputs)])
        checkpoint = args.checkpoint or args.out + ".progress.json"
        result = tune(pipe, inputs, budget=budget, steps=steps, seeds=seeds, holdout=args.holdout,
                      policy=args.policy, reach=args.reach, sweeps=args.sweeps, inner=args.inner,
                      checkpoint=checkpoint, forecasts=FORECASTS if args.forecasts == "search" else None)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(result.table())
    print(f"wrote {result.write(args.out)} (load it with load_policy({args.out!r}))")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result.to_dict(), fh, indent=1)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
