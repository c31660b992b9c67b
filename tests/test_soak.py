"""The short soak (``benchmarks/soak.py``): 40 generations through one backend (12 input variants,
sessions and raw loops, interrupted generations, a policy swap) stay flat in RSS, live tensors and
``memory_bytes()`` after every variant is compiled."""

from __future__ import annotations

import json

import pytest

from bench_import import benchmark_module

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")


def test_short_soak_is_flat(tmp_path):
    out = tmp_path / "soak.json"
    with benchmark_module("soak") as soak:
        assert soak.main(["--generations", "40", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["grew"] == [] and res["rows"][-1]["forecast_steps"] > 0
