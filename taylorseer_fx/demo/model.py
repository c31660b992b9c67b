"""A small class-conditional DiT for 16x16 digits, in the style of diffusers' DiT / SD3.

Plain torch, no data-dependent Python control flow in ``forward``: ``torch.compile`` / dynamo traces
the whole model into one graph. Module paths follow the usual layout so region selection by path
works the same way it does on diffusers models::

    pos_embed                 PatchEmbed (conv patchify + fixed 2-D sin-cos positions)
    time_embed                TimestepEmbedding (sinusoidal of 1000*sigma -> MLP)
    label_embed               nn.Embedding(num_classes + 1, hidden); the last row is the null label (CFG)
    blocks.{i}                DiTBlock
    blocks.{i}.norm1          AdaLayerNormZero: LayerNorm + (shift, scale, gate) x (attn, ff) from the condition
    blocks.{i}.attn           Attention: its output is the attention output *before* gating
    blocks.{i}.norm2          LayerNorm (no affine); modulated with shift/scale from norm1
    blocks.{i}.ff             FeedForward (Linear-GELU(tanh)-Linear): output before gating
    norm_out, proj_out        final adaLN (shift, scale) + linear, then unpatchify

The input ``timestep`` is the flow time sigma in [0, 1] (x_t = (1 - sigma) x0 + sigma eps) and the
output is the predicted velocity v = eps - x0 with the shape of ``x``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DiTConfig",
    "DigitDiT",
    "DiTBlock",
    "Attention",
    "FeedForward",
    "AdaLayerNormZero",
    "PatchEmbed",
    "TimestepEmbedding",
    "timestep_sinusoidal",
]


@dataclass(frozen=True)
class DiTConfig:
    sample_size: int = 16
    patch_size: int = 2
    in_channels: int = 1
    hidden_size: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10

    def to_dict(self) -> dict:
        return asdict(self)


def sincos_pos_embed_2d(dim: int, grid: int) -> Tensor:
    """Fixed 2-D sin-cos positional embedding [grid*grid, dim] (as in MAE / DiT / diffusers)."""
    if dim % 4 != 0:
        raise ValueError(f"hidden_size must be divisible by 4 for 2-D sincos, got {dim}")
    coords = torch.arange(grid, dtype=torch.float64)
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    quarter = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))

    def one(pos: Tensor) -> Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([one(gy), one(gx)], dim=1).float()  # [grid*grid, dim]


def timestep_sinusoidal(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of a [B] float tensor (cos first, like diffusers' flip_sin_to_cos=True)."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    args = t.float()[:, None] * torch.exp(exponent)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class PatchEmbed(nn.Module):
    def __init__(self, sample_size: int, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        grid = sample_size // patch_size
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden_size, grid)[None], persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # [B, D, h, w]
        x = x.flatten(2).transpose(1, 2)  # [B, N, D]
        return x + self.pos_embed.to(x.dtype)


class TimestepEmbedding(nn.Module):
    """sigma in [0, 1] -> sinusoidal(1000 * sigma) -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size: int, freq_dim: int = 256, scale: float = 1000.0):
        super().__init__()
        self.freq_dim = freq_dim
        self.scale = scale
        self.linear_1 = nn.Linear(freq_dim, hidden_size)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, timestep: Tensor) -> Tensor:
        emb = timestep_sinusoidal(timestep * self.scale, self.freq_dim)
        emb = emb.to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(emb)))


class AdaLayerNormZero(nn.Module):
    """LayerNorm modulated by the condition; returns the 6-way adaLN-Zero split (DiT / SD3)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(hidden_size, 6 * hidden_size)
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)

    def forward(self, x: Tensor, emb: Tensor):
        emb = self.linear(self.silu(emb))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = emb.chunk(6, dim=1)
        x = self.norm(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


class Attention(nn.Module):
    """Multi-head self-attention (fused qkv, SDPA). Output = attention output before gating."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size {hidden_size} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.to_qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.to_out = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        qkv = self.to_qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, H, N, hd]
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.to_out(out)


class FeedForward(nn.Module):
    def __init__(self, hidden_size: int, mlp_ratio: float = 4.0):
        super().__init__()
        inner = int(hidden_size * mlp_ratio)
        self.fc1 = nn.Linear(hidden_size, inner)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(inner, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = AdaLayerNormZero(hidden_size)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(hidden_size, mlp_ratio)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        norm_x, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, emb)
        attn_out = self.attn(norm_x)
        x = x + gate_msa[:, None] * attn_out
        norm_x = self.norm2(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        ff_out = self.ff(norm_x)
        x = x + gate_mlp[:, None] * ff_out
        return x


class DigitDiT(nn.Module):
    """Class-conditional DiT predicting the rectified-flow velocity.

    forward(x [B, C, H, W], timestep [B] float sigma in [0, 1], class_labels [B] long in
    [0, num_classes]; num_classes = null label) -> velocity [B, C, H, W].
    """

    def __init__(self, config: DiTConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = DiTConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a DiTConfig or keyword arguments, not both")
        if config.sample_size % config.patch_size != 0:
            raise ValueError("sample_size must be divisible by patch_size")
        self.config = config
        d = config.hidden_size
        self.sample_size = config.sample_size
        self.patch_size = config.patch_size
        self.in_channels = config.in_channels
        self.num_classes = config.num_classes
        self.null_class = config.num_classes
        self.pos_embed = PatchEmbed(config.sample_size, config.patch_size, config.in_channels, d)
        self.time_embed = TimestepEmbedding(d)
        self.label_embed = nn.Embedding(config.num_classes + 1, d)
        self.blocks = nn.ModuleList(
            [DiTBlock(d, config.num_heads, config.mlp_ratio) for _ in range(config.depth)]
        )
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.adaLN_out = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.proj_out = nn.Linear(d, config.patch_size * config.patch_size * config.in_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        def _basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(_basic)
        w = self.pos_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.pos_embed.proj.bias)
        nn.init.normal_(self.label_embed.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_2.weight, std=0.02)
        for block in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(block.norm1.linear.weight)
            nn.init.zeros_(block.norm1.linear.bias)
        nn.init.zeros_(self.adaLN_out[1].weight)
        nn.init.zeros_(self.adaLN_out[1].bias)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def unpatchify(self, x: Tensor) -> Tensor:
        p, c = self.patch_size, self.in_channels
        g = self.sample_size // p
        x = x.reshape(x.shape[0], g, g, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, g * p, g * p)

    def forward(self, x: Tensor, timestep: Tensor, class_labels: Tensor) -> Tensor:
        h = self.pos_embed(x)
        emb = self.time_embed(timestep) + self.label_embed(class_labels)
        for block in self.blocks:
            h = block(h, emb)
        shift, scale = self.adaLN_out(emb).chunk(2, dim=1)
        h = self.norm_out(h) * (1 + scale[:, None]) + shift[:, None]
        h = self.proj_out(h)
        return self.unpatchify(h)


class DigitClassifier(nn.Module):
    """Small CNN for 16x16 digits in [-1, 1]. ``features`` = penultimate activations (for FID)."""

    def __init__(self, sample_size: int = 16, num_classes: int = 10, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.config = {"sample_size": sample_size, "num_classes": num_classes, "width": width,
                       "feature_dim": feature_dim}
        self.sample_size = sample_size
        self.num_classes = num_classes
        self.feature_dim = feature_dim
        self.conv = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(),
            nn.MaxPool2d(2),  # 4x4
        )
        self.fc = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.3),
            nn.Linear(2 * width * (sample_size // 4) ** 2, feature_dim), nn.GELU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.fc(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))
