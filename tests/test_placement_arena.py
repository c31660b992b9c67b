"""benchmarks/placement_arena.py (issue 15): the coordinate descent keeps the warm-up and the compute
count, moves each compute by at most ``reach`` per move, never returns a worse placement than its
start, and finds the optimum of a separable cost within reach. No model runs here."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench_import import benchmark_module

pytest.importorskip("diffusers")

with benchmark_module("placement_arena") as _pa:
    descend = _pa.descend


@st.composite
def cases(draw):
    steps = draw(st.integers(10, 40))
    warmup = draw(st.integers(1, 4))
    free = sorted(draw(st.sets(st.integers(warmup, steps - 1), min_size=1, max_size=min(6, steps - warmup))))
    target = sorted(draw(st.sets(st.integers(warmup, steps - 1), min_size=len(free), max_size=len(free))))
    return steps, warmup, list(range(warmup)) + free, target


@settings(max_examples=60, deadline=None)
@given(cases(), st.integers(1, 3), st.integers(1, 3))
def test_descent_keeps_shape_and_never_worsens(case, reach, sweeps):
    steps, warmup, start, target = case
    cost = lambda cs: sum(abs(a - b) for a, b in zip(cs[warmup:], target))   # noqa: E731
    best = descend(cost, start, warmup, steps, reach, sweeps)
    assert best[:warmup] == start[:warmup] and len(best) == len(start)
    assert best == sorted(set(best)) and best[-1] < steps
    assert cost(best) <= cost(start)


def test_descent_finds_a_separable_optimum_within_reach():
    steps, warmup = 28, 3
    start = [0, 1, 2, 6, 14, 20, 25]
    target = [8, 13, 21, 27]
    cost = lambda cs: sum((a - b) ** 2 for a, b in zip(cs[warmup:], target))   # noqa: E731
    assert descend(cost, start, warmup, steps, reach=2, sweeps=2) == [0, 1, 2] + target
    one = descend(cost, start, warmup, steps, reach=1, sweeps=1)     # one sweep of 1-step moves
    assert one == [0, 1, 2, 7, 13, 21, 26]
