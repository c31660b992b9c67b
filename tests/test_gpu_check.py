"""``benchmarks/gpu_check.py`` runs and passes its CPU stand-ins on a machine without a GPU (and
everything on one with a GPU): no host read in a session's loop, one per call without one."""

from __future__ import annotations

import json

import pytest

from bench_import import benchmark_module

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")


def test_gpu_check_passes_what_this_machine_can_run(tmp_path):
    out = tmp_path / "gpu_check.json"
    with benchmark_module("gpu_check") as gpu_check:
        assert gpu_check.main(["--no-pytest", "--reps", "1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    assert res["hot path"]["session_reads"] == 0 and res["hot path"]["forecast_steps"] > 0
    if not res.get("cuda graphs"):
        assert res["hot path"]["raw_loop_reads"] <= 10
