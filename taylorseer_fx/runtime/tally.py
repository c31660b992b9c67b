"""Planned against actual forecasts of one request in one backend, and why they differ.

A pure object (no torch): the runtime records every cached call of a request (its stream, its step,
whether it was forecast) and every cause that cost a forecast (a call run uncached, a restart, a
change of weights ...). When the request ends (``Request.close``: the end of a ``compile_pipeline``
call, of a ``session``), :meth:`Tally.shortfall` compares the forecasts that happened with those the
policy planned -- its schedule replayed over the steps the request ran (fixed and mask policies), or
the forecasts its decisions asked for (adaptive policies) -- and the runtime warns when fewer than
half happened (or raises, ``strict=True``), naming the first cause. A cache that silently does
nothing is the bug this exists for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["CAUSES", "Shortfall", "Tally"]

#: what a warning can name as the cause of missing forecasts (README "When caching is off")
CAUSES = {
    "grad": "grad was enabled at a call, which then ran uncached (sample under torch.no_grad())",
    "no-coordinate": "a graph had no step coordinate and ran uncached (no timestep input was found: pass "
                     "timestep_arg=..., or tell the step with Request.context(step_index=...))",
    "restart": "the cached state restarted during the run (an input's shape changed, the timestep moved "
               "against the run's direction, or a graph was not called at the step before)",
    "weights": "the model's weights changed during the run, so its cached state was dropped",
    "fallback": "a region had no cached state of its stream to forecast from and was computed",
    "never-reached": "no model call reached the backend (dynamo's recompile limit was hit -- see torch's "
                     "'recompile_limit' log line --, the module ran uncompiled, or it was compiled with "
                     "another backend)",
}


@dataclass(frozen=True)
class Shortfall:
    """``forecasts`` of ``planned`` happened; ``cause``: the first cause recorded (a key of
    :data:`CAUSES`), or None."""
    planned: int
    forecasts: int
    cause: str | None

    def message(self) -> str:
        why = CAUSES[self.cause] if self.cause is not None else "no cause was recorded"
        return (f"only {self.forecasts} of the {self.planned} forecasts the policy planned happened in this "
                f"run: {why}")


@dataclass
class Tally:
    """What one request's calls did in one backend."""
    steps: dict = field(default_factory=dict)    # stream key -> {step: forecast (bool)}
    decided: int = 0                             # calls whose plan asked for a forecast
    uncached: int = 0                            # calls that ran uncached (their step unknown)
    causes: dict = field(default_factory=dict)   # cause -> count, in the order first seen

    def record(self, stream, step: int, forecast: bool, decided: bool) -> None:
        """One cached call of ``stream`` (any hashable key) at ``step``."""
        seen = self.steps.setdefault(stream, {})
        seen[step] = seen.get(step, False) or forecast
        self.decided += decided

    def cause(self, name: str, uncached: bool = False) -> None:
        """One occurrence of ``name`` (a key of :data:`CAUSES`); ``uncached``: a call ran uncached."""
        self.uncached += uncached
        if name not in CAUSES:
            raise ValueError(f"Tally.cause: unknown cause {name!r}; known: {sorted(CAUSES)}")
        self.causes[name] = self.causes.get(name, 0) + 1

    @property
    def forecasts(self) -> int:
        return sum(sum(seen.values()) for seen in self.steps.values())

    def planned(self, policy, num_steps: int | None) -> int:
        """The forecasts ``policy`` planned for the steps seen: its schedule replayed from each stream's
        first step seen, when its decisions do not read an estimate; else the forecasts its decisions
        asked for. A run whose every call ran uncached counts one step per call from step 0 (at most
        ``num_steps``); an adaptive policy then plans every step past its warm-up and cool-down."""
        streams = list(self.steps.values())
        if not streams and self.uncached:          # every call uncached: as many steps from step 0
            n = self.uncached if num_steps is None else min(self.uncached, num_steps)
            if policy.reads_estimate:
                return max(n - policy.warmup_steps - policy.cooldown, 0)     # the steps it may forecast
            streams = [dict.fromkeys(range(n), False)]
        elif policy.reads_estimate:
            return self.decided
        total = 0
        for seen in streams:
            steps = sorted(seen)
            try:
                schedule = policy.start(num_steps, steps[0])
            except ValueError:               # a step count the policy needs is not known
                return self.decided
            total += sum(not schedule.decide(s, lambda: 0.0) for s in steps)
        return total

    def shortfall(self, policy, num_steps: int | None, planned: int | None = None) -> Shortfall | None:
        """A :class:`Shortfall` when the policy planned forecasts and fewer than half happened
        (``planned``: :meth:`planned` when the caller has it already)."""
        planned = self.planned(policy, num_steps) if planned is None else planned
        done = self.forecasts
        if planned == 0 or 2 * done >= planned:
            return None
        return Shortfall(planned, done, next(iter(self.causes), None))
