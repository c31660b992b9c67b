"""``check_cache``: a property-based check of one cache configuration on the user's own pipeline.

Per case drawn by hypothesis (see :class:`~taylorseer_fx.testing.cases.CaseSpace`) it runs the target
uncached, under the never-forecast policy and twice under ``policy``, and checks:

* ``never``: the never-forecast run equals the uncached run (bit-equal with the eager inner backend,
  within the dtype's tolerance otherwise) and forecast no step;
* ``error``: the cached run did not raise; ``shape``: its output has the uncached output's shape;
  ``finite``: it is finite wherever the uncached output is;
* ``tolerance``: relative L2 error ``||y - y_ref|| / ||y_ref||`` <= ``tolerance`` (and PSNR >=
  ``min_psnr``, with the reference's value range as the peak; and ``metric(y, y_ref) <= metric_max``);
* ``schedule`` (fixed and mask policies): each denoiser computed exactly ``policy.compute_steps(n)``,
  ``n`` the steps the run took, counted from its first step;
* ``forecasts``: the share of forecast steps is >= ``min_forecast`` (default: at least one); on a run
  shorter than an AutoPolicy's ``min_steps``: no step forecast at all;
* ``repeatable``: the second run gave the same output and decisions;
* ``released``: nothing stays cached once the generation ended.

A failing case is shrunk by hypothesis to the smallest one (fewest steps, smallest batch, first seed
and input) and reported as the call to paste.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from hypothesis import HealthCheck, Phase, Verbosity, example, given, settings

from ..policy.auto import AutoPolicy
from ..policy.presets import load_policy, policy_to_dict
from ..runtime.report import format_table
from ..integrations.targets import Case
from .cases import CaseSpace
from ..integrations.measures import psnr, relative_l2
from ..integrations.targets import make_target

__all__ = ["CheckResult", "Row", "check_cache", "relative_l2", "psnr"]

CHECKS = ("never", "error", "shape", "finite", "tolerance", "metric", "schedule", "forecasts", "repeatable",
          "released", "baseline")

#: relative L2 allowed between a never-forecast run and the uncached run with a non-eager inner
#: backend (reordered reductions), by output dtype of the model
NEVER_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10, torch.float16: 5e-3, torch.bfloat16: 3e-2}


@dataclass
class Row:
    """One case checked: its ``case``, the ``call`` to paste, ``steps`` run, ``computes`` and
    ``forecasts`` (first denoiser), ``error`` (relative L2), ``psnr``, ``metric``, ``wall_s`` of the
    cached and ``plain_s`` of the uncached run, ``decisions`` ({denoiser: "CCF.."}) and ``failures``
    ([(check, message)])."""

    case: Case
    call: str
    steps: int = 0
    computes: int = 0
    forecasts: int = 0
    error: float = math.nan
    psnr: float = math.nan
    metric: float | None = None
    wall_s: float = 0.0
    plain_s: float = 0.0
    decisions: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {"case": self.case.to_dict(), "call": self.call, "steps": self.steps, "computes": self.computes,
                "forecasts": self.forecasts, "error": _num(self.error), "psnr": _num(self.psnr),
                "metric": _num(self.metric), "wall_s": self.wall_s, "plain_s": self.plain_s,
                "decisions": self.decisions, "failures": [list(f) for f in self.failures]}


def _num(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else (
        str(v) if isinstance(v, float) and math.isinf(v) else v)


class _CaseFailed(AssertionError):
    def __init__(self, row: Row):
        super().__init__("; ".join(f"{c}: {m}" for c, m in row.failures))
        self.row = row


@dataclass
class CheckResult:
    """What :func:`check_cache` found: ``rows`` (every case run, in order, shrinking included),
    ``shrunk`` (the smallest failing case hypothesis found, or None), ``ok``, ``failures``,
    :meth:`table`, :meth:`to_dict` / :meth:`write_json` and :meth:`assert_ok`."""

    target: str
    policy: Any
    tolerance: float
    rows: list = field(default_factory=list)
    shrunk: Row | None = None
    baseline_problems: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.shrunk is None and not self.baseline_problems and all(r.ok for r in self.rows)

    @property
    def failures(self) -> list:
        """The failing rows, the shrunk one first."""
        bad = [r for r in self.rows if not r.ok and r is not self.shrunk]
        return ([self.shrunk] if self.shrunk is not None else []) + bad

    def table(self) -> str:
        cols = ["steps", "computes", "forecasts", "error", "psnr", "wall_s", "plain_s", "case", "result"]
        rows = [{**{c: getattr(r, c) for c in cols[:7]}, "case": r.case.short(),
                 "result": "ok" if r.ok else ",".join(sorted({c for c, _ in r.failures}))} for r in self.rows]
        return format_table(rows, cols)

    def summary(self) -> str:
        n = len(self.rows)
        if self.ok:
            return f"check_cache({self.target}, {self.policy!r}): {n} cases, all passed"
        lines = [f"check_cache({self.target}, {self.policy!r}): FAILED"]
        if self.shrunk is not None:
            lines.append(f"smallest failing case: {self.shrunk.call}")
            lines += [f"  {c}: {m}" for c, m in self.shrunk.failures]
        lines += [f"  baseline: {p}" for p in self.baseline_problems]
        return "\n".join(lines)

    def assert_ok(self) -> "CheckResult":
        """Raise AssertionError naming the smallest failing case (the call to paste) unless :attr:`ok`."""
        if not self.ok:
            raise AssertionError(self.summary() + "\n" + self.table())
        return self

    def to_dict(self) -> dict:
        return {"target": self.target, "policy": policy_to_dict(self.policy), "tolerance": self.tolerance,
                "ok": self.ok, "shrunk": self.shrunk.to_dict() if self.shrunk else None,
                "baseline_problems": list(self.baseline_problems), "rows": [r.to_dict() for r in self.rows]}

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))
        return path


def _schedule(policy, num_steps: int, first_step: int) -> list:
    """The steps a fixed policy computes in a run of ``num_steps`` for a denoiser that joins at
    ``first_step`` (its warm-up counted from there, the cooldown from the run's end), as the runtime
    starts it; ``policy.compute_steps(num_steps)`` when it joins at 0."""
    sched = policy.start(num_steps, first_step=first_step)
    return [s for s in range(first_step, num_steps) if sched.decide(s)]


def _same(a: torch.Tensor, b: torch.Tensor, exact: bool, tol: float) -> bool:
    if a.shape != b.shape:
        return False
    if exact:
        return torch.equal(a, b) or bool(torch.equal(a.isnan(), b.isnan()) and torch.equal(
            torch.nan_to_num(a), torch.nan_to_num(b)))
    return relative_l2(a, b) <= tol


class _Checker:
    """The per-case checks of :func:`check_cache` (one instance per call)."""

    def __init__(self, target, policy, cfg: dict):
        self.target, self.policy, self.cfg = target, policy, cfg
        self.never = load_policy("never")
        self.fixed = not isinstance(policy, AutoPolicy) and not policy.never_forecasts

    def run(self, case: Case) -> Row:
        cfg, row = self.cfg, Row(case, self.target.call_text(case))
        fail = lambda check, msg: row.failures.append((check, msg))  # noqa: E731
        t0 = time.perf_counter()
        ref = self.target.plain(case)
        row.plain_s = time.perf_counter() - t0
        exact = cfg["inner"] == "eager"
        tol = cfg["never_tolerance"] if cfg["never_tolerance"] is not None else NEVER_TOLERANCE.get(
            cfg["dtype"], 1e-4)
        (never,) = self.target.cached(case, self.never, repeat=1)
        if never.error:
            fail("never", f"the never-forecast run raised {never.error}")
        elif not _same(never.output, ref, exact, tol):
            how = "bit-equal" if exact else f"within {tol:g}"
            fail("never", f"the never-forecast run is not {how} to the uncached run "
                          f"(relative L2 {relative_l2(never.output, ref) if never.output.shape == ref.shape else 'shape'})")
        if any("F" in d for d in never.decisions.values()):
            fail("never", f"the never-forecast policy forecast: {never.decisions}")
        first, second = self.target.cached(case, self.policy, repeat=2)
        row.wall_s = first.wall_s
        if first.error:
            fail("error", f"the cached run raised {first.error}")
            return row
        row.decisions = dict(first.decisions)
        row.steps = max((first.first_steps[n] + len(d) for n, d in first.decisions.items()), default=0)
        row.computes = sum(d.count("C") for d in first.decisions.values())
        row.forecasts = sum(d.count("F") for d in first.decisions.values())
        y = first.output
        if y.shape != ref.shape:
            fail("shape", f"output shape {tuple(y.shape)}, uncached {tuple(ref.shape)}")
            return row
        bad = ~torch.isfinite(y) & torch.isfinite(ref)
        if bool(bad.any()):
            fail("finite", f"{int(bad.sum())} of {y.numel()} output values are not finite where the uncached "
                           "output is")
        row.error, row.psnr = relative_l2(y, ref), psnr(y, ref)
        if not row.error <= cfg["tolerance"]:
            fail("tolerance", f"relative L2 error {row.error:.4g} > tolerance {cfg['tolerance']:g}")
        if cfg["min_psnr"] is not None and not row.psnr >= cfg["min_psnr"]:
            fail("tolerance", f"PSNR {row.psnr:.2f} dB < min_psnr {cfg['min_psnr']:g} dB")
        if cfg["metric"] is not None:
            row.metric = float(cfg["metric"](y, ref))
            if cfg["metric_max"] is not None and not row.metric <= cfg["metric_max"]:
                fail("metric", f"metric {row.metric:.4g} > metric_max {cfg['metric_max']:g}")
        if self.fixed:
            for name, d in first.decisions.items():
                k = first.first_steps[name]
                want = _schedule(self.policy, row.steps, k)
                got = [k + i for i, c in enumerate(d) if c == "C"]
                if got != want or "-" in d:
                    fail("schedule", f"{name} computed steps {got} of {row.steps} (from step {k}), the policy's "
                                     f"schedule is {want}")
        calls = row.computes + row.forecasts
        share = row.forecasts / calls if calls else 0.0
        need = cfg["min_forecast"]
        p = self.policy
        if isinstance(p, AutoPolicy) and row.steps < p.min_steps and row.steps not in dict(p.placements or ()):
            if row.forecasts:              # too short to forecast well: the policy must compute every step
                fail("forecasts", f"forecast {row.forecasts} steps of a {row.steps}-step run, shorter than "
                                  f"min_steps={p.min_steps} (every step must compute)")
        elif (need is None and row.forecasts == 0) or (need is not None and share < need):
            fail("forecasts", f"forecast {row.forecasts} of {calls} steps (share {share:.2f}), "
                              f"{'at least one' if need is None else f'at least {need:g}'} required")
        if second.error or second.output is None or not _same(second.output, y, exact, tol) \
                or second.decisions != first.decisions:
            what = second.error or (f"decisions {second.decisions} then {first.decisions}"
                                    if second.decisions != first.decisions else
                                    f"outputs differ by {relative_l2(second.output, y):.3g} (relative L2)")
            fail("repeatable", f"the same case run again differs: {what}")
        left = max(first.memory_bytes, second.memory_bytes)
        if left:
            fail("released", f"{left} bytes stay cached after the generation ended")
        return row


def check_cache(target, policy, *, inputs: Sequence | None = None, sample: Callable | None = None,
                steps=(10, 30), seeds=range(0, 1000), batch_sizes=None, resolutions=None, strengths=None,
                guidance=None, guidance_arg: str = "guidance_scale", vary: Mapping | None = None,
                tolerance: float = 0.1, min_psnr: float | None = None, min_forecast: float | None = None,
                metric: Callable | None = None, metric_max: float | None = None, examples: int = 10,
                inner="eager", regions=None, never_tolerance: float | None = None, derandomize: bool = True,
                baseline=None, baseline_key: str | None = None, progress: Callable | None = None,
                **options) -> CheckResult:
    """Check one cache configuration (``policy``: a Policy, preset name or TOML path) on ``target``.

    ``target``: a diffusers pipeline (uncompiled; ``inputs`` are keyword dicts for it, default one
    prompt) or a model with ``sample(model, case) -> output`` (``inputs``: anything; ``case.input``
    indexes them). Varied per case (each a value, a list, a ``(lo, hi)``/``"lo:hi"`` int range or a
    hypothesis strategy; None: the pipeline's default): ``steps``, ``seeds``, ``batch_sizes``,
    ``resolutions`` (ints or (height, width)), ``strengths`` (img2img), ``guidance`` (passed as
    ``guidance_arg``), ``vary`` ({keyword: values}). ``tolerance``: the largest relative L2 error
    against the uncached run; ``min_psnr`` (dB); ``metric(y, y_ref) -> float`` (e.g. LPIPS) with
    ``metric_max``; ``min_forecast``: the smallest share of forecast steps (default: one forecast).
    ``examples``: cases hypothesis draws (shrinking runs more). ``inner``: the inner backend (eager by
    default: the never-forecast run must then be bit-equal; pass "inductor" to check what you deploy).
    ``regions`` and ``options`` go to the backend. ``baseline``: a :class:`~taylorseer_fx.testing.
    baseline.Baseline` to compare with and record to, under ``baseline_key``. ``progress(row)`` is
    called after each case. Returns a :class:`CheckResult` (``assert_ok()`` raises)."""
    policy = load_policy(policy)
    for name, v in (("tolerance", tolerance), ("examples", examples)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise ValueError(f"check_cache: {name} must be a number > 0, got {v!r}")
    if min_forecast is not None and (isinstance(min_forecast, bool) or not isinstance(min_forecast, (int, float))
                                     or not 0 <= min_forecast <= 1):
        raise ValueError(f"check_cache: min_forecast must be None or a share in [0, 1], got {min_forecast!r}")
    if baseline is not None and not isinstance(baseline_key, str):
        raise ValueError(f"check_cache: a baseline needs baseline_key, a str naming this check, got {baseline_key!r}")
    runner, n_inputs = make_target(target, inputs, sample, who="check_cache", guidance_arg=guidance_arg,
                                   inner=inner, regions=regions, options=options)
    space = CaseSpace(steps, seeds, n_inputs, batch_sizes, resolutions, strengths, guidance, vary or {})
    dtype = next((p.dtype for p in _module_of(target).parameters()), torch.float32)
    cfg = dict(inner=inner if isinstance(inner, str) else "custom", tolerance=float(tolerance), min_psnr=min_psnr,
               metric=metric, metric_max=metric_max, min_forecast=min_forecast, never_tolerance=never_tolerance,
               dtype=dtype)
    checker = _Checker(runner, policy, cfg)
    result = CheckResult(runner.name, policy, float(tolerance))

    def one(case: Case) -> None:
        row = checker.run(case)
        result.rows.append(row)
        if progress is not None:
            progress(row)
        if not row.ok:
            raise _CaseFailed(row)

    explicit = baseline.cases(baseline_key) if baseline is not None else []
    test = given(space.strategy())(one)
    for c in explicit:
        test = example(c)(test)
    test = settings(max_examples=int(examples), deadline=None, database=None, derandomize=derandomize,
                    verbosity=Verbosity.quiet, report_multiple_bugs=False, suppress_health_check=list(HealthCheck),
                    phases=(Phase.explicit, Phase.generate, Phase.shrink))(test)
    try:
        test()
    except _CaseFailed as e:
        result.shrunk = e.row
    if baseline is not None:
        result.baseline_problems = baseline.compare(baseline_key, result)
        if result.ok:                  # a failing check is never what later runs are held to
            baseline.record(baseline_key, result)
    return result


def _module_of(target) -> torch.nn.Module:
    if isinstance(target, torch.nn.Module):
        return target
    for name in ("transformer", "unet"):
        if isinstance(getattr(target, name, None), torch.nn.Module):
            return getattr(target, name)
    return torch.nn.Module()
