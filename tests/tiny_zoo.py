"""The zoo: tiny random-weight instances of (almost) every diffusers transformer family (test helpers).

Same conventions as ``tiny_models.py``: a factory ``make_<family>(seed=0) -> (model, make_inputs)``,
the model a float32 diffusers transformer in ``eval()`` mode with grad off, hidden size 16-48, one or two
blocks per block stack, a few dozen tokens; ``make_inputs(batch=1, step_t=None, hidden_states=None) ->
(args, kwargs)`` builds the inputs as the family's pipeline passes them (by keyword, ``return_dict=False``),
the timestep a float32 tensor filled with ``step_t`` in the family's own units, the conditioning fixed
by ``seed``; ``hidden_states`` (a tensor of ``latent_shape`` with the batch in front) replaces the
random latent.

``ZOO`` maps a family name to a :class:`Family` record: the factory, the diffusers class, the
per-sample latent shape, the timestep range a pipeline walks (``(start, end)``, in the model's units:
decreasing for most, increasing for the families whose pipeline passes ``1 - sigma``), the block
ModuleList path(s) that form the block stack, in graph order, and how to read the latent from the
inputs / the sample from the output (Z-Image takes and returns lists of tensors).

The six families of ``tiny_models.py`` are in the zoo too (same factories).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

import tiny_models as _tm

__all__ = ["Family", "ZOO"]


def _first(out):
    return out[0]


def _hidden(kwargs):
    return kwargs["hidden_states"]


@dataclass(frozen=True)
class Family:
    name: str
    cls: str                     # diffusers class name
    make: Callable               # make(seed) -> (model, make_inputs)
    latent_shape: tuple          # per sample (no batch)
    timestep_range: tuple        # (start, end) a pipeline walks, model units
    blocks: tuple                # block ModuleList path(s), in graph order
    sample: Callable = _first    # model output -> latent-shaped tensor
    latent: Callable = _hidden   # make_inputs kwargs -> latent tensor (batch first)
    inside: tuple = ()           # other modules that legitimately run between the blocks (adapters)
    note: str = ""

    def timesteps(self, n: int) -> list:
        """``n`` timesteps of a run from noise to data (``end`` excluded), in the model's units."""
        start, end = self.timestep_range
        return [start + (end - start) * i / n for i in range(n)]


ZOO: dict[str, Family] = {}


def _register(name, cls, latent_shape, timestep_range, blocks, **kw):
    def deco(fn):
        ZOO[name] = Family(name, cls, fn, tuple(latent_shape), tuple(timestep_range), tuple(blocks), **kw)
        return fn
    return deco


_gen, _randn, _finish, _seeded = _tm._gen, _tm._randn, _tm._finish, _tm._seeded


def _latent(shape, batch, g, hidden_states):
    """Drawn first (so the conditioning drawn after it does not depend on an override)."""
    shape = (batch, *shape)
    drawn = _randn(g, *shape)
    if hidden_states is None:
        return drawn
    if tuple(hidden_states.shape) != shape:
        raise ValueError(f"hidden_states must have shape {shape}, got {tuple(hidden_states.shape)}")
    return hidden_states


def _inputs(seed, shape, t_range, cond, *, t_key="timestep", x_key="hidden_states", wrap=None):
    """An input builder: latent (``x_key``), timestep (``t_key``), then ``cond(g, batch) -> dict``."""
    mid = sum(t_range) / 2

    def make_inputs(batch: int = 1, step_t: float | None = None, hidden_states: torch.Tensor | None = None):
        g = _gen(seed + 1)
        x = _latent(shape, batch, g, hidden_states)
        t = torch.full((batch,), float(mid if step_t is None else step_t), dtype=torch.float32)
        kwargs = {x_key: wrap(x) if wrap else x, t_key: t}
        kwargs.update(cond(g, batch))
        kwargs["return_dict"] = False
        return (), kwargs

    return make_inputs


def _build(cls_name, seed, **config):
    """The model, float32, eval, grad off; parameters initialised to zero (output projections, gates,
    pad tokens: ErnieImage's output would be 0 at every step) get small random values, so that every
    output depends on the blocks."""
    import diffusers
    _seeded(seed)
    model = getattr(diffusers, cls_name)(**config)
    g = _gen(seed + 2)
    with torch.no_grad():
        for p in model.parameters():
            if p.numel() and not p.any():
                p.copy_(0.02 * _randn(g, *p.shape))
    return _finish(model)


def _ids(*axes):
    """Cartesian position ids, ``(prod(axes), len(axes))`` float."""
    return torch.cartesian_prod(*[torch.arange(a) for a in axes]).float().reshape(-1, len(axes))


# --------------------------------------------------------------------------- tiny_models.py families
for _name, _cls, _blocks in [
    ("flux", "FluxTransformer2DModel", ("transformer_blocks", "single_transformer_blocks")),
    ("sd3", "SD3Transformer2DModel", ("transformer_blocks",)),
    ("pixart", "PixArtTransformer2DModel", ("transformer_blocks",)),
    ("dit", "DiTTransformer2DModel", ("transformer_blocks",)),
    ("hunyuan_video", "HunyuanVideoTransformer3DModel", ("transformer_blocks", "single_transformer_blocks")),
    ("wan", "WanTransformer3DModel", ("blocks",)),
]:
    _register(_name, _cls, _tm.LATENT_SHAPE[_name], _tm.TIMESTEP_RANGE[_name], _blocks)(_tm.FAMILIES[_name])


# ------------------------------------------------------------------------------- Flux-like (sigma)
@_register("flux2", "Flux2Transformer2DModel", (16, 4), (1.0, 0.0), ("transformer_blocks", "single_transformer_blocks"))
def make_flux2(seed=0):
    model = _build("Flux2Transformer2DModel", seed, patch_size=1, in_channels=4, num_layers=2, num_single_layers=2,
                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                   timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4))
    txt = 8

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, txt, 32), img_ids=_ids(1, 4, 4, 1)[None].expand(b, -1, -1),
                    txt_ids=_ids(1, 1, 1, txt)[None].expand(b, -1, -1), guidance=torch.full((b,), 4.0))
    return model, _inputs(seed, (16, 4), (1.0, 0.0), cond)


@_register("chroma", "ChromaTransformer2DModel", (16, 4), (1.0, 0.0), ("transformer_blocks", "single_transformer_blocks"))
def make_chroma(seed=0):
    model = _build("ChromaTransformer2DModel", seed, patch_size=1, in_channels=4, num_layers=2, num_single_layers=2,
                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6),
                   approximator_num_channels=8, approximator_hidden_dim=16, approximator_layers=1)

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 32), img_ids=_flux_img_ids(), txt_ids=torch.zeros(8, 3))
    return model, _inputs(seed, (16, 4), (1.0, 0.0), cond)


def _flux_img_ids(h=4, w=4):
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = torch.arange(h)[:, None]
    ids[..., 2] = torch.arange(w)[None, :]
    return ids.reshape(h * w, 3)


@_register("bria", "BriaTransformer2DModel", (16, 4), (1000.0, 0.0), ("transformer_blocks", "single_transformer_blocks"))
def make_bria(seed=0):
    model = _build("BriaTransformer2DModel", seed, patch_size=1, in_channels=4, num_layers=2, num_single_layers=2,
                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=None,
                   axes_dims_rope=(0, 8, 8))

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 32), img_ids=_flux_img_ids(), txt_ids=torch.zeros(8, 3))
    return model, _inputs(seed, (16, 4), (1000.0, 0.0), cond)


@_register("ovis_image", "OvisImageTransformer2DModel", (16, 4), (1.0, 0.0),
           ("transformer_blocks", "single_transformer_blocks"))
def make_ovis_image(seed=0):
    model = _build("OvisImageTransformer2DModel", seed, patch_size=1, in_channels=4, out_channels=4, num_layers=2,
                   num_single_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                   axes_dims_rope=(4, 6, 6))

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 32), img_ids=_flux_img_ids(), txt_ids=torch.zeros(8, 3))
    return model, _inputs(seed, (16, 4), (1.0, 0.0), cond)


@_register("longcat_image", "LongCatImageTransformer2DModel", (16, 4), (1.0, 0.0),
           ("transformer_blocks", "single_transformer_blocks"))
def make_longcat_image(seed=0):
    model = _build("LongCatImageTransformer2DModel", seed, patch_size=1, in_channels=4, num_layers=2,
                   num_single_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                   pooled_projection_dim=32, axes_dims_rope=(4, 6, 6))

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 32), img_ids=_flux_img_ids(), txt_ids=torch.zeros(8, 3),
                    guidance=torch.full((b,), 4.0))
    return model, _inputs(seed, (16, 4), (1.0, 0.0), cond)


@_register("qwenimage", "QwenImageTransformer2DModel", (16, 16), (1.0, 0.0), ("transformer_blocks",))
def make_qwenimage(seed=0):
    model = _build("QwenImageTransformer2DModel", seed, patch_size=2, in_channels=16, out_channels=4, num_layers=2,
                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16, guidance_embeds=False,
                   axes_dims_rope=(8, 4, 4))

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16), encoder_hidden_states_mask=torch.ones(b, 8),
                    img_shapes=[(1, 4, 4)] * b)
    return model, _inputs(seed, (16, 16), (1.0, 0.0), cond)


@_register("nucleusmoe_image", "NucleusMoEImageTransformer2DModel", (16, 16), (1.0, 0.0), ("transformer_blocks",))
def make_nucleusmoe_image(seed=0):
    model = _build("NucleusMoEImageTransformer2DModel", seed, patch_size=2, in_channels=16, out_channels=4,
                   num_layers=2, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                   axes_dims_rope=(8, 4, 4), moe_enabled=False, capacity_factors=[8.0, 8.0])

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16), encoder_hidden_states_mask=torch.ones(b, 8, dtype=torch.long),
                    img_shapes=[(1, 4, 4)] * b)
    return model, _inputs(seed, (16, 16), (1.0, 0.0), cond)


# ---------------------------------------------------------------------------------------- image DiTs
@_register("sana", "SanaTransformer2DModel", (4, 8, 8), (1000.0, 0.0), ("transformer_blocks",))
def make_sana(seed=0):
    model = _build("SanaTransformer2DModel", seed, patch_size=1, in_channels=4, out_channels=4, num_layers=2,
                   attention_head_dim=16, num_attention_heads=2, num_cross_attention_heads=2,
                   cross_attention_head_dim=16, cross_attention_dim=32, caption_channels=16, sample_size=8)

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16))
    return model, _inputs(seed, (4, 8, 8), (1000.0, 0.0), cond)


@_register("auraflow", "AuraFlowTransformer2DModel", (4, 8, 8), (1.0, 0.0),
           ("joint_transformer_blocks", "single_transformer_blocks"))
def make_auraflow(seed=0):
    model = _build("AuraFlowTransformer2DModel", seed, sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=2,
                   num_single_dit_layers=2, attention_head_dim=16, num_attention_heads=2, caption_projection_dim=32,
                   joint_attention_dim=32, out_channels=4, pos_embed_max_size=16)

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 32))
    return model, _inputs(seed, (4, 8, 8), (1.0, 0.0), cond)


@_register("hunyuan_dit", "HunyuanDiT2DModel", (4, 8, 8), (1000.0, 0.0), ("blocks",))
def make_hunyuan_dit(seed=0):
    model = _build("HunyuanDiT2DModel", seed, sample_size=8, patch_size=2, in_channels=4, num_layers=2,
                   attention_head_dim=16, num_attention_heads=2, cross_attention_dim=16, cross_attention_dim_t5=16,
                   pooled_projection_dim=8, hidden_size=32, text_len=4, text_len_t5=4,
                   activation_fn="gelu-approximate", learn_sigma=False)
    from diffusers.models.embeddings import get_2d_rotary_pos_embed
    rope = get_2d_rotary_pos_embed(16, ((0, 0), (4, 4)), (4, 4))

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 4, 16), text_embedding_mask=torch.ones(b, 4),
                    encoder_hidden_states_t5=_randn(g, b, 4, 16), text_embedding_mask_t5=torch.ones(b, 4),
                    image_meta_size=torch.tensor([[64.0, 64, 64, 64, 0, 0]] * b), style=torch.zeros(b, dtype=torch.long),
                    image_rotary_emb=rope)
    return model, _inputs(seed, (4, 8, 8), (1000.0, 0.0), cond)


def _cogview_cond(dim, seq=8):
    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, seq, dim), original_size=torch.tensor([[64.0, 64.0]] * b),
                    target_size=torch.tensor([[64.0, 64.0]] * b), crop_coords=torch.tensor([[0.0, 0.0]] * b))
    return cond


@_register("cogview3plus", "CogView3PlusTransformer2DModel", (4, 8, 8), (1000.0, 0.0), ("transformer_blocks",))
def make_cogview3plus(seed=0):
    model = _build("CogView3PlusTransformer2DModel", seed, patch_size=2, in_channels=4, num_layers=2,
                   attention_head_dim=16, num_attention_heads=2, out_channels=4, text_embed_dim=16,
                   time_embed_dim=16, condition_dim=4, pos_embed_max_size=8, sample_size=8)
    return model, _inputs(seed, (4, 8, 8), (1000.0, 0.0), _cogview_cond(16))


@_register("cogview4", "CogView4Transformer2DModel", (4, 8, 8), (1000.0, 0.0), ("transformer_blocks",))
def make_cogview4(seed=0):
    model = _build("CogView4Transformer2DModel", seed, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                   attention_head_dim=16, num_attention_heads=2, text_embed_dim=16, time_embed_dim=16,
                   condition_dim=4, rope_axes_dim=(8, 8))
    return model, _inputs(seed, (4, 8, 8), (1000.0, 0.0), _cogview_cond(16))


@_register("glm_image", "GlmImageTransformer2DModel", (4, 8, 8), (1000.0, 0.0), ("transformer_blocks",))
def make_glm_image(seed=0):
    model = _build("GlmImageTransformer2DModel", seed, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                   attention_head_dim=16, num_attention_heads=2, text_embed_dim=16, time_embed_dim=16,
                   condition_dim=8, prior_vq_quantizer_codebook_size=64)

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16), prior_token_id=torch.arange(16)[None].repeat(b, 1) % 64,
                    prior_token_drop=torch.zeros(b, dtype=torch.bool), target_size=torch.tensor([[8.0, 8.0]] * b),
                    crop_coords=torch.tensor([[0.0, 0.0]] * b))
    return model, _inputs(seed, (4, 8, 8), (1000.0, 0.0), cond)


# ------------------------------------------------------------------------- Lumina / Z-Image family
@_register("lumina_next", "LuminaNextDiT2DModel", (4, 8, 8), (0.0, 1.0), ("layers",))
def make_lumina_next(seed=0):
    model = _build("LuminaNextDiT2DModel", seed, sample_size=8, patch_size=2, in_channels=4, hidden_size=32,
                   num_layers=2, num_attention_heads=2, num_kv_heads=1, multiple_of=16, ffn_dim_multiplier=None,
                   norm_eps=1e-5, learn_sigma=False, qk_norm=True, cross_attention_dim=16, scaling_factor=1.0)
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina
    rope = get_2d_rotary_pos_embed_lumina(16, 8, 8)

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16), encoder_mask=torch.ones(b, 8), image_rotary_emb=rope,
                    cross_attention_kwargs={})
    return model, _inputs(seed, (4, 8, 8), (0.0, 1.0), cond)


@_register("lumina2", "Lumina2Transformer2DModel", (4, 8, 8), (0.0, 1.0), ("layers",))
def make_lumina2(seed=0):
    model = _build("Lumina2Transformer2DModel", seed, sample_size=8, patch_size=2, in_channels=4, hidden_size=32,
                   num_layers=2, num_refiner_layers=1, num_attention_heads=2, num_kv_heads=1, multiple_of=16,
                   ffn_dim_multiplier=None, norm_eps=1e-5, scaling_factor=1.0, axes_dim_rope=(8, 4, 4),
                   axes_lens=(64, 64, 64), cap_feat_dim=16)

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16), encoder_attention_mask=torch.ones(b, 8, dtype=torch.bool))
    return model, _inputs(seed, (4, 8, 8), (0.0, 1.0), cond)


def _unlist(out):
    return torch.stack(list(out[0]))


@_register("z_image", "ZImageTransformer2DModel", (16, 1, 8, 8), (0.0, 1.0), ("layers",), sample=_unlist,
           latent=lambda kw: torch.stack(kw["x"]))
def make_z_image(seed=0):
    model = _build("ZImageTransformer2DModel", seed, all_patch_size=(2,), all_f_patch_size=(1,), in_channels=16,
                   dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, qk_norm=True, cap_feat_dim=16,
                   rope_theta=256.0, t_scale=1000.0, axes_dims=[8, 4, 4], axes_lens=[64, 32, 32])

    def cond(g, b):
        return dict(cap_feats=[_randn(g, 8, 16) for _ in range(b)])
    return model, _inputs(seed, (16, 1, 8, 8), (0.0, 1.0), cond, t_key="t", x_key="x", wrap=lambda x: list(x.unbind(0)))


# ------------------------------------------------------------------------------------ HiDream (MoE)
@_register("hidream", "HiDreamImageTransformer2DModel", (4, 8, 8), (1000.0, 0.0),
           ("double_stream_blocks", "single_stream_blocks"))
def make_hidream(seed=0):
    model = _build("HiDreamImageTransformer2DModel", seed, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                   num_single_layers=2, attention_head_dim=16, num_attention_heads=2, caption_channels=[8, 4],
                   text_emb_dim=8, num_routed_experts=2, num_activated_experts=2, axes_dims_rope=(8, 4, 4),
                   max_resolution=(8, 8), llama_layers=(0, 1, 2, 3), force_inference_output=True)

    def cond(g, b):
        return dict(encoder_hidden_states_t5=_randn(g, b, 8, 8), encoder_hidden_states_llama3=_randn(g, 4, b, 8, 4),
                    pooled_embeds=_randn(g, b, 8))
    return model, _inputs(seed, (4, 8, 8), (1000.0, 0.0), cond, t_key="timesteps")


# ---------------------------------------------------------------------------------- HunyuanVideo kin
def _hv_cond(txt_dim=16, pooled=8, txt=8, guidance=True):
    def cond(g, b):
        kw = dict(encoder_hidden_states=_randn(g, b, txt, txt_dim), encoder_attention_mask=torch.ones(b, txt),
                  pooled_projections=_randn(g, b, pooled))
        if guidance:
            kw["guidance"] = torch.full((b,), 6000.0)
        return kw
    return cond


_HV = dict(num_attention_heads=2, attention_head_dim=16, num_layers=2, num_single_layers=2, num_refiner_layers=1,
           patch_size=1, patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(4, 6, 6))


@_register("hunyuan_video_i2v", "HunyuanVideoTransformer3DModel", (4, 1, 4, 4), (1000.0, 0.0),
           ("transformer_blocks", "single_transformer_blocks"), latent=lambda kw: kw["hidden_states"][:, :4].contiguous(),
           note="image_condition_type='latent_concat': the latent, the image latent and a mask concatenated (9 ch)")
def make_hunyuan_video_i2v(seed=0):
    model = _build("HunyuanVideoTransformer3DModel", seed, in_channels=9, out_channels=4, guidance_embeds=False,
                   image_condition_type="latent_concat", **_HV)
    base = _hv_cond(guidance=False)

    def cond(g, b):
        kw = base(g, b)
        kw["_image"] = torch.cat([_randn(g, b, 4, 1, 4, 4), torch.ones(b, 1, 1, 4, 4)], dim=1)
        return kw
    inner = _inputs(seed, (4, 1, 4, 4), (1000.0, 0.0), cond)

    def make_inputs(batch=1, step_t=None, hidden_states=None):
        args, kw = inner(batch, step_t, hidden_states)
        kw["hidden_states"] = torch.cat([kw["hidden_states"], kw.pop("_image")], dim=1)
        return args, kw
    return model, make_inputs


@_register("hunyuan_video_framepack", "HunyuanVideoFramepackTransformer3DModel", (4, 2, 4, 4), (1000.0, 0.0),
           ("transformer_blocks", "single_transformer_blocks"))
def make_hunyuan_video_framepack(seed=0):
    hv = dict(_HV, patch_size=2)
    model = _build("HunyuanVideoFramepackTransformer3DModel", seed, in_channels=4, out_channels=4, guidance_embeds=True,
                   image_condition_type=None, has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True, **hv)
    base = _hv_cond()

    def cond(g, b):
        kw = base(g, b)
        kw.update(image_embeds=_randn(g, b, 4, 16), indices_latents=torch.arange(2),
                  latents_clean=_randn(g, b, 4, 1, 4, 4), indices_latents_clean=torch.tensor([0]),
                  latents_history_2x=_randn(g, b, 4, 1, 4, 4), indices_latents_history_2x=torch.tensor([1]),
                  latents_history_4x=_randn(g, b, 4, 4, 4, 4), indices_latents_history_4x=torch.arange(4))
        return kw
    return model, _inputs(seed, (4, 2, 4, 4), (1000.0, 0.0), cond)


@_register("hunyuan_video15", "HunyuanVideo15Transformer3DModel", (4, 1, 4, 4), (1000.0, 0.0), ("transformer_blocks",))
def make_hunyuan_video15(seed=0):
    model = _build("HunyuanVideo15Transformer3DModel", seed, in_channels=4, out_channels=4, num_attention_heads=2,
                   attention_head_dim=16, num_layers=2, num_refiner_layers=1, mlp_ratio=2.0, patch_size=1,
                   patch_size_t=1, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=12, rope_axes_dim=(4, 6, 6),
                   target_size=16, task_type="t2v")

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 6, 16), encoder_attention_mask=torch.ones(b, 6),
                    encoder_hidden_states_2=_randn(g, b, 4, 8), encoder_attention_mask_2=torch.ones(b, 4),
                    image_embeds=torch.zeros(b, 3, 12))
    return model, _inputs(seed, (4, 1, 4, 4), (1000.0, 0.0), cond)


@_register("hunyuanimage", "HunyuanImageTransformer2DModel", (4, 4, 4), (1000.0, 0.0),
           ("transformer_blocks", "single_transformer_blocks"))
def make_hunyuanimage(seed=0):
    model = _build("HunyuanImageTransformer2DModel", seed, in_channels=4, out_channels=4, num_attention_heads=2,
                   attention_head_dim=16, num_layers=2, num_single_layers=2, num_refiner_layers=1, patch_size=(1, 1),
                   guidance_embeds=False, text_embed_dim=16, text_embed_2_dim=8, rope_axes_dim=(8, 8))

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 6, 16), encoder_attention_mask=torch.ones(b, 6),
                    encoder_hidden_states_2=_randn(g, b, 4, 8), encoder_attention_mask_2=torch.ones(b, 4))
    return model, _inputs(seed, (4, 4, 4), (1000.0, 0.0), cond)


# --------------------------------------------------------------------------------- other image DiTs
@_register("omnigen", "OmniGenTransformer2DModel", (4, 8, 8), (1000.0, 0.0), ("layers",),
           note="a graph break before the LLM call: the LLM's forward is its own frame, so its blocks are "
                "`layers` (paths relative to `llm`)")
def make_omnigen(seed=0):
    model = _build("OmniGenTransformer2DModel", seed, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
                   intermediate_size=64, num_layers=2, pad_token_id=0, vocab_size=100, in_channels=4,
                   time_step_dim=16, rope_scaling={"long_factor": [1.0] * 8, "short_factor": [1.0] * 8},
                   pos_embed_max_size=16)
    seq = 8 + 1 + 16  # text tokens, time token, image tokens

    def cond(g, b):
        return dict(input_ids=torch.randint(1, 100, (b, 8), generator=g), input_img_latents=[], input_image_sizes={},
                    attention_mask=torch.ones(b, seq, seq), position_ids=torch.arange(seq)[None].repeat(b, 1))
    return model, _inputs(seed, (4, 8, 8), (1000.0, 0.0), cond)


@_register("prx", "PRXTransformer2DModel", (4, 8, 8), (1.0, 0.0), ("blocks",))
def make_prx(seed=0):
    model = _build("PRXTransformer2DModel", seed, in_channels=4, patch_size=2, context_in_dim=16, hidden_size=32,
                   mlp_ratio=2.0, num_heads=2, depth=2, axes_dim=[8, 8], theta=10_000)

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16))
    return model, _inputs(seed, (4, 8, 8), (1.0, 0.0), cond)


@_register("ernie_image", "ErnieImageTransformer2DModel", (16, 4, 4), (1000.0, 0.0), ("layers",))
def make_ernie_image(seed=0):
    model = _build("ErnieImageTransformer2DModel", seed, hidden_size=32, num_attention_heads=2, num_layers=2,
                   ffn_hidden_size=64, in_channels=16, out_channels=16, patch_size=1, text_in_dim=16, rope_theta=256,
                   rope_axes_dim=(8, 4, 4), eps=1e-6, qk_layernorm=True)

    def cond(g, b):
        return dict(text_bth=_randn(g, b, 8, 16), text_lens=torch.full((b,), 8))
    return model, _inputs(seed, (16, 4, 4), (1000.0, 0.0), cond)


@_register("krea2", "Krea2Transformer2DModel", (16, 16), (1.0, 0.0), ("transformer_blocks",))
def make_krea2(seed=0):
    model = _build("Krea2Transformer2DModel", seed, in_channels=16, num_layers=2, attention_head_dim=16,
                   num_attention_heads=2, num_key_value_heads=1, intermediate_size=64, timestep_embed_dim=16,
                   text_hidden_dim=16, num_text_layers=3, text_num_attention_heads=2, text_num_key_value_heads=1,
                   text_intermediate_size=32, num_layerwise_text_blocks=1, num_refiner_text_blocks=1,
                   axes_dims_rope=(8, 4, 4), rope_theta=1000.0, norm_eps=1e-5)
    txt = 4
    pos = torch.zeros(txt + 16, 3)
    pos[txt:, 1] = torch.arange(4).repeat_interleave(4).float()
    pos[txt:, 2] = torch.arange(4).repeat(4).float()

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, txt, 3, 16), position_ids=pos,
                    encoder_attention_mask=torch.ones(b, txt, dtype=torch.bool))
    return model, _inputs(seed, (16, 16), (1.0, 0.0), cond)


@_register("bria_fibo", "BriaFiboTransformer2DModel", (16, 4), (1000.0, 0.0),
           ("transformer_blocks", "single_transformer_blocks"))
def make_bria_fibo(seed=0):
    model = _build("BriaFiboTransformer2DModel", seed, patch_size=1, in_channels=4, num_layers=2, num_single_layers=2,
                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, text_encoder_dim=16,
                   pooled_projection_dim=None, axes_dims_rope=(0, 8, 8))

    def cond(g, b):
        ehs = _randn(g, b, 8, 32)
        return dict(encoder_hidden_states=ehs, img_ids=_flux_img_ids(), txt_ids=torch.zeros(8, 3),
                    text_encoder_layers=[ehs[:, :, :16]] * 4)
    return model, _inputs(seed, (16, 4), (1000.0, 0.0), cond)


@_register("kandinsky5", "Kandinsky5Transformer3DModel", (1, 4, 4, 4), (1000.0, 0.0),
           ("text_transformer_blocks", "visual_transformer_blocks"), sample=lambda out: out,
           inside=("visual_rope_embeddings",),
           note="return_dict=False returns the tensor itself; the visual RoPE runs between the two block lists")
def make_kandinsky5(seed=0):
    model = _build("Kandinsky5Transformer3DModel", seed, in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16,
                   out_visual_dim=4, patch_size=(1, 2, 2), model_dim=32, ff_dim=64, num_text_blocks=1,
                   num_visual_blocks=2, axes_dims=(8, 4, 4), visual_cond=False)
    vis = [torch.arange(1), torch.arange(2), torch.arange(2)]

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16), pooled_projections=_randn(g, b, 8), visual_rope_pos=vis,
                    text_rope_pos=torch.arange(8), scale_factor=(1.0, 1.0, 1.0))
    return model, _inputs(seed, (1, 4, 4, 4), (1000.0, 0.0), cond)


def _with_condition(inner, extra_key, dim=1):
    """``make_inputs`` that concatenates ``kwargs.pop(extra_key)`` (fixed conditioning channels) to the latent."""
    def make_inputs(batch=1, step_t=None, hidden_states=None):
        args, kw = inner(batch, step_t, hidden_states)
        kw["hidden_states"] = torch.cat([kw["hidden_states"], kw.pop(extra_key)], dim=dim)
        return args, kw
    return make_inputs


def _first_channels(c, dim=1):
    return lambda kw: kw["hidden_states"].narrow(dim, 0, c).contiguous()


# ------------------------------------------------------------------------------------ Wan and kin
_WAN = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, text_dim=16, freq_dim=32, ffn_dim=64,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def _wan_cond(g, b):
    return dict(encoder_hidden_states=_randn(g, b, 8, 16))


@_register("wan_i2v", "WanTransformer3DModel", (4, 2, 4, 4), (1000.0, 0.0), ("blocks",),
           latent=_first_channels(4), note="Wan 2.1 I2V: image latent concatenated (8 ch), CLIP image tokens")
def make_wan_i2v(seed=0):
    model = _build("WanTransformer3DModel", seed, in_channels=8, out_channels=4, num_layers=2, image_dim=16, **_WAN)

    def cond(g, b):
        return dict(_wan_cond(g, b), encoder_hidden_states_image=_randn(g, b, 4, 16), _image=_randn(g, b, 4, 2, 4, 4))
    return model, _with_condition(_inputs(seed, (4, 2, 4, 4), (1000.0, 0.0), cond), "_image")


@_register("wan_vace", "WanVACETransformer3DModel", (4, 2, 4, 4), (1000.0, 0.0), ("vace_blocks", "blocks"))
def make_wan_vace(seed=0):
    model = _build("WanVACETransformer3DModel", seed, in_channels=4, out_channels=4, num_layers=2, vace_layers=[0, 1],
                   vace_in_channels=12, **_WAN)

    def cond(g, b):
        return dict(_wan_cond(g, b), control_hidden_states=_randn(g, b, 12, 2, 4, 4))
    return model, _inputs(seed, (4, 2, 4, 4), (1000.0, 0.0), cond)


@_register("wan_animate", "WanAnimateTransformer3DModel", (4, 3, 4, 4), (1000.0, 0.0), ("blocks",),
           inside=("face_adapter",), latent=_first_channels(4),
           note="2C+4 input channels (latent, reference, mask); pose latents; a face video through the motion encoder")
def make_wan_animate(seed=0):
    model = _build("WanAnimateTransformer3DModel", seed, in_channels=12, latent_channels=4, out_channels=4,
                   num_layers=2, image_dim=16, motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16},
                   motion_encoder_size=16, motion_style_dim=8, motion_dim=4, motion_encoder_dim=16,
                   face_encoder_hidden_dim=16, face_encoder_num_heads=2, inject_face_latents_blocks=2, **_WAN)

    def cond(g, b):
        return dict(_wan_cond(g, b), encoder_hidden_states_image=_randn(g, b, 4, 16),
                    pose_hidden_states=_randn(g, b, 4, 2, 4, 4), face_pixel_values=_randn(g, b, 3, 5, 16, 16),
                    _image=_randn(g, b, 8, 3, 4, 4))
    return model, _with_condition(_inputs(seed, (4, 3, 4, 4), (1000.0, 0.0), cond), "_image")


@_register("skyreels_v2", "SkyReelsV2Transformer3DModel", (4, 2, 4, 4), (1000.0, 0.0), ("blocks",))
def make_skyreels_v2(seed=0):
    model = _build("SkyReelsV2Transformer3DModel", seed, in_channels=4, out_channels=4, num_layers=2, **_WAN)
    return model, _inputs(seed, (4, 2, 4, 4), (1000.0, 0.0), _wan_cond)


@_register("chronoedit", "ChronoEditTransformer3DModel", (4, 2, 4, 4), (1000.0, 0.0), ("blocks",))
def make_chronoedit(seed=0):
    model = _build("ChronoEditTransformer3DModel", seed, in_channels=4, out_channels=4, num_layers=2,
                   rope_temporal_skip_len=8, **_WAN)
    return model, _inputs(seed, (4, 2, 4, 4), (1000.0, 0.0), _wan_cond)


@_register("helios", "HeliosTransformer3DModel", (4, 2, 4, 4), (1000.0, 0.0), ("blocks",))
def make_helios(seed=0):
    cfg = {k: v for k, v in _WAN.items() if k != "rope_max_seq_len"}
    model = _build("HeliosTransformer3DModel", seed, in_channels=4, out_channels=4, num_layers=2, rope_dim=(4, 6, 6),
                   has_multi_term_memory_patch=True, guidance_cross_attn=True, zero_history_timestep=True,
                   is_amplify_history=False, **cfg)

    def cond(g, b):
        return dict(_wan_cond(g, b), indices_hidden_states=torch.arange(2)[None].repeat(b, 1) + 6,
                    indices_latents_history_short=torch.tensor([[5]] * b), indices_latents_history_mid=torch.tensor([[4]] * b),
                    indices_latents_history_long=torch.arange(4)[None].repeat(b, 1),
                    latents_history_short=_randn(g, b, 4, 1, 4, 4), latents_history_mid=_randn(g, b, 4, 1, 4, 4),
                    latents_history_long=_randn(g, b, 4, 4, 4, 4))
    return model, _inputs(seed, (4, 2, 4, 4), (1000.0, 0.0), cond)


@_register("anyflow", "AnyFlowTransformer3DModel", (2, 4, 4, 4), (1000.0, 0.0), ("blocks",),
           note="frames first: (F, C, H, W); an r_timestep (the flow map's target time) besides the timestep")
def make_anyflow(seed=0):
    cfg = {k: v for k, v in _WAN.items() if k != "qk_norm"}
    model = _build("AnyFlowTransformer3DModel", seed, in_channels=4, out_channels=4, num_layers=2, gate_value=0.25,
                   deltatime_type="r", **cfg)
    inner = _inputs(seed, (2, 4, 4, 4), (1000.0, 0.0), _wan_cond)

    def make_inputs(batch=1, step_t=None, hidden_states=None):
        args, kw = inner(batch, step_t, hidden_states)
        kw["timestep"] = kw["timestep"][:, None].repeat(1, 2)      # per frame, as the pipeline passes it
        kw["r_timestep"] = kw["timestep"]
        return args, kw
    return model, make_inputs


# ---------------------------------------------------------------------------------- other video DiTs
@_register("ltx", "LTXVideoTransformer3DModel", (32, 4), (1000.0, 0.0), ("transformer_blocks",),
           note="packed tokens (F*H*W, C), F=2, H=W=4")
def make_ltx(seed=0):
    model = _build("LTXVideoTransformer3DModel", seed, in_channels=4, out_channels=4, num_attention_heads=2,
                   attention_head_dim=16, cross_attention_dim=32, num_layers=2, qk_norm="rms_norm_across_heads",
                   caption_channels=16)

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16), encoder_attention_mask=torch.ones(b, 8, dtype=torch.bool),
                    num_frames=2, height=4, width=4)
    return model, _inputs(seed, (32, 4), (1000.0, 0.0), cond)


@_register("ltx2", "LTX2VideoTransformer3DModel", (32, 4), (1000.0, 0.0), ("transformer_blocks",),
           sample=lambda out: out[0], note="audio+video: the audio stream is fixed conditioning here")
def make_ltx2(seed=0):
    model = _build("LTX2VideoTransformer3DModel", seed, in_channels=4, out_channels=4, patch_size=1, patch_size_t=1,
                   num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32, audio_in_channels=4,
                   audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=8,
                   audio_cross_attention_dim=16, num_layers=2, qk_norm="rms_norm_across_heads", caption_channels=16,
                   rope_double_precision=False)

    def cond(g, b):
        return dict(audio_hidden_states=_randn(g, b, 5, 4), encoder_hidden_states=_randn(g, b, 8, 16),
                    audio_encoder_hidden_states=_randn(g, b, 8, 16),
                    encoder_attention_mask=torch.ones(b, 8, dtype=torch.bool), num_frames=2, height=4, width=4,
                    audio_num_frames=5, fps=25.0)
    return model, _inputs(seed, (32, 4), (1000.0, 0.0), cond)


_COGX = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=8,
             text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
             temporal_compression_ratio=4, max_text_seq_length=8)


@_register("cogvideox", "CogVideoXTransformer3DModel", (1, 4, 8, 8), (1000.0, 0.0), ("transformer_blocks",),
           note="frames first: (F, C, H, W)")
def make_cogvideox(seed=0):
    model = _build("CogVideoXTransformer3DModel", seed, **_COGX)

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16))
    return model, _inputs(seed, (1, 4, 8, 8), (1000.0, 0.0), cond)


@_register("cogvideox15", "CogVideoXTransformer3DModel", (2, 4, 8, 8), (1000.0, 0.0), ("transformer_blocks",),
           note="CogVideoX 1.5: temporal patches (patch_size_t=2) and rotary embeddings")
def make_cogvideox15(seed=0):
    model = _build("CogVideoXTransformer3DModel", seed, patch_size_t=2, use_rotary_positional_embeddings=True,
                   **_COGX)
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    rope = get_3d_rotary_pos_embed(16, None, (4, 4), 1, grid_type="slice", max_size=(4, 4))

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16), image_rotary_emb=rope)
    return model, _inputs(seed, (2, 4, 8, 8), (1000.0, 0.0), cond)


@_register("consisid", "ConsisIDTransformer3DModel", (1, 4, 8, 8), (1000.0, 0.0), ("transformer_blocks",),
           inside=("perceiver_cross_attention",), note="identity-preserving CogVideoX; face features cross-attended")
def make_consisid(seed=0):
    cfg = {k: v for k, v in _COGX.items()}
    model = _build("ConsisIDTransformer3DModel", seed, cross_attn_interval=1, is_kps=False, is_train_face=True,
                   cross_attn_dim_head=4, cross_attn_num_heads=2, LFE_id_dim=2, LFE_vit_dim=2, LFE_depth=5,
                   LFE_dim_head=8, LFE_num_heads=2, LFE_num_id_token=1, LFE_num_querie=1, LFE_output_dim=21,  # = int(inner_dim * 2 / 3)
                   LFE_ff_mult=1, LFE_num_scale=1, **cfg)

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16), id_vit_hidden=[_randn(g, b, 2, 2)],
                    id_cond=_randn(g, b, 2))
    return model, _inputs(seed, (1, 4, 8, 8), (1000.0, 0.0), cond)


@_register("mochi", "MochiTransformer3DModel", (4, 2, 4, 4), (1.0, 0.0), ("transformer_blocks",))
def make_mochi(seed=0):
    model = _build("MochiTransformer3DModel", seed, patch_size=2, num_attention_heads=2, attention_head_dim=16,
                   num_layers=2, pooled_projection_dim=16, in_channels=4, out_channels=None, qk_norm="rms_norm",
                   text_embed_dim=16, time_embed_dim=8, activation_fn="swiglu", max_sequence_length=8)

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16), encoder_attention_mask=torch.ones(b, 8, dtype=torch.bool))
    return model, _inputs(seed, (4, 2, 4, 4), (1000.0, 0.0), cond)


@_register("allegro", "AllegroTransformer3DModel", (4, 2, 8, 8), (1000.0, 0.0), ("transformer_blocks",))
def make_allegro(seed=0):
    model = _build("AllegroTransformer3DModel", seed, num_attention_heads=2, attention_head_dim=16, in_channels=4,
                   out_channels=4, num_layers=2, cross_attention_dim=32, sample_width=8, sample_height=8,
                   sample_frames=8, caption_channels=16)

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16))
    return model, _inputs(seed, (4, 2, 8, 8), (1000.0, 0.0), cond)


@_register("latte", "LatteTransformer3DModel", (4, 2, 8, 8), (1000.0, 0.0),
           ("transformer_blocks", "temporal_transformer_blocks"))
def make_latte(seed=0):
    model = _build("LatteTransformer3DModel", seed, sample_size=8, num_layers=2, patch_size=2, attention_head_dim=16,
                   num_attention_heads=2, caption_channels=16, in_channels=4, cross_attention_dim=32, out_channels=4,
                   attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                   norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6, video_length=2)

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16), enable_temporal_attentions=True)
    return model, _inputs(seed, (4, 2, 8, 8), (1000.0, 0.0), cond)


@_register("easyanimate", "EasyAnimateTransformer3DModel", (4, 2, 8, 8), (1000.0, 0.0), ("transformer_blocks",))
def make_easyanimate(seed=0):
    model = _build("EasyAnimateTransformer3DModel", seed, attention_head_dim=16, num_attention_heads=2, in_channels=4,
                   mmdit_layers=2, num_layers=2, out_channels=4, patch_size=2, sample_height=60, sample_width=90,
                   text_embed_dim=16, time_embed_dim=8, time_position_encoding_type="3d_rope",
                   timestep_activation_fn="silu")

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16))
    return model, _inputs(seed, (4, 2, 8, 8), (1000.0, 0.0), cond)


@_register("cosmos", "CosmosTransformer3DModel", (4, 1, 8, 8), (1.0, 0.0), ("transformer_blocks",))
def make_cosmos(seed=0):
    model = _build("CosmosTransformer3DModel", seed, in_channels=4, out_channels=4, num_attention_heads=2,
                   attention_head_dim=16, num_layers=2, mlp_ratio=2, text_embed_dim=16, adaln_lora_dim=4,
                   max_size=(4, 16, 16), patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=False,
                   extra_pos_embed_type="learnable")

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16), attention_mask=torch.ones(b, 8), fps=30)
    return model, _inputs(seed, (4, 1, 8, 8), (1.0, 0.0), cond)


@_register("sana_video", "SanaVideoTransformer3DModel", (4, 2, 4, 4), (1000.0, 0.0), ("transformer_blocks",))
def make_sana_video(seed=0):
    model = _build("SanaVideoTransformer3DModel", seed, in_channels=4, out_channels=4, num_attention_heads=2,
                   attention_head_dim=16, num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=16,
                   cross_attention_dim=32, caption_channels=16, mlp_ratio=2.5, sample_size=4, patch_size=(1, 2, 2),
                   qk_norm="rms_norm_across_heads", rope_max_seq_len=32)

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16))
    return model, _inputs(seed, (4, 2, 4, 4), (1000.0, 0.0), cond)


@_register("motif_video", "MotifVideoTransformer3DModel", (4, 2, 4, 4), (1000.0, 0.0),
           ("transformer_blocks", "single_transformer_blocks"), latent=_first_channels(4))
def make_motif_video(seed=0):
    model = _build("MotifVideoTransformer3DModel", seed, in_channels=9, out_channels=4, num_attention_heads=2,
                   attention_head_dim=16, num_layers=2, num_single_layers=2, num_decoder_layers=0, mlp_ratio=2.0,
                   patch_size=1, patch_size_t=1, qk_norm="rms_norm", norm_type="layer_norm", text_embed_dim=16,
                   image_embed_dim=None, rope_theta=256.0, rope_axes_dim=(4, 6, 6))

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16), _image=_randn(g, b, 5, 2, 4, 4))
    return model, _with_condition(_inputs(seed, (4, 2, 4, 4), (1000.0, 0.0), cond), "_image")


@_register("joyimage", "JoyImageEditTransformer3DModel", (4, 1, 4, 4), (1000.0, 0.0), ("double_blocks",))
def make_joyimage(seed=0):
    model = _build("JoyImageEditTransformer3DModel", seed, patch_size=[1, 2, 2], in_channels=4, hidden_size=32,
                   num_attention_heads=2, text_dim=16, num_layers=2, rope_dim_list=[4, 6, 6], theta=256)

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 16))
    return model, _inputs(seed, (4, 1, 4, 4), (1000.0, 0.0), cond)


@_register("sd35", "SD3Transformer2DModel", (4, 8, 8), (1000.0, 0.0), ("transformer_blocks",),
           note="SD3.5: dual attention (MMDiT-X) in block 0, qk RMSNorm")
def make_sd35(seed=0):
    model = _build("SD3Transformer2DModel", seed, sample_size=8, patch_size=2, in_channels=4, num_layers=2,
                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=32,
                   pooled_projection_dim=32, out_channels=4, pos_embed_max_size=8, dual_attention_layers=(0,),
                   qk_norm="rms_norm")

    def cond(g, b):
        return dict(encoder_hidden_states=_randn(g, b, 8, 32), pooled_projections=_randn(g, b, 32))
    return model, _inputs(seed, (4, 8, 8), (1000.0, 0.0), cond)
