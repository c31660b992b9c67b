"""The digits data set (scikit-learn's 8x8 ``load_digits``) at the demo model's resolution.

Deterministic: pixel values 0..16 are scaled to [-1, 1] and upsampled bilinearly
(align_corners=False) to ``resolution`` x ``resolution``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["load_digits", "split_indices", "RESOLUTION"]

RESOLUTION = 16


def load_digits(resolution: int = RESOLUTION) -> tuple[Tensor, Tensor]:
    """Return ``(images, labels)``: images float32 [1797, 1, R, R] in [-1, 1], labels int64 [1797]."""
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the digits demo needs scikit-learn: pip install 'taylorseer-fx[demo]'") from e
    if resolution < 8:
        raise ValueError(f"resolution must be >= 8, got {resolution}")
    ds = _sk_load_digits()
    images = torch.as_tensor(ds.images, dtype=torch.float32)[:, None]  # [N, 1, 8, 8], 0..16
    images = images / 8.0 - 1.0
    if resolution != 8:
        images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    labels = torch.as_tensor(ds.target, dtype=torch.long)
    return images.clamp_(-1.0, 1.0).contiguous(), labels


def split_indices(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Deterministic random split of ``range(n)`` into (train, test) index tensors."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_test = int(round(n * test_fraction))
    return perm[n_test:].sort().values, perm[:n_test].sort().values
