"""The graph pass: a dynamo graph cut into regions, the cache nodes, the compiled pieces and the model
boundary (imports the runtime, the policies and :mod:`taylorseer_fx.torch_internals`).

:mod:`.module_names` and :mod:`.placeholders` (what a graph's nodes and inputs are), :mod:`.select`
(which nodes form each region), :mod:`.transform` (the split), :mod:`.lazy_compile`,
:mod:`.whole_graph` (compute and forecast versions of one graph), :mod:`.graph_record`,
:mod:`.graph_callables` (what dynamo is handed), :mod:`.boundary` (``regions="model"``),
:mod:`.options` (the backend's arguments) and :mod:`.backend` (``taylorseer_backend``).
"""
