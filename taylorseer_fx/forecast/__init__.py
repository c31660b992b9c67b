"""The forecast math (the bottom layer: imports nothing else of taylorseer_fx).

- :mod:`.forms` -- which factors a stream stores and the coordinate coefficients of each form
  (``newton``, ``taylor``, ``heun``, ``hermite``); Python floats only.
- :mod:`.buffers` -- reused work buffers (:class:`~.buffers.Scratch`), output strides, the fp16/bf16
  clamp of a forecast added back to its residual (``add_back``).
- :mod:`.forecaster` -- :class:`~.forecaster.Forecaster`: one region output stream's factors, update,
  forecast and error estimates.
"""

from .forecaster import Forecaster
from .forms import FORMS

__all__ = ["FORMS", "Forecaster"]
