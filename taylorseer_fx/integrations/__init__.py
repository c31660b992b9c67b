"""Integrations on top of the backend and the runtime: :mod:`.pipeline` (``compile_pipeline`` for
diffusers pipelines), :mod:`.pipeline_hooks` (what it installs on shared objects),
:mod:`.scheduler_teller` (a scheduler's state as what a call is told), :mod:`.decorator` (the seed
decorator ``taylor_seer``).
"""
