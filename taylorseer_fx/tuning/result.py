"""What :func:`~taylorseer_fx.tune` found: the tuned policy, the measurements per step count, the preset text."""

from __future__ import annotations

import dataclasses

from ..policy.auto import AutoPolicy
from ..policy.presets import policy_to_dict, policy_to_toml
from ..runtime.report import format_table

__all__ = ["VARIANTS", "TuneResult", "chosen_errors"]

#: the variants a step count's preset may hold, each with its (calibration, held-out, fresh-noise)
#: error keys in a tuned cell; the order is the one a tie keeps (the untuned budget's own placement
#: first: tuning that does not validate better is not shipped)
VARIANTS = {"budget": ("calibration_budget_auto", "heldout_budget_auto", "fresh_budget_auto"),
            "placement": ("calibration", "heldout", "fresh"),
            "threshold": ("threshold_calibration", "threshold_heldout", "threshold_fresh")}


def chosen_errors(cell: dict) -> tuple:
    """``(calibration, held-out, fresh-noise)`` errors of the variant a tuned cell chose (held-out
    None without held-out inputs)."""
    return tuple(cell[k] for k in VARIANTS[cell["chosen"]])


@dataclasses.dataclass
class TuneResult:
    """What :func:`~taylorseer_fx.tune` found: ``policy`` (an AutoPolicy with the budget, the chosen
    forecaster and the tuned ``placements`` / ``thresholds``; a step count whose untuned, evenly spaced
    budget validated best holds the budget's own placement), ``cells`` (one dict per step count: the
    placement, its error on the calibration, held-out and fresh-noise cases beside the budget alone
    policy's, the tuned threshold's, the forecaster (``forecast``) and every candidate's start and
    validation errors (``forecasts``), the evaluations run) and ``seconds``."""

    policy: AutoPolicy
    cells: list
    target: str
    seconds: float = 0.0

    def table(self) -> str:
        """Per step count: the forecaster, the tuned placement, the tuned threshold and the budget alone, each
        as mean relative L2 on the calibration / held-out / fresh-noise cases, and which one the preset
        holds (``budget``: the budget's own placement validated best, so the preset pins it)."""
        def trio(c, cal, held, fresh):
            return " / ".join("-" if c[k] is None else f"{c[k]:.4g}" for k in (cal, held, fresh))
        rows = [{"steps": c["steps"], "forecast": c.get("forecast", "-"),
                 "computes": f"{c['computes']} ({c['computes'] / c['steps']:.2f})",
                 "placement": ",".join(map(str, c["placement"])),
                 "placement: cal / held / fresh": trio(c, "calibration", "heldout", "fresh"),
                 "threshold": "-" if c["threshold"] is None else f"{c['threshold']:.4g}",
                 "threshold: cal / held / fresh": trio(c, "threshold_calibration", "threshold_heldout",
                                                       "threshold_fresh"),
                 "budget alone: cal / held / fresh": trio(c, "calibration_budget_auto", "heldout_budget_auto",
                                                          "fresh_budget_auto"),
                 "placement / budget alone: cal / fresh": " / ".join(
                     "-" if c.get(k) is None else f"{c[k]:.3g}" for k in ("gain_calibration", "gain_fresh")),
                 "chosen": c["chosen"], "runs": c["evaluations"]} for c in self.cells]
        cols = ["steps", "forecast", "computes", "placement", "placement: cal / held / fresh", "threshold",
                "threshold: cal / held / fresh", "budget alone: cal / held / fresh",
                "placement / budget alone: cal / fresh", "chosen", "runs"]
        return (f"Tuned on {self.target}: mean relative L2 to the uncached output on the calibration, held-out "
                "and fresh-noise cases; the preset holds the one that validates better (budget alone: the "
                "preset's budget without its tuned placement or threshold, what an untuned length runs)\n"
                + format_table(rows, cols))

    def description(self) -> str:
        parts = []
        for c in self.cells:
            cal, held, fresh = chosen_errors(c)
            what = {"threshold": f"threshold {c['threshold']:g}" if c["threshold"] is not None else "threshold",
                    "budget": "the budget's own placement, validated best"}.get(c["chosen"], "placement")
            parts.append(f"{c['steps']} steps ({what}): calibration {cal:.4g}, fresh noise {fresh:.4g} (budget alone "
                         f"{c['fresh_budget_auto']:.4g})" + ("" if held is None else f", held-out {held:.4g}"))
        forecast = self.cells[0].get("forecast") if self.cells else None
        return (f"Tuned by taylorseer_fx.tune on {self.target}: budget {self.policy.budget!r} for "
                f"{[c['steps'] for c in self.cells]} steps (others: the budget's own placement)"
                + ("" if forecast is None else f", forecast {forecast}") + "; mean relative "
                "L2 to the uncached output: " + "; ".join(parts))

    def to_toml(self) -> str:
        """The preset's text (:func:`~taylorseer_fx.policy.presets.load_policy` reads it back)."""
        return policy_to_toml(self.policy, self.description())

    def write(self, path) -> str:
        """Write the preset TOML to ``path``; returns the path."""
        with open(path, "w") as fh:
            fh.write(self.to_toml())
        return str(path)

    def to_dict(self) -> dict:
        return {"target": self.target, "policy": policy_to_dict(self.policy), "cells": self.cells,
                "seconds": self.seconds}
