"""The runtime: per model call, which generation and step it is, compute or forecast, and the state
kept per request (imports :mod:`taylorseer_fx.policy` and :mod:`taylorseer_fx.forecast`, never the
graph pass above it).

:mod:`.steps` (the rules of step inference), :mod:`.request` (``Request``: one generation, explicit),
:mod:`.trace` (stats and the decision trace), :mod:`.tally` (planned vs actual forecasts),
:mod:`.region_state` (owners, generations, region states), :mod:`.graph_runtime` (one model call of
one graph), :mod:`.runtime` (``Runtime``: a backend's shared state), :mod:`.report` (tables and plots
of the stats).
"""
