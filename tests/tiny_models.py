"""Tiny random-weight diffusers transformers with matching input builders (test helpers).

Every factory ``make_<family>(seed=0)`` returns ``(model, make_inputs)``:

* ``model`` is a float32 diffusers transformer in ``eval()`` mode, two blocks per block stack, hidden
  size 32, a few dozen tokens, so one eager forward takes a few milliseconds on one CPU thread;
* ``make_inputs(batch=1, step_t=None, hidden_states=None) -> (args, kwargs)`` builds the inputs the
  way diffusers pipelines call the model: everything by keyword (``args == ()``), ``return_dict=False``
  (the output is a 1-tuple ``(sample,)``), the timestep a float32 tensor of shape ``(batch,)`` filled
  with ``step_t`` in the family's own units (``TIMESTEP_RANGE``). The conditioning inputs are fixed by
  ``seed`` (same tensors at every call), so a sampling loop only swaps ``hidden_states``/``timestep``.
  ``hidden_states`` overrides the random latent (its shape must be ``LATENT_SHAPE[family]`` with the
  batch in front); the model's output has the latent's shape.

``FAMILIES`` maps a family name to its factory. ``TIMESTEP_KWARG`` is ``"timestep"`` for all of them.
The facts dynamo sees for these models are recorded in ``tests/data/graph_facts.md``.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = [
    "FAMILIES",
    "TIMESTEP_KWARG",
    "TIMESTEP_RANGE",
    "LATENT_SHAPE",
    "make_flux",
    "make_sd3",
    "make_pixart",
    "make_dit",
    "make_hunyuan_video",
    "make_wan",
]

TIMESTEP_KWARG = "timestep"

# (start, end) of the timestep values a pipeline passes for a run from noise to data.
# Flux: the pipeline passes sigma in [0, 1] (the model multiplies by 1000); the others get t in [0, 1000].
TIMESTEP_RANGE = {
    "flux": (1.0, 0.0),
    "sd3": (1000.0, 0.0),
    "pixart": (999.0, 0.0),
    "dit": (999.0, 0.0),
    "hunyuan_video": (1000.0, 0.0),
    "wan": (1000.0, 0.0),
}

# Per-sample latent shape (without batch) that ``make_inputs`` builds and the model returns.
LATENT_SHAPE = {
    "flux": (16, 4),  # packed tokens: (H*W, C) with H = W = 4
    "sd3": (4, 8, 8),
    "pixart": (4, 8, 8),
    "dit": (4, 8, 8),
    "hunyuan_video": (4, 1, 4, 4),  # (C, F, H, W)
    "wan": (4, 2, 4, 4),  # (C, F, H, W)
}

InputBuilder = Callable[..., "tuple[tuple, dict]"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randn(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float32)


def _latent(family: str, batch: int, g: torch.Generator, hidden_states: torch.Tensor | None) -> torch.Tensor:
    """A random latent, always drawn first so that the conditioning inputs drawn after it do not depend on
    whether the caller overrides it with ``hidden_states``."""
    shape = (batch, *LATENT_SHAPE[family])
    drawn = _randn(g, *shape)
    if hidden_states is None:
        return drawn
    if tuple(hidden_states.shape) != shape:
        raise ValueError(f"{family}: hidden_states must have shape {shape}, got {tuple(hidden_states.shape)}")
    return hidden_states


def _timestep(family: str, batch: int, step_t: float | None) -> torch.Tensor:
    if step_t is None:
        step_t = sum(TIMESTEP_RANGE[family]) / 2
    return torch.full((batch,), float(step_t), dtype=torch.float32)


def _finish(model: torch.nn.Module) -> torch.nn.Module:
    model = model.eval()  # built in float32 (torch's default dtype)
    model.requires_grad_(False)
    return model


def _seeded(seed: int):
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------- flux
def make_flux(seed: int = 0):
    from diffusers import FluxTransformer2DModel

    _seeded(seed)
    model = _finish(
        FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            pooled_projection_dim=32,
            guidance_embeds=False,
            axes_dims_rope=(4, 6, 6),
        )
    )
    h = w = 4
    txt_len = 8

    def make_inputs(batch: int = 1, step_t: float | None = None, hidden_states: torch.Tensor | None = None):
        g = _gen(seed + 1)
        latent = _latent("flux", batch, g, hidden_states)
        img_ids = torch.zeros(h, w, 3)
        img_ids[..., 1] = torch.arange(h)[:, None]
        img_ids[..., 2] = torch.arange(w)[None, :]
        kwargs = dict(
            hidden_states=latent,
            encoder_hidden_states=_randn(g, batch, txt_len, 32),
            pooled_projections=_randn(g, batch, 32),
            timestep=_timestep("flux", batch, step_t),
            img_ids=img_ids.reshape(h * w, 3),
            txt_ids=torch.zeros(txt_len, 3),
            return_dict=False,
        )
        return (), kwargs

    return model, make_inputs


# ---------------------------------------------------------------------------------------------- sd3
def make_sd3(seed: int = 0):
    from diffusers import SD3Transformer2DModel

    _seeded(seed)
    model = _finish(
        SD3Transformer2DModel(
            sample_size=8,
            patch_size=2,
            in_channels=4,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,
            caption_projection_dim=32,
            pooled_projection_dim=32,
            out_channels=4,
            pos_embed_max_size=8,
        )
    )

    def make_inputs(batch: int = 1, step_t: float | None = None, hidden_states: torch.Tensor | None = None):
        g = _gen(seed + 1)
        latent = _latent("sd3", batch, g, hidden_states)
        kwargs = dict(
            hidden_states=latent,
            encoder_hidden_states=_randn(g, batch, 8, 32),
            pooled_projections=_randn(g, batch, 32),
            timestep=_timestep("sd3", batch, step_t),
            return_dict=False,
        )
        return (), kwargs

    return model, make_inputs


# ------------------------------------------------------------------------------------------- pixart
def make_pixart(seed: int = 0):
    from diffusers import PixArtTransformer2DModel

    _seeded(seed)
    model = _finish(
        PixArtTransformer2DModel(
            sample_size=8,
            num_layers=2,
            patch_size=2,
            attention_head_dim=16,
            num_attention_heads=2,
            caption_channels=32,
            in_channels=4,
            cross_attention_dim=32,
            out_channels=4,
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            use_additional_conditions=False,
        )
    )

    def make_inputs(batch: int = 1, step_t: float | None = None, hidden_states: torch.Tensor | None = None):
        g = _gen(seed + 1)
        latent = _latent("pixart", batch, g, hidden_states)
        kwargs = dict(
            hidden_states=latent,
            encoder_hidden_states=_randn(g, batch, 8, 32),
            timestep=_timestep("pixart", batch, step_t),
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )
        return (), kwargs

    return model, make_inputs


# ---------------------------------------------------------------------------------------------- dit
def make_dit(seed: int = 0):
    from diffusers import DiTTransformer2DModel

    _seeded(seed)
    model = _finish(
        DiTTransformer2DModel(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=4,
            num_layers=2,
            sample_size=8,
            patch_size=2,
            num_embeds_ada_norm=10,  # number of classes
        )
    )

    def make_inputs(batch: int = 1, step_t: float | None = None, hidden_states: torch.Tensor | None = None):
        g = _gen(seed + 1)
        latent = _latent("dit", batch, g, hidden_states)
        kwargs = dict(
            hidden_states=latent,
            timestep=_timestep("dit", batch, step_t),
            class_labels=torch.arange(batch, dtype=torch.long) % 10,
            return_dict=False,
        )
        return (), kwargs

    return model, make_inputs


# ---------------------------------------------------------------------------------------- hunyuan
def make_hunyuan_video(seed: int = 0):
    from diffusers import HunyuanVideoTransformer3DModel

    _seeded(seed)
    model = _finish(
        HunyuanVideoTransformer3DModel(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=2,
            num_single_layers=2,
            num_refiner_layers=2,
            patch_size=1,
            patch_size_t=1,
            guidance_embeds=True,
            text_embed_dim=16,
            pooled_projection_dim=8,
            rope_axes_dim=(4, 6, 6),
        )
    )
    txt_len = 8

    def make_inputs(batch: int = 1, step_t: float | None = None, hidden_states: torch.Tensor | None = None):
        g = _gen(seed + 1)
        latent = _latent("hunyuan_video", batch, g, hidden_states)
        kwargs = dict(
            hidden_states=latent,
            timestep=_timestep("hunyuan_video", batch, step_t),
            encoder_hidden_states=_randn(g, batch, txt_len, 16),
            encoder_attention_mask=torch.ones(batch, txt_len, dtype=torch.float32),
            pooled_projections=_randn(g, batch, 8),
            guidance=torch.full((batch,), 6000.0),  # guidance scale 6 * 1000, as the pipeline passes it
            return_dict=False,
        )
        return (), kwargs

    return model, make_inputs


# ---------------------------------------------------------------------------------------------- wan
def make_wan(seed: int = 0):
    from diffusers import WanTransformer3DModel

    _seeded(seed)
    model = _finish(
        WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=4,
            out_channels=4,
            text_dim=16,
            freq_dim=32,
            ffn_dim=64,
            num_layers=2,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )
    )

    def make_inputs(batch: int = 1, step_t: float | None = None, hidden_states: torch.Tensor | None = None):
        g = _gen(seed + 1)
        latent = _latent("wan", batch, g, hidden_states)
        kwargs = dict(
            hidden_states=latent,
            timestep=_timestep("wan", batch, step_t),
            encoder_hidden_states=_randn(g, batch, 8, 16),
            return_dict=False,
        )
        return (), kwargs

    return model, make_inputs


FAMILIES: dict[str, Callable[..., "tuple[torch.nn.Module, InputBuilder]"]] = {
    "flux": make_flux,
    "sd3": make_sd3,
    "pixart": make_pixart,
    "dit": make_dit,
    "hunyuan_video": make_hunyuan_video,
    "wan": make_wan,
}
