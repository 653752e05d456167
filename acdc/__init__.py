"""acdc: automated circuit discovery for transformer language models.

The library's one mechanism is :func:`masked_forward`; every method is a way of choosing its edge mask.
"""

from acdc.attribution import EdgeScores, attribute
from acdc.errors import AcdcError, InputError
from acdc.evaluate import evaluate_circuits
from acdc.graph import Circuit, Graph, prune_dangling
from acdc.methods import SearchCost, discover
from acdc.models import load_model
from acdc.patching import AblationCache, ablation_cache, masked_forward, run_with_writers
from acdc.task import Task, get_task, list_tasks
from acdc.types import TaskData

__all__ = [
    "AblationCache",
    "AcdcError",
    "Circuit",
    "EdgeScores",
    "Graph",
    "InputError",
    "SearchCost",
    "Task",
    "TaskData",
    "ablation_cache",
    "attribute",
    "discover",
    "evaluate_circuits",
    "get_task",
    "list_tasks",
    "load_model",
    "masked_forward",
    "prune_dangling",
    "run_with_writers",
]
__version__ = "0.1.0"
