"""Helpers shared by the policy tests (test_policy.py, test_auto.py)."""

from __future__ import annotations


def forecast_runs(steps: list[int], n: int) -> list[int]:
    """Lengths of the runs of consecutive forecast steps among ``n`` steps whose compute steps are
    ``steps`` (a trailing run included)."""
    computed = set(steps)
    out, cur = [], 0
    for s in range(n):
        if s in computed:
            if cur:
                out.append(cur)
            cur = 0
        else:
            cur += 1
    return out + ([cur] if cur else [])
