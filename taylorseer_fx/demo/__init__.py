"""Digits demo: a small class-conditional flow-matching DiT with shipped weights.

    from taylorseer_fx.demo import load_model, load_classifier, sample
    model = load_model()
    images = sample(model, labels=[0, 1, 2], num_steps=50, cfg_scale=2.0, seed=0)   # [3, 1, 16, 16] in [-1, 1]
"""

from .data import RESOLUTION, load_digits, split_indices
from .model import DigitClassifier, DigitDiT, DiTConfig
from .sampling import CLASSIFIER_FILE, MODEL_FILE, load_classifier, load_model, sample, sigmas, weights_info, weights_path

__all__ = [
    "RESOLUTION",
    "load_digits",
    "split_indices",
    "DigitDiT",
    "DiTConfig",
    "DigitClassifier",
    "load_model",
    "load_classifier",
    "sample",
    "sigmas",
    "weights_path",
    "weights_info",
    "MODEL_FILE",
    "CLASSIFIER_FILE",
]
