"""A JSON baseline of cache checks: each case's decisions and error, compared on later runs.

``Baseline(path)`` loads the file if it exists. For a key (a test's node id), :func:`check_cache`
re-runs the recorded cases first (hypothesis' explicit examples), then compares: a case whose
decisions changed, or whose relative L2 error grew beyond ``error * (1 + margin) + atol``, is a
problem; a policy that changed is one too. Keys not in the file are recorded (when the check
passed); ``bless=True`` records every key afresh (after an upgrade you accept). The file is written
when an entry changes.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from ..policy.presets import policy_to_dict
from ..integrations.targets import Case

__all__ = ["Baseline"]

VERSION = 1


class Baseline:
    """See the module docstring. ``margin``: relative error growth allowed; ``atol``: absolute."""

    def __init__(self, path: str | os.PathLike, *, bless: bool = False, margin: float = 0.1, atol: float = 1e-6):
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or margin < 0:
            raise ValueError(f"Baseline: margin must be a number >= 0, got {margin!r}")
        if isinstance(atol, bool) or not isinstance(atol, (int, float)) or atol < 0:
            raise ValueError(f"Baseline: atol must be a number >= 0, got {atol!r}")
        self.path, self.bless, self.margin, self.atol = Path(path), bool(bless), float(margin), float(atol)
        self.entries: dict = {}
        if self.path.is_file():
            data = json.loads(self.path.read_text())
            if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("entries"), dict):
                raise ValueError(f"Baseline: {self.path} is not a taylorseer_fx baseline (version {VERSION})")
            self.entries = data["entries"]

    def cases(self, key: str) -> list:
        """The cases recorded under ``key`` (none when blessing)."""
        if self.bless or key not in self.entries:
            return []
        return [Case.from_dict(c["case"]) for c in self.entries[key]["cases"]]

    def compare(self, key: str, result) -> list:
        """Problems of ``result`` (a CheckResult) against the entry ``key``: [] when none or not recorded."""
        entry = self.entries.get(key)
        if self.bless or entry is None:
            return []
        problems = []
        if entry["policy"] != policy_to_dict(result.policy):
            problems.append(f"the policy changed from {entry['policy']} (bless a new baseline if intended)")
        rows = {r.case.key(): r for r in result.rows}
        for rec in entry["cases"]:
            case = Case.from_dict(rec["case"])
            row = rows.get(case.key())
            if row is None:
                problems.append(f"{case.short()}: recorded case not run")
                continue
            if row.decisions != rec["decisions"]:
                problems.append(f"{case.short()}: decisions changed from {rec['decisions']} to {row.decisions}")
            limit = rec["error"] * (1 + self.margin) + self.atol
            if not row.error <= limit:
                problems.append(f"{case.short()}: relative L2 error grew from {rec['error']:.4g} to {row.error:.4g} "
                                f"(allowed {limit:.4g}, margin {self.margin:g})")
        return problems

    def record(self, key: str, result) -> bool:
        """Record ``result``'s passing cases under ``key`` when blessing or new; returns whether it did
        (``check_cache`` records only a result that passed)."""
        if not self.bless and key in self.entries:
            return False
        cases = {}
        for r in result.rows:
            if r.ok and math.isfinite(r.error):
                cases[r.case.key()] = {"case": r.case.to_dict(), "decisions": r.decisions, "error": r.error}
        self.entries[key] = {"policy": policy_to_dict(result.policy), "cases": list(cases.values())}
        self.save()
        return True

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"version": VERSION, "entries": self.entries}, indent=1, sort_keys=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self.path)
