"""The pytest plugin of taylorseer_fx (registered through the ``pytest11`` entry point, so installing
the package is enough). A top-level module so that pytest sessions that never use it import neither
torch nor taylorseer_fx: everything heavy is imported inside the fixture.

- Fixture ``taylorseer_check(target, policy, name=None, **kwargs)``: runs
  :func:`taylorseer_fx.testing.check_cache` and asserts it passed; returns the CheckResult.
- Marker ``@pytest.mark.taylorseer(**kwargs)``: default keyword arguments for the fixture in that test
  (``examples=5, tolerance=0.05``, ...); the fixture's own keywords win.
- ``--taylorseer-baseline PATH``: compare every check with the JSON baseline at PATH (decisions and
  error per case; cases not recorded yet are recorded); ``--taylorseer-bless`` records them afresh;
  ``--taylorseer-margin`` (default 0.1): relative error growth allowed; ``--taylorseer-examples N``
  overrides every check's ``examples``.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("taylorseer", "taylorseer_fx cache checks")
    group.addoption("--taylorseer-baseline", metavar="PATH", default=None,
                    help="JSON baseline of cache checks: compare with it, record what it lacks")
    group.addoption("--taylorseer-bless", action="store_true", default=False,
                    help="record the cache checks to the baseline afresh (accept the current results)")
    group.addoption("--taylorseer-margin", type=float, default=0.1, metavar="FRACTION",
                    help="relative growth of a case's error allowed against the baseline (default 0.1)")
    group.addoption("--taylorseer-examples", type=int, default=None, metavar="N",
                    help="cases each cache check draws (overrides the tests' own examples)")


def pytest_configure(config):
    config.addinivalue_line("markers", "taylorseer(**kwargs): default keyword arguments of check_cache for the "
                                       "taylorseer_check fixture in this test")


@pytest.fixture(scope="session")
def _taylorseer_baseline(pytestconfig):
    path = pytestconfig.getoption("--taylorseer-baseline")
    if path is None:
        return None
    from taylorseer_fx.testing import Baseline

    return Baseline(path, bless=pytestconfig.getoption("--taylorseer-bless"),
                    margin=pytestconfig.getoption("--taylorseer-margin"))


@pytest.fixture
def taylorseer_check(request, pytestconfig, _taylorseer_baseline):
    """``taylorseer_check(target, policy, name=None, **kwargs) -> CheckResult``: check_cache with the
    marker's defaults and the session's baseline (keyed by the test id, plus ``name`` when given),
    asserting it passed."""
    from taylorseer_fx.testing import check_cache

    marker = request.node.get_closest_marker("taylorseer")
    defaults = dict(marker.kwargs) if marker is not None else {}
    examples = pytestconfig.getoption("--taylorseer-examples")

    def run(target, policy, name: str | None = None, **kwargs):
        kw = {**defaults, **kwargs}
        if examples is not None:
            kw["examples"] = examples
        key = request.node.nodeid + (f"::{name}" if name else "")
        result = check_cache(target, policy, baseline=_taylorseer_baseline, baseline_key=key, **kw)
        result.assert_ok()
        return result
    return run
