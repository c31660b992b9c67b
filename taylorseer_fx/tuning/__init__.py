"""Tuning: where a compute budget's computes go on a given model (:func:`taylorseer_fx.tune`), written as
a preset. ``search`` holds the placement arithmetic, ``checkpoint`` the resumable record of runs,
``tuner`` the search on a model; ``python -m taylorseer_fx.tuning`` is the command."""
