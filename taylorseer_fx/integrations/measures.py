"""How far a cached output is from the uncached one: relative L2 and PSNR, in float64 over the whole
output (every sample of a batch together). Used by :func:`~taylorseer_fx.testing.check_cache` and
:func:`~taylorseer_fx.tune`; the demo's metrics (:mod:`taylorseer_fx.demo.metrics`) add the image
metrics of a trained classifier.
"""

from __future__ import annotations

import math

import torch

__all__ = ["psnr", "relative_l2"]


def relative_l2(y: torch.Tensor, ref: torch.Tensor) -> float:
    """``||y - ref|| / ||ref||`` in float64 (``||y||`` when ``ref`` is zero)."""
    y, ref = y.double(), ref.double()
    den = float(ref.norm()) or 1.0
    return float((y - ref).norm()) / den


def psnr(y: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB with the reference's value range ``max - min`` as the peak (inf when equal)."""
    y, ref = y.double(), ref.double()
    mse = float(((y - ref) ** 2).mean())
    peak = float(ref.max() - ref.min()) if ref.numel() else 0.0
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(max(peak, 1e-12) ** 2 / mse) if math.isfinite(mse) else -math.inf
