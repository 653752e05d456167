"""Search methods: one :class:`Method` record per method, one registry, one file per family (see README.md)."""

from acdc.methods.acdc import acdc_search
from acdc.methods.base import Context, Method, Outcome, SearchCost, Settings, default_size
from acdc.methods.discover import discover, find_circuit
from acdc.methods.edge_pruning import edge_pruning
from acdc.methods.hybrid import hybrid_search
from acdc.methods.registry import REGISTRY, get_method, method_names

__all__ = ["REGISTRY", "Context", "Method", "Outcome", "SearchCost", "Settings", "acdc_search", "default_size",
           "discover", "edge_pruning", "find_circuit", "get_method", "hybrid_search", "method_names"]
