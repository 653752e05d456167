"""Reading task files: YAML text -> a validated :class:`~acdc.task.schema.TaskSpec` and a :class:`LineMap`, where every
problem becomes one ``TaskFileError`` naming the field and, where the YAML can tell, its line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from acdc.task.schema import Loc, TaskFileError, TaskSpec, cross_reference_errors


class LineMap:
    """Finds the line of a field in a YAML document from its path of keys and indices."""

    def __init__(self, root: yaml.Node | None):
        self.root = root

    def line(self, loc: Loc) -> int | None:
        node = self.root
        best = node.start_mark.line + 1 if node is not None else None
        for key in loc:
            if isinstance(node, yaml.MappingNode):
                nxt = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(key)), None)
                if nxt is None:
                    continue  # e.g. pydantic's union tag: not a key of the document
                key_node = next(k for k, v in node.value if v is nxt)
                best = key_node.start_mark.line + 1
                node = nxt
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
                node = node.value[key]
                best = node.start_mark.line + 1
            else:
                continue
        return best


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_#.-]+$")


def fmt_loc(loc: Loc) -> str:
    """``dataset.words.names[3]``; odd keys (spaces, newlines, empty) are quoted: ``answer['a b']``."""
    out = ""
    for k in loc:
        if isinstance(k, int):
            out += f"[{k}]"
        elif not _PLAIN_KEY.match(k):
            out += f"[{k!r}]"
        else:
            out += f".{k}" if out else k
    return out


def _raise(where: str, lines: LineMap, loc: Loc, msg: str, more: int = 0) -> None:
    line = lines.line(loc) if loc else None
    head = f"{where}:{line}" if line else where
    field = f" {fmt_loc(loc)}:" if loc else ""
    extra = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    text = f"{head}:{field} {msg}{extra}"
    raise TaskFileError(text.replace("\r", "\\r").replace("\n", "\\n"))  # always one line


def _pydantic_message(err: dict[str, Any]) -> str:
    typ, msg = err.get("type", ""), err.get("msg", "invalid value")
    if typ == "extra_forbidden":
        return "unknown field (check its spelling and indentation)"
    if typ == "missing":
        return "required field is missing"
    if typ == "union_tag_invalid":
        return "'kind' must be one of templates, repeated_tokens, pairs"
    if typ == "union_tag_not_found":
        return "needs a 'kind': templates, repeated_tokens or pairs"
    got = err.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{msg[0].lower() + msg[1:]} (got {shown})" if msg else f"invalid value (got {shown})"


class _DupKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (which plain YAML silently overwrites)."""


def _compose_checked(text: str, where: str) -> yaml.Node | None:
    try:
        root = yaml.compose(text, Loader=_DupKeyLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise TaskFileError(f"{where}{line}: not valid YAML: {problem}") from None
    stack = [root] if root is not None else []
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    if k.value in seen:
                        raise TaskFileError(f"{where}:{k.start_mark.line + 1}: duplicate key '{k.value}'")
                    seen.add(k.value)
                stack.append(v)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return root


def parse_task_text(text: str, where: str = "<task>") -> tuple[TaskSpec, LineMap]:
    """Validate the YAML ``text`` of a task file. Raises TaskFileError (one line naming field and line)."""
    root = _compose_checked(text, where)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:  # pragma: no cover - compose already parsed it
        raise TaskFileError(f"{where}: not valid YAML: {str(e).splitlines()[0]}") from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. a timestamp like 2024-13-45
        raise TaskFileError(f"{where}: not valid YAML: {e}") from None
    lines = LineMap(root)
    if not isinstance(data, dict):
        raise TaskFileError(f"{where}: a task file must be a YAML mapping of fields (name, description, ...), "
                            f"got {type(data).__name__}")
    bad_keys = [k for k in _all_keys(data) if not isinstance(k, str)]
    if bad_keys:
        raise TaskFileError(f"{where}: keys must be strings, got {bad_keys[0]!r}")
    try:
        spec = TaskSpec.model_validate(data)
    except ValidationError as e:
        errs = e.errors()
        first = errs[0]
        _raise(where, lines, tuple(first.get("loc", ())), _pydantic_message(dict(first)), len(errs) - 1)
    errs2 = cross_reference_errors(spec)
    if errs2:
        _raise(where, lines, *errs2[0], len(errs2) - 1)
    return spec, lines


def _all_keys(data: Any) -> list[Any]:
    out: list[Any] = []
    stack = [data]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            out.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return out


def load_task_file(path: str | Path) -> tuple[TaskSpec, LineMap]:
    """Read and validate the task file at ``path``. Raises TaskFileError (one line naming field and line)."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise TaskFileError(f"cannot read task file {p}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise TaskFileError(f"{p}: not UTF-8 text; a task file is YAML") from None
    return parse_task_text(text, str(p))
