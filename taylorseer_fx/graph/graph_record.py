"""What the backend did with each graph dynamo handed it (``backend.graphs``): a record per graph.

Knows nothing of the runtime: the compiled parts are read through a weak reference to the callable
the backend gave dynamo, so a record never keeps compiled code alive.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

__all__ = ["GraphRecord"]


@dataclass
class GraphRecord:
    """What the backend did with one graph (``backend.graphs``, for debugging and tests).

    ``regions``: the region names (empty: the graph runs uncached); ``reason``: why it runs uncached
    (None when it is cached); ``timestep``: the graph input holding the step coordinate (None: none
    found); ``infos``: the ``RegionInfo`` of each region (None when uncached). ``split_gm``,
    ``whole_graph``, ``pieces``: the compiled parts, read through a weak reference -- None once dynamo
    dropped the graph (or for an uncached graph), so that the record never keeps compiled code alive.
    ``record["regions"]`` and ``record.get("reason")`` read the same fields. ``graph``: a weak
    reference to the callable the backend handed dynamo; the backend keeps a record only while it is
    alive (:attr:`alive`)."""

    regions: list = field(default_factory=list)
    reason: str | None = None
    timestep: str | None = None
    infos: list | None = None
    graph: weakref.ref | None = field(default=None, repr=False)

    FIELDS = ("regions", "reason", "timestep", "infos", "split_gm", "whole_graph", "pieces")

    @property
    def alive(self) -> bool:
        """True while dynamo holds the graph's callable (always, for a record made without one)."""
        return self.graph is None or self.graph() is not None

    def _live(self, name: str):
        g = self.graph() if self.graph is not None else None
        return None if g is None else getattr(g, name, None)

    @property
    def split_gm(self):
        return self._live("split_gm")

    @property
    def whole_graph(self):
        return self._live("whole_graph")

    @property
    def pieces(self):
        return self._live("pieces")

    def __getitem__(self, key: str):
        if key not in self.FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: str) -> bool:
        return key in self.FIELDS

    def get(self, key: str, default=None):
        value = self[key] if key in self.FIELDS else None
        return default if value is None else value
