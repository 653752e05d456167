"""Tasks: what to explain, as YAML files validated by a schema and built into :class:`~acdc.types.TaskData` for one
model. ``get_task("ioi")`` or ``get_task("my_task.yaml")``, then ``task.build(model, n, split="train")``.

Which file owns what is in this folder's README.md.
"""

from acdc.task.identity import canonical_model_spec, written_for_entries
from acdc.task.parse import load_task_file, parse_task_text
from acdc.task.prompts import bos_is_chat_marker, prepends_bos
from acdc.task.registry import Task, builtin_dir, get_task, list_tasks, task_from_text
from acdc.task.repeated import RepeatedBatch, fill_repeated, sample_repeated
from acdc.task.schema import (
    SPLITS,
    PairsDataset,
    RepeatedTokensDataset,
    TaskFileError,
    TaskSpec,
    TemplatesDataset,
)

__all__ = [
    "SPLITS",
    "PairsDataset",
    "RepeatedBatch",
    "RepeatedTokensDataset",
    "Task",
    "TaskFileError",
    "TaskSpec",
    "TemplatesDataset",
    "bos_is_chat_marker",
    "builtin_dir",
    "canonical_model_spec",
    "fill_repeated",
    "get_task",
    "list_tasks",
    "load_task_file",
    "parse_task_text",
    "prepends_bos",
    "sample_repeated",
    "task_from_text",
    "written_for_entries",
]
