"""taylorseer_fx: TaylorSeer feature forecasting for diffusion transformers, as a torch.compile backend.

Public API:

- :func:`compile_pipeline` -- every denoiser of a diffusers pipeline, each pipeline call one generation.
- :func:`taylorseer_backend` -- ``torch.compile(model, backend=taylorseer_backend(policy=...))``;
  also ``backend="taylorseer"`` by name.
- Policies: :class:`FixedPolicy`, :class:`MaskPolicy`, :class:`AutoPolicy` (the *when*), each with a
  :class:`Forecast` (the *how*); :func:`load_policy` / :func:`policy_to_toml` (presets).
- :class:`Request` -- one generation, explicit: its state reaches no other request; ``context(...)``
  tells the step and branch of the calls inside.
- :class:`BatchedCache` -- serving: one batched call whose rows belong to different requests, each at its
  own step with its own cache (step-level batching engines); :class:`DeviceStepCache` -- one run whose
  compute/forecast choice is made on the device (no host read per step).
- :func:`taylor_seer` -- the seed decorator for one module with a single tensor output.
- :func:`tune` -- where a compute budget's computes go on your model, found by search and written as a
  preset (``python -m taylorseer_fx.tuning``).
- :class:`Forecaster` -- the forecast math (``newton`` and ``taylor`` forms).
- For annotations and subclasses: :class:`Policy` (the base of every policy), :class:`TaylorSeerBackend`
  (what :func:`taylorseer_backend` returns), :class:`CompiledPipeline` (what :func:`compile_pipeline`
  returns).
"""

__version__ = "0.1.0"

from .forecast import Forecaster
from .policy import AutoPolicy, FixedPolicy, Forecast, MaskPolicy, Policy, load_policy, policy_to_toml
from .integrations.decorator import taylor_seer
from .graph.backend import TaylorSeerBackend, taylorseer_backend
from .runtime.request import Request
from .integrations.pipeline import CompiledPipeline, compile_pipeline
from .serving.batched import BatchedCache
from .serving.device_step import DeviceStepCache
from .tuning.tuner import tune

__all__ = [
    "AutoPolicy",
    "BatchedCache",
    "CompiledPipeline",
    "DeviceStepCache",
    "FixedPolicy",
    "Forecast",
    "Forecaster",
    "MaskPolicy",
    "Policy",
    "Request",
    "TaylorSeerBackend",
    "compile_pipeline",
    "load_policy",
    "policy_to_toml",
    "taylor_seer",
    "taylorseer_backend",
    "tune",
]
