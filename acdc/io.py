"""File I/O: atomic writes (a temporary file in the same folder, then a rename, so no reader sees half a file) and
JSON reads that fail in one line."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from acdc.errors import CircuitFileError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (creating parent folders); returns ``path``. The file gets the usual
    permissions (0666 less the umask; ``mkstemp`` alone would leave it readable by its owner only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | Path, what: str = "file") -> Any:
    """The parsed JSON at ``path``; a missing or malformed file is a one-line :class:`CircuitFileError`."""
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError as e:
        raise CircuitFileError(f"no {what} at {p}") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CircuitFileError(f"{p} is not valid JSON: {e}") from e


def file_inside(folder: Path, name: Any) -> Path | None:
    """``folder/name`` if ``name`` is a relative path to a file inside ``folder``; else None."""
    if not isinstance(name, str) or not name:
        return None
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        return None
    return path
