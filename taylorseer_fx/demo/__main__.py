"""``python -m taylorseer_fx.demo``: the shipped digits models, uncached vs cached, in one table.

``--model flux`` (default): the shipped ``diffusers.FluxTransformer2DModel`` (``flux_model.py``) sampled
by a real ``diffusers.FluxPipeline`` (FLUX.1's scheduler with dynamic shifting, ``vae=None``,
``output_type="latent"``, the label table as prompt embeddings, true CFG through the negative
embeddings), cached through ``taylorseer_fx.compile_pipeline(pipe, policy=..., regions="stack",
inner=...)``; the uncached baseline is a copy of the transformer compiled with the inner backend
alone. Default 28 steps, true CFG 3.
``--model dit``: the custom digits DiT and its own Euler loop (``sampling.py``), as before: default
50 steps, CFG 2.

Samples the same grid of class-conditional digits (same noise) with the uncached model and with
several policies compiled through ``taylorseer_backend``, then prints one row per policy: full
computes / steps, wall time, speed-up vs uncached, PSNR and relative L2 of the final samples against
the uncached samples, and the classifier's accuracy on them. Writes ``grid.png`` (uncached and each
policy side by side), ``decisions.png`` (the auto policy's decision trace) and ``results.json`` to
``--out``.

Speed-up is the ratio of wall times measured in the same process on the same device, after a
short warm-up run per configuration that pays for compilation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ..runtime import report
from . import metrics
from ..graph.backend import taylorseer_backend
from ..policy.auto import AutoPolicy
from ..policy.policies import FixedPolicy
from ..policy.presets import load_policy
from .sampling import load_classifier, load_model, sample

#: the flux path: name -> (preset, description); all with regions="stack" through compile_pipeline
FLUX_POLICIES = {
    "official": ("official-flux", "official TaylorSeer, FLUX defaults: warm-up 3, compute every 6th, order 1"),
    "openvino-lite": ("openvino-lite", "OpenVINO TaylorSeer Lite: every 3rd, warm-up 6, last 2 computed"),
    "auto": ("auto-balanced", "auto-balanced: compute when the forecast run's estimated errors (rss) pass tau"),
}
DEFAULTS = {"flux": {"steps": 28, "cfg": 3.0}, "dit": {"steps": 50, "cfg": 2.0}}

#: name -> (policy factory taking num_steps, regions, description)
POLICIES = {
    "official": (lambda n: FixedPolicy.official(first_enhance=3, fresh_threshold=5, max_order=2),
                 "modules", "official TaylorSeer: warm-up 3, compute every 5th, order 2 (taylor)"),
    "openvino-lite": (lambda n: FixedPolicy.openvino(cache_interval=3, disable_cache_before_step=6,
                                                     disable_cache_after_step=-2, num_steps=n),
                      "stack", "OpenVINO TaylorSeer Lite: every 3rd, warm-up 6, last 2 computed"),
    "auto": (lambda n: load_policy("auto-balanced"), "stack", "auto-balanced: compute when the forecast run's estimated errors (rss) pass tau"),
}


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m taylorseer_fx.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["flux", "dit"], default="flux",
                   help="flux (default): FluxTransformer2DModel through FluxPipeline; dit: the custom DiT")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 28 flux, 50 dit)")
    p.add_argument("--per-class", type=int, default=2, help="samples per digit class (default 2)")
    p.add_argument("--policy", action="append", choices=sorted(POLICIES), default=None,
                   help="policies to run (repeatable; default: all)")
    p.add_argument("--cfg", type=float, default=None,
                   help="classifier-free guidance scale (default 3 flux (true_cfg_scale), 2 dit)")
    p.add_argument("--shift", type=float, default=None,
                   help="dit only: SD3 time shift of the sigma schedule (default 1); flux uses FLUX's dynamic shift")
    p.add_argument("--inner", default="eager", help="inner backend: eager (default), aot_eager, inductor")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="taylorseer_demo", help="output folder (default ./taylorseer_demo)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1: steadier timings)")
    args = p.parse_args(argv)
    for k, v in DEFAULTS[args.model].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.model == "flux" and args.shift is not None:
        p.error("--shift is for --model dit (the FLUX scheduler shifts dynamically)")
    args.shift = 1.0 if args.shift is None else args.shift
    if args.steps < 4:
        p.error("--steps must be >= 4")
    if args.per_class < 1:
        p.error("--per-class must be >= 1")
    return args


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def _save_grid(rows: list[tuple[str, torch.Tensor]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(1 + 0.5 * rows[0][1].shape[0], 0.9 * len(rows) + 0.3))
    axes = [axes] if len(rows) == 1 else list(axes)
    for ax, (name, imgs) in zip(axes, rows):
        strip = torch.cat(list(imgs[:, 0].cpu()), dim=1)  # [H, B*W]
        ax.imshow(strip.numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(args) -> list[dict]:
    """The demo for ``args.model``; returns the table's rows (also written to results.json)."""
    return run_flux(args) if args.model == "flux" else run_dit(args)


def _finish(args, out: Path, rows: list[dict], grid, meta: dict, log) -> list[dict]:
    _save_grid(grid, out / "grid.png")
    table = [dict(r, computes=f"{r['computes']}/{r['steps']}") for r in rows]
    print(report.format_table(table, ["policy", "regions", "computes", "wall_s", "speedup", "psnr_db",
                                      "rel_l2", "accuracy"]))
    meta = dict(meta, model=args.model, steps=args.steps, cfg=args.cfg, inner=args.inner, threads=args.threads,
                torch=torch.__version__)
    (out / "results.json").write_text(json.dumps({"config": meta, "results": rows}, indent=1, default=str))
    log(f"[demo] wrote {out / 'grid.png'}, {out / 'decisions.png'}, {out / 'results.json'}")
    return rows


def run_flux(args) -> list[dict]:
    """The flux path: FluxPipeline, uncached vs each policy through compile_pipeline."""
    import copy

    from ..integrations.pipeline import compile_pipeline
    from .flux_model import load_label_table, load_transformer
    from .flux_pipeline import FLUX_SCHEDULER_CONFIG, build_pipeline, initial_noise
    from .flux_pipeline import sample as flux_sample

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    transformer = load_transformer(device=device)
    table = load_label_table(device=device)
    clf = load_classifier(device)
    labels = torch.arange(10).repeat_interleave(args.per_class)
    noise = initial_noise(labels.numel(), args.seed)
    kw = dict(num_steps=args.steps, cfg_scale=args.cfg, table=table, noise=noise)

    log(f"[demo] flux uncached: {labels.numel()} samples, {args.steps} steps, true CFG {args.cfg}, "
        f"device {device}, FluxPipeline with the transformer compiled with inner={args.inner} alone")
    torch._dynamo.reset()
    plain = build_pipeline(copy.deepcopy(transformer))
    plain.transformer.compile(backend=args.inner)   # the same compiler, no caching: a fair baseline
    flux_sample(plain, labels, **dict(kw, num_steps=2))  # warm-up (compiles)
    ref, ref_s = _timed(lambda: flux_sample(plain, labels, **kw))
    del plain
    rows = [{"policy": "uncached", "regions": "-", "computes": args.steps, "steps": args.steps,
             "wall_s": ref_s, "speedup": 1.0, "psnr_db": float("inf"), "rel_l2": 0.0,
             "accuracy": metrics.classifier_accuracy(ref, labels, clf)}]
    grid = [("uncached", ref)]
    pipe = build_pipeline(transformer)
    for name in args.policy or list(FLUX_POLICIES):
        preset, desc = FLUX_POLICIES[name]
        policy = load_policy(preset)
        log(f"[demo] {name} ({desc}); compile_pipeline(policy={preset!r}, regions='stack', inner={args.inner!r}): "
            "compiling + warm-up ...")
        torch._dynamo.reset()
        handle = compile_pipeline(pipe, policy=policy, regions="stack", inner=args.inner)
        flux_sample(pipe, labels, **kw)
        handle.reset()
        log(f"[demo] {name}: sampling ...")
        imgs, secs = _timed(lambda: flux_sample(pipe, labels, **kw))
        stats = handle.stats()
        total = stats["total"]
        rows.append({
            "policy": name, "regions": "stack", "computes": total["compute"], "steps": total["steps"],
            "wall_s": secs, "speedup": ref_s / secs, "psnr_db": metrics.psnr(imgs, ref),
            "rel_l2": metrics.relative_l2(imgs, ref), "accuracy": metrics.classifier_accuracy(imgs, labels, clf),
        })
        grid.append((name, imgs))
        if isinstance(policy, AutoPolicy):
            trace = report.decision_trace(stats["transformer"], threshold=policy.threshold)
            report.plot_trace(trace, out / "decisions.png", title=f"auto (tau={policy.threshold:g})")
            rows[-1]["trace"] = trace
        handle.remove()
    meta = {"samples": labels.numel(), "device": str(device), "pipeline": "diffusers.FluxPipeline (vae=None, "
            "output_type='latent', true CFG)", "scheduler": dict(FLUX_SCHEDULER_CONFIG)}
    return _finish(args, out, rows, grid, meta, log)


def run_dit(args) -> list[dict]:
    """The dit path (the custom DiT and its own Euler loop), unchanged."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    model = load_model(device)
    clf = load_classifier(device)
    labels = torch.arange(10).repeat_interleave(args.per_class)
    noise = torch.randn(labels.numel(), model.in_channels, model.sample_size, model.sample_size,
                        generator=torch.Generator().manual_seed(args.seed))
    kw = dict(num_steps=args.steps, cfg_scale=args.cfg, shift=args.shift, noise=noise)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    log(f"[demo] uncached: {labels.numel()} samples, {args.steps} steps, CFG {args.cfg}, device {device}, "
        f"compiled with inner={args.inner} alone")
    torch._dynamo.reset()
    plain = torch.compile(model, backend=args.inner)  # the same compiler, no caching: a fair baseline
    sample(plain, labels, **dict(kw, num_steps=2))  # warm-up (compiles)
    ref, ref_s = _timed(lambda: sample(plain, labels, **kw))
    rows = [{"policy": "uncached", "regions": "-", "computes": args.steps, "steps": args.steps,
             "wall_s": ref_s, "speedup": 1.0, "psnr_db": float("inf"), "rel_l2": 0.0,
             "accuracy": metrics.classifier_accuracy(ref, labels, clf)}]
    grid = [("uncached", ref)]
    for name in args.policy or list(POLICIES):
        make, regions, desc = POLICIES[name]
        policy = make(args.steps)
        log(f"[demo] {name} ({desc}); regions={regions}, inner={args.inner}: compiling + warm-up ...")
        torch._dynamo.reset()
        backend = taylorseer_backend(policy=policy, regions=regions, inner=args.inner, num_steps=args.steps)
        compiled = torch.compile(model, backend=backend)
        sample(compiled, labels, num_steps=args.steps, cfg_scale=args.cfg, shift=args.shift, noise=noise)
        backend.reset()
        log(f"[demo] {name}: sampling ...")
        imgs, secs = _timed(lambda: sample(compiled, labels, **kw))
        stats = backend.stats()
        rows.append({
            "policy": name, "regions": regions, "computes": stats["compute"], "steps": stats["steps"],
            "wall_s": secs, "speedup": ref_s / secs, "psnr_db": metrics.psnr(imgs, ref),
            "rel_l2": metrics.relative_l2(imgs, ref), "accuracy": metrics.classifier_accuracy(imgs, labels, clf),
        })
        grid.append((name, imgs))
        if isinstance(policy, AutoPolicy):
            trace = report.decision_trace(stats, threshold=policy.threshold)
            report.plot_trace(trace, out / "decisions.png", title=f"auto (tau={policy.threshold:g})")
            rows[-1]["trace"] = trace
    meta = {"shift": args.shift, "samples": labels.numel(), "device": str(device)}
    return _finish(args, out, rows, grid, meta, log)


def main(argv: list[str] | None = None) -> None:
    run(_parse(argv))


if __name__ == "__main__":
    main()
