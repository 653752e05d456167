"""Open a report.html in headless Chromium and check it the way a reader's browser would see it.

Checks: the page loads; the browser console has no SEVERE or WARNING entries; every <img> decoded
(``complete && naturalWidth > 0``); the page requested nothing but ``data:`` URIs (DevTools network events and
Resource Timing); optionally a full-page screenshot. Needs chromium, chromium-driver and selenium
(``bash scripts/install_browser.sh``).

    python3 bench/check_report.py outputs/ioi/<run-id>/report.html --screenshot /tmp/report.png

Prints one verdict line per check and exits 1 if any check fails. ``check_report`` is the same as a function.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1400, 2000)
LOAD_TIMEOUT_S = 30

_IMAGES_JS = """
return Array.from(document.images).map((img, i) => ({
  i: i, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
  alt: img.alt, src: (img.getAttribute('src') || '').slice(0, 40)
}));
"""
_RESOURCES_JS = "return performance.getEntriesByType('resource').map(e => e.name);"


def browser_available() -> str | None:
    """None if the check can run here, else why not (for a test's skip reason)."""
    for path, what in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists() and shutil.which(Path(path).name) is None:
            return f"{what} is not installed (bash scripts/install_browser.sh)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (bash scripts/install_browser.sh)"
    return None


def _binary(path: str) -> str:
    return path if Path(path).exists() else (shutil.which(Path(path).name) or path)


def _driver(width: int, height: int) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _binary(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=_binary(CHROMEDRIVER)))


def check_report(path: str | Path, screenshot: str | Path | None = None) -> list[str]:
    """Problems found when ``path`` is opened in headless Chromium (empty: all checks passed)."""
    return [line for ok, line in _run_checks(Path(path), screenshot) if not ok]


def _run_checks(path: Path, screenshot: str | Path | None) -> list[tuple[bool, str]]:
    """(passed, verdict line) per check, in order."""
    from selenium.webdriver.support.ui import WebDriverWait

    path = path.resolve()
    if not path.is_file():
        return [(False, f"load: {path} does not exist")]
    results: list[tuple[bool, str]] = []
    driver = _driver(*WINDOW)
    try:
        driver.set_page_load_timeout(LOAD_TIMEOUT_S)
        driver.get(path.as_uri())
        WebDriverWait(driver, LOAD_TIMEOUT_S).until(
            lambda d: d.execute_script("return document.readyState") == "complete"
        )
        title = driver.title
        results.append((bool(title), f"load: readyState complete, title {title!r}"))

        logs = [e for e in driver.get_log("browser") if e.get("level") in ("SEVERE", "WARNING")]
        if logs:
            results += [(False, f"console: {e['level']}: {e.get('message', '')}") for e in logs]
        else:
            results.append((True, "console: no SEVERE or WARNING entries"))

        images = driver.execute_script(_IMAGES_JS)
        broken = [im for im in images if not (im["complete"] and im["width"] > 0)]
        for im in broken:
            results.append((False, f"images: <img> #{im['i']} ({im['alt']!r}, src {im['src']!r}…) did not decode"))
        if not broken:
            sizes = ", ".join(f"{im['width']}x{im['height']}" for im in images)
            results.append((True, f"images: {len(images)} decoded ({sizes or 'none in the page'})"))

        fetched = _requests(driver, page=path.as_uri())
        if fetched:
            results += [(False, f"network: the page requested {name}") for name in fetched]
        else:
            results.append((True, "network: no requests beyond the page itself (data: URIs only)"))

        if screenshot is not None:
            results.append(_screenshot(driver, Path(screenshot)))
    finally:
        driver.quit()
    return results


def _requests(driver: Any, page: str) -> list[str]:
    """URLs other than the page itself and data: URIs that the page requested, whether or not they loaded.

    Two witnesses: the DevTools network events (they include failed and file:// requests) and Resource Timing.
    """
    urls: list[str] = []
    for entry in driver.get_log("performance"):
        event = json.loads(entry.get("message", "{}")).get("message", {})
        if event.get("method") == "Network.requestWillBeSent":
            urls.append(event.get("params", {}).get("request", {}).get("url", ""))
    urls += driver.execute_script(_RESOURCES_JS)
    seen: dict[str, None] = {}
    for url in urls:
        if url and url != page and not url.startswith("data:"):
            seen.setdefault(url)
    return list(seen)


def _screenshot(driver: Any, out: Path) -> tuple[bool, str]:
    """A full-page PNG via the DevTools protocol (the window-sized shot would cut the page off)."""
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    width = int(driver.execute_script("return document.documentElement.scrollWidth"))
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {"format": "png", "captureBeyondViewport": True,
         "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}},
    )  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(shot["data"]))
    return True, f"screenshot: {out} ({width}x{height} CSS px)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("report", help="path to a report.html")
    parser.add_argument("--screenshot", metavar="PNG", help="also save a full-page screenshot here")
    args = parser.parse_args(argv)
    missing = browser_available()
    if missing:
        print(f"FAIL setup: {missing}")
        return 1
    results = _run_checks(Path(args.report), args.screenshot)
    for ok, line in results:
        print(f"{'ok  ' if ok else 'FAIL'} {line}")
    failed = sum(not ok for ok, _ in results)
    print(f"{'FAIL' if failed else 'ok  '} verdict: {failed} problem(s) in {args.report}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
