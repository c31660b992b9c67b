"""Flow-matching Euler sampling for the demo DiT, and loaders for the shipped weights.

Convention (rectified flow, SD3 / FLUX): x_sigma = (1 - sigma) * x0 + sigma * eps, the model predicts
v = eps - x0, and sampling integrates dx/dsigma = v from sigma = 1 (pure noise) to sigma = 0 (image)
with Euler steps x <- x + (sigma_next - sigma) * v. The timestep passed to the model is sigma itself,
a float tensor of shape [batch of that call].
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .model import DigitClassifier, DigitDiT, DiTConfig

__all__ = [
    "sigmas",
    "sample",
    "load_model",
    "load_classifier",
    "save_weights",
    "MODEL_FILE",
    "CLASSIFIER_FILE",
    "weights_path",
    "weights_info",
]

MODEL_FILE = "dit_digits.safetensors"
CLASSIFIER_FILE = "digit_classifier.safetensors"
_META_KEY = "taylorseer_fx"


def sigmas(num_steps: int, shift: float = 1.0) -> Tensor:
    """The ``num_steps + 1`` noise levels of a sampling run, from 1.0 down to 0.0 (float32).

    Uniform in [1, 0], then the SD3 time shift sigma' = shift * sigma / (1 + (shift - 1) * sigma).
    shift > 1 spends more steps at high noise. The model is evaluated at the first ``num_steps``.
    """
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    s = torch.linspace(1.0, 0.0, int(num_steps) + 1, dtype=torch.float64)
    s = shift * s / (1.0 + (shift - 1.0) * s)
    return s.to(torch.float32)


def _model_info(model: nn.Module) -> tuple[int, int, int, torch.device, torch.dtype]:
    """(sample_size, in_channels, null_class, device, dtype); works through torch.compile wrappers."""
    inner = getattr(model, "_orig_mod", model)
    p = next(inner.parameters())
    return inner.sample_size, inner.in_channels, inner.null_class, p.device, p.dtype


@torch.no_grad()
def sample(
    model: nn.Module,
    labels: Sequence[int] | Tensor,
    num_steps: int = 50,
    cfg_scale: float = 2.0,
    shift: float = 1.0,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    batched_cfg: bool = True,
    callback: Callable[[int, float, Tensor], None] | None = None,
    *,
    noise: Tensor | None = None,
    clip: bool = True,
) -> Tensor:
    """Generate one image per label with Euler flow matching from sigma = 1 to 0.

    Args:
        model: a ``DigitDiT`` (or anything with its forward signature, e.g. a ``torch.compile``d one).
            Called as ``model(x, timestep, class_labels)`` with ``timestep`` = sigma, shape [batch].
        labels: class indices in [0, num_classes); one image each.
        num_steps: Euler steps (= model evaluations per image, per CFG branch).
        cfg_scale: classifier-free guidance v = v_uncond + cfg_scale * (v_cond - v_uncond). With
            ``cfg_scale == 1`` only the conditional branch is evaluated.
        shift: SD3 time shift of the sigma schedule (see :func:`sigmas`).
        generator / seed: source of the initial noise (drawn on the CPU, so results do not depend on
            the device). ``seed`` builds a fresh generator; if neither is given the global RNG is used.
        batched_cfg: True = one model call per step on cond and uncond concatenated ([2B]);
            False = two calls per step, conditional first, then unconditional.
        callback: ``callback(step, sigma, x)`` after each step, with the 0-based step index, the sigma
            at which the model was evaluated and the updated sample (noise level sigmas[step + 1]).
        noise: explicit initial noise [B, C, H, W] (overrides generator / seed).
        clip: clamp the result to [-1, 1] (the data range).

    Returns:
        float32 tensor [B, C, H, W] on the model's device, images in [-1, 1].
    """
    size, chans, null_class, device, dtype = _model_info(model)
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    b = labels.numel()
    if b == 0:
        raise ValueError("labels must not be empty")
    if int(labels.min()) < 0 or int(labels.max()) >= null_class:
        raise ValueError(f"labels must be in [0, {null_class}), got {labels.tolist()}")
    if noise is None:
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        noise = torch.randn(b, chans, size, size, generator=generator, dtype=torch.float32)
    elif tuple(noise.shape) != (b, chans, size, size):
        raise ValueError(f"noise must have shape {(b, chans, size, size)}, got {tuple(noise.shape)}")
    x = noise.to(device=device, dtype=torch.float32)
    labels = labels.to(device)
    null = torch.full_like(labels, null_class)
    use_cfg = cfg_scale != 1.0
    if use_cfg and batched_cfg:
        both_labels = torch.cat([labels, null])
    sched = sigmas(num_steps, shift)
    for i in range(int(num_steps)):
        s, s_next = float(sched[i]), float(sched[i + 1])
        if use_cfg and batched_cfg:
            t = torch.full((2 * b,), s, device=device, dtype=dtype)
            v = model(torch.cat([x, x]).to(dtype), t, both_labels).float()
            v_cond, v_uncond = v[:b], v[b:]
        else:
            t = torch.full((b,), s, device=device, dtype=dtype)
            v_cond = model(x.to(dtype), t, labels).float()
            if use_cfg:
                v_uncond = model(x.to(dtype), t, null).float()
        v = v_uncond + cfg_scale * (v_cond - v_uncond) if use_cfg else v_cond
        x = x + (s_next - s) * v
        if callback is not None:
            callback(i, s, x)
    return x.clamp(-1.0, 1.0) if clip else x


# --------------------------------------------------------------------------------------- weights


def weights_path(name: str) -> Path:
    """Path of a file shipped next to this module (works after a non-editable install)."""
    return Path(__file__).resolve().parent / name


def save_weights(module: nn.Module, path: str | Path, config: dict, **metadata: str) -> None:
    """Save a state dict as safetensors with its constructor config in the metadata.

    Everything goes into ONE metadata entry (``"taylorseer_fx"``, sorted JSON): safetensors writes
    several entries in a random order, which would make retrained files differ byte-wise.
    """
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    info = {"config": config, **{k: str(v) for k, v in metadata.items()}}
    save_file(state, str(path), metadata={_META_KEY: json.dumps(info, sort_keys=True)})


def _load(path: Path) -> tuple[dict, dict]:
    try:
        from safetensors import safe_open
    except ImportError as e:  # pragma: no cover
        raise ImportError("loading the demo weights needs safetensors: pip install safetensors") from e
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path} (train them with python -m taylorseer_fx.demo.train)")
    state = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        for k in f.keys():
            state[k] = f.get_tensor(k)
    if _META_KEY in meta:
        return state, json.loads(meta[_META_KEY])["config"]
    return state, json.loads(meta.get("config", "{}"))


def weights_info(path: str | Path) -> dict:
    """The metadata saved with a weights file: ``config`` and training info (steps, final_loss, ...)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
    return json.loads(meta[_META_KEY]) if _META_KEY in meta else dict(meta)


def load_model(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
               path: str | Path | None = None) -> DigitDiT:
    """The shipped digits DiT (EMA weights) in eval mode, on ``device``."""
    state, config = _load(Path(path) if path is not None else weights_path(MODEL_FILE))
    model = DigitDiT(DiTConfig(**config))
    model.load_state_dict(state)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_classifier(device: str | torch.device = "cpu", path: str | Path | None = None) -> DigitClassifier:
    """The shipped digit classifier (16x16 inputs in [-1, 1]) in eval mode."""
    state, config = _load(Path(path) if path is not None else weights_path(CLASSIFIER_FILE))
    clf = DigitClassifier(**config)
    clf.load_state_dict(state)
    return clf.to(device).eval().requires_grad_(False)
