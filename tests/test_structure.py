"""Rules of the code's shape, checked on the source: no module reaches into another's private names, and data
flows one way (the data layer never imports the zoo)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = [ROOT / "acdc", ROOT / "cli"]


def _modules() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted(pkg.rglob("*.py"))]


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every ``from X import ...`` and ``import X`` in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
    return out


def test_no_module_imports_another_modules_private_names() -> None:
    bad = [f"{p.relative_to(ROOT)}:{line}: from {mod} import {name}"
           for p in _modules() for mod, names, line in _imports(p)
           if mod.startswith("acdc") for name in names if name.startswith("_")]
    assert bad == []


def test_the_data_layer_does_not_import_the_zoo() -> None:
    data_layer = [ROOT / "acdc" / "types.py", ROOT / "acdc" / "metrics.py", ROOT / "acdc" / "graph.py",
                  *sorted((ROOT / "acdc" / "task").glob("*.py"))]
    bad = [f"{p.relative_to(ROOT)}:{line}: {mod}" for p in data_layer for mod, _, line in _imports(p)
           if mod == "acdc.zoo" or mod.startswith("acdc.zoo.")]
    assert len(data_layer) > 4 and bad == []


def test_run_folders_follow_the_environment(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from acdc.runs import run_dir

    monkeypatch.setenv("ACDC_OUTPUTS", str(tmp_path / "elsewhere"))
    d = run_dir("ioi", "eap")
    assert d.is_dir() and d.parent == tmp_path / "elsewhere" / "ioi"
    monkeypatch.delenv("ACDC_OUTPUTS")
    monkeypatch.chdir(tmp_path)
    d = run_dir("ioi", "eap")
    assert d.is_absolute() and d.parent == tmp_path / "outputs" / "ioi"
