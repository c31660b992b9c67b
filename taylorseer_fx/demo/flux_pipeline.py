"""Sampling the FLUX digits model through a real ``diffusers.FluxPipeline``.

The pipeline is FLUX.1's: ``FlowMatchEulerDiscreteScheduler`` with FLUX.1-dev's scheduler config
(``use_dynamic_shifting=True``, base_shift 0.5, max_shift 1.15, base/max image_seq_len 256/4096), so
the schedule's shift is resolution dependent as in FLUX: for the 64 image tokens here
mu = calculate_shift(64) = 0.4675, i.e. sigma' = e^mu / (e^mu + 1/sigma - 1) with e^mu = 1.596.
No VAE, tokenizers or text encoders (``vae=None`` etc.): the conditioning comes from the label table
as ``prompt_embeds`` / ``pooled_prompt_embeds``, true CFG from the null label as
``negative_prompt_embeds`` / ``negative_pooled_prompt_embeds`` with ``true_cfg_scale`` (two
transformer calls per step: cond, then uncond), and ``output_type="latent"`` returns the packed latent
[B, 64, 4], which :func:`.flux_model.unpack` turns into images [B, 1, 16, 16] in [-1, 1].

Units: ``num_steps`` = Euler steps (one per ``scheduler.timesteps`` entry); ``scheduler.timesteps``
are sigma * 1000, the pipeline passes ``timestep / 1000`` = sigma to the transformer; a step's index
is its position in ``scheduler.timesteps`` (0 = the noisiest).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .data import RESOLUTION
from .flux_model import LATENT_CHANNELS, NULL_LABEL, PIXEL_SIZE, condition, load_label_table, load_transformer, pack, unpack

__all__ = ["FLUX_SCHEDULER_CONFIG", "build_scheduler", "build_pipeline", "initial_noise", "pipeline_inputs",
           "sample", "sample_accuracy"]

#: FLUX.1-dev's scheduler/scheduler_config.json
FLUX_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                             max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def build_scheduler():
    """``FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)`` (dynamic shifting, as FLUX.1)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER_CONFIG)


def build_pipeline(transformer=None, device: str | torch.device = "cpu"):
    """A ``diffusers.FluxPipeline`` around ``transformer`` (default: the shipped model) with no VAE,
    tokenizers or text encoders, progress bar off."""
    from diffusers import FluxPipeline

    if transformer is None:
        transformer = load_transformer(device=device)
    pipe = FluxPipeline(scheduler=build_scheduler(), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def initial_noise(n: int, seed: int = 0) -> Tensor:
    """Standard normal noise for ``n`` samples, packed: [n, 64, 4] (drawn as [n, 1, 16, 16] on the CPU
    and packed, like ``FluxPipeline.prepare_latents``)."""
    g = torch.Generator().manual_seed(int(seed))
    return pack(torch.randn(n, LATENT_CHANNELS, RESOLUTION, RESOLUTION, generator=g))


def pipeline_inputs(labels: Sequence[int] | Tensor, cfg_scale: float = 3.0, table: dict[str, Tensor] | None = None,
                    device=None, dtype=None) -> dict:
    """The FluxPipeline keywords that condition on ``labels`` (digit classes 0..9): ``prompt_embeds`` and
    ``pooled_prompt_embeds``; with ``cfg_scale != 1`` also the null label's as the negative prompt and
    ``true_cfg_scale``. Raises ValueError for a label outside 0..9."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) >= NULL_LABEL:
        raise ValueError(f"labels must be in [0, {NULL_LABEL}), got {labels.tolist()}")
    table = table if table is not None else load_label_table()
    pe, pooled = condition(labels, table)
    kw = dict(prompt_embeds=pe.to(device, dtype), pooled_prompt_embeds=pooled.to(device, dtype))
    if cfg_scale != 1.0:
        npe, npooled = condition(torch.full((labels.numel(),), NULL_LABEL), table)
        kw.update(negative_prompt_embeds=npe.to(device, dtype), negative_pooled_prompt_embeds=npooled.to(device, dtype),
                  true_cfg_scale=float(cfg_scale))
    return kw


@torch.no_grad()
def sample(
    pipe,
    labels: Sequence[int] | Tensor,
    num_steps: int = 28,
    cfg_scale: float = 3.0,
    *,
    table: dict[str, Tensor] | None = None,
    noise: Tensor | None = None,
    seed: int = 0,
    clip: bool = True,
    **pipe_kwargs,
) -> Tensor:
    """One image per label through ``pipe(...)``; returns float32 [B, 1, 16, 16] in [-1, 1].

    Args:
        pipe: a FluxPipeline from :func:`build_pipeline` (possibly through ``compile_pipeline``).
        labels: digit classes in 0..9.
        num_steps: ``num_inference_steps`` (Euler steps; with CFG two transformer calls each).
        cfg_scale: ``true_cfg_scale``; > 1 adds the null label's embeddings as the negative prompt,
            1 runs the conditional branch only.
        table: the label table (default: the shipped one).
        noise: packed initial latent [B, 64, 4] (default :func:`initial_noise` (B, seed)).
        pipe_kwargs: passed on to the pipeline (e.g. ``callback_on_step_end``).
    """
    p = next(pipe.transformer.parameters())
    kw = pipeline_inputs(labels, cfg_scale, table, p.device, p.dtype)
    b = kw["prompt_embeds"].shape[0]
    noise = noise if noise is not None else initial_noise(b, seed)
    if tuple(noise.shape) != (b, (RESOLUTION // 2) ** 2, 4 * LATENT_CHANNELS):
        raise ValueError(f"noise must be packed [{b}, {(RESOLUTION // 2) ** 2}, {4 * LATENT_CHANNELS}], "
                         f"got {tuple(noise.shape)}")
    out = pipe(**kw, latents=noise.to(p.device, p.dtype), num_inference_steps=int(num_steps), height=PIXEL_SIZE,
               width=PIXEL_SIZE, output_type="latent", **pipe_kwargs).images
    x = unpack(out.float())
    return x.clamp(-1.0, 1.0) if clip else x


@torch.no_grad()
def sample_accuracy(transformer, table, clf, per_class: int = 20, num_steps: int = 28, cfg_scale: float = 3.0,
                    seed: int = 0, chunk: int = 100) -> float:
    """Fraction of ``10 * per_class`` class-conditional samples (uncached FluxPipeline) that the
    classifier labels as their class."""
    pipe = build_pipeline(transformer)
    labels = torch.arange(10).repeat_interleave(per_class)
    noise = initial_noise(len(labels), seed)
    correct = 0
    for j in range(0, len(labels), chunk):
        lab = labels[j:j + chunk]
        x = sample(pipe, lab, num_steps=num_steps, cfg_scale=cfg_scale, table=table, noise=noise[j:j + chunk])
        correct += int((clf(x.to(next(clf.parameters()).device)).argmax(1) == lab).sum())
    return correct / len(labels)
