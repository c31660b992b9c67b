"""``python -m taylorseer_fx.check``: check a cache configuration on a diffusers pipeline, offline.

With no argument it checks the shipped demo Flux (no download; the inputs are the ten digit labels,
with true CFG). With a folder it loads ``DiffusionPipeline.from_pretrained(PATH)`` and uses ``--prompt``
(repeatable). Prints a progress line per case, the table and the verdict; writes JSON (``--json``);
exits 1 naming the smallest failing case as a call to paste, 0 when every case passed, 2 on bad
arguments. See :func:`taylorseer_fx.testing.check_cache` for what is checked.
"""

from __future__ import annotations

import argparse
import os
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m taylorseer_fx.check", description=__doc__.split("\n\n")[0])
    p.add_argument("path", nargs="?", default=None, help="a diffusers pipeline folder (default: the demo Flux)")
    p.add_argument("--policy", default="auto-balanced", help="a preset name or a TOML path (default auto-balanced)")
    p.add_argument("--steps", default="10:30", help="a step count, or a range lo:hi to draw from (default 10:30)")
    p.add_argument("--examples", type=int, default=10, help="cases hypothesis draws (default 10)")
    p.add_argument("--tolerance", type=float, default=0.1, help="largest relative L2 error allowed (default 0.1)")
    p.add_argument("--min-psnr", type=float, default=None, help="smallest PSNR in dB allowed (default none)")
    p.add_argument("--min-forecast", type=float, default=None,
                   help="smallest share of forecast steps (default: at least one forecast)")
    p.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable; pipeline folders)")
    p.add_argument("--batch-sizes", default=None, help="num_images_per_prompt values, e.g. 1,2 (default: not varied)")
    p.add_argument("--inner", default="eager", help="inner backend: eager (default) or inductor")
    p.add_argument("--device", default="cpu", help="device of the pipeline (default cpu)")
    p.add_argument("--json", default="taylorseer-check.json", help="where to write the result (default %(default)s)")
    return p


def load_pipeline(path, device: str = "cpu", prompts=None, labels=range(10)) -> tuple:
    """``(pipeline, inputs, name)`` for the commands: with no ``path`` the shipped demo Flux (no
    download) with one input per digit label in ``labels`` (true CFG); else
    ``DiffusionPipeline.from_pretrained(path)`` with one input per prompt (default: one prompt)."""
    if path is None:
        if prompts:
            raise ValueError("--prompt needs a pipeline folder: the demo Flux (no folder given) is conditioned "
                             "on digit labels, not prompts")
        from .demo.flux_model import PIXEL_SIZE
        from .demo.flux_pipeline import build_pipeline, pipeline_inputs

        pipe = build_pipeline(device=device)
        extra = dict(height=PIXEL_SIZE, width=PIXEL_SIZE, output_type="latent")
        return pipe, [dict(pipeline_inputs([k], device=device), **extra) for k in labels], "demo Flux"
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(path)
    except (OSError, ValueError) as e:       # a missing folder reads as a bad hub id: say both
        where = "a folder that is not a pipeline" if os.path.isdir(path) else "no such folder here"
        raise ValueError(f"cannot load the pipeline {str(path)!r} ({where}; as a model id: {e})") from None
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    prompts = prompts or ["a photograph of an astronaut riding a horse"]
    return pipe, [{"prompt": p, "output_type": "pt"} for p in prompts], path


class _Progress:
    """One line per case on stderr: ``[case 3/10] steps=20 seed=5 ... error 0.012 ok``."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.n, self.stream = total, 0, stream

    def __call__(self, row) -> None:
        self.n += 1
        phase = f"case {self.n}/{self.total}" if self.n <= self.total else f"shrinking {self.n - self.total}"
        verdict = "ok" if row.ok else "FAIL " + ",".join(sorted({c for c, _ in row.failures}))
        print(f"[{phase}] {row.case.short()}: {row.computes}/{row.steps} computed, error {row.error:.4g}, "
              f"{verdict}", file=self.stream, flush=True)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .testing import check_cache

    batch = [int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes else None
    try:
        pipe, inputs, name = load_pipeline(args.path, args.device, args.prompt)
        print(f"checking {args.policy} on {name}: {args.examples} cases, steps {args.steps}, tolerance "
              f"{args.tolerance:g}, inner {args.inner}", file=sys.stderr)
        result = check_cache(pipe, args.policy, inputs=inputs, steps=args.steps, batch_sizes=batch,
                             examples=args.examples, tolerance=args.tolerance, min_psnr=args.min_psnr,
                             min_forecast=args.min_forecast, inner=args.inner, progress=_Progress(args.examples))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(result.table())
    print(result.summary())
    print(f"wrote {result.write_json(args.json)}")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
