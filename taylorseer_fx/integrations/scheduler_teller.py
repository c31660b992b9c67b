"""Where a pipeline's model call stands, told by its diffusers scheduler.

:class:`SchedulerTeller` turns a scheduler's own state (``step_index``, ``begin_index``, ``order``,
``state_in_first_order``, ``timesteps``) into a :class:`~taylorseer_fx.runtime.request.Told`: the step index
(scheduler steps, not model calls), the stage of a two-evaluation step (Heun, KDPM2) and the
coordinate (the schedule's value, in the scheduler's units). Knows nothing of backends or pipelines.
"""

from __future__ import annotations

import math

from ..runtime.request import Told, nearest_index

__all__ = ["SchedulerTeller"]


class SchedulerTeller:
    """Tells where a model call stands from the pipeline's scheduler: its own index ``k`` into its
    timesteps (``step_index``, else ``begin_index``; before a scheduler's first step without either,
    the index of the model's timestep value in the schedule, else 0). The step is ``k // scheduler.order``
    (Heun-type and KDPM2 schedulers evaluate the model twice per step: ``state_in_first_order`` says
    which stage), the coordinate the schedule's value at ``k`` (forecasts do not depend on its scale,
    so the model may receive t, t / 1000 or 1 - t / 1000)."""

    def __init__(self, scheduler, schedule: list):
        self.scheduler = scheduler
        self.schedule = schedule
        order = getattr(scheduler, "order", 1)
        self.order = order if isinstance(order, int) and order >= 1 else 1

    def __call__(self, told: Told | None) -> Told | None:
        branch = None if told is None else told.branch
        sch = self.scheduler
        stage = 0 if getattr(sch, "state_in_first_order", True) else 1
        k = getattr(sch, "step_index", None)
        if k is None:
            k = getattr(sch, "begin_index", None)
        if k is None:
            # before the scheduler's first step: the model's timestep in the schedule; a value not in
            # it (a model that receives 1 - t / 1000) is the first step (index 0): diffusers'
            # pipelines that start later (img2img) set the scheduler's begin_index
            return Told(branch, stage=stage, locate=lambda v: self.at(branch, self.nearest(v) or 0, stage))
        return self.at(branch, k, stage)

    def at(self, branch, k, stage: int) -> Told | None:
        """The told position of schedule index ``k``, or None when ``k`` is not in the schedule."""
        if not isinstance(k, int) or not 0 <= k < len(self.schedule):
            return None
        return Told(branch, k // self.order, self.schedule[k], stage)

    def nearest(self, value) -> int | None:
        """The schedule index of a model timestep ``value`` that is a schedule value exactly (to float32
        rounding) under a pipeline's scale (t, t / 1000), or None: a value merely near one (a model fed
        1 - t / 1000 can come close to a schedule value by chance) says nothing."""
        if value is None or not math.isfinite(value):
            return None
        found = nearest_index(self.schedule, value)
        if found is None:
            return None
        k, scale = found
        exact = abs(value - scale * self.schedule[k]) <= 1e-5 * max(abs(value), abs(scale * self.schedule[k]))
        return k if exact else None

    def from_context(self, branch: str, step_index) -> Told:
        """What diffusers' ``cache_context(branch, step_index=...)`` tells: the branch, and the step
        when the scheduler keeps no index of its own (its own index wins: it is what indexes its
        timesteps and sigmas)."""
        sch = self.scheduler
        if isinstance(step_index, int) and getattr(sch, "step_index", None) is None \
                and getattr(sch, "begin_index", None) is None:
            return self.at(branch, step_index, 0) or Told(branch)
        return Told(branch)
