"""The forecast forms: which factors a stream stores, and the coordinate coefficient of each.

Every form forecasts ``sum_j c_j(t) * F_j`` over the stored factors ``F_0 .. F_k`` of a stream
(:class:`~taylorseer_fx.forecast.forecaster.Forecaster`); a form is the pair (how the factors are formed, the
coefficients ``c_j``). Coefficients are Python floats computed from the coordinates, so nothing here
touches a tensor. Units: ``t`` and the nodes are in the forecaster's coordinate (timestep, sigma or
step index for the divided-difference forms; the step index for the recursion forms); ``nodes`` are
the stored coordinates, newest first.

Divided-difference factors (``F_j = D_j``, the Newton divided differences on the nodes; any
spacing, increasing or decreasing):

* ``newton`` -- the interpolating polynomial, ``c_j = prod_{i<j} (t - n_i)``. Exact for polynomials
  of degree <= order.
* ``heun`` -- a FoCa-like multistep predictor-corrector (arXiv 2508.16211: the feature trajectory as an
  ODE, a BDF2 predictor and a Heun corrector) in place of newton's quadratic term. With
  ``h = t - n_0`` and ``d = n_0 - n_1``: the BDF2 slope at the newest compute ``s_0 = D_1 + d D_2``
  (the derivative there of the quadratic through the last three computes), the Euler predictor
  ``P = D_0 + h s_0``, the slope ``s_t`` at ``t`` of the quadratic through ``(n_1, y_1), (n_0, y_0),
  (t, P)``, and the trapezoidal (Heun) corrector ``D_0 + h/2 (s_0 + s_t)``, which is ``c_0 = 1,
  c_1 = h, c_2 = h d (3h + 2d) / (2 (h + d))``. Exact for polynomials of degree <= 1 on any spacing;
  the quadratic term grows like ``1.5 d h`` instead of newton's ``h (h + d)``, and
  ``0 <= c_2 <= newton's c_2`` for ``h >= 0``: a damped quadratic, meant for long forecast runs.
  Terms above the quadratic (order >= 3, and the next term the ``remainder`` estimate uses) are
  newton's. At ``t = n_1`` (only a back-test over non-monotone coordinates gets there) the corrector
  is singular and the quadratic term is dropped.

Step-recursion factors (``F_{j+1} = (F_j(new) - F_j(old)) / d``, the official TaylorSeer's; ``t``
the step index, ``x = t - n_0``):

* ``taylor`` -- the paper's series, ``c_j = x^j / j!``. Equal to the official code.
* ``hermite`` -- HiCache's scaled Hermite basis (arXiv 2508.16984): ``c_j = s^j H_j(s x) / j!`` with
  the physicists' Hermite polynomials ``H_j`` and the scale ``s = HERMITE_SCALE`` (0.5): the
  taylor series with ``x^j`` replaced by ``s^j H_j(s x)``. Equal to taylor at order 0; above, a
  contraction of the higher terms (``c_1 = 2 s^2 x``), exact for constants only.
"""

from __future__ import annotations

import math

__all__ = ["FORMS", "DIVIDED", "HERMITE_SCALE", "coefficients"]

FORMS = ("newton", "taylor", "heun", "hermite")
#: forms whose factors are divided differences on the nodes (any coordinate); the others use the
#: step recursion in the step index
DIVIDED = ("newton", "heun")
HERMITE_SCALE = 0.5


def _hermite(j: int, y: float) -> float:
    """The physicists' Hermite polynomial ``H_j(y)`` (``H_0 = 1, H_1 = 2y``, three-term recurrence)."""
    prev, cur = 1.0, 2.0 * y
    if j == 0:
        return prev
    for i in range(1, j):
        prev, cur = cur, 2.0 * y * cur - 2.0 * i * prev
    return cur


def coefficients(form: str, t: float, nodes: list[float], k: int) -> list[float]:
    """``[c_0(t), ..., c_k(t)]`` of ``form`` for the stored ``nodes`` (newest first, at least ``k + 1``
    of them for the divided forms, at least one for the others)."""
    if form in DIVIDED:
        out = [1.0]
        for n in nodes[:k]:
            out.append(out[-1] * (t - n))
        if form == "heun" and k >= 2:
            h, d = t - nodes[0], nodes[0] - nodes[1]
            out[2] = h * d * (3.0 * h + 2.0 * d) / (2.0 * (h + d)) if h + d != 0 else 0.0
        return out
    x = t - nodes[0]
    if form == "taylor":
        return [x ** j / math.factorial(j) for j in range(k + 1)]
    if form == "hermite":
        s = HERMITE_SCALE
        return [s ** j * _hermite(j, s * x) / math.factorial(j) for j in range(k + 1)]
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")
