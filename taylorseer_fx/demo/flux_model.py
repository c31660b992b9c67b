"""The digits demo as a real ``diffusers.FluxTransformer2DModel``: config, label table, packing, loaders.

The model is a tiny FLUX transformer trained (``python -m taylorseer_fx.demo.train --model flux``) as a
class-conditional rectified-flow model on the 16x16 digits (:mod:`.data`) *in pixel space*: the
"latent" is the 1-channel 16x16 image in [-1, 1], packed exactly as ``FluxPipeline._pack_latents``
packs VAE latents (2x2 patches -> 64 tokens of 4 channels, so ``in_channels = 4``). A FluxPipeline with
``vae=None`` (its ``vae_scale_factor`` is then 8) therefore runs it at ``height = width = 128``
"pixels" = 16x16 latent, with ``output_type="latent"``; :func:`unpack` turns its output into images.

Conditioning goes through the text inputs: a fixed, seeded *label table* maps each label 0..9, and
the null label 10 (classifier-free guidance; 10% label dropout in training), to
``encoder_hidden_states`` [TEXT_TOKENS, JOINT_DIM] and ``pooled_projections`` [POOLED_DIM]. The table
is not trained; the model's ``context_embedder`` and pooled-text MLP learn to read it.

Units: the model's ``timestep`` input is the flow time **sigma** in [0, 1] (x_sigma = (1 - sigma) x0
+ sigma eps; FluxPipeline passes ``scheduler.timesteps / 1000``, i.e. sigma; the model multiplies by
1000 inside), and its output is the velocity v = eps - x0, packed like its input.

Shipped files (next to this module): ``flux_digits/config.json`` +
``flux_digits/diffusion_pytorch_model.safetensors`` (load with ``FluxTransformer2DModel.from_pretrained``)
and ``flux_digits/label_table.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from .data import RESOLUTION

__all__ = [
    "FLUX_DIR",
    "LABEL_TABLE_FILE",
    "NUM_CLASSES",
    "NULL_LABEL",
    "TEXT_TOKENS",
    "JOINT_DIM",
    "POOLED_DIM",
    "LATENT_CHANNELS",
    "PIXEL_SIZE",
    "flux_config",
    "build_transformer",
    "make_label_table",
    "save_label_table",
    "load_label_table",
    "load_transformer",
    "save_transformer",
    "flux_dir",
    "condition",
    "pack",
    "unpack",
    "image_ids",
    "text_ids",
    "predict_velocity",
]

FLUX_DIR = "flux_digits"
LABEL_TABLE_FILE = "label_table.safetensors"
NUM_CLASSES = 10
NULL_LABEL = NUM_CLASSES          # the CFG "empty prompt"
TEXT_TOKENS = 4                   # tokens per label in encoder_hidden_states
JOINT_DIM = 32                    # joint_attention_dim (width of encoder_hidden_states)
POOLED_DIM = 32                   # pooled_projection_dim
LATENT_CHANNELS = 1               # the image is the latent: 1 channel, RESOLUTION x RESOLUTION
#: what FluxPipeline calls height / width for a RESOLUTION latent when vae=None (vae_scale_factor 8)
PIXEL_SIZE = RESOLUTION * 8
_TABLE_SEED = 1234
_META_KEY = "taylorseer_fx"


def flux_config(num_layers: int = 2, num_single_layers: int = 4, attention_head_dim: int = 32,
                num_attention_heads: int = 3) -> dict:
    """Constructor kwargs of the demo's ``FluxTransformer2DModel`` (rope axes split the head dim
    1/4, 3/8, 3/8 like FLUX.1's 16/56/56 of 128)."""
    if attention_head_dim % 8:
        raise ValueError(f"attention_head_dim must be a multiple of 8, got {attention_head_dim}")
    a = attention_head_dim // 4
    b = (attention_head_dim - a) // 2
    b -= b % 2
    rope = (attention_head_dim - 2 * b, b, b)
    return dict(patch_size=1, in_channels=4 * LATENT_CHANNELS, out_channels=None, num_layers=num_layers,
                num_single_layers=num_single_layers, attention_head_dim=attention_head_dim,
                num_attention_heads=num_attention_heads, joint_attention_dim=JOINT_DIM,
                pooled_projection_dim=POOLED_DIM, guidance_embeds=False, axes_dims_rope=rope)


def _diffusers():
    try:
        import diffusers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the FLUX digits demo needs diffusers: pip install 'taylorseer-fx[diffusers]'") from e
    return diffusers


def build_transformer(config: dict | None = None, seed: int = 0):
    """A freshly initialised (seeded) ``FluxTransformer2DModel`` with :func:`flux_config`."""
    diffusers = _diffusers()
    torch.manual_seed(seed)
    return diffusers.FluxTransformer2DModel(**(config or flux_config()))


def flux_dir() -> Path:
    """The shipped diffusers folder (``config.json`` + ``diffusion_pytorch_model.safetensors``)."""
    return Path(__file__).resolve().parent / FLUX_DIR


def load_transformer(folder: str | Path | None = None, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32):
    """The shipped (or a retrained) transformer via ``FluxTransformer2DModel.from_pretrained``, in
    eval mode without gradients."""
    diffusers = _diffusers()
    folder = Path(folder) if folder is not None else flux_dir()
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"no FLUX weights (config.json and *.safetensors) in {folder} (train them: "
                                "python -m taylorseer_fx.demo.train --model flux)")
    # safetensors only: a folder holding a pickled .bin is never loaded (unpickling runs code)
    model = diffusers.FluxTransformer2DModel.from_pretrained(str(folder), torch_dtype=dtype, use_safetensors=True)
    return model.to(device).eval().requires_grad_(False)


def save_transformer(model, folder: str | Path, **info: str) -> None:
    """``save_pretrained`` (safetensors) into ``folder``; ``info`` (e.g. steps, final_loss) goes to
    ``training.json`` next to it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    if info:
        (folder / "training.json").write_text(json.dumps({k: str(v) for k, v in info.items()}, indent=1,
                                                         sort_keys=True) + "\n")


# --------------------------------------------------------------------------------- label table


def make_label_table(seed: int = _TABLE_SEED) -> dict[str, Tensor]:
    """The fixed label -> text-embedding table: ``prompt_embeds`` [11, TEXT_TOKENS, JOINT_DIM] and
    ``pooled_prompt_embeds`` [11, POOLED_DIM] (rows 0..9 the digits, row 10 the null label), standard
    normal entries from ``torch.Generator().manual_seed(seed)``."""
    g = torch.Generator().manual_seed(seed)
    n = NUM_CLASSES + 1
    return {"prompt_embeds": torch.randn(n, TEXT_TOKENS, JOINT_DIM, generator=g),
            "pooled_prompt_embeds": torch.randn(n, POOLED_DIM, generator=g)}


def save_label_table(table: dict[str, Tensor], path: str | Path) -> None:
    from safetensors.torch import save_file

    meta = {_META_KEY: json.dumps({"null_label": NULL_LABEL, "num_classes": NUM_CLASSES}, sort_keys=True)}
    save_file({k: v.contiguous() for k, v in table.items()}, str(path), metadata=meta)


def load_label_table(path: str | Path | None = None, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """The shipped label table (see :func:`make_label_table`), on ``device``."""
    from safetensors.torch import load_file

    path = Path(path) if path is not None else flux_dir() / LABEL_TABLE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"label table not found: {path}")
    return {k: v.to(device) for k, v in load_file(str(path)).items()}


def condition(labels: Tensor, table: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """``(prompt_embeds [B, TEXT_TOKENS, JOINT_DIM], pooled [B, POOLED_DIM])`` for labels in 0..10."""
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if labels.numel() == 0 or int(labels.min()) < 0 or int(labels.max()) > NULL_LABEL:
        raise ValueError(f"labels must be in [0, {NULL_LABEL}], got {labels.tolist()}")
    pe, pooled = table["prompt_embeds"], table["pooled_prompt_embeds"]
    labels = labels.to(pe.device)
    return pe[labels], pooled[labels]


# ------------------------------------------------------------------------------------ packing


def pack(images: Tensor) -> Tensor:
    """[B, C, H, W] -> [B, (H/2)(W/2), 4C], the layout of ``FluxPipeline._pack_latents``."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(latents: Tensor, size: int = RESOLUTION) -> Tensor:
    """Inverse of :func:`pack` for a ``size`` x ``size`` latent (``FluxPipeline._unpack_latents``)."""
    b, n, c4 = latents.shape
    x = latents.reshape(b, size // 2, size // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, size, size)


def image_ids(size: int = RESOLUTION, device=None, dtype=torch.float32) -> Tensor:
    """RoPE ids of the packed tokens [(size/2)^2, 3]: (0, row, col), as ``_prepare_latent_image_ids``."""
    h = size // 2
    ids = torch.zeros(h, h, 3)
    ids[..., 1] += torch.arange(h)[:, None]
    ids[..., 2] += torch.arange(h)[None, :]
    return ids.reshape(h * h, 3).to(device=device, dtype=dtype)


def text_ids(device=None, dtype=torch.float32) -> Tensor:
    """RoPE ids of the text tokens [TEXT_TOKENS, 3]: zeros, as FluxPipeline's ``text_ids``."""
    return torch.zeros(TEXT_TOKENS, 3, device=device, dtype=dtype)


def predict_velocity(model, x_packed: Tensor, sigma: Tensor, labels: Tensor, table: dict[str, Tensor]) -> Tensor:
    """One call of the transformer as FluxPipeline makes it: ``x_packed`` [B, 64, 4], ``sigma`` [B] in
    [0, 1] (not timestep*1000), labels [B] in 0..10 -> velocity [B, 64, 4]."""
    pe, pooled = condition(labels, table)
    dev, dt = x_packed.device, x_packed.dtype
    return model(hidden_states=x_packed, encoder_hidden_states=pe.to(dev, dt), pooled_projections=pooled.to(dev, dt),
                 timestep=sigma.to(dev, dt), img_ids=image_ids(device=dev, dtype=dt),
                 txt_ids=text_ids(device=dev, dtype=dt), return_dict=False)[0]
