"""The tools around ``check_cache``: the math checks, the JSON baseline, the pytest plugin and the
``python -m taylorseer_fx.check`` command."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

from taylorseer_fx import AutoPolicy, FixedPolicy, Forecast
from taylorseer_fx.forecast.forecaster import Forecaster
from taylorseer_fx.testing import Baseline, Case, CheckResult, Row, check_affine_invariance, check_polynomial_exactness


# ----------------------------------------------------------------------------------- math checks
@pytest.mark.parametrize("what", ["newton", AutoPolicy(threshold=0.1, form="newton", order=2),
                                  Forecast("newton", 3, "timestep", False, 3, 1.0)])
def test_newton_is_exact_for_its_degree_and_affine_invariant(what):
    check_polynomial_exactness(what, examples=30)
    check_affine_invariance(what, examples=30)


def test_the_recursion_forms_are_exact_for_lines_only_and_the_check_says_where():
    for form in ("taylor", "heun"):
        check_polynomial_exactness(form, order=2, degree=1, examples=20)
        with pytest.raises(AssertionError, match=f"'{form}' is not exact for degree 2: nodes \\[0.0, 1.0, 2.0\\]"):
            check_polynomial_exactness(form, order=2, degree=2, examples=20)   # shrunk to the simplest nodes


def test_hermite_is_invariant_in_values_not_in_coordinates():
    check_affine_invariance("hermite", order=2, coordinates=False, examples=20)
    with pytest.raises(AssertionError, match="not affine invariant in its coordinates"):
        check_affine_invariance("hermite", order=2, values=False, examples=20)


def test_a_forecaster_of_your_own_is_checked_through_a_factory():
    class Last:                    # forecasts the newest value: exact for constants only
        def update(self, t, y):
            self.y = y

        def forecast(self, t):
            return self.y
    check_polynomial_exactness(Last, order=0, degree=0, examples=10)
    with pytest.raises(AssertionError, match="not exact for degree 1"):
        check_polynomial_exactness(Last, order=0, degree=1, examples=10)
    with pytest.raises(ValueError, match="order"):
        check_polynomial_exactness(Last)
    with pytest.raises(ValueError, match="form"):
        check_polynomial_exactness("spline")
    assert Forecaster(1).forecast is not None


# -------------------------------------------------------------------------------------- baseline
def _result(policy, rows) -> CheckResult:
    r = CheckResult("toy", policy, 0.1)
    r.rows = [Row(Case(steps, seed), "call", steps=steps, error=err, decisions={"m": d}) for steps, seed, err, d in rows]
    return r


def test_the_baseline_records_then_flags_changed_decisions_and_grown_error(tmp_path):
    path = tmp_path / "b.json"
    p = FixedPolicy.official()
    b = Baseline(path)
    assert b.compare("k", _result(p, [(8, 1, 0.05, "CCCF")])) == []          # nothing recorded yet
    assert b.record("k", _result(p, [(8, 1, 0.05, "CCCF"), (9, 2, 0.04, "CCCFF")]))
    again = Baseline(path)
    assert [c.steps for c in again.cases("k")] == [8, 9]
    assert again.compare("k", _result(p, [(8, 1, 0.054, "CCCF"), (9, 2, 0.04, "CCCFF")])) == []   # within 10 %
    problems = again.compare("k", _result(p, [(8, 1, 0.06, "CCCF"), (9, 2, 0.04, "CCFFF")]))
    assert len(problems) == 2 and "error grew" in problems[0] and "decisions changed" in problems[1]
    assert "policy changed" in again.compare("k", _result(FixedPolicy.seed(), [(8, 1, 0.05, "CCCF"), (9, 2, 0.04, "CCCFF")]))[0]
    assert "not run" in again.compare("k", _result(p, [(8, 1, 0.05, "CCCF")]))[0]
    assert not again.record("k", _result(p, [(8, 1, 0.5, "CCCC")]))         # kept unless blessed
    blessed = Baseline(path, bless=True)
    assert blessed.cases("k") == [] and blessed.record("k", _result(p, [(8, 1, 0.5, "CCCC")]))
    assert json.loads(path.read_text())["entries"]["k"]["cases"][0]["error"] == 0.5
    with pytest.raises(ValueError, match="margin"):
        Baseline(path, margin=-1)
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(ValueError, match="not a taylorseer_fx baseline"):
        Baseline(tmp_path / "x.json")


# ---------------------------------------------------------------------------------- pytest plugin
def test_the_plugin_is_registered_through_pytest11_and_imports_no_torch():
    eps = [e for e in importlib.metadata.entry_points(group="pytest11") if e.value == "taylorseer_fx_pytest"]
    assert eps, "the pytest11 entry point is missing: pip install -e . again"
    out = subprocess.run([sys.executable, "-c", "import taylorseer_fx_pytest, sys; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


_USER_TEST = '''
import pytest, torch
from taylorseer_fx.testing import Case

class Denoiser(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4)])
    def forward(self, x, timestep):
        for b in self.blocks:
            x = torch.tanh(b(x)) * (1 + timestep[:, None] / 1000) * SCALE
        return x

SCALE = {scale}

@torch.no_grad()
def sample(m, case):
    x = torch.randn(1, 4, generator=torch.Generator().manual_seed(case.seed))
    for t in torch.linspace(999, 0, case.steps):
        x = x - 0.05 * m(x, t.reshape(1))
    return x

@pytest.mark.taylorseer(examples=3, steps=(8, 10), tolerance=0.2)
def test_my_cache(taylorseer_check):
    r = taylorseer_check(Denoiser(), "official-flux", sample=sample)
    assert len(r.rows) >= 3
'''


def test_the_plugin_records_a_baseline_and_fails_a_later_run_whose_error_grew(pytester):
    pytester.makepyfile(test_user=_USER_TEST.format(scale=1.0))
    base = pytester.path / "baseline.json"
    pytester.runpytest_subprocess("-q", f"--taylorseer-baseline={base}").assert_outcomes(passed=1)
    entry = json.loads(base.read_text())["entries"]["test_user.py::test_my_cache"]
    assert len(entry["cases"]) == 3
    pytester.runpytest_subprocess("-q", f"--taylorseer-baseline={base}").assert_outcomes(passed=1)
    pytester.makepyfile(test_user=_USER_TEST.format(scale=1.3))        # "the weights changed"
    res = pytester.runpytest_subprocess("-q", f"--taylorseer-baseline={base}")
    res.assert_outcomes(failed=1)
    res.stdout.fnmatch_lines(["*baseline:*"])
    pytester.runpytest_subprocess("-q", f"--taylorseer-baseline={base}", "--taylorseer-bless").assert_outcomes(passed=1)
    pytester.runpytest_subprocess("-q", f"--taylorseer-baseline={base}").assert_outcomes(passed=1)


# ---------------------------------------------------------------------------------------- command
def _command(*args, cwd):
    return subprocess.run([sys.executable, "-m", "taylorseer_fx.check", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.mark.skipif(not importlib.util.find_spec("diffusers"), reason="needs diffusers")
def test_the_command_checks_the_demo_flux_offline_and_names_the_shrunk_case(tmp_path):
    ok = _command("--examples", "2", "--steps", "10:14", "--json", str(tmp_path / "ok.json"), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "[case 2/2]" in ok.stderr and "all passed" in ok.stdout
    data = json.loads((tmp_path / "ok.json").read_text())
    assert data["ok"] and len(data["rows"]) == 2 and data["policy"]["kind"] == "auto"
    bad = _command("--examples", "2", "--steps", "8:12", "--policy", "official-flux", "--tolerance", "0.05",
                   "--json", str(tmp_path / "bad.json"), cwd=tmp_path)
    assert bad.returncode == 1
    assert "smallest failing case: pipe(**inputs[0], num_inference_steps=8" in bad.stdout
    assert _command("--steps", "x", cwd=tmp_path).returncode != 0
    assert _command("--policy", "no-such-preset", cwd=tmp_path).returncode == 2


def test_the_example_test_file_users_copy_passes(tmp_path):
    """examples/test_my_cache.py (outside the default testpaths) runs as a user would run it."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(root / "examples" / "test_my_cache.py"), f"--taylorseer-baseline={tmp_path / 'b.json'}"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "2 passed" in out.stdout and len(json.loads((tmp_path / "b.json").read_text())["entries"]) == 2


def test_a_denoiser_joining_mid_run_is_held_to_the_schedule_from_its_first_step():
    """Wan 2.2's second transformer takes steps 5..11: its decisions are counted from there, its
    warm-up starts there, and the run has 12 steps."""
    from taylorseer_fx.testing.check import _schedule
    from taylorseer_fx.integrations.targets import _rebased, decisions_of

    rows = [{"step": s, "stream": 0, "decision": "compute"} for s in range(3, 8)]
    rows2 = [{"step": s, "stream": st, "decision": "forecast" if s % 2 else "compute"}
             for s in range(8, 15) for st in (0, 1)]
    decisions, first = _rebased({"a": decisions_of(rows), "b": decisions_of(rows2), "unused": decisions_of([])})
    assert decisions == {"a": "CCCCC", "b": "CFCFCFC"} and first == {"a": 0, "b": 5}
    p = FixedPolicy(interval=3, cooldown=2)
    assert _schedule(p, 12, 0) == p.compute_steps(12)
    late = _schedule(p, 12, 5)
    assert late[0] == 5 and {10, 11} <= set(late) and all(5 <= s < 12 for s in late)
