"""The estimates a step's decision reads: each region's estimated relative error of forecasting at
``x``, read to the host in one read (and, under ``torch.distributed``, summed over the ranks first).

A region that cannot forecast (no state, not ready, a non-finite output) gives ``+inf``; one with no
estimate yet (fewer computes stored than the estimator needs) ``NaN``; a constant one ``0.0``. The
decision over several regions takes :func:`~taylorseer_fx.forecast.estimates.worst` of them.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from ..forecast.estimates import NORM_EPS, read_host

__all__ = ["region_estimates"]


def region_estimates(states: Sequence, x: float, method: str, degree: int | None, device=None) -> list:
    """Host floats, one per state of ``states`` (a region's ``RegionState`` of stream 0, or None), for
    a forecast at ``x`` with ``method`` (``"pair"`` / ``"remainder"``) capped at ``degree``. Under
    ``torch.distributed`` (context parallelism: each rank holds a shard of every output) the squared
    norms behind each estimate are summed over the ranks before dividing
    (``Forecaster.error_terms``), so every rank takes exactly the decision of the single process that
    holds the whole output."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return _sharded(states, x, method, degree, device)
    vals, _ = read_host(math.inf if st is None else st.estimate(x, method, degree) for st in states)
    return vals


def _sharded(states: Sequence, x: float, method: str, degree: int | None, device) -> list:
    """:func:`region_estimates` under ``torch.distributed``: one SUM all-reduce of ``(num_sq, den_sq)``
    per region (a region this rank cannot estimate contributes +inf, a constant one 0), then the ratio;
    a region with no estimate yet (too few computes, the same on every rank) is NaN after the read."""
    terms, scales, unknown = [], [], []
    for st in states:
        varies = st is not None and st.ready and not st.all_constant
        parts = st.forecaster.error_terms(x, method, degree=degree) if varies else None
        # no estimate yet (too few computes stored): the same on every rank, NaN after the read
        unknown.append(varies and parts is None)
        if st is not None and st.ready and st.all_constant:
            terms.append((0.0, 1.0)), scales.append(0.0)
        elif parts is None:
            terms.append((math.inf, 1.0)), scales.append(1.0)
        else:
            terms.append(parts[:2]), scales.append(parts[2])
    dev = next((v.device for pair in terms for v in pair if isinstance(v, torch.Tensor)),
               device or torch.device("cpu"))
    t = torch.stack([torch.stack([v.to(dev, torch.float32).reshape(()) if isinstance(v, torch.Tensor)
                                  else torch.tensor(float(v), dtype=torch.float32, device=dev) for v in pair])
                     for pair in terms])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    scale = torch.tensor(scales, dtype=torch.float32, device=dev)
    est = (t[:, 0].sqrt() / (t[:, 1].sqrt() + NORM_EPS)) * scale
    est = torch.nan_to_num(est, nan=math.inf, posinf=math.inf).tolist()    # the one host read
    return [math.nan if u else v for u, v in zip(unknown, est)]
