"""``tune``: find where a compute budget's computes go on *your* model, and write it as a preset.

For each step count N the budget fixes how many steps compute (``round(budget * N)``, raised to what
warm-up and cooldown force). The tuner searches *which* ones, on a few calibration inputs:

1. the uncached outputs of the calibration cases (inputs x ``seeds``) are the references;
2. starts of the budget's count are measured -- the budget-auto policy's own placement (its decisions
   on the first calibration case), the even spacing, the even spacing that computes the last step,
   and the threshold rule's placements whose counts bracket the budget's, brought to its count -- and
   the best one is kept;
3. coordinate descent (:func:`~taylorseer_fx.tuning.search.descend`) moves one compute at a time
   while the mean relative L2 error over the calibration cases drops;
4. the placement found is validated on held-out inputs and on the calibration inputs with fresh
   noise (``fresh_seeds``), beside the budget-auto policy on the same cases; so is a threshold tuned
   for the count, and the preset keeps the one that validates better.

The forecaster is searched too (:mod:`~taylorseer_fx.tuning.forecasts`): every candidate is ranked by
its best start (the even placements and the budget's own), the best two are searched in full
(steps 2-4), and the one that validates better is the preset's. Every candidate runs with exactly the
forecaster of the preset written (an ``AutoPolicy`` whose ``placements`` hold it), so what was
measured is what ships. Step counts not tuned fall back to the
budget's own placement (the policy warns once per count). Units: steps are 0-based step indices of a
run, counted from its first step; errors are relative L2 over the whole output.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Callable, Sequence

from ..policy.budget import budget_fraction, target_computes
from ..policy.auto import AutoPolicy
from ..policy.presets import load_policy, policy_to_dict
from ..integrations.measures import relative_l2
from ..integrations.targets import Case, make_target
from .checkpoint import Checkpoint, fingerprint
from .forecasts import FORECASTS, candidates, fields, geomean, ranked
from .result import VARIANTS, TuneResult, chosen_errors
from .search import bracket, descend, even_placement, even_starts, fit_count, golden, pinned_steps

#: thresholds whose rule's placements (brought to the budget's count) are tried as starts
START_THRESHOLDS = (0.01, 0.02, 0.04, 0.06, 0.1, 0.15, 0.25, 0.4, 0.6, 1.0)
#: evaluations of the golden-section search for a tuned threshold
TAU_EVALS = 8

__all__ = ["TuneResult", "tune"]


def _say(progress) -> Callable[[str], None]:
    if progress is True:
        return lambda msg: print(msg, file=sys.stderr, flush=True)
    if callable(progress):
        return progress
    if progress in (False, None):
        return lambda msg: None
    raise ValueError(f"tune: progress must be True, False or a callable(str), got {progress!r}")


def _ints(name: str, value, low: int) -> tuple:
    vals = (value,) if isinstance(value, int) else tuple(value) if hasattr(value, "__iter__") else None
    if not vals or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in vals):
        raise ValueError(f"tune: {name} must be an int >= {low} or a non-empty list of them, got {value!r}")
    if len(set(vals)) != len(vals):          # a repeated seed or count would count its runs twice
        raise ValueError(f"tune: {name} must not repeat a value, got {value!r}")
    return vals


def _base_policy(policy, budget) -> AutoPolicy:
    base = AutoPolicy(budget=budget) if policy is None else load_policy(policy)
    if not isinstance(base, AutoPolicy):
        raise ValueError(f"tune: policy must be an AutoPolicy (or its preset), the forecaster the placement is "
                         f"tuned for, got {base!r}")
    return dataclasses.replace(base, budget=budget, placements=None, thresholds=None)   # a base of its own tuning: untuned


class _Search:
    """The runs of one step count: references, the evaluation of a placement, the validation."""

    def __init__(self, run, refs: dict, base: AutoPolicy, steps: int, store: Checkpoint, say, name=None):
        self.run, self.refs, self.base, self.steps, self.store, self.say = run, refs, base, steps, store, say
        self.name = name      # the forecaster's label, prefixed to its checkpoint keys (None: one forecaster)

    def _key(self, candidate) -> str:
        key = Checkpoint.key(candidate)
        return key if self.name is None else f"{self.name}: {key}"

    def policy(self, placement: tuple) -> AutoPolicy:
        return dataclasses.replace(self.base, placements={self.steps: list(placement)})

    def policy_tau(self, tau: float) -> AutoPolicy:
        return dataclasses.replace(self.base, thresholds={self.steps: tau})

    def evaluate_tau(self, cases: Sequence[Case], count: int) -> Callable[[float], float]:
        """The mean error of the tuned-threshold policy at ``log_tau`` (memoised in the checkpoint)."""
        def value(log_tau: float) -> float:
            def check(c, ran):
                if len(ran) != count:
                    raise RuntimeError(f"tune: the run {c.short()} computed {len(ran)} steps, not the budget's {count}")
            tau = math.exp(log_tau)
            return self._measured(f"threshold {tau:.6g}", self.policy_tau(tau), cases, check)
        return value

    def _measured(self, key, policy, cases: Sequence[Case], check) -> float:
        """The mean error of ``policy`` over ``cases`` (each run's compute steps passed to ``check``),
        read from the checkpoint under ``key`` when it was measured before, else measured and recorded."""
        key = self._key(key)
        got = self.store.get(self.steps, key)
        if got is not None:
            return got
        errs = []
        for c in cases:
            err, ran = self.error(c, policy)
            check(c, ran)
            errs.append(err)
        mean = sum(errs) / len(errs)
        self.store.put(self.steps, key, mean)
        self.say(f"[tune {self.steps} steps] run {len(self.store.values[self.steps])}: {Checkpoint.key(key)} "
                 f"-> {mean:.4g}")
        return mean

    def error(self, case: Case, policy) -> tuple:
        """``(relative L2 of the cached run, its compute steps)``; inf for a non-finite output."""
        r = self.run(case, policy)
        if r.error is not None:
            raise RuntimeError(f"tune: the cached run {case.short()} raised {r.error}")
        decisions = next(iter(r.decisions.values()), "")
        placement = tuple(i for i, d in enumerate(decisions) if d == "C")
        err = relative_l2(r.output, self.refs[case])
        return (err if math.isfinite(err) else math.inf), placement

    def mean(self, cases: Sequence[Case], policy) -> float:
        return sum(self.error(c, policy)[0] for c in cases) / len(cases)

    def evaluate(self, cases: Sequence[Case]) -> Callable[[tuple], float]:
        """The mean error of a placement (memoised in the checkpoint); every run must compute exactly it."""
        def value(placement: tuple) -> float:
            def check(c, ran):
                if ran != placement:
                    raise RuntimeError(f"tune: the run {c.short()} computed steps {list(ran)}, not the placement "
                                       f"{list(placement)} it was given (a denoiser joining mid-run?)")
            return self._measured(placement, self.policy(placement), cases, check)
        return value

def tune(target, inputs: Sequence | None = None, *, budget, steps=28, sample: Callable | None = None,
         holdout: int | None = None, seeds=(0,), fresh_seeds=None, policy=None, reach: int = 2,
         sweeps: int = 2, inner="eager", regions=None, guidance_arg: str = "guidance_scale",
         checkpoint=None, progress=True, forecasts=FORECASTS, **options) -> TuneResult:
    """Search where a compute ``budget`` (a fraction in (0, 1] or ``"4x"``) computes, for each step
    count in ``steps``: a placement (compute steps) and a threshold (the count kept by the budget),
    the one that validates better kept; returns a :class:`TuneResult` (``.policy``, ``.write(path)``
    for the preset).

    ``target``: a diffusers pipeline (uncompiled; ``inputs`` are keyword dicts for it) or a model
    with ``sample(model, case) -> output`` (``case.steps``, ``case.seed``, ``case.input``). The last
    ``holdout`` inputs (default a third, none with fewer than 3) are held out: they validate, never
    search. ``seeds``: the noise seeds of the calibration cases; ``fresh_seeds`` (default seed + 1000)
    the fresh noise of the validation. ``policy``: the AutoPolicy (or preset) whose forecaster and
    warm-up/cooldown/max_forecast_run the placement is tuned for (default ``AutoPolicy(budget=...)``).
    ``forecasts``: forecasters tried beside the policy's own, each a dict of AutoPolicy fields
    (:data:`~taylorseer_fx.tuning.forecasts.FIELDS`; default
    :data:`~taylorseer_fx.tuning.forecasts.FORECASTS`, Hermite and Taylor of orders 2 and 1 from a
    warm-up of one); all are ranked by their best start, the best two searched in full, and the preset
    keeps the one that validates better (``None``: the policy's own only).
    ``reach``/``sweeps``: the descent's moves (steps) and passes. ``checkpoint``: a JSON path; every
    run is recorded there and an interrupted tuning called again resumes (a file of another tuning is
    refused). ``progress``: True (lines on stderr), False, or ``callable(str)``. ``inner``,
    ``regions`` and ``options`` go to the backend, as in :func:`~taylorseer_fx.testing.check_cache`."""
    fraction = budget_fraction(budget)
    step_counts = _ints("steps", steps, 2)
    seeds, reach, sweeps = _ints("seeds", seeds, 0), _ints("reach", reach, 1)[0], _ints("sweeps", sweeps, 1)[0]
    fresh = tuple(s + 1000 for s in seeds) if fresh_seeds is None else _ints("fresh_seeds", fresh_seeds, 0)
    base = _base_policy(policy, budget)
    short = [n for n in step_counts if n < base.min_steps]
    if short:
        raise ValueError(f"tune: steps {short} are below the policy's min_steps={base.min_steps}: runs that short "
                         "compute every step (too few to forecast well), so there is nothing to tune; pass "
                         "policy=AutoPolicy(budget=..., min_steps=0) (on the command line: --policy with a TOML "
                         "that sets min_steps = 0) to forecast them anyway")
    say = _say(progress)
    runner, n_inputs = make_target(target, inputs, sample, who="tune", guidance_arg=guidance_arg, inner=inner,
                                   regions=regions, options=options)
    held = (n_inputs // 3 if n_inputs >= 3 else 0) if holdout is None else _ints("holdout", holdout, 0)[0]
    if held >= n_inputs:
        raise ValueError(f"tune: holdout ({held}) must leave at least one of the {n_inputs} inputs to calibrate on")
    calib_inputs, held_inputs = range(n_inputs - held), range(n_inputs - held, n_inputs)
    forecasters = candidates(base, forecasts, say)
    store = Checkpoint(checkpoint, fingerprint(
        target=runner.name, inputs=list(inputs) if inputs is not None else None, n_inputs=n_inputs, holdout=held,
        seeds=seeds, fresh=fresh, fraction=fraction, policy=policy_to_dict(base), reach=reach, sweeps=sweeps,
        forecasts=[fields(p) for p in forecasters.values()],
        inner=inner if isinstance(inner, str) else repr(inner), regions=repr(regions), options=repr(options)))
    if store.resumed:
        say(f"[tune] resuming from {checkpoint}: {store.resumed} runs already measured")
    t0 = time.perf_counter()
    try:
        cases = {n: _cases(runner, n, calib_inputs, held_inputs, seeds, fresh, say) for n in step_counts}
        finalists, starts = list(forecasters), {}
        if len(forecasters) > 1:
            starts = {name: [_start_error(runner, p, n, fraction, cases[n], store, say, name) for n in step_counts]
                      for name, p in forecasters.items()}
            finalists = ranked(starts)
            say("[tune] forecasters by their best start: " + "; ".join(
                f"{k}: {', '.join(f'{e:.4g}' for e in v)}" for k, v in starts.items())
                + f"; searched in full: {finalists}")
        searched = {}
        for name in finalists:
            tag = name if len(forecasters) > 1 else None
            searched[name] = [_tune_steps(runner, forecasters[name], n, fraction, cases[n], reach, sweeps, store,
                                          say, tag) for n in step_counts]
    except KeyboardInterrupt:
        where = (f"call tune again with checkpoint={str(checkpoint)!r} (or run the same command again) to resume"
                 if checkpoint is not None
                 else "pass checkpoint=PATH to be able to resume")
        say(f"[tune] interrupted after {sum(len(d) for d in store.values.values())} measured candidates; {where}")
        raise
    best = min(searched, key=lambda name: geomean([_validated(c) for c in searched[name]]))
    cells = searched[best]
    for i, c in enumerate(cells):
        c["forecast"] = best
        c["evaluations"] = len(store.values.get(c["steps"], {}))     # every forecaster's runs
        c["forecasts"] = {name: {"start": starts[name][i] if starts else None,     # at its own count (its
                                 "computes": _count(p, fraction, c["steps"]),     # warm-up may raise it)
                                 "validation": _validated(searched[name][i]) if name in searched else None}
                          for name, p in forecasters.items()}
    if len(forecasters) > 1:
        say(f"[tune] forecaster: {best} (validation " + ", ".join(
            f"{k} {geomean([_validated(c) for c in v]):.4g}" for k, v in searched.items()) + ")")
    placements = {c["steps"]: c["placement"] if c["chosen"] == "placement" else c["budget_placement"]
                  for c in cells if c["chosen"] in ("placement", "budget")}
    thresholds = {c["steps"]: c["threshold"] for c in cells if c["chosen"] == "threshold"}
    policy = dataclasses.replace(forecasters[best], placements=placements or None, thresholds=thresholds or None)
    return TuneResult(policy, cells, runner.name, time.perf_counter() - t0)


@dataclasses.dataclass
class _Cases:
    """The cases of one step count and their uncached outputs."""

    calib: list
    held: list
    fresh: list
    refs: dict


def _cases(runner, n, calib_inputs, held_inputs, seeds, fresh, say) -> _Cases:
    calib = [Case(steps=n, seed=s, input=i) for i in calib_inputs for s in seeds]
    held = [Case(steps=n, seed=s, input=i) for i in held_inputs for s in seeds]
    fresh_cases = [Case(steps=n, seed=s, input=i) for i in calib_inputs for s in fresh]
    say(f"[tune {n} steps] {len(calib)} calibration, {len(held)} held-out and {len(fresh_cases)} fresh-noise cases")
    return _Cases(calib, held, fresh_cases, {c: runner.plain(c) for c in calib + held + fresh_cases})


def _validated(cell: dict) -> float:
    """A searched cell's validation error: that of the variant (placement, threshold, budget) it chose."""
    return _validation(*chosen_errors(cell)[1:])


def _count(policy: AutoPolicy, fraction: float, n: int) -> int:
    return target_computes(fraction, n, policy.warmup_steps, policy.cooldown, policy.max_forecast_run)


def _plain_starts(s: "_Search", policy: AutoPolicy, case: Case, n: int, count: int) -> tuple:
    """``(starts, err)``: the starts that need no probe -- the two even placements and the budget's own
    on ``case`` (where it has the count and starts at step 0) -- and that budget run's error."""
    err, own = s.error(case, policy)
    starts = even_starts(n, count, policy.warmup_steps, policy.cooldown, policy.max_forecast_run)
    if len(own) == count and own[0] == 0:
        starts["budget-auto"] = own
    return starts, err


def _start_error(runner, policy, n, fraction, cases: _Cases, store, say, name) -> float:
    """A forecaster's best start for runs of ``n`` steps: the lowest calibration error of
    :func:`_plain_starts` (memoised in the checkpoint, as the search's are)."""
    count = _count(policy, fraction, n)
    with runner.open(policy) as run:
        s = _Search(run, cases.refs, policy, n, store, say, name)
        evaluate = s.evaluate(cases.calib)
        starts, _ = _plain_starts(s, policy, cases.calib[0], n, count)
        return min(evaluate(p) for p in starts.values())


def _probe(search: "_Search", case: Case, base: AutoPolicy) -> list:
    """``[(threshold, placement)]``: the threshold rule's placement on ``case`` for each of
    :data:`START_THRESHOLDS` (one run each)."""
    rule = {"budget": None, "pacing": "even", "final_compute": None}      # the threshold rule: no budget fields
    return [(t, search.error(case, dataclasses.replace(base, threshold=t, **rule))[1])
            for t in START_THRESHOLDS]


def _threshold_starts(probes: list, count: int, n: int, pinned, max_run) -> dict:
    """``{"threshold t": placement}``: the bracketing probes' placements brought to exactly ``count``
    (:func:`~taylorseer_fx.tuning.search.fit_count`)."""
    out = {}
    for pick in bracket(probes, count):
        if pick is None:
            continue
        try:
            out[f"threshold {pick[0]:g}"] = fit_count(pick[1], count, n, pinned, max_run)
        except ValueError:              # no feasible placement of the count from this one
            continue
    return out


#: the variants a step count's preset may hold, in the order a tie keeps them (``result.VARIANTS``)
CHOICES = tuple(VARIANTS)


def choose(options: dict) -> str:
    """The variant with the lowest validation error among ``options`` (``{variant: error}``, variants
    of :data:`CHOICES`); a tie keeps the earlier one in :data:`CHOICES`."""
    return min(options, key=lambda k: (options[k], CHOICES.index(k)))


def _validation(heldout, fresh) -> float:
    """What decides between a tuned placement and a tuned threshold: the mean of the held-out and
    fresh-noise errors (fresh alone without held-out inputs)."""
    vals = [v for v in (heldout, fresh) if v is not None]
    return sum(vals) / len(vals)


def _tune_steps(runner, base, n, fraction, cases: _Cases, reach, sweeps, store, say, name=None) -> dict:
    """The search and validation for runs of ``n`` steps with ``base``'s forecaster (see the module
    docstring); ``name``: its label in the checkpoint and the progress lines (None: the only one)."""
    w, cooldown, max_run = base.warmup_steps, base.cooldown, base.max_forecast_run
    count = _count(base, fraction, n)
    pinned = pinned_steps(n, w, cooldown)
    calib, held, fresh_cases = cases.calib, cases.held, cases.fresh
    say(f"[tune {n} steps]{'' if name is None else f' {name}:'} {count} of {n} steps compute ({count / n:.2f})")
    with runner.open(base) as run:
        s = _Search(run, cases.refs, base, n, store, say, name)
        evaluate = s.evaluate(calib)
        starts, auto_err = _plain_starts(s, base, calib[0], n, count)
        auto_calib = (auto_err + sum(s.error(c, base)[0] for c in calib[1:])) / len(calib)
        forced = count >= n or count == len(pinned)
        if forced:
            start, how = even_placement(n, count, w, cooldown, max_run), "forced"
            say(f"[tune {n} steps] nothing to place: warm-up, cooldown and the budget fix every compute")
            best, best_err = start, evaluate(start)
        else:
            probes = _probe(s, calib[0], base)
            starts.update(_threshold_starts(probes, count, n, pinned, max_run))
            how = min(starts, key=lambda k: evaluate(starts[k]))
            start = starts[how]
            say(f"[tune {n} steps] start from the {how} placement ({evaluate(start):.4g}; budget-auto itself "
                f"{auto_calib:.4g})")
            best, best_err = descend(evaluate, start, n, pinned=pinned, max_run=max_run, reach=reach, sweeps=sweeps)
        heldout_auto = s.mean(held, base) if held else None
        fresh_auto = s.mean(fresh_cases, base)
        tuned = s.policy(best)
        heldout = s.mean(held, tuned) if held else None
        fresh_err = s.mean(fresh_cases, tuned)
        tau = tau_err = tau_held = tau_fresh = None
        if not forced:                  # the threshold rule, its threshold tuned, the count kept by the budget
            lo, hi = bracket(probes, count)
            a = math.log(hi[0] / 1.5) if hi else math.log(START_THRESHOLDS[0])
            b = math.log(lo[0] * 1.5) if lo else math.log(START_THRESHOLDS[-1])
            log_tau, tau_err = golden(s.evaluate_tau(calib, count), min(a, b), max(a, b), TAU_EVALS)
            tau = float(f"{math.exp(log_tau):.6g}")
            tau_held = s.mean(held, s.policy_tau(tau)) if held else None
            tau_fresh = s.mean(fresh_cases, s.policy_tau(tau))
    options = {"placement": _validation(heldout, fresh_err)}
    if tau is not None:
        options["threshold"] = _validation(tau_held, tau_fresh)
    if not base.reads_estimate:      # an evenly spaced budget: its own placement is this count's, whatever the input
        options["budget"] = _validation(heldout_auto, fresh_auto)
    chosen = choose(options)
    cell = {"steps": n, "computes": count, "placement": list(best), "start": how, "start_placement": list(start),
            "calibration": best_err, "calibration_start": store.get(n, s._key(start)),
            "calibration_budget_auto": auto_calib, "heldout": heldout, "heldout_budget_auto": heldout_auto,
            "fresh": fresh_err, "fresh_budget_auto": fresh_auto,
            "fresh_over_calibration": fresh_err / best_err if best_err > 0 else None,
            # the placement's gain over the budget alone, on the cases searched and on fresh noise: equal
            # gains say the search did not overfit (fresh / calibration also holds how hard the new noise is)
            "gain_calibration": best_err / auto_calib if auto_calib > 0 else None,
            "gain_fresh": fresh_err / fresh_auto if fresh_auto > 0 else None,
            "threshold": tau, "threshold_calibration": tau_err, "threshold_heldout": tau_held,
            "threshold_fresh": tau_fresh, "chosen": chosen,
            "budget_placement": None if base.reads_estimate else base.compute_steps(n),
            "evaluations": len(store.values.get(n, {})), "cases": len(calib)}
    say(f"[tune {n} steps] placement {best_err:.4g} on calibration (budget-auto {auto_calib:.4g}); fresh noise "
        f"{fresh_err:.4g} (budget-auto {fresh_auto:.4g})"
        + ("" if heldout is None else f"; held-out {heldout:.4g} (budget-auto {heldout_auto:.4g})"))
    if tau is not None:
        say(f"[tune {n} steps] threshold {tau:g}: {tau_err:.4g} on calibration; fresh noise {tau_fresh:.4g}"
            + ("" if tau_held is None else f"; held-out {tau_held:.4g}") + f"; chosen: the {chosen}")
    if chosen == "budget":
        say(f"[tune {n} steps] the budget's own placement validates best ({options['budget']:.4g}, the tuned "
            f"{min(v for k, v in options.items() if k != 'budget'):.4g}): the preset keeps it")
    return cell
