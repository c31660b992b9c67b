"""Error estimates of a forecaster, from its stored factors: the remainder, the embedded pair, the
order choice's back-test, and the squared norms behind them (for context parallelism). Everything
stays on the device: 0-dim tensors, no host sync.
"""

from __future__ import annotations

import math

import torch

from .coordinates import as_coordinate

__all__ = ["ESTIMATORS", "EPS", "NORM_EPS", "ErrorEstimates", "read_host", "worst"]

ESTIMATORS = ("remainder", "pair")
EPS = 1e-30  # added to ||D_0|| so an all-zero output gives r = 0 instead of nan
NORM_EPS = EPS     # the same, for whoever forms an estimate from Forecaster.error_terms


def worst(values) -> float:
    """The estimate a decision over several (regions, branches) takes, as host floats: ``+inf`` (one of
    them cannot be estimated: a non-finite output, no state) above everything, then ``NaN`` (one has
    no estimate yet: fewer computes stored than the estimator needs), then the largest. Python's
    ``max`` would depend on the order of a NaN. Empty: ``+inf``."""
    values = [float(v) for v in values]
    if not values or any(v == math.inf for v in values):
        return math.inf
    if any(math.isnan(v) for v in values):
        return math.nan
    return max(values)


def read_host(values) -> tuple[list[float], bool]:
    """``values`` (host floats and 0-dim device tensors, mixed) as host floats, the tensors read in one
    stacked read; a non-finite tensor reads ``+inf`` (its forecaster cannot estimate), a host float
    stays as it is (``NaN``: no estimate yet). Returns ``(floats, whether a host read happened)``."""
    values = list(values)
    at = [i for i, v in enumerate(values) if isinstance(v, torch.Tensor)]
    if at:
        dev = values[at[0]].device
        t = torch.stack([values[i].to(dev, torch.float32).reshape(()) for i in at])
        for i, v in zip(at, torch.nan_to_num(t, nan=math.inf, posinf=math.inf).tolist()):  # the one read
            values[i] = v
    return [float(v) for v in values], bool(at)


class ErrorEstimates:
    """The estimate methods of :class:`~taylorseer_fx.forecast.forecaster.Forecaster` (a mixin over its
    state: ``_r``, ``_ratios``, ``_factors``, ``_den``, ``_num_sq``, ``_den_sq``, ``_chosen``,
    ``_backtest``, ``nodes``, ``order``, and its ``_norm_sq``, ``_finite_since``, ``_terms``,
    ``_check_ready``)."""

    def remainder(self) -> torch.Tensor | None:
        """``r = ||D_{order+1}|| / ||D_0||`` from the last update (0-dim float32 tensor on the device);
        None while fewer than ``order + 2`` points (with derivatives) have been absorbed."""
        return self._r

    def top_ratio(self, degree: int | None = None) -> torch.Tensor | None:
        """``||D_k|| / ||D_0||`` for the stored factor ``k = min(degree, len(nodes) - 1)`` (default: the
        highest; 0-dim float32 tensor on the device); None while only one point is stored."""
        top = len(self.nodes) - 1
        if top < 1 or self._den is None:
            return None
        k = top if degree is None else max(1, min(int(degree), top))
        if k not in self._ratios:   # on the device, no sync; the factors stay as they are until the next update
            sq = sum(self._norm_sq(f[k]) for f in self._factors)
            self._ratios[k] = (self._finite_since(k + 1, sq),
                               self._finite_since(k + 1, (sq.sqrt() / self._den).to(torch.float32)))
        return self._ratios[k][1]

    def chosen_order(self) -> torch.Tensor | None:
        """With ``select``: the degree the forecasts use, chosen at the last update (0-dim int64 tensor
        on the device); None before the first choice (the preferred degree is used)."""
        return self._chosen

    def backtest(self) -> torch.Tensor | None:
        """With ``select``: the relative errors ``||p_j(t) - y(t)|| / ||y(t)||`` of the degree-j forecasts
        from the points before the last update, j = 0, 1, ... (float32 tensor on the device)."""
        return self._backtest

    def _scale(self, t: float, k: int) -> float:
        """The coordinate factor of the degree-``k`` term at ``t``: newton ``prod_{i<k} |t - n_i|``,
        taylor ``|x|^k / k!``."""
        return abs(self._terms(t, k)[k])

    def error_estimate(self, t: float, method: str = "remainder",
                       degree: int | None = None) -> torch.Tensor | None:
        """Estimated relative error ``||forecast(t) - y(t)|| / ||y(t_newest)||`` (0-dim float32 tensor on
        the device, no sync; None when the method has nothing to go on; +inf on the device while fewer
        finite computes in a row are stored than the method needs).

        ``method="remainder"``: the next term of the series, from the unstored ``(order+1)``-th factor
        of the last update: newton ``r * prod_{i=0..order} |t - n_i|``, taylor
        ``r * |x|^(order+1) / (order+1)!`` with ``x = t - last node``; None before ``order + 2`` points.

        ``method="pair"`` (embedded pair, as adaptive ODE solvers do): the difference between the
        forecast of the stored degree ``k`` and that of degree ``k - 1`` -- exactly the last term,
        ``||D_k|| / ||D_0|| * prod_{i<k} |t - n_i|`` (newton) or ``||F_k|| / ||F_0|| * |x|^k / k!``
        (taylor). It estimates the error of the lower-order forecast, so it is an upper-side estimate
        for the forecast actually returned; it needs only ``k + 1 >= 2`` points and reacts one compute
        earlier than the remainder. None while one point is stored. For ``order=0`` the only pair is
        orders 1 and 0, which is the remainder. ``degree`` caps ``k`` for the pair (e.g. the preferred
        degree of an order-selecting forecaster, whose stored degree is higher).
        """
        self._check_ready("error_estimate")
        if method == "remainder":
            r, k = self._r, self.order + 1
        elif method == "pair":
            k = len(self.nodes) - 1 if degree is None else min(max(int(degree), 1), len(self.nodes) - 1)
            r = self.top_ratio(k) if k >= 1 else None
            if self.order == 0:  # the only pair of an order-0 forecast is (1, 0): the remainder
                r, k = self._r, 1
        else:
            raise ValueError(f"method must be one of {ESTIMATORS}, got {method!r}")
        if r is None:
            return None
        return r * self._scale(as_coordinate(t), k)

    def error_terms(self, t: float, method: str = "remainder",
                    degree: int | None = None) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """What :meth:`error_estimate` is made of: ``(num_sq, den_sq, scale)`` with the estimate
        ``sqrt(num_sq) / (sqrt(den_sq) + eps) * scale`` -- the squared norms of the difference and of
        the newest output (0-dim device tensors; ``num_sq`` +inf while too few finite computes are
        stored) and the coordinate factor. Under context parallelism each rank holds a shard of the
        output: the sums of ``num_sq`` and ``den_sq`` over the ranks give the whole output's estimate
        (a maximum of per-shard ratios would be another, larger number). None where
        :meth:`error_estimate` is None."""
        self._check_ready("error_terms")
        if method not in ESTIMATORS:
            raise ValueError(f"method must be one of {ESTIMATORS}, got {method!r}")
        if method == "remainder" or self.order == 0:
            num, k = self._num_sq, self.order + 1
        else:
            k = len(self.nodes) - 1 if degree is None else min(max(int(degree), 1), len(self.nodes) - 1)
            num = self._ratios[k][0] if k >= 1 and self.top_ratio(k) is not None else None
        if num is None or self._den_sq is None:
            return None
        return num, self._den_sq, self._scale(as_coordinate(t), k)
