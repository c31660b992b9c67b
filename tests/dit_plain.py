"""A small plain-PyTorch DiT (no diffusers) for the transform/runtime/backend tests.

Layout follows DiT (Peebles & Xie): patch embedding, sinusoidal timestep embedding + MLP, a
``blocks`` ModuleList of adaLN-Zero blocks (``attn`` and ``mlp`` submodules, modulation gates and
residual adds outside them), and a final layer. Like diffusers' ``DiTTransformer2DModel``, the final
layer reuses block 0's embedder after the last block (``reuse_block0_embedder=True``), so block 0's
nodes are not contiguous in graph order.

``forward(x, timestep, y=None)``: ``x`` is ``(B, C, H, W)`` latents, ``timestep`` a 1-D tensor of
shape ``(B,)`` (or a 0-dim tensor / Python float) in the scheduler's units (e.g. 0..1000),
``y`` optional class labels ``(B,)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a (B,) timestep tensor -> (B, dim) float32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(o.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, ratio: float = 2.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, int(dim * ratio))
        self.fc2 = nn.Linear(int(dim * ratio), dim)

    def forward(self, x):
        return self.fc2(torch.nn.functional.gelu(self.fc1(x), approximate="tanh"))


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 32):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.freq_dim))


class DiTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, embedder: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.emb = TimestepEmbedder(dim) if embedder else None

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        h = self.norm1(x) * (1 + scale1[:, None]) + shift1[:, None]
        x = x + gate1[:, None] * self.attn(h)
        h = self.norm2(x) * (1 + scale2[:, None]) + shift2[:, None]
        x = x + gate2[:, None] * self.mlp(h)
        return x


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.linear = nn.Linear(dim, out)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(self.norm(x) * (1 + scale[:, None]) + shift[:, None])


class PlainDiT(nn.Module):
    """Tiny DiT. ``forward(x, timestep, y=None) -> (B, C, H, W)``."""

    def __init__(self, in_channels: int = 4, size: int = 8, patch: int = 2, dim: int = 32, depth: int = 3,
                 heads: int = 4, num_classes: int = 10, reuse_block0_embedder: bool = True):
        super().__init__()
        self.in_channels, self.size, self.patch = in_channels, size, patch
        self.reuse_block0_embedder = reuse_block0_embedder
        self.x_embedder = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2, dim) * 0.02)
        self.y_embedder = nn.Embedding(num_classes + 1, dim)
        # Block 0 owns the timestep embedder (as diffusers' DiT blocks own theirs).
        self.blocks = nn.ModuleList([DiTBlock(dim, heads, embedder=(i == 0)) for i in range(depth)])
        self.final_layer = FinalLayer(dim, patch * patch * in_channels)

    def forward(self, x, timestep, y=None):
        b = x.shape[0]
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], dtype=torch.float32, device=x.device)
        if timestep.ndim == 0:
            timestep = timestep[None]
        timestep = timestep.expand(b)
        h = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed
        if y is None:
            y = torch.full((b,), self.y_embedder.num_embeddings - 1, dtype=torch.long, device=x.device)
        c = None
        for i, block in enumerate(self.blocks):
            if i == 0:
                c = block.emb(timestep) + self.y_embedder(y)
            h = block(h, c)
        if self.reuse_block0_embedder:
            c = self.blocks[0].emb(timestep) + self.y_embedder(y)
        out = self.final_layer(h, c)
        p, s, ch = self.patch, self.size // self.patch, self.in_channels
        out = out.reshape(b, s, s, p, p, ch).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(b, ch, s * p, s * p)


def make_plain_dit(seed: int = 0, **kw) -> PlainDiT:
    torch.manual_seed(seed)
    model = PlainDiT(**kw).eval()
    # adaLN-Zero initialises gates to 0; perturb so every block matters in the tests.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def plain_dit_inputs(batch: int = 2, seed: int = 1, in_channels: int = 4, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_channels, size, size, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    return x, y
