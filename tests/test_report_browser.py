"""report.html in headless Chromium: loads with a clean console, every image decodes, nothing is fetched.

Needs chromium, chromium-driver and selenium (``bash scripts/install_browser.sh``); skipped where they are missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from test_report import make_run_folder

from acdc.export.report import write_report


def _load_checker() -> ModuleType:
    """bench/check_report.py as a module (bench/ is a folder of scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "check_report.py"
    spec = importlib.util.spec_from_file_location("check_report", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


checker = _load_checker()
browser_available, check_report = checker.browser_available, checker.check_report

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(browser_available() is not None, reason=str(browser_available())),
]


def test_report_loads_cleanly_in_headless_chromium(tmp_path: Path) -> None:
    report = write_report(make_run_folder(tmp_path / "run"))
    shot = tmp_path / "shot.png"
    assert check_report(report, screenshot=shot) == []
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_the_check_catches_a_broken_page(tmp_path: Path) -> None:
    """The check is not vacuous: a script error, an undecodable image and a fetch are all reported."""
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><title>broken</title><link rel="icon" href="data:,"></head><body>'
        '<img src="missing.png" alt="gone"><script>throw new Error("boom")</script></body></html>'
    )
    problems = check_report(page)
    assert any(p.startswith("console:") and "boom" in p for p in problems), problems
    assert any(p.startswith("images:") and "gone" in p for p in problems), problems
    assert any(p.startswith("network:") and "missing.png" in p for p in problems), problems
