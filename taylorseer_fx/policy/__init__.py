"""Policies: when to compute and when to forecast (imports only :mod:`taylorseer_fx.forecast`).

- :mod:`.base` -- :class:`~.base.Policy` (the fields every policy shares), :class:`~.base.Forecast` (the
  *how*), :class:`~.base.Schedule` (one generation's decider).
- :mod:`.policies` -- :class:`~.policies.FixedPolicy`, :class:`~.policies.MaskPolicy`,
  :class:`~.auto.AutoPolicy` (the *when*).
- :mod:`.presets` -- policies as TOML: :func:`~.presets.load_policy`, :func:`~.presets.policy_to_toml`.
"""

from .base import Forecast, Policy, Schedule
from .auto import AutoPolicy
from .policies import FixedPolicy, MaskPolicy
from .presets import available_policies, load_policy, policy_from_dict, policy_to_dict, policy_to_toml

__all__ = ["AutoPolicy", "FixedPolicy", "Forecast", "MaskPolicy", "Policy", "Schedule", "available_policies",
           "load_policy", "policy_from_dict", "policy_to_dict", "policy_to_toml"]
