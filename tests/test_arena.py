"""benchmarks/arena.py (issue 14): the quick arena on 2 samples writes a row per family, sane compute
fractions, a zero-error uncached row, and our counted compute fraction agrees with handle.stats();
the forecasting peers (arena_forecast_peers.py): the Chebyshev ridge math, the schedules, and that each
adapter is exact when it computes every step and puts back every forward it patched."""

from __future__ import annotations

import json
import sys

import pytest
import torch

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
    # ours, diffusers and Spectrum must run here; cache-dit rows may be error rows (CI does not install it),
    # hicache-pp / SmoothCache are skipped without their packages
    for fam in ("taylorseer_fx", "diffusers", "Spectrum (our implementation)",
                *(f for f in ("hicache-pp", "SmoothCache") if f not in res["skipped"])):
        assert any(r["family"] == fam and r["error"] is None for r in rows), fam
    for r in rows:
        if r["family"] in ("hicache-pp", "SmoothCache", "Spectrum (our implementation)"):
            assert r["error"] is None and not r["leaked"], r
    assert all(set(s) >= {"hicache-pp", "SmoothCache", "Spectrum (our implementation)", "best_peer"}
               for s in res["summary"])
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


# ------------------------------------------------------------------------------------------ forecasting peers

@pytest.fixture(scope="module")
def fp():
    with benchmark_module("arena_forecast_peers") as m:
        yield m


def test_chebyshev_basis_is_cos_of_arccos(fp):
    tau = torch.linspace(-1, 1, 9, dtype=torch.float64)
    x = fp.chebyshev_basis(tau, 4)
    assert x.shape == (9, 5)
    for k in range(5):
        assert torch.allclose(x[:, k], torch.cos(k * torch.arccos(tau)), atol=1e-12)


@pytest.mark.parametrize("degree", [2, 3, 4])
def test_chebyshev_ridge_reproduces_polynomials_of_its_degree(fp, degree):
    g = torch.Generator().manual_seed(degree)
    taus = torch.rand(9, generator=g, dtype=torch.float64) * 1.6 - 1
    coef = torch.randn(degree + 1, 3, generator=g, dtype=torch.float64)       # 3 features
    h = torch.stack([taus ** k for k in range(degree + 1)], 1) @ coef
    for t in (0.95, -0.3, 1.0):                                               # extrapolation too
        w = fp.chebyshev_ridge_weights(taus, t, degree, lam=1e-14)
        want = torch.tensor([t ** k for k in range(degree + 1)], dtype=torch.float64) @ coef
        assert torch.allclose(w @ h, want, atol=1e-6), (t, w @ h, want)
    # a higher degree than the data's is no worse as lambda -> 0; lambda > 0 shrinks towards zero
    w = fp.chebyshev_ridge_weights(taus, 0.9, degree + 1, lam=1e-14)
    assert torch.allclose(w @ h, torch.tensor([0.9 ** k for k in range(degree + 1)], dtype=torch.float64) @ coef,
                          atol=1e-5)


def test_chebyshev_ridge_at_a_computed_point_is_near_its_value(fp):
    taus = torch.linspace(-1, 0.4, 8, dtype=torch.float64)
    h = torch.stack([torch.exp(taus), torch.cos(taus)], 1)
    for j in (0, 4, 7):
        w = fp.chebyshev_ridge_weights(taus, float(taus[j]), 4, lam=1e-7)
        assert torch.allclose(w @ h, h[j], atol=1e-3), (j, w @ h, h[j])
        w = fp.chebyshev_ridge_weights(taus, float(taus[j]), 4, lam=1e-3)     # the arena's: shrinks a little
        assert torch.allclose(w @ h, h[j], atol=0.05) and abs(float(w.sum()) - 1) < 0.02, (j, w @ h, h[j])


def test_chebyshev_ridge_caps_the_degree_at_the_points(fp):
    assert torch.allclose(fp.chebyshev_ridge_weights([0.3], 0.9, 4, lam=1e-12), torch.ones(1, dtype=torch.float64))
    w = fp.chebyshev_ridge_weights([-1.0, 0.0], 1.0, 4, lam=1e-12)          # the line through two points
    assert torch.allclose(w, torch.tensor([-1.0, 2.0], dtype=torch.float64), atol=1e-6)


def test_schedules_land_at_or_just_below_the_targets(fp):
    assert fp.fixed_schedule(10, 4, 1) == [i in (0, 4, 8) for i in range(10)]
    assert fp.fixed_schedule(10, 3, 3) == [i in (0, 1, 2, 5, 8) for i in range(10)]
    assert fp.adaptive_schedule(12, 2, 2, 0.5) == [i in (0, 1, 3, 5, 8, 11) for i in range(12)]   # gaps 2 2 3 3
    assert fp.adaptive_schedule(12, 2, 2, 0) == fp.fixed_schedule(12, 2, 2)
    for steps in (28, 50):
        for t in fp.TARGETS:
            got = [fp.fraction(fp.fixed_schedule(steps, fp.interval_for(steps, t, w), w)) for w in (1, 3)]
            assert max(got) <= t + 1e-9 and max(got) >= t - 0.04, (steps, t, got)
            assert t - 0.1 < fp.fraction(fp.adaptive_schedule(steps, *fp.adaptive_for(steps, t))) <= t + 1e-9


def test_fixed_schedule_is_hicache_decide(fp):
    hp = pytest.importorskip("hicache_pp")
    for steps, interval, first in [(28, 4, 1), (28, 6, 3), (50, 5, 3), (50, 3, 1), (28, 2, 1)]:
        st = hp.hicache_init(num_steps=steps, interval=interval, first_enhance=first)
        st["derivatives"] = {0: torch.zeros(1)}                     # the schedule alone, not the no-anchor guard
        got = []
        for s in range(steps):
            st["step"] = s
            got.append(hp.hicache_decide(st) == "full")
        assert got == fp.fixed_schedule(steps, interval, first)


def test_steps_tracks_step_and_branch(fp):
    tr = fp.Steps(3)
    seen = [tr.observe(torch.tensor([t])) for t in (1.0, 1.0, 0.6, 0.6, 0.3, 0.3, 1.0, 1.0, 0.6)]
    assert seen == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (0, 0), (0, 1), (1, 0)]
    tr = fp.Steps(10)
    assert [tr.observe(t) for t in (0.9, 0.5, 0.8)] == [(0, 0), (1, 0), (0, 0)]     # a rising timestep restarts


@pytest.fixture(scope="module")
def flux():
    from taylorseer_fx.demo.flux_model import load_transformer
    from taylorseer_fx.demo.flux_pipeline import build_pipeline, sample
    torch.set_num_threads(1)
    pipe = build_pipeline(load_transformer())

    def run(steps=6):
        return sample(pipe, [3, 7], num_steps=steps, cfg_scale=3.0)
    return pipe, run, run()


def _peers(fp, steps, every):
    """(name, adapter) per peer; ``every``: compute every step, else forecast / reuse some."""
    sched = [True] * steps if every else fp.fixed_schedule(steps, 2, 1)
    out = [("spectrum", fp.Spectrum(steps, sched, 4)), ("spectrum mix", fp.Spectrum(steps, sched, 3, mix=0.5))]
    if fp.missing("hicache-pp") is None:
        out += [(f"hicache {b}", fp.HiCache(steps, 1 if every else 2, 1, b)) for b in ("dmd", "hermite")]
    if fp.missing("SmoothCache") is None:
        out.append(("smoothcache", fp.SmoothCache(steps, sched)))
    return out


def test_adapters_computing_every_step_are_exact(fp, flux):
    pipe, run, ref = flux
    for name, a in _peers(fp, 6, every=True):
        a.enable(pipe)
        try:
            x = run()
        finally:
            a.disable(pipe)
        assert torch.equal(x, ref), name


def test_adapters_forecast_and_put_back_every_forward(fp, flux):
    pipe, run, ref = flux
    with benchmark_module("arena_peers") as peers:
        before = peers.forward_patches(pipe.transformer)
        for name, a in _peers(fp, 6, every=False):
            a.enable(pipe)
            try:
                x = run()
            finally:
                a.disable(pipe)
            err = float((x - ref).norm() / ref.norm())
            assert 0 < err < 0.2, (name, err)       # it forecast, per branch (0.09-0.14; one state for both: 0.32)
            assert peers.restore_patches(before) == [], name
        assert torch.equal(run(), ref)


def test_restore_patches_puts_back_instance_and_class_forwards(flux):
    pipe, _, _ = flux
    tr = pipe.transformer
    with benchmark_module("arena_peers") as peers:
        before = peers.forward_patches(tr)
        cls = type(tr.transformer_blocks[0])
        orig = vars(cls)["forward"]
        tr.forward = lambda *a, **k: None
        cls.forward = lambda *a, **k: None
        try:
            leaked = peers.restore_patches(before)
        finally:
            cls.forward = orig
        assert sorted(leaked) == ["FluxTransformer2DModel.forward (instance)", "FluxTransformerBlock.forward"]
        assert "forward" not in tr.__dict__ and vars(cls)["forward"] is orig
        tr.transformer_blocks[0].forward = tr.transformer_blocks[0].forward      # a bound class forward: harmless
        assert peers.restore_patches(before) == []
        del tr.transformer_blocks[0].forward


def test_families_select_by_prefix():
    with benchmark_module("arena") as arena:
        assert arena.select(None) == list(arena.FAMILIES)
        assert arena.select("spec, HICACHE,smooth") == ["hicache-pp", "SmoothCache", "Spectrum (our implementation)"]
        assert arena.select("c") == ["cache-dit"]
        for bad in ("s", "x"):                                  # SmoothCache or Spectrum; none
            with pytest.raises(SystemExit, match="matches"):
                arena.select(bad)


def test_families_filter_and_a_missing_package_skips_its_family(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "hicache_pp", None)        # as if hicache-pp were not installed
    out = tmp_path / "arena.json"
    with benchmark_module("arena") as arena:
        arena.main(["--quick", "--samples", "1", "--families", "hicache,spectrum", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["families"] == ["hicache-pp", "Spectrum (our implementation)"]
    assert list(res["skipped"]) == ["hicache-pp"] and "not installed" in res["skipped"]["hicache-pp"]
    assert {r["family"] for r in res["rows"]} == {"uncached", "Spectrum (our implementation)"}
    assert all(r["error"] is None for r in res["rows"])
    best = [s["best_peer"] for s in res["summary"] if s["best_peer"]]
    assert best and all(b["family"] == "Spectrum (our implementation)" for b in best)


def _run(family, method, fraction, err, steps=28):
    return {"steps": steps, "family": family, "method": method, "setting": f"{method} {fraction}",
            "unit": "blocks", "compute_fraction": fraction, "rel_l2": err}


def test_a_partial_run_replaces_its_families_rows_and_the_summary_follows():
    """arena_merge: our re-run rows replace our old ones, the peers' stay, the summary and fronts are
    recomputed from the merged rows, both commits are kept; runs of another arena are refused."""
    with benchmark_module("arena_merge") as m:
        full = {"samples": 4, "steps": [28], "cfg": 3.0, "wall_s": 10.0, "machine": {"commit": "aaa"},
                "rows": [_run("uncached", "uncached", 1.0, 0.0), _run("taylorseer_fx", "fixed stack", 0.25, 0.05),
                         _run("hicache-pp", "HiCache++ DMD", 0.25, 0.04)]}
        part = {"samples": 4, "steps": [28], "cfg": 3.0, "wall_s": 5.0, "machine": {"commit": "bbb"},
                "families": ["taylorseer_fx"],
                "rows": [_run("uncached", "uncached", 1.0, 0.0), _run("taylorseer_fx", "fixed stack", 0.25, 0.03)]}
        out = m.merge(full, part, "note")
        ours = [r for r in out["rows"] if r["family"] == "taylorseer_fx"]
        assert [r["rel_l2"] for r in ours] == [0.03] and len(out["rows"]) == 3
        cell = next(s for s in out["summary"] if s["target"] == 0.25)
        assert cell["taylorseer_fx"]["rel_l2"] == 0.03 and cell["best_peer"]["rel_l2"] == 0.04
        assert cell["ours_over_best_peer"] == pytest.approx(0.75)
        assert out["fronts"]["28"]["family"]["taylorseer_fx"] == ["fixed stack 0.25"]
        assert out["merged"]["peers_commit"] == "aaa" and out["merged"]["ours_commit"] == "bbb"
        skipped = dict(part, families=["taylorseer_fx", "hicache-pp"], skipped={"hicache-pp": "not installed"})
        kept = m.merge(full, skipped, "note")                  # a family the partial run skipped keeps its rows
        assert [r["rel_l2"] for r in kept["rows"] if r["family"] == "hicache-pp"] == [0.04]
        assert kept["merged"]["families_rerun"] == ["taylorseer_fx"]
        with pytest.raises(SystemExit, match="differ in samples"):
            m.merge(full, dict(part, samples=40), "note")
