"""benchmarks/arena.py (issue 14): the quick arena on 2 samples writes a row per family, sane compute
fractions, a zero-error uncached row, and our counted compute fraction agrees with handle.stats()."""

from __future__ import annotations

import json
import sys

import pytest

from bench_import import benchmark_module

pytestmark = pytest.mark.usefixtures("one_thread_fresh_dynamo")

pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")


def test_quick_arena_on_two_samples(tmp_path):
    out, png = tmp_path / "arena.json", tmp_path / "arena.png"
    with benchmark_module("arena") as arena:
        arena.main(["--quick", "--samples", "2", "--out", str(out), "--png", str(png)])
    res = json.loads(out.read_text())
    rows = res["rows"]
    assert res["machine"]["commit"] is not None and res["samples"] == 2 and res["steps"] == [28]
    assert png.stat().st_size > 0
    for fam in ("taylorseer_fx", "diffusers", "cache-dit"):
        assert any(r["family"] == fam for r in rows), fam
    # ours and diffusers must run here; cache-dit rows may be error rows (CI does not install it)
    for fam in ("taylorseer_fx", "diffusers"):
        assert any(r["family"] == fam and r["error"] is None for r in rows), fam
    for r in rows:
        assert (r["error"] is None) == (r["compute_fraction"] is not None), r
        if r["error"] is None:
            assert 0 < r["compute_fraction"] <= 1, r
            assert r["rel_l2"] >= 0 and 0 <= r["accuracy"] <= 1
    (unc,) = [r for r in rows if r["family"] == "uncached"]
    assert unc["rel_l2"] == 0 and unc["compute_fraction"] == 1
    v = res["verification"]
    assert v["agree"] and v["counted"] == pytest.approx(v["stats"]) and 0 < v["counted"] < 1
    assert v["max_abs_diff_all_ours"] == pytest.approx(0, abs=1e-9)
    assert {s["target"] for s in res["summary"]} == {0.25, 0.35, 0.5}


def test_without_cache_dit_its_settings_are_error_rows(monkeypatch):
    monkeypatch.setitem(sys.modules, "cache_dit", None)        # import cache_dit raises ImportError
    with benchmark_module("arena_peers") as peers:
        settings = peers.cache_dit_settings(28, quick=True)
    assert settings
    for method, setting, unit, enable, disable in settings:
        with pytest.raises(ImportError, match="cache-dit not installed"):
            enable(None)
