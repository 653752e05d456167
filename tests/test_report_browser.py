"""report.html in headless Chromium: loads with a clean console, every image decodes, nothing is fetched.

Needs chromium, chromium-driver and selenium (``bash scripts/install_browser.sh``); skipped where they are missing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from test_report import _decode_point, _parse, make_run_folder, make_view_run

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


# ---- the interactive view, used as a person would --------------------------------------------------------------------
@pytest.fixture
def driver() -> Any:
    d = checker._driver(1400, 1000)
    yield d
    d.quit()


def _view_state(d: Any) -> dict[str, Any]:
    return d.execute_script(
        "var r = document.getElementById('acdc-view'), f = document.getElementById('acdc-f');"
        "return {ready: r.getAttribute('data-ready'), edges: Number(r.getAttribute('data-drawn-edges')),"
        " lines: Number(r.getAttribute('data-drawn-lines')), paths: r.querySelectorAll('path.edge').length,"
        " hl: r.querySelectorAll('path.edge.hl').length, highlighted: r.getAttribute('data-highlighted'),"
        " f: f ? f.getAttribute('data-f') : null, fText: f ? f.textContent : null,"
        " title: (document.getElementById('acdc-panel-title') || {}).textContent || null};")


def _console_problems(d: Any) -> list[str]:
    return [f"{e['level']}: {e['message']}" for e in d.get_log("browser") if e.get("level") in ("SEVERE", "WARNING")]


def _requests(d: Any) -> list[str]:
    return checker._requests(d, page=d.current_url)


def _edges_of(view: dict[str, Any], method: dict[str, Any], point: dict[str, Any]) -> set[tuple[int, int]]:
    table = list(zip(view["edges"]["src"], view["edges"]["dst"], strict=True))
    return _decode_point(method, point, table)


def test_slider_hover_click_agreement_search_and_collapse(tmp_path: Path, driver: Any) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    report = write_report(make_view_run(tmp_path / "run"))
    view = _parse(report).view_data()
    driver.get(report.as_uri())
    assert _view_state(driver)["ready"] == "1"
    eap = view["methods"][0]
    assert view["headline"] == "eap"

    # The slider: two steps left along eap's curve draws that point's circuit and shows its exact f.
    slider = driver.find_element(By.CSS_SELECTOR, 'input.v-slider[data-method="eap"]')
    start = int(slider.get_attribute("value"))
    assert start == eap["chosen"]
    slider.click()
    slider.send_keys(Keys.HOME)
    for _ in range(start - 2 + 1):
        slider.send_keys(Keys.ARROW_RIGHT)
    k = int(slider.get_attribute("value"))
    assert k == start - 1
    point = eap["points"][k]
    st = _view_state(driver)
    assert st["edges"] == point["edges"] == len(_edges_of(view, eap, point))
    assert st["paths"] == st["lines"] == point["edges"]  # no layer collapsed: one line per edge
    assert float(st["f"]) == point["f"] and f"f = {point['f']:.3f}" in st["fText"]

    # Hover a node: its incoming and outgoing edges are highlighted, the panel lists them.
    edges = _edges_of(view, eap, point)
    src, dst = view["graph"]["src"], view["graph"]["dst"]

    def touching_(n: str) -> list[tuple[int, int]]:
        return [e for e in edges if src[e[0]] == n or dst[e[1]].split("<")[0] == n]

    node = max((f"a{layer}.h{h}" for layer in range(2) for h in range(4)), key=lambda n: len(touching_(n)))
    touching = touching_(node)
    assert touching
    ActionChains(driver).move_to_element(driver.find_element(By.CSS_SELECTOR, f'g.node[data-id="{node}"]')).perform()
    st = _view_state(driver)
    assert st["hl"] == len(touching) and st["highlighted"] == str(len(touching)) and st["title"] == node
    ActionChains(driver).move_to_element(driver.find_element(By.ID, "acdc-readout")).perform()  # away again
    assert _view_state(driver)["hl"] == 0

    # Click an edge: its score under every method and which chosen circuits contain it.
    path = driver.find_element(By.CSS_SELECTOR, "path.edge[data-edge]")
    name = path.get_attribute("data-edge")
    driver.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", path)
    rows = driver.find_elements(By.CSS_SELECTOR, "#acdc-edge-table tr[data-method]")
    assert [r.get_attribute("data-method") for r in rows] == [m["name"] for m in view["methods"]]
    s_name, d_name = name.split("->")
    idx = next(j for j, (a, b) in enumerate(zip(view["edges"]["src"], view["edges"]["dst"], strict=True))
               if src[a] == s_name and dst[b] == d_name)
    for bit, (r, m) in enumerate(zip(rows, view["methods"], strict=True)):
        cells = [c.text for c in r.find_elements(By.TAG_NAME, "td")]
        assert cells[2] == ("yes" if view["edges"]["member"][idx] >> bit & 1 else "no")
        assert cells[1] == ("no scores" if "scores" not in m else cells[1])
        if "scores" in m:
            assert float(cells[1]) == pytest.approx(m["scores"][idx], rel=2e-3, abs=1e-4)

    # Agreement: the union of the chosen circuits, each edge coloured by how many methods include it.
    driver.find_element(By.CSS_SELECTOR, 'button[data-mode="agreement"]').click()
    union = [b for b in view["edges"]["member"] if b]
    st = _view_state(driver)
    assert st["edges"] == st["paths"] == len(union)
    counts = sorted(int(c) for c in driver.execute_script(
        "return Array.from(document.querySelectorAll('path.edge')).map(p => p.getAttribute('data-count'))"))
    assert counts == sorted(bin(b).count("1") for b in union)
    assert len(_parse(report).tables[0]) >= 1  # the static overlap table is in the page too

    # Search by name, then collapse layer 0's heads into one node and expand them again.
    driver.find_element(By.CSS_SELECTOR, 'button[data-mode="method"]').click()
    box = driver.find_element(By.ID, "acdc-search")
    box.send_keys("a0.h3", Keys.ENTER)
    assert _view_state(driver)["title"] == "a0.h3"
    box.clear()
    box.send_keys("zz9", Keys.ENTER)
    assert driver.find_element(By.ID, "acdc-search-msg").text == "no node named zz9"
    before = _view_state(driver)
    driver.find_element(By.XPATH, "//button[text()='fit']").click()  # the search zoomed in on a0.h3
    driver.find_element(By.CSS_SELECTOR, 'text.v-rowlabel[data-layer="0"]').click()
    collapsed = _view_state(driver)
    assert collapsed["edges"] == before["edges"] and collapsed["lines"] < before["lines"]
    assert driver.find_elements(By.CSS_SELECTOR, 'g.node[data-id="a0"]')
    assert not driver.find_elements(By.CSS_SELECTOR, 'g.node[data-id="a0.h1"]')
    driver.find_element(By.CSS_SELECTOR, 'text.v-rowlabel[data-layer="0"]').click()
    assert _view_state(driver)["lines"] == before["lines"]

    # Pan and zoom move the drawing.
    vp = driver.find_element(By.CSS_SELECTOR, "#acdc-svg g.vp")
    t0 = vp.get_attribute("transform")
    driver.find_element(By.XPATH, "//button[text()='+']").click()
    assert vp.get_attribute("transform") != t0

    assert _console_problems(driver) == []
    assert _requests(driver) == []


def test_real_size_graph_opens_collapsed_and_expands(tmp_path: Path, driver: Any, monkeypatch: Any) -> None:
    """A circuit over the auto-collapse size opens with layers collapsed into one node each; expanding draws it all."""
    folder = make_view_run(tmp_path / "run")
    html = write_report(folder).read_text().replace("var AUTO_COLLAPSE = 4000;", "var AUTO_COLLAPSE = 10;")
    page = tmp_path / "small-limit.html"
    page.write_text(html)
    driver.get(page.as_uri())
    st = _view_state(driver)
    assert st["lines"] < st["edges"] and st["paths"] == st["lines"]
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, "//button[text()='expand all']").click()
    st = _view_state(driver)
    assert st["lines"] == st["edges"] == st["paths"]
    assert _console_problems(driver) == []


def test_explore_toggles_an_edge_and_shows_the_evaluators_f(tmp_path: Path, driver: Any) -> None:
    """acdc explore on a free loopback port: edit the chosen circuit in the page (remove one edge), and the f shown is
    evaluate_circuits' f of the same circuit on the run's test prompts; the page talks only to its server."""
    import threading

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from acdc.evaluate import evaluate_circuits
    from acdc.export.explore import Explorer, serve
    from acdc.graph import Circuit

    ex = Explorer.open(make_view_run(tmp_path / "run", n_test=16))
    server = serve(ex, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.port}/"
    try:
        driver.get(url)
        assert _view_state(driver)["ready"] == "1"
        driver.find_element(By.CSS_SELECTOR, 'button[data-mode="edit"]').click()

        def shown(d: Any) -> Any:
            e = d.find_elements(By.ID, "acdc-live-f")
            return e[0] if e else None

        first = WebDriverWait(driver, 30).until(shown)
        chosen = Circuit.load(ex.folder / "circuits" / "eap.json", ex.graph)
        assert int(first.get_attribute("data-edges")) == chosen.n_edges
        path = driver.find_element(By.CSS_SELECTOR, "path.edge[data-edge]")
        name = path.get_attribute("data-edge")
        driver.execute_script("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", path)
        driver.find_element(By.ID, "acdc-toggle-edge").click()
        WebDriverWait(driver, 30).until(
            lambda d: shown(d) is not None and shown(d).get_attribute("data-edges") == str(chosen.n_edges - 1))
        f_shown = float(shown(driver).get_attribute("data-f"))
        edited = Circuit.from_edges(ex.graph, [e for e in chosen.edge_names() if e != name])
        ref = evaluate_circuits(ex.model, ex.graph, ex.data, [edited], ablation=ex.ablation)[0]
        assert f_shown == ref["faithfulness"]
        assert f"f = {ref['faithfulness']:.4f}" in shown(driver).text
        assert driver.find_elements(By.CSS_SELECTOR, "#acdc-top tr")  # the chosen prompt's top predictions
        assert driver.find_element(By.CSS_SELECTOR, f'path.edge.off[data-edge="{name}"]')  # drawn as removed
        assert _console_problems(driver) == []
        assert all(u.startswith(url) for u in _requests(driver) + [driver.current_url]), _requests(driver)
    finally:
        server.shutdown()
        server.server_close()
