"""Run folders: ``outputs/<task>/<run-id>/`` with a ``run.yaml`` that records how to reproduce the run."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
from pathlib import Path
from typing import Any

import yaml

from acdc.io import atomic_write_text

OUTPUTS_ENV = "ACDC_OUTPUTS"


def outputs_root() -> Path:
    """Where run folders go when no ``--out`` is given: ``$ACDC_OUTPUTS``, else ``outputs/`` under the current
    working directory (read at call time, so a library user's ``os.chdir`` or environment is respected), as an
    absolute path so that the printed locations stay valid."""
    return Path(os.environ.get(OUTPUTS_ENV) or "outputs").resolve()


def run_id(label: str) -> str:
    """``YYYYmmdd-HHMMSS-<label>`` (UTC), e.g. ``20261121-031500-eap-ig-inputs``."""
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', label)}"


def run_dir(task: str, label: str, out: str | Path | None = None) -> Path:
    """``out`` if given, else a fresh ``outputs/<task>/<run-id>/`` (created)."""
    if out is not None:
        path = Path(out)
    else:
        path = outputs_root() / re.sub(r"[^A-Za-z0-9_.-]+", "-", task) / run_id(label)
        n = 1
        while path.exists():
            n += 1
            path = path.with_name(f"{run_id(label)}-{n}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def versions() -> dict[str, str]:
    import torch
    import transformers

    import acdc

    out = {"acdc": str(acdc.__version__), "torch": str(torch.__version__),
           "transformers": str(transformers.__version__), "python": platform.python_version()}
    from importlib.metadata import PackageNotFoundError, version

    try:
        out["transformer_lens"] = version("transformer-lens")
    except PackageNotFoundError:  # pragma: no cover
        pass
    return out


def write_run_yaml(path: Path, info: dict[str, Any]) -> Path:
    """Write ``run.yaml`` into the run folder ``path`` (atomically), adding versions and a UTC timestamp."""
    plain = json.loads(json.dumps(info, default=str))  # plain YAML types only (no numpy / torch scalars)
    doc = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **plain,
           "versions": versions()}
    return atomic_write_text(Path(path) / "run.yaml", yaml.safe_dump(doc, sort_keys=False))
