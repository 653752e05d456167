"""How fast a run's report.html opens in headless Chromium, with its interactive circuit view drawn.

    python bench/bench_report_load.py RUN_DIR [--repeats 3] [--screenshot docs/explore.png] [--method eap-ig]
        [--point n=353] [--expand] [--zoom-top 0.5] [--hover a1.h3]

Rewrites RUN_DIR/report.html (timed: building the view's data and the page), then opens it ``--repeats`` times in a
fresh headless Chromium (``bench/check_report.py``'s driver, 1400x1000 window) and reports, per load, the wall time
from the request to the view being drawn (``data-ready`` on the view), the page's DOMContentLoaded time and the
script's own finishing time (``performance.now()`` when it marked itself ready), with the page size and what the
view drew; then the time to expand every layer. ``--screenshot`` saves the view section as a PNG after moving to
``--method``'s ``--point`` (a curve label), optionally expanding the layers, zooming on the top of the graph and
hovering a node. Prints the medians; exits 1 on console errors or network requests.
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from check_report import _driver, _requests, browser_available

READY_JS = "var r = document.getElementById('acdc-view'); return r && r.getAttribute('data-ready') === '1';"
STATE_JS = ("var r = document.getElementById('acdc-view'), n = performance.getEntriesByType('navigation')[0];"
            "return {ready_ms: Number(r.getAttribute('data-ready-ms')), dcl_ms: n.domContentLoadedEventEnd,"
            " edges: Number(r.getAttribute('data-drawn-edges')), lines: Number(r.getAttribute('data-drawn-lines')),"
            " readout: document.getElementById('acdc-readout').textContent};")


def load_once(page: Path) -> tuple[dict[str, Any], list[str]]:
    from selenium.webdriver.support.ui import WebDriverWait

    d = _driver(1400, 1000)
    try:
        t0 = time.perf_counter()
        d.get(page.as_uri())
        WebDriverWait(d, 60, poll_frequency=0.02).until(lambda x: x.execute_script(READY_JS))
        wall = time.perf_counter() - t0
        st = d.execute_script(STATE_JS)
        st["wall_s"] = wall
        t0 = time.perf_counter()
        d.execute_script("Array.from(document.querySelectorAll('.v-tool')).find(b => b.textContent === 'expand all')"
                         ".click(); return document.getElementById('acdc-view').getAttribute('data-drawn-lines');")
        st["expand_s"] = time.perf_counter() - t0
        st["expanded_lines"] = int(d.execute_script(
            "return document.getElementById('acdc-view').getAttribute('data-drawn-lines')"))
        problems = [f"console: {e['level']}: {e['message']}" for e in d.get_log("browser")
                    if e.get("level") in ("SEVERE", "WARNING")]
        problems += [f"network: {u}" for u in _requests(d, page=page.as_uri())]
        return st, problems
    finally:
        d.quit()


def screenshot(page: Path, out: Path, method: str | None, point: str | None, expand: bool, zoom_top: float | None,
               hover: str | None = None) -> str:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    d = _driver(1400, 1500)  # tall enough for the whole section
    try:
        d.get(page.as_uri())
        if method:
            d.execute_script(
                "var m = arguments[0], label = arguments[1];"
                "var s = document.querySelector('input.v-slider[data-method=\"' + m + '\"]');"
                "var data = JSON.parse(document.getElementById('acdc-view-data').textContent);"
                "var pts = data.methods.find(x => x.name === m).points;"
                "var k = label ? pts.findIndex(p => p.label === label) : Number(s.value);"
                "s.value = String(k); s.dispatchEvent(new Event('input'));", method, point)
        if expand:
            d.execute_script("Array.from(document.querySelectorAll('.v-tool'))"
                             ".find(b => b.textContent === 'expand all').click()")
        if zoom_top:
            d.execute_script(
                "var svg = document.getElementById('acdc-svg'), r = svg.getBoundingClientRect();"
                "svg.dispatchEvent(new WheelEvent('wheel', {deltaY: -arguments[0] * 1000,"
                " clientX: r.left + r.width / 2, clientY: r.top + 60, bubbles: true, cancelable: true}));", zoom_top)
        if hover:
            d.execute_script("document.getElementById('explore').scrollIntoView()")
            ActionChains(d).move_to_element(d.find_element(By.CSS_SELECTOR, f'g.node[data-id="{hover}"]')).perform()
        rect = d.execute_script("var r = document.getElementById('explore').getBoundingClientRect();"
                                "return [r.left + scrollX, r.top + scrollY, r.width, r.height];")
        shot = d.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": rect[0], "y": rect[1], "width": rect[2], "height": rect[3], "scale": 1}})
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(shot["data"]))
        return d.execute_script("return document.getElementById('acdc-readout').textContent")
    finally:
        d.quit()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("run_dir")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--screenshot", default=None)
    ap.add_argument("--method", default=None)
    ap.add_argument("--point", default=None, help="curve label of the point to show, e.g. n=353")
    ap.add_argument("--expand", action="store_true")
    ap.add_argument("--zoom-top", type=float, default=None)
    ap.add_argument("--hover", default=None, help="node to hover before the screenshot, e.g. a1.h3")
    args = ap.parse_args()
    missing = browser_available()
    if missing:
        print(f"FAIL setup: {missing}")
        return 1
    from acdc.export.report import write_report

    t0 = time.perf_counter()
    page = write_report(args.run_dir)
    build = time.perf_counter() - t0
    print(f"report: {page} ({page.stat().st_size / 2**20:.1f} MiB), written in {build:.1f} s")
    loads, problems = [], []
    for _ in range(args.repeats):
        st, pr = load_once(page)
        loads.append(st)
        problems += pr
        print(f"load: {st['wall_s']:.2f} s to the view drawn (DOMContentLoaded {st['dcl_ms'] / 1000:.2f} s, script "
              f"done {st['ready_ms'] / 1000:.2f} s); drew {st['edges']:,} edges as {st['lines']:,} lines; expanding "
              f"every layer ({st['expanded_lines']:,} lines) {st['expand_s']:.2f} s")
    med = statistics.median(s["wall_s"] for s in loads)
    print(f"median load time: {med:.2f} s over {len(loads)} loads; first view: {loads[0]['readout']}")
    if args.screenshot:
        text = screenshot(page, Path(args.screenshot), args.method, args.point, args.expand, args.zoom_top,
                          args.hover)
        print(f"screenshot: {args.screenshot} ({text})")
    for p in problems:
        print(f"FAIL {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
