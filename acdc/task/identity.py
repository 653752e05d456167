"""Which ``models.written_for`` entries of a task apply to a loaded model: matched by the model's identity, not by
how its spec happens to be spelled.

A model spec and an entry name are both put in canonical form by :func:`canonical_model_spec` (``zoo:NAME`` and hub
names as they are; a local path, relative, with ``~`` or a trailing slash, as its resolved absolute path), so
``DIR``, ``DIR/``, ``./DIR``, ``~/DIR`` and ``/abs/DIR`` are one model. A local checkpoint directory also answers to
the hub name its ``config.json`` records under ``_name_or_path`` (when that is a hub name such as ``gpt2``, not a
path): a copy of a hub model saved to disk gets the settings written for that hub model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from acdc.task.schema import ModelEntry, Models

HUB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")
"""A hub repository id: ``name`` or ``org/name``."""


def _is_path(spec: str) -> bool:
    # the same test load_model uses: an existing path, or a spelling that can only be a path
    return spec.startswith((".", "/", "~")) or spec.endswith("/") or Path(spec).expanduser().exists()


def canonical_model_spec(spec: str) -> str:
    """``spec`` in a form that is equal for every spelling of the same model: ``zoo:NAME`` and hub names unchanged,
    a local path (relative to the working directory, with ``~`` or a trailing slash) as its resolved absolute path."""
    s = spec.strip()
    if s.startswith("zoo:") or not _is_path(s):
        return s
    return str(Path(s).expanduser().resolve())


def model_names(spec: str) -> set[str]:
    """Every canonical name the model loaded from ``spec`` answers to: its canonical spec, and for a local directory
    the hub name in its ``config.json`` ``_name_or_path``, if that is a hub name."""
    canon = canonical_model_spec(spec)
    names = {canon}
    if canon.startswith("/"):
        try:
            recorded = json.loads((Path(canon) / "config.json").read_text(encoding="utf-8")).get("_name_or_path")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if isinstance(recorded, str) and HUB_NAME_RE.match(recorded) and not _is_path(recorded):
            names.add(recorded)
    return names


def written_for_entries(models: Models, model_spec: str | None) -> list[ModelEntry]:
    """The ``written_for`` entries that name the model loaded from ``model_spec`` (in file order; none for a model
    without a spec, e.g. one built in memory)."""
    if model_spec is None or not model_spec.strip():
        return []
    names = model_names(model_spec)
    return [m for m in models.written_for if canonical_model_spec(m.name) in names]
