"""Shared helpers of the benchmarks: machine setup, tiny diffusers models, the Euler loop, interleaved
timing, table printing and JSON writing.

Benchmarks never import from ``tests/``: the few model configurations they need are written out here.

Timing rules (DESIGN.md §6, these 2-core VMs are shared): one torch thread, the variants of one
comparison interleaved in one process (round-robin, the order rotated every repetition), medians
reported, and ratios taken between medians measured side by side.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------ setup

def setup(threads: int = 1) -> None:
    """One torch thread (two were 1.5-3x slower and erratic on these VMs); quiet known warnings."""
    torch.set_num_threads(threads)
    warnings.filterwarnings("ignore", message=".*should be kept in float32.*")
    warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import diffusers
        dver = diffusers.__version__
    except ImportError:  # pragma: no cover
        dver = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except Exception:  # pragma: no cover
        commit = None
    return {
        "cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__, "diffusers": dver,
        "platform": platform.platform(), "commit": commit,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------------ models

class TinyModel:
    """A tiny random-weight diffusers transformer with fixed conditioning and a flow-matching loop.

    ``call(model, x, sigma)`` runs one denoiser call at noise level ``sigma`` (a float in [0, 1]);
    the timestep passed to the model is in the family's own units (Flux: sigma, DiT: 1000 * sigma),
    always as a float32 tensor of shape (batch,) so a loop never recompiles."""

    def __init__(self, name: str, family: str, model: torch.nn.Module, cond: dict, latent_shape: tuple,
                 timestep_scale: float, describe: str):
        self.name = name
        self.family = family
        self.model = model
        self.cond = cond
        self.latent_shape = latent_shape
        self.timestep_scale = timestep_scale
        self.describe = describe

    def noise(self, seed: int = 2) -> torch.Tensor:
        return torch.randn(*self.latent_shape, generator=torch.Generator().manual_seed(seed))

    def call(self, model, x: torch.Tensor, sigma: float) -> torch.Tensor:
        t = torch.full((x.shape[0],), float(sigma) * self.timestep_scale, dtype=torch.float32)
        return model(hidden_states=x, timestep=t, return_dict=False, **self.cond)[0]

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def _finish(model: torch.nn.Module) -> torch.nn.Module:
    return model.eval().requires_grad_(False)


def make_flux_tiny(seed: int = 0) -> TinyModel:
    """The tiny Flux of ``examples/flux_tiny.py``: 2 dual + 2 single blocks, hidden 64, 64 image + 16
    text tokens."""
    from diffusers import FluxTransformer2DModel

    h = w = 8
    txt, ch = 16, 16
    torch.manual_seed(seed)
    model = _finish(FluxTransformer2DModel(
        patch_size=1, in_channels=ch, num_layers=2, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=4, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=False,
        axes_dims_rope=(4, 6, 6)))
    g = torch.Generator().manual_seed(seed + 1)
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    cond = dict(encoder_hidden_states=torch.randn(1, txt, 32, generator=g),
                pooled_projections=torch.randn(1, 32, generator=g),
                img_ids=img_ids.reshape(h * w, 3), txt_ids=torch.zeros(txt, 3))
    return TinyModel("flux-tiny", "flux", model, cond, (1, h * w, ch), 1.0,
                     "Flux 2+2 blocks, hidden 64, 64 img + 16 txt tokens")


def make_dit_large(seed: int = 0, hidden_heads: int = 6, layers: int = 6, sample: int = 16) -> TinyModel:
    """A larger tiny DiT (diffusers ``DiTTransformer2DModel``): hidden 6 x 64 = 384, 6 blocks, a 16x16
    latent in 2x2 patches (64 tokens), class-conditioned. ~30 ms per eager call on one CPU thread, so
    compute dominates the per-call Python overhead."""
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(seed)
    model = _finish(DiTTransformer2DModel(
        num_attention_heads=hidden_heads, attention_head_dim=64, in_channels=4, out_channels=4,
        num_layers=layers, sample_size=sample, patch_size=2, num_embeds_ada_norm=10))
    cond = dict(class_labels=torch.tensor([3], dtype=torch.long))
    tokens = (sample // 2) ** 2
    return TinyModel("dit-384x6", "dit", model, cond, (1, 4, sample, sample), 1000.0,
                     f"DiT {layers} blocks, hidden {hidden_heads * 64}, {tokens} tokens")


MODELS: dict[str, Callable[[], TinyModel]] = {"flux-tiny": make_flux_tiny, "dit-384x6": make_dit_large}


# ------------------------------------------------------------------------------------------ loop

def sigmas(num_steps: int, shift: float = 3.0) -> list[float]:
    """Flow-matching sigmas from 1 to 0 with the SD3/Flux time shift (num_steps + 1 values)."""
    s = torch.linspace(1.0, 0.0, num_steps + 1)
    return (shift * s / (1 + (shift - 1) * s)).tolist()


@torch.no_grad()
def euler(tm: TinyModel, model, noise: torch.Tensor, num_steps: int, before_call=None) -> torch.Tensor:
    """x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v(x_i, sigma_i). ``before_call(i)`` returns an optional
    context manager entered around call ``i`` (diffusers' ``cache_context``)."""
    s = sigmas(num_steps)
    x = noise.clone()
    for i in range(num_steps):
        if before_call is not None:
            with before_call(i):
                v = tm.call(model, x, s[i])
        else:
            v = tm.call(model, x, s[i])
        x = x + (s[i + 1] - s[i]) * v
    return x


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


# ------------------------------------------------------------------------------------------ timing

class Clock:
    """Wall time (``perf_counter``, what the benchmarks report) and this thread's CPU time
    (``thread_time``: blind to the time the VM's other processes take the core, a robustness check)."""

    def __init__(self):
        self.w, self.c = time.perf_counter(), time.thread_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.w, time.thread_time() - self.c


def interleave(variants: dict[str, Callable[[], object]], reps: int) -> dict[str, dict[str, list[float]]]:
    """Time every variant ``reps`` times, round-robin, rotating the order every repetition so that no
    variant always runs first or last. A variant returning a ``(wall, cpu)`` pair timed itself (to leave
    set-up such as a state reset out); otherwise its whole call is timed.
    Returns ``{name: {"wall": [s, ...], "cpu": [s, ...]}}``."""
    names = list(variants)
    times = {n: {"wall": [], "cpu": []} for n in names}
    for r in range(reps):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            clock = Clock()
            out = variants[n]()
            w, c = out if isinstance(out, tuple) and len(out) == 2 else clock.stop()
            times[n]["wall"].append(w)
            times[n]["cpu"].append(c)
    return times


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def iqr_rel(xs: Sequence[float]) -> float:
    """Interquartile range relative to the median: the run-to-run noise of one measurement."""
    if len(xs) < 4:
        return (max(xs) - min(xs)) / statistics.median(xs) if xs else float("nan")
    q = statistics.quantiles(xs, n=4)
    return (q[2] - q[0]) / statistics.median(xs)


# ------------------------------------------------------------------------------------------ output

def table(headers: Sequence[str], rows: Sequence[Sequence], title: str | None = None) -> str:
    """A GitHub-markdown table (also readable in a terminal)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    if title:
        out.insert(0, f"\n{title}\n")
    return "\n".join(out)


#: the Tensor methods that hand a value to the host (eager ``torch.cond`` reads its predicate with ``__bool__``)
READ_METHODS = ("item", "tolist", "__float__", "__bool__", "__int__")


@contextlib.contextmanager
def counted_host_reads(counter: dict):
    """Counts, into ``counter["reads"]``, every call in the block of a Tensor method that hands a value
    to the host (:data:`READ_METHODS`), by patching them on ``torch.Tensor`` (restored on exit)."""
    counter["reads"] = 0
    saved = {n: getattr(torch.Tensor, n) for n in READ_METHODS}

    def wrap(fn):
        def counted(self, *a, **k):
            counter["reads"] += 1
            return fn(self, *a, **k)
        return counted
    for n in READ_METHODS:
        setattr(torch.Tensor, n, wrap(saved[n]))
    try:
        yield counter
    finally:
        for n, fn in saved.items():
            setattr(torch.Tensor, n, fn)


def _fmt(c) -> str:
    if isinstance(c, float):
        if c != c:
            return "n/a"
        if abs(c) >= 100:
            return f"{c:.0f}"
        if abs(c) >= 1:
            return f"{c:.2f}"
        if abs(c) >= 1e-3 or c == 0:
            return f"{c:.3f}"
        return f"{c:.2e}"
    return "" if c is None else str(c)


def parse_configs(text: str) -> list[tuple[int, float, int]]:
    """``"28:1:3,50:3:6"`` -> ``[(28, 1.0, 3), (50, 3.0, 6)]`` (steps, sigma shift, warm-up), for the
    ``--configs`` option of quality.py, placement.py and extrapolation.py. ValueError on a bad entry."""
    out = []
    for c in text.split(","):
        parts = c.split(":")
        try:
            if len(parts) != 3:
                raise ValueError
            steps, shift, warmup = int(parts[0]), float(parts[1]), int(parts[2])
        except ValueError:
            raise ValueError(f"--configs: each entry must be steps:shift:warmup (e.g. 28:1:3), got {c!r}") from None
        out.append((steps, shift, warmup))
    return out


def write_json(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=_json_default)
        f.write("\n")
    return path


def _json_default(o):
    if isinstance(o, torch.dtype):
        return str(o)
    if isinstance(o, Path):
        return str(o)
    return repr(o)
