"""Quality metrics for cached vs uncached samples.

Images are float tensors ``[B, C, H, W]`` in the demo's data range [-1, 1] (so ``data_range=2``).
``reference`` is always the uncached result. The classifier metrics use the shipped digit classifier
(:func:`taylorseer_fx.demo.load_classifier`) unless one is given.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["psnr", "relative_l2", "classifier_accuracy", "frechet_distance"]


def _same_shape(a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise ValueError(f"{names[0]} and {names[1]} must be tensors")
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} has shape {tuple(a.shape)} but {names[1]} has {tuple(b.shape)}")


def psnr(images: Tensor, reference: Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB over the whole batch: 10·log10(range² / MSE); ``inf`` if equal."""
    _same_shape(images, reference, ("images", "reference"))
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range!r}")
    mse = float(torch.mean((images.double() - reference.double()) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(data_range**2 / mse)


def relative_l2(images: Tensor, reference: Tensor) -> float:
    """‖images − reference‖₂ / ‖reference‖₂ over the whole batch (dimensionless)."""
    _same_shape(images, reference, ("images", "reference"))
    den = float(torch.linalg.vector_norm(reference.double()))
    if den == 0:
        raise ValueError("reference has zero norm: the relative L2 error is undefined")
    return float(torch.linalg.vector_norm(images.double() - reference.double())) / den


def _classifier(classifier):
    if classifier is not None:
        return classifier
    from .sampling import load_classifier

    return load_classifier()


def _on_device(classifier, x: Tensor) -> Tensor:
    p = next(classifier.parameters(), None)
    return x if p is None else x.to(device=p.device, dtype=p.dtype)


@torch.no_grad()
def classifier_accuracy(images: Tensor, labels: Tensor, classifier=None) -> float:
    """Fraction of ``images`` that the classifier labels as ``labels`` (in [0, 1])."""
    labels = torch.as_tensor(labels).reshape(-1)
    if images.ndim != 4 or images.shape[0] != labels.numel():
        raise ValueError(f"images must be [B, C, H, W] with B = len(labels) = {labels.numel()}, "
                         f"got {tuple(images.shape)}")
    clf = _classifier(classifier)
    pred = clf(_on_device(clf, images)).argmax(-1).cpu()
    return float((pred == labels.cpu()).double().mean())


def _sqrtm_psd(m: Tensor) -> Tensor:
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


@torch.no_grad()
def frechet_distance(images: Tensor, reference: Tensor, classifier=None) -> float:
    """Fréchet distance between Gaussians fitted to the classifier's penultimate features (an FID on
    digits). ‖μa−μb‖² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½); 0 for identical sets. Needs ≥ 2 images each."""
    if images.ndim != 4 or reference.ndim != 4 or images.shape[1:] != reference.shape[1:]:
        raise ValueError(f"images {tuple(images.shape)} and reference {tuple(reference.shape)} must be "
                         "[B, C, H, W] batches of the same image shape")
    if images.shape[0] < 2 or reference.shape[0] < 2:
        raise ValueError("images and reference need at least 2 samples each")
    clf = _classifier(classifier)
    fa = clf.features(_on_device(clf, images)).double().cpu()
    fb = clf.features(_on_device(clf, reference)).double().cpu()
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    ca, cb = torch.cov(fa.T), torch.cov(fb.T)
    sa = _sqrtm_psd(ca)
    cross = _sqrtm_psd(sa @ cb @ sa)
    value = float(((mu_a - mu_b) ** 2).sum() + torch.trace(ca + cb - 2 * cross))
    return max(value, 0.0)
