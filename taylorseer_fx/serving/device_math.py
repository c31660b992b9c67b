"""The forecaster and the threshold rule with their whole state on the device: no host read, so a step
that decides, computes or forecasts can be captured in a CUDA graph.

The host :class:`~taylorseer_fx.forecast.forecaster.Forecaster` keeps its nodes (the coordinates of the
stored computes) as Python floats, because the host knows which steps computed. When the decision is
made on the device the host no longer knows that, so here the nodes, the number of stored points and
the estimate are device tensors, and every update is written as tensor arithmetic masked by the
decision (``torch.where``), never as Python control flow on a value.

State of one stream (a flat tuple of tensors, so that ``torch.cond`` can carry it):
``(F_0 .. F_{L-1}, N, K, R, P)`` -- per output leaf ``l`` its factors ``F_l`` ``[order + 1, *shape]``
(float32: the divided differences ``D_0 .. D_order`` of the newest computes, zeros above the stored
degree), the nodes ``N`` ``[order + 1]`` (float64, newest first), the stored points ``K`` (int64,
``<= order + 1``), the remainder ratio ``R = ||D_{order+1}|| / ||D_0||`` of the last update (float32,
+inf before ``order + 2`` points) and the pair ratios ``P`` ``[order + 1]`` (``||D_j|| / ||D_0||``,
float32). Units: a coordinate is the forecaster's (timestep value, or step index), a 0-dim float64
tensor on the device.

``update`` and ``forecast`` (what ``torch.cond``'s branches run, which eager torch traces with dynamo) read
the order from the nodes' length, not from an attribute: dynamo makes an int attribute that differs
between instances a graph input, read back on the host with ``item()`` at every call.

Forms: ``newton`` and ``heun`` (divided differences; :mod:`taylorseer_fx.forecast.forms` holds the
coefficients this mirrors). Estimates: ``remainder`` and ``pair``, as
:meth:`~taylorseer_fx.forecast.estimates.ErrorEstimates.error_estimate` forms them. Not here: the
order choice (``select_order``), the merging of nearly coincident nodes (a coordinate that repeats a stored
one within float32's resolution restarts the table here; the host merges one that repeats the newest
node), and the zeroing of factors after a
non-finite output (a non-finite output makes the estimate NaN, and NaN computes).
"""

from __future__ import annotations

import torch

from ..forecast.buffers import CLAMPED
from ..forecast.estimates import EPS

__all__ = ["DeviceForecaster", "DeviceRule", "RESOLVE"]

#: two coordinates closer than this, relative, are the same node (float32's eps, as the host's ``resolves``)
RESOLVE = torch.finfo(torch.float32).eps


class DeviceForecaster:
    """Newton divided differences (``form`` ``newton`` or ``heun``, ``order``) on the device."""

    def __init__(self, order: int, form: str = "newton", estimator: str = "remainder"):
        self.order, self.form, self.estimator = int(order), form, estimator

    # ------------------------------------------------------------ state
    def empty(self, leaves) -> tuple:
        """A state with no point, for outputs shaped like ``leaves``."""
        m, dev = self.order, leaves[0].device
        factors = [torch.zeros((m + 1, *x.shape), dtype=torch.float32, device=dev) for x in leaves]
        return (*factors, torch.zeros(m + 1, dtype=torch.float64, device=dev),
                torch.zeros((), dtype=torch.int64, device=dev),
                torch.full((), float("inf"), dtype=torch.float32, device=dev),
                torch.full((m + 1,), float("inf"), dtype=torch.float32, device=dev))

    @staticmethod
    def split(state: tuple) -> tuple:
        return state[:-4], state[-4], state[-3], state[-2], state[-1]

    def coefficients(self, t: torch.Tensor, nodes: torch.Tensor, k: int) -> list:
        """``[c_0(t) .. c_k(t)]`` (0-dim float64 tensors) of the form, as ``forms.coefficients``."""
        out = [torch.ones((), dtype=torch.float64, device=nodes.device)]
        for j in range(k):
            out.append(out[-1] * (t - nodes[j]))
        if self.form == "heun" and k >= 2:
            h, d = t - nodes[0], nodes[0] - nodes[1]
            s = h + d
            out[2] = torch.where(s != 0, h * d * (3.0 * h + 2.0 * d) / (2.0 * torch.where(s != 0, s, 1.0)),
                                 torch.zeros_like(s))
        return out

    # ------------------------------------------------------------ the math
    def update(self, state: tuple, t: torch.Tensor, leaves) -> tuple:
        """The state after a compute at ``t`` with outputs ``leaves``: ``D'_0 = y``, ``D'_j = (D'_{j-1} -
        D_{j-1}) / (t - n_{j-1})`` for the ``j <= K`` differences the stored points allow (zero above). A
        ``t`` that repeats a stored node (within :data:`RESOLVE`) restarts the table from this point, as the
        host forecaster does for a node it cannot resolve (one that nearly repeats the newest node it
        merges instead), rather than dividing by zero."""
        factors, nodes, count, _, _ = self.split(state)
        m = nodes.shape[0] - 1       # the order, read from the state: traced code sees no int attribute
        stored = torch.arange(m + 1, device=count.device) < count
        apart = (t - nodes).abs() > RESOLVE * torch.maximum(t.abs(), nodes.abs())
        clash = (stored & ~apart).any()          # t repeats a stored node: restart from this point
        count = torch.where(clash, 0, count)
        inv = [torch.where(count >= j, 1.0 / torch.where(count >= j, t - nodes[j - 1], 1.0), 0.0)
               .to(torch.float32) for j in range(1, m + 2)]
        new, num_sq, den_sq, norms = [], None, None, [None] * (m + 1)
        for f, y in zip(factors, leaves):
            a = y.to(torch.float32)
            rows = [a]
            for j in range(1, m + 2):
                a = (a - f[j - 1]) * inv[j - 1]
                rows.append(a)
            new.append(torch.stack(rows[:m + 1]))
            sq = [torch.linalg.vector_norm(r).square() for r in rows]
            den_sq = sq[0] if den_sq is None else den_sq + sq[0]
            num_sq = sq[m + 1] if num_sq is None else num_sq + sq[m + 1]
            norms = [s if n is None else n + s for n, s in zip(norms, sq[:m + 1])]
        den = den_sq.sqrt() + EPS
        ratio = torch.where(count >= m + 1, num_sq.sqrt() / den, float("inf"))
        pairs = torch.stack([n.sqrt() / den for n in norms])
        pairs = torch.where(torch.arange(m + 1, device=count.device) <= count, pairs, float("inf"))
        nodes = torch.cat([t.reshape(1), nodes[:m]])
        return (*new, nodes, torch.clamp(count + 1, max=m + 1), ratio.to(torch.float32), pairs.to(torch.float32))

    def forecast(self, state: tuple, t: torch.Tensor, dtypes) -> list:
        """``sum_j c_j(t) D_j`` per leaf (the degree the stored points allow: the factors above it are
        zero), leaf ``l`` in ``dtypes[l]``."""
        factors, nodes, _, _, _ = self.split(state)
        c = torch.stack(self.coefficients(t, nodes, nodes.shape[0] - 1)).to(torch.float32)
        shape = (-1,) + (1,) * (factors[0].dim() - 1)
        out = []
        for f, dtype in zip(factors, dtypes):
            y = (f * c.reshape(shape)).sum(0)
            if dtype in CLAMPED:                   # a finite extrapolation stays finite in fp16, as on the host
                lim = torch.finfo(dtype).max
                y = y.clamp(-lim, lim)
            out.append(y.to(dtype))
        return out

    def estimate(self, state: tuple, t: torch.Tensor, degree: int | None = None) -> torch.Tensor:
        """The estimated relative error of forecasting to ``t`` (0-dim float64; NaN when the state cannot
        estimate yet, as the host's None): ``remainder`` ``R |c_{order+1}(t)|``; ``pair`` ``||D_k|| / ||D_0|| |c_k(t)|`` with
        ``k = min(max(degree, 1), K - 1)`` (``order=0``: the remainder)."""
        _, nodes, count, ratio, pairs = self.split(state)
        m = self.order
        if self.estimator == "remainder" or m == 0:
            scale = self.coefficients(t, nodes, m + 1)[m + 1]
            return torch.where(torch.isinf(ratio), float("nan"), ratio.to(torch.float64) * scale.abs())
        cap = m if degree is None else max(int(degree), 1)
        k = torch.clamp(torch.clamp(count - 1, max=cap), min=1)
        coeffs = torch.stack(self.coefficients(t, nodes, m))
        idx = torch.clamp(k, max=m).reshape(1)
        est = pairs.index_select(0, idx).reshape(()).to(torch.float64) * coeffs.index_select(0, idx).reshape(()).abs()
        return torch.where(count >= 2, est, float("nan"))


class DeviceRule:
    """:class:`~taylorseer_fx.policy.auto.AutoPolicy`'s threshold rule at a free step, on the device:
    forecast unless the run reached ``max_forecast_run``, while within ``min_forecast_run`` or while the
    run's combined estimate (``step``, ``sum``, ``rss``) is <= ``threshold``. State: ``(run, total)``
    -- forecasts since the last compute (int64) and the run's sum or sum of squares (float64)."""

    def __init__(self, policy):
        self.rule, self.tau = policy.rule, float(policy.threshold)
        self.max_run, self.min_run = policy.max_forecast_run, int(policy.min_forecast_run)

    @staticmethod
    def empty(device) -> tuple:
        return torch.zeros((), dtype=torch.int64, device=device), torch.zeros((), dtype=torch.float64, device=device)

    def decide(self, estimate: torch.Tensor, run: torch.Tensor, total: torch.Tensor) -> tuple:
        """``(forecast?, run', total')`` for this step's ``estimate`` (NaN or +inf computes, and inside
        ``min_forecast_run`` adds nothing to the run's total, as on the host)."""
        forced = run >= self.max_run if self.max_run is not None else torch.zeros_like(run, dtype=torch.bool)
        in_min = run < self.min_run
        if self.rule == "step":
            added, bound = total, estimate
        elif self.rule == "sum":
            added = total + estimate
            bound = added
        else:
            added = total + estimate * estimate
            bound = added.sqrt()
        forecast = ~forced & (in_min | (bound <= self.tau))
        kept = torch.where(in_min & ~torch.isfinite(estimate), total, added)
        return forecast, torch.where(forecast, run + 1, 0), torch.where(forecast, kept, 0.0)
