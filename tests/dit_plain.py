"""A small plain-PyTorch DiT (no diffusers) and a hook-based reference for the backend tests.

Layout follows DiT (Peebles & Xie): patch embedding, sinusoidal timestep embedding + MLP, a
``blocks`` ModuleList of adaLN-Zero blocks (``attn`` and ``mlp`` submodules, modulation gates and
residual adds outside them), and a final layer. Like diffusers' ``DiTTransformer2DModel``, the final
layer reuses block 0's embedder after the last block (``reuse_block0_embedder=True``), so block 0's
nodes are not contiguous in graph order.

``forward(x, timestep, y=None)``: ``x`` is ``(B, C, H, W)`` latents, ``timestep`` a 1-D tensor of
shape ``(B,)`` (or a 0-dim tensor / Python float) in the scheduler's units (e.g. 0..1000),
``y`` optional class labels ``(B,)``. ``transposed_out=True`` makes every block return a
non-contiguous tensor (the same values with transposed strides), to test stride handling.

:class:`HookReference` is the test oracle: the uncached model with forward hooks that replace region
outputs by :class:`~taylorseer_fx.forecast.forecaster.Forecaster` forecasts, following the runtime's rules
(docs in ``taylorseer_fx/runtime/runtime.py``) written out independently: steps and streams from the
timestep value, a new generation when the coordinate turns back or the input shapes change (a
batch-only change at a new step keeps the step index and restarts the factors and the warm-up).
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
    def __init__(self, dim: int, heads: int, embedder: bool = False, transposed_out: bool = False):
        super().__init__()
        self.transposed_out = transposed_out
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
        if self.transposed_out:  # same values, non-contiguous (B, N, D) with D-major strides
            x = x.transpose(1, 2).contiguous().transpose(1, 2)
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
                 heads: int = 4, num_classes: int = 10, reuse_block0_embedder: bool = True,
                 transposed_out: bool = False):
        super().__init__()
        self.in_channels, self.size, self.patch = in_channels, size, patch
        self.reuse_block0_embedder = reuse_block0_embedder
        self.x_embedder = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.pos_embed = nn.Parameter(torch.randn(1, (size // patch) ** 2, dim) * 0.02)
        self.y_embedder = nn.Embedding(num_classes + 1, dim)
        # Block 0 owns the timestep embedder (as diffusers' DiT blocks own theirs).
        self.blocks = nn.ModuleList([DiTBlock(dim, heads, embedder=(i == 0), transposed_out=transposed_out)
                                     for i in range(depth)])
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


class HookReference:
    """The uncached model, with the region outputs replaced by hand-made forecasts.

    ``kind="stack"``: the region output is the last block's output; ``kind="modules"``: each block's
    ``attn`` and ``mlp`` outputs. One Forecaster per (generation, stream, region); one decision per
    step (``policy.start(num_steps).decide(step)``) at the step's first call; a forecast only from a
    forecaster that has points (else compute). Coordinate: taylor -> step index; newton -> timestep
    value (``policy.forecast.coordinate == "timestep"``) or step index.

    ``__call__(x, timestep, y)`` returns the output; ``log`` records (generation, step, stream, what).
    The hooks sit on a deep copy of ``model``, so a compiled ``model`` never sees them.
    """

    def __init__(self, model: PlainDiT, policy, kind: str = "stack", num_steps: int | None = None):
        import copy
        from taylorseer_fx.forecast.forecaster import Forecaster
        self._Forecaster = Forecaster
        model = copy.deepcopy(model)  # hooks on a copy: a compiled original never traces them
        self.model, self.policy, self.num_steps = model, policy, num_steps
        if kind == "stack":
            mods = [model.blocks[-1]]
        elif kind == "modules":
            mods = [m for b in model.blocks for m in (b.attn, b.mlp)]
        else:
            raise ValueError(kind)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(mods)]
        self.log: list = []
        self.reset()

    def reset(self):
        self.gen = getattr(self, "gen", -1) + 1
        self.coord = self.sig = None
        self.direction = 0
        self.step = self.stream = 0
        self.forecasters: dict = {}

    def close(self):
        for h in self.handles:
            h.remove()

    def _new_generation(self, coord, sig):
        self.gen += 1
        self.coord, self.sig, self.direction, self.step, self.stream = coord, sig, 0, 0, 0
        self.schedule = self.policy.start(self.num_steps)

    def _restart(self):
        """A batch change within the generation: the step index goes on; fresh factors and warm-up."""
        self.part = getattr(self, "part", 0) + 1
        self.schedule = self.policy.start(self.num_steps, first_step=self.step)

    def __call__(self, x, timestep, y=None):
        coord = float(timestep.reshape(-1)[0])
        sig = (tuple(x.shape), tuple(timestep.shape), None if y is None else tuple(y.shape))
        batch_only = (self.sig is not None and sig != self.sig
                      and all(a[1:] == b[1:] for a, b in zip(sig, self.sig) if a is not None)
                      and len({(a[0], b[0]) for a, b in zip(sig, self.sig) if a is not None and a != b}) == 1)
        if self.coord is None or (sig != self.sig and (coord == self.coord or not batch_only)):
            self._new_generation(coord, sig)
        elif coord == self.coord:
            self.stream += 1
        else:
            d = 1 if coord > self.coord else -1
            if self.direction and d != self.direction:
                self._new_generation(coord, sig)
            else:
                self.direction, self.coord, self.step, self.stream = d, coord, self.step + 1, 0
                if sig != self.sig:
                    self.sig = sig
                    self._restart()
        if self.stream == 0:
            self.compute = self.schedule.decide(self.step)
            self.derivatives = self.schedule.derivatives(self.step)
        p = self.policy
        self.x = float(coord) if (p.form == "newton" and p.forecast.coordinate == "timestep") else float(self.step)
        self.what = []
        with torch.no_grad():
            out = self.model(x, timestep, y)
        self.log.append((self.gen, self.step, self.stream, tuple(self.what)))
        return out

    def _hook(self, index):
        def hook(module, args, output):
            key = (self.gen, getattr(self, "part", 0), self.stream, index)
            f = self.forecasters.get(key)
            if f is None:
                f = self.forecasters[key] = self._Forecaster(self.policy.order, self.policy.form)
            if self.compute or f.num_points == 0:
                f.update(self.x, output, derivatives=self.derivatives)
                self.what.append("compute")
                return None
            self.what.append("forecast")
            return f.forecast(self.x)
        return hook
