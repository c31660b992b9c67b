"""What :func:`~taylorseer_fx.testing.check_cache` and :func:`~taylorseer_fx.tune` run: a diffusers
pipeline, or a model with the user's sampling callable, uncached and through the cache.

A :class:`Case` names a run: ``steps`` (``num_inference_steps``), ``seed`` (the generator's), which
of the user's ``inputs`` (an index), and the optional ``batch_size`` (``num_images_per_prompt``),
``resolution`` ((height, width) in pixels), ``strength`` (img2img), ``guidance`` and ``params`` (any
other keyword the user varies). None means "the pipeline's default" and is not passed.

Each target gives, for one :class:`Case`: the uncached output
(:meth:`plain`), the cached runs under a policy (:meth:`cached`: output, per-step decisions, bytes
still cached after the generation ended, wall time) and the call to paste (:meth:`call_text`).
Outputs are float64 CPU tensors (PIL images and numpy arrays converted, values unchanged).
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from ..graph.backend import taylorseer_backend
from .pipeline import BACKENDS, DENOISERS, backend_for, compile_pipeline, options_key
from .pipeline_hooks import HOLDERS
from ..runtime.request import Request
from ..runtime.tally import CAUSES

__all__ = ["Case", "Run", "PipelineTarget", "ModelTarget", "as_tensor", "decisions_of", "make_target"]

#: the backends a ModelTarget has open now (a reused backend is never shared by two opens at once)
_LEASED: weakref.WeakSet = weakref.WeakSet()
_LEASE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Case:
    """One run of the target. Every field but ``steps`` and ``seed`` is optional (None: not varied)."""

    steps: int
    seed: int = 0
    input: int = 0
    batch_size: int | None = None
    resolution: tuple | None = None
    strength: float | None = None
    guidance: float | None = None
    params: tuple = field(default=())      # ((name, value), ...) sorted by name

    @property
    def extra(self) -> dict:
        """``params`` as a dict."""
        return dict(self.params)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resolution"] = list(self.resolution) if self.resolution is not None else None
        d["params"] = {k: v for k, v in self.params}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Case":
        d = dict(d)
        if d.get("resolution") is not None:
            d["resolution"] = tuple(d["resolution"])
        d["params"] = tuple(sorted(dict(d.get("params") or {}).items()))
        return cls(**d)

    def key(self) -> str:
        """A stable text key (baselines are keyed by it)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def short(self) -> str:
        """``steps=7 seed=3 batch=2 ...``: the fields that are set."""
        parts = [f"steps={self.steps}", f"seed={self.seed}", f"input={self.input}"]
        for name, v in (("batch", self.batch_size), ("resolution", self.resolution), ("strength", self.strength),
                        ("guidance", self.guidance)):
            if v is not None:
                parts.append(f"{name}={'x'.join(map(str, v)) if name == 'resolution' else v}")
        parts += [f"{k}={v!r}" for k, v in self.params]
        return " ".join(parts)


@dataclass
class Run:
    """One cached run: ``output`` (None when it raised: ``error``), ``decisions`` ({denoiser: "CFCF.."},
    one letter per step from the denoiser's first step: C computed, F forecast), ``first_steps``
    ({denoiser: its first step, counted from the run's first step: 0 unless it joined mid-run}),
    ``memory_bytes`` left cached after the generation ended, ``wall_s``."""

    output: torch.Tensor | None
    decisions: dict = field(default_factory=dict)
    first_steps: dict = field(default_factory=dict)
    memory_bytes: int = 0
    wall_s: float = 0.0
    error: str | None = None


def as_tensor(out) -> torch.Tensor:
    """A pipeline's or a sampling callable's output as a float64 CPU tensor: ``.images`` / ``.frames``
    of a diffusers output, the first item of a tuple, PIL images (stacked), numpy arrays, tensors."""
    for name in ("images", "frames"):
        if hasattr(out, name):
            out = getattr(out, name)
            break
    if isinstance(out, tuple):
        out = out[0]
    if isinstance(out, torch.Tensor):
        return out.detach().to("cpu", torch.float64)
    import numpy as np

    if isinstance(out, list):
        out = np.stack([np.asarray(x) for x in out])
    return torch.from_numpy(np.asarray(out, dtype=np.float64))


def decisions_of(rows: Sequence[dict]) -> tuple:
    """``(first step, "CCFF..")``: one run's trace rows (stream 0; a step is F when any graph of it
    forecast) from its first step, ``-`` for a step with no row; ``(None, "")`` with no row."""
    steps: dict = {}
    for r in rows:
        if r.get("stream", 0) != 0:
            continue
        s = r["step"]
        steps[s] = "F" if r["decision"] == "forecast" or steps.get(s) == "F" else "C"
    if not steps:
        return None, ""
    lo, hi = min(steps), max(steps)
    return lo, "".join(steps.get(s, "-") for s in range(lo, hi + 1))


def _rebased(found: dict) -> tuple:
    """``({denoiser: decisions}, {denoiser: first step counted from the run's first step})`` from
    ``{denoiser: decisions_of(...)}``; denoisers never called are left out."""
    called = {n: v for n, v in found.items() if v[0] is not None}
    base = min((v[0] for v in called.values()), default=0)
    return {n: v[1] for n, v in called.items()}, {n: v[0] - base for n, v in called.items()}


def _new_rows(backend, calls_before: int) -> list:
    s = backend.stats()
    n = s["calls"] - calls_before
    return s["trace"][-n:] if n > 0 else []


class PipelineTarget:
    """A diffusers pipeline (uncompiled), compiled with :func:`compile_pipeline` for the cached runs
    and restored afterwards (``remove()``). ``inputs``: keyword dicts (prompts, embeddings, ...);
    a case's fields become ``num_inference_steps``, ``generator``, ``num_images_per_prompt``,
    ``height``/``width``, ``strength``, ``guidance_arg`` and its ``params``."""

    def __init__(self, pipe, inputs: Sequence[Mapping[str, Any]], *, who: str = "check_cache",
                 guidance_arg: str = "guidance_scale", inner="eager", regions=None, options: Mapping | None = None):
        if "_taylorseer" in getattr(pipe, "__dict__", {}):
            raise ValueError(f"{who}: pass the pipeline uncompiled (call .remove() on the handle "
                             "compile_pipeline returned): it is compiled for the cached runs and restored")
        if not any(isinstance(getattr(pipe, n, None), torch.nn.Module) for n in DENOISERS):
            raise ValueError(f"{who}: {type(pipe).__name__} has no denoiser among {DENOISERS}")
        self.pipe, self.inputs, self.guidance_arg = pipe, [dict(i) for i in inputs], guidance_arg
        self.inner, self.regions, self.options = inner, regions, dict(options or {})
        self.device = str(getattr(pipe, "device", "cpu"))
        self.name = type(pipe).__name__

    def call_kwargs(self, case: Case) -> dict:
        kw = dict(self.inputs[case.input])
        kw["num_inference_steps"] = case.steps
        kw["generator"] = torch.Generator(device=self.device).manual_seed(case.seed)
        if case.batch_size is not None:
            kw["num_images_per_prompt"] = case.batch_size
        if case.resolution is not None:
            kw["height"], kw["width"] = case.resolution
        if case.strength is not None:
            kw["strength"] = case.strength
        if case.guidance is not None:
            kw[self.guidance_arg] = case.guidance
        kw.update(case.extra)
        return kw

    def call_text(self, case: Case) -> str:
        """The call to paste: ``pipe(**inputs[0], num_inference_steps=7, ..., generator=...)``."""
        inp = self.inputs[case.input]
        simple = all(isinstance(v, (str, int, float, bool, type(None))) for v in inp.values())
        parts = [f"{k}={v!r}" for k, v in inp.items()] if simple else [f"**inputs[{case.input}]"]
        kw = self.call_kwargs(case)
        for k, v in kw.items():
            if k in inp or k == "generator":
                continue
            parts.append(f"{k}={v!r}")
        parts.append(f"generator=torch.Generator({self.device!r}).manual_seed({case.seed})")
        return f"pipe({', '.join(parts)})"

    def plain(self, case: Case) -> torch.Tensor:
        return as_tensor(self.pipe(**self.call_kwargs(case)))

    def cached(self, case: Case, policy, repeat: int = 1) -> list:
        with self.open(policy) as run:
            return [run(case) for _ in range(repeat)]

    @contextmanager
    def open(self, policy):
        """The pipeline compiled once (restored on exit): yields ``run(case, policy=None) -> Run``, each
        run one generation under ``policy`` or the one given (the backends' policy swapped, the same
        compiled graphs)."""
        handle = compile_pipeline(self.pipe, policy=policy, regions=self.regions, inner=self.inner, **self.options)

        def run(case: Case, policy=None) -> Run:
            if policy is not None:
                for b in handle.backends.values():
                    b.policy = policy
            return self._run(handle, case)
        try:
            yield run
        finally:
            handle.remove()

    def _run(self, handle, case: Case) -> Run:
        before = {n: b.stats()["calls"] for n, b in handle.backends.items()}
        t0 = time.perf_counter()
        try:
            out = as_tensor(self.pipe(**self.call_kwargs(case)))
            error = None
        except Exception as e:          # reported as a failure of the case, with the call to paste
            out, error = None, f"{type(e).__name__}: {e}"
        wall = time.perf_counter() - t0
        decisions, first = _rebased({n: decisions_of(_new_rows(b, before[n])) for n, b in handle.backends.items()})
        return Run(out, decisions, first, handle.memory_bytes(), wall, error)


class ModelTarget:
    """A model and the user's ``sample(model, case) -> output``: the uncached runs get the model itself,
    the cached runs ``torch.compile(model, backend=taylorseer_backend(...))``, each run one
    :class:`~taylorseer_fx.runtime.request.Request` with ``num_steps=case.steps`` (closed when it returns).
    ``inputs`` reach ``sample`` as ``case.input`` (an index) -- read them from your own list."""

    def __init__(self, model: torch.nn.Module, sample: Callable, *, who: str = "check_cache", inner="eager",
                 regions="stack",
                 options: Mapping | None = None):
        if not callable(sample):
            raise ValueError(f"{who}: sample must be a callable (model, case) -> output, got {sample!r}")
        self.model, self.sample = model, sample
        self._args = (regions, inner, dict(options or {}))
        # this target's own backend (and the argument check): used where the model's shared one is not free
        self._own = self.backend = taylorseer_backend(policy="never", regions=regions, inner=inner, **self._args[2])
        self.name = type(model).__name__

    def call_text(self, case: Case) -> str:
        return f"sample(model, {case!r})"

    def plain(self, case: Case) -> torch.Tensor:
        return as_tensor(self.sample(self.model, case))

    def cached(self, case: Case, policy, repeat: int = 1) -> list:
        with self.open(policy) as run:
            return [run(case) for _ in range(repeat)]

    @contextmanager
    def open(self, policy):
        """Yields ``run(case, policy=None) -> Run`` (the compiled model, its backend's policy swapped).

        The model is compiled with the backend an earlier target (or ``compile_pipeline``) made for it
        with the same ``regions``, ``inner`` and options, where no one else is using that backend: one
        dynamo cache entry however many checks and tunings run on one model in one process (a new
        backend per call added an entry each, and the ninth call on a model hit dynamo's recompile
        limit and ran uncompiled). Another target open on the model at the same time uses its own backend."""
        backend = self._lease()
        self.backend, self.compiled = backend, torch.compile(self.model, backend=backend)
        backend.policy = policy

        def run(case: Case, policy=None) -> Run:
            if policy is not None:
                backend.policy = policy
            return self._run(case)
        try:
            yield run
        finally:
            with _LEASE_LOCK:
                _LEASED.discard(backend)

    def _lease(self):
        regions, inner, options = self._args
        key = options_key(regions, inner, options)
        with _LEASE_LOCK:
            reused = BACKENDS.get(self.model, {}).get(key) if key is not None else None
            if key is None or reused in _LEASED or HOLDERS.held(self.model) is not None:
                return self._own            # one per target, as every open of it had before: no entry per open
            backend = backend_for(self.model, key, "never", regions, inner, options)
            _LEASED.add(backend)
            return backend

    def _run(self, case: Case) -> Run:
        before = self.backend.stats()["calls"]
        request = Request(num_steps=case.steps)
        t0 = time.perf_counter()
        try:
            with request:
                out = as_tensor(self.sample(self.compiled, case))
            error = None if self.backend.stats()["calls"] > before else (
                "no call of the model reached the cache: sample(model, case) must call the model it is "
                "given, under torch.no_grad() or torch.inference_mode() (with grad enabled every call runs "
                f"uncached); or {CAUSES['never-reached']}")
        except Exception as e:
            out, error = None, f"{type(e).__name__}: {e}"
        finally:
            request.close()
        wall = time.perf_counter() - t0
        decisions, first = _rebased({"model": decisions_of(_new_rows(self.backend, before))})
        return Run(out, decisions, first, self.backend.memory_bytes(), wall, error)


def make_target(target, inputs, sample, *, who: str, guidance_arg: str = "guidance_scale", inner="eager",
                regions=None, options: Mapping | None = None) -> tuple:
    """``(runner, number of inputs)`` for ``who`` (``check_cache``, ``tune``): a :class:`ModelTarget`
    when ``sample`` is given (``inputs``: anything, default one), else a :class:`PipelineTarget`
    (``inputs``: keyword dicts, default one prompt). ValueError naming ``who`` otherwise."""
    if sample is not None:
        runner = ModelTarget(target, sample, who=who, inner=inner, regions=regions or "stack", options=options)
        return runner, (len(inputs) if inputs is not None else 1)
    if not hasattr(target, "scheduler"):
        raise ValueError(f"{who}: target must be a diffusers pipeline, or a model with "
                         "sample=callable(model, case)")
    inputs = inputs if inputs is not None else [{"prompt": "a photograph of an astronaut riding a horse"}]
    if not inputs or not all(isinstance(i, Mapping) for i in inputs):
        raise ValueError(f"{who}: inputs must be a non-empty list of keyword dicts for the pipeline")
    return PipelineTarget(target, inputs, who=who, guidance_arg=guidance_arg, inner=inner, regions=regions,
                          options=options), len(inputs)
