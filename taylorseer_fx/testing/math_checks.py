"""The forecast math's properties as checks you can run on a form, policy or forecaster of your own.

* :func:`check_polynomial_exactness` -- fed a polynomial of ``degree`` at coordinates of any spacing,
  the forecast reproduces it (inside and outside the node span).
* :func:`check_affine_invariance` -- forecasting ``a * y + b`` gives ``a * forecast(y) + b``
  (``values``), and coordinates ``a * t + c`` give the forecast at ``a * t + c`` (``coordinates``).

``what``: a form name (``"newton"``, ``"taylor"``, ...), a :class:`~taylorseer_fx.policy.base.Forecast`,
a Policy (its forecast), or a zero-argument callable returning an object with ``update(t, y)`` and
``forecast(t)`` (``t`` a float coordinate, ``y`` a tensor). Both raise AssertionError naming the
smallest counterexample hypothesis found; float64 throughout.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from hypothesis import HealthCheck, Verbosity, given, settings, strategies as st

from ..forecast.forecaster import Forecaster
from ..policy.base import Forecast, Policy
from . import strategies as S

__all__ = ["check_polynomial_exactness", "check_affine_invariance"]


def _factory(what, order: int | None) -> tuple[Callable, int]:
    if isinstance(what, Policy):
        what = what.forecast
    if isinstance(what, Forecast):
        opts = what.forecaster_options()
        return (lambda: Forecaster(**opts, factor_dtype=torch.float64)), what.order
    if isinstance(what, str):
        k = 2 if order is None else order
        Forecaster(k, what)           # a ValueError naming the forms for an unknown one
        return (lambda: Forecaster(k, what, factor_dtype=torch.float64)), k
    if callable(what):
        if order is None:
            raise ValueError("check_*: pass order=... with a forecaster factory")
        return what, order
    raise ValueError(f"check_*: what must be a form name, Forecast, Policy or a forecaster factory, got {what!r}")


def _spacing(spacing) -> Callable:
    if spacing == "any":
        return S.coordinates
    if spacing == "uniform":
        return lambda n: st.integers(-5, 5).map(lambda s: [float(s + k) for k in range(n)])
    if callable(spacing):
        return spacing
    raise ValueError(f"check_*: spacing must be 'any', 'uniform' or a callable n -> strategy, got {spacing!r}")


class _Counterexample(AssertionError):
    pass


def _run(test, examples: int, derandomize: bool) -> None:
    test = settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
                    verbosity=Verbosity.quiet, suppress_health_check=list(HealthCheck),
                    report_multiple_bugs=False)(test)
    try:
        test()
    except _Counterexample as e:
        raise AssertionError(str(e)) from None


def _eval_points(draw, ts) -> list:
    lo, hi = min(ts), max(ts)
    return [lo + u * (hi - lo + 1.0) for u in draw(st.lists(st.floats(-0.5, 1.5), min_size=1, max_size=3))]


def check_polynomial_exactness(what, *, order: int | None = None, degree: int | None = None,
                               spacing="any", rtol: float = 1e-7, examples: int = 50,
                               derandomize: bool = True) -> None:
    """Feed polynomials of ``degree`` (default: the order) at ``order + 1 .. order + 3`` coordinates of
    ``spacing`` (``"any"``: non-uniform gaps, increasing, decreasing or shuffled; ``"uniform"``: step
    indices; or ``n -> strategy``) and compare the forecasts with the polynomial: the error must be
    <= ``rtol`` times the largest value involved. ``order``: the form's order (form names; default 2)."""
    make, k = _factory(what, order)
    d = k if degree is None else degree
    space = _spacing(spacing)

    @given(st.data())
    def test(data):
        n = data.draw(st.integers(k + 1, k + 3), label="points")
        traj = data.draw(S.polynomial_trajectories(d, n, spacing=space, shape=(3,)), label="trajectory")
        f = make()
        for t, y in zip(traj.ts, traj.values):
            f.update(t, y)
        for te in _eval_points(data.draw, traj.ts):
            want = traj.value(te)
            got = f.forecast(te)
            scale = max(1.0, float(want.abs().max()), max(float(v.abs().max()) for v in traj.values))
            err = float((got.double() - want).abs().max())
            if not err <= rtol * scale:
                raise _Counterexample(
                    f"{what!r} is not exact for degree {d}: nodes {list(traj.ts)}, coefficients "
                    f"{[c.tolist() for c in traj.coefficients]}, at t={te!r}: error {err:.3g} > {rtol:g} * {scale:.3g}")
    _run(test, examples, derandomize)


def check_affine_invariance(what, *, order: int | None = None, values: bool = True, coordinates: bool = True,
                            spacing="any", rtol: float = 1e-7, examples: int = 50, derandomize: bool = True) -> None:
    """Random data at coordinates of ``spacing``: the forecast of ``a * y + b`` must equal ``a *
    forecast(y) + b`` (``values``), and feeding coordinates ``a * t + c`` must give, at ``a * t + c``,
    the forecast at ``t`` (``coordinates``; a in ±[0.1, 10], c in [-10, 10]); within ``rtol`` of the
    largest value."""
    make, k = _factory(what, order)
    space = _spacing(spacing)

    @given(st.data())
    def test(data):
        n = data.draw(st.integers(1, k + 3), label="points")
        ts = data.draw(space(n), label="coordinates")
        g = torch.Generator().manual_seed(data.draw(S.seeds, label="seed"))
        ys = [torch.randn(3, generator=g, dtype=torch.float64) for _ in ts]
        a = data.draw(st.floats(0.1, 10.0), label="a") * data.draw(st.sampled_from([1.0, -1.0]), label="sign")
        b = data.draw(st.floats(-10.0, 10.0), label="b")
        base = make()
        for t, y in zip(ts, ys):
            base.update(t, y)
        for te in _eval_points(data.draw, ts):
            ref = base.forecast(te).double()
            checks = []
            if values:
                f = make()
                for t, y in zip(ts, ys):
                    f.update(t, a * y + b)
                checks.append(("values", f.forecast(te).double(), a * ref + b))
            if coordinates:
                f = make()
                for t, y in zip(ts, ys):
                    f.update(a * t + b, y)
                checks.append(("coordinates", f.forecast(a * te + b).double(), ref))
            for kind, got, want in checks:
                scale = max(1.0, float(want.abs().max()), abs(b), *(float(y.abs().max()) * abs(a) for y in ys))
                err = float((got - want).abs().max())
                if not err <= rtol * scale * (1 + math.fabs(b)):
                    raise _Counterexample(
                        f"{what!r} is not affine invariant in its {kind}: nodes {list(ts)}, a={a!r}, "
                        f"b={b!r}, at t={te!r}: error {err:.3g} > {rtol:g} * {scale:.3g}")
    _run(test, examples, derandomize)
