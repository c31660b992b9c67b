"""Prove a cache on your own model: property-based checks for your CI (needs ``hypothesis``:
``pip install "taylorseer-fx[test]"``).

- :func:`check_cache` -- one cache configuration on your pipeline (or model + sampling callable),
  over cases hypothesis draws; :class:`CheckResult` (``table()``, ``assert_ok()``).
- :mod:`.strategies` -- hypothesis strategies: policies, presets, schedules, CFG layouts, trajectories.
- :class:`Baseline` -- decisions and errors recorded to JSON, compared on later runs (the pytest plugin's
  ``--taylorseer-baseline``).
- :func:`check_polynomial_exactness`, :func:`check_affine_invariance` -- the forecast math's properties,
  for a form, policy or forecaster of your own.
- The command: ``python -m taylorseer_fx.check``.
"""

import importlib.util

if importlib.util.find_spec("hypothesis") is None:      # pragma: no cover - depends on the environment
    raise ImportError('taylorseer_fx.testing needs hypothesis: pip install "taylorseer-fx[test]"')

from .baseline import Baseline
from ..integrations.measures import psnr, relative_l2
from ..integrations.targets import Case
from .cases import CaseSpace
from .check import CheckResult, Row, check_cache
from .math_checks import check_affine_invariance, check_polynomial_exactness

__all__ = ["Baseline", "Case", "CaseSpace", "CheckResult", "Row", "check_affine_invariance", "check_cache",
           "check_polynomial_exactness", "psnr", "relative_l2"]
