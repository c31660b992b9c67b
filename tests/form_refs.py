"""Float64 references of the forecast forms, written from their definitions (taylorseer_fx/forecast/forms.py)
and not from the library's coefficients: the interpolant by Lagrange, slopes by solving the
Vandermonde system, Hermite polynomials by numpy. Points are given oldest first (newest last)."""

from __future__ import annotations

import math

import numpy as np
from numpy.polynomial import hermite

from taylorseer_fx.forecast.forms import HERMITE_SCALE


def interpolant(ts, ys, t, derivative: bool = False):
    """The polynomial through ``(ts, ys)`` (float64) at ``t``: its value, or its slope."""
    c = float(np.mean(ts))
    vander = np.vander([x - c for x in ts], increasing=True)
    basis = [(t - c) ** p for p in range(len(ts))]
    if derivative:
        basis = [p * (t - c) ** (p - 1) if p else 0.0 for p in range(len(ts))]
    weights = np.linalg.solve(vander.T, np.array(basis))      # value = sum_i w_i y_i
    return sum(float(w) * y.double() for w, y in zip(weights, ys))


def newton(ts, ys, t, j):
    """Degree j: the interpolant through the j + 1 newest points."""
    return interpolant(ts[-(j + 1):], ys[-(j + 1):], t)


def heun(ts, ys, t, j):
    """The BDF2 slope at the newest point, the Euler predictor, the slope at t of the quadratic through
    the two newest points and the prediction, the trapezoidal corrector; above degree 2 newton's terms."""
    if j < 2:
        return newton(ts, ys, t, j)
    n1, n0, y1, y0 = ts[-2], ts[-1], ys[-2].double(), ys[-1].double()
    s0 = interpolant(ts[-3:], ys[-3:], n0, derivative=True)
    pred = y0 + (t - n0) * s0
    s_t = interpolant([n1, n0, t], [y1, y0, pred], t, derivative=True)
    out = y0 + (t - n0) / 2 * (s0 + s_t)
    return out if j == 2 else out + newton(ts, ys, t, j) - newton(ts, ys, t, 2)


def _backward(ys, i):
    """The i-th backward difference at the newest point (unit step gaps)."""
    return sum((-1) ** m * math.comb(i, m) * ys[-1 - m].double() for m in range(i + 1))


def taylor(ts, ys, t, j):
    """sum_{i<=j} nabla^i y x^i / i!, x = t - newest (step indices with unit gaps)."""
    x = t - ts[-1]
    return sum(_backward(ys, i) * x ** i / math.factorial(i) for i in range(j + 1))


def hermite_series(ts, ys, t, j, scale):
    """sum_{i<=j} nabla^i y s^i H_i(s x) / i! with numpy's physicists' Hermite H_i."""
    x = t - ts[-1]
    h = [float(hermite.hermval(scale * x, [0] * i + [1])) for i in range(j + 1)]
    return sum(_backward(ys, i) * scale ** i * h[i] / math.factorial(i) for i in range(j + 1))


def reference(form, ts, ys, t, j):
    """The degree-j forecast of ``form`` from the points (ts, ys) at t, float64."""
    if form == "hermite":
        return hermite_series(ts, ys, t, j, HERMITE_SCALE)
    return {"newton": newton, "heun": heun, "taylor": taylor}[form](ts, ys, t, j)
