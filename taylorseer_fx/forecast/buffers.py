"""Tensor plumbing of the forecast math: output strides, the residual add-back and shared work buffers.

Knows nothing of forecasting: ``forecaster.py`` (and ``whole_graph.py`` / ``region_state.py`` through it)
use these so that a forecast has the computed output's layout and its scratch is shared.
"""

from __future__ import annotations

import math

import torch

__all__ = ["Scratch", "out_strides", "add_back"]


def out_strides(shape, stride) -> tuple:
    """The output's strides when they describe non-overlapping memory, else contiguous strides.

    (Expanded views with stride 0 cannot be written to; every other layout, transposed or sliced,
    is reproduced exactly.)"""
    dims = sorted((s, n) for n, s in zip(shape, stride) if n > 1)
    extent = 0
    for s, n in dims:
        if s <= extent:
            break
        extent += (n - 1) * s
    else:
        return tuple(stride)
    out, acc = [0] * len(shape), 1
    for i in range(len(shape) - 1, -1, -1):
        out[i] = acc
        acc *= max(shape[i], 1)
    return tuple(out)


#: output dtypes whose forecasts are clamped to the finite range (the models clip these activations)
CLAMPED = (torch.float16, torch.bfloat16)


def add_back(delta: torch.Tensor, base: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None = None):
    """A residual region output from its forecast ``delta`` (output - input, float32) and the region's
    current input ``base``: ``delta + base`` computed in float32, in ``dtype`` (written into ``out``
    when given, which must have that dtype). For fp16 / bf16 the float32 sum is clamped to the dtype's
    finite range first, as the models clip their activations: an input at the limit plus a forecast
    change never overflows into inf. The whole-graph forecast version calls it in its graph, the split
    path on the piece's output."""
    if dtype in CLAMPED:
        lim = torch.finfo(dtype).max
        s = torch.add(delta, base).clamp_(-lim, lim)
        return s.to(dtype) if out is None else out.copy_(s)
    if out is not None:
        return torch.add(delta, base, out=out)
    return torch.add(delta, base).to(dtype)


class Scratch:
    """Two work buffers per (device, compute dtype), shared by the Forecasters it is given -- the
    regions of one generation -- and grown to the largest output any of them served. A forecaster
    uses them only inside one ``update``/``forecast`` call, so they must not be shared across threads
    (the runtime makes one per generation, which belongs to one thread)."""

    def __init__(self):
        self._buffers: dict = {}     # (device, dtype) -> (flat a, flat b)

    def pair(self, shape, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Two contiguous buffers of ``shape`` (views of the shared ones; valid until the next call)."""
        n = math.prod(shape)
        key = (device, dtype)
        flat = self._buffers.get(key)
        if flat is None or flat[0].numel() < n:
            flat = self._buffers[key] = (torch.empty(n, dtype=dtype, device=device),
                                         torch.empty(n, dtype=dtype, device=device))
        return flat[0][:n].view(shape), flat[1][:n].view(shape)

    def memory_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for pair in self._buffers.values() for b in pair)
