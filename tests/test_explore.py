"""acdc explore's server without a browser: its JSON API evaluates exactly what `acdc evaluate` does, applies node
ablations as edge removals, saves edits atomically and never over a file, and answers bad input with a 4xx and one
line, changing nothing on disk."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_report import make_view_run

from acdc.export.explore import Explorer, _plan_memory, make_app, serve
from acdc.graph import Circuit


@pytest.fixture(scope="module")
def explorer(tmp_path_factory: pytest.TempPathFactory) -> Explorer:
    folder = make_view_run(tmp_path_factory.mktemp("explore") / "run", n_test=16)
    return Explorer.open(folder)


@pytest.fixture
def client(explorer: Explorer) -> Any:
    return make_app(explorer).test_client()


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _post(client: Any, path: str, payload: Any) -> Any:
    return client.post(path, data=json.dumps(payload), content_type="application/json")


def test_evaluation_equals_the_evaluator_on_the_same_circuit(explorer: Explorer, client: Any) -> None:
    """f, KL and the metric shown for an edited circuit are evaluate_circuits' numbers on the run's test prompts."""
    from acdc.evaluate import evaluate_circuits
    from acdc.job import prepare

    chosen = Circuit.load(explorer.folder / "circuits" / "eap.json", explorer.graph)
    edges = chosen.edge_names()[1:]  # one edge toggled off
    r = _post(client, "/api/evaluate", {"edges": edges, "prompt": 2})
    assert r.status_code == 200, r.get_json()
    got = r.get_json()
    prep = prepare("ioi", "zoo:toy-ioi", splits=("test",), n=16, seed=0, counterfactual="abc", dataset="default")
    assert prep.data["test"].clean.equal(explorer.data.clean)  # the run's test prompts, rebuilt
    ref = evaluate_circuits(prep.model, prep.graph, prep.data["test"], [Circuit.from_edges(prep.graph, edges)],
                            ablation=prep.ablation)[0]
    assert got["faithfulness"] == ref["faithfulness"] and got["kl"] == ref["kl"] and got["metric"] == ref["metric"]
    assert got["edges"] == len(edges) and got["n_prompts"] == 16
    top = got["prompt"]
    assert top["index"] == 2 and len(top["circuit"]) == len(top["full"]) == 5
    assert all(a["p"] >= b["p"] for a, b in zip(top["full"], top["full"][1:], strict=False))
    # the full model's prediction at the metric position is the IO name the task expects
    assert top["full"][0]["id"] == int(explorer.data.answers[2, top["position"]])


def test_full_is_one_empty_is_zero_and_ablating_a_node_removes_its_edges(explorer: Explorer, client: Any) -> None:
    g = explorer.graph
    full = _post(client, "/api/evaluate", {"edges": g.edge_names()}).get_json()
    assert full["faithfulness"] == pytest.approx(1.0, abs=1e-6) and full["kl"] == pytest.approx(0.0, abs=1e-6)
    assert _post(client, "/api/evaluate", {"edges": []}).get_json()["faithfulness"] == pytest.approx(0.0, abs=1e-6)
    names = g.edge_names()
    kept = [e for e in names if not e.startswith("a1.h2->") and not e.split("->")[1].startswith("a1.h2<")]
    by_node = _post(client, "/api/evaluate", {"edges": names, "ablate_nodes": ["a1.h2"]}).get_json()
    by_edges = _post(client, "/api/evaluate", {"edges": kept}).get_json()
    assert by_node["edges"] == len(kept) == by_edges["edges"]
    assert by_node["faithfulness"] == by_edges["faithfulness"] and by_node["ablated_nodes"] == ["a1.h2"]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        ('{"edges": ["a0.h1->nowhere"]}', "application/json", 400, "'a0.h1->nowhere' is not an edge of this graph"),
        ('{"edges": ["a1.h0->a0.h1<q>"]}', "application/json", 400, "is not a valid edge"),
        ('{"edges": [', "application/json", 400, "not valid JSON"),
        ('{"edges": []}', "text/plain", 400, "Content-Type: application/json"),
        ('[1, 2]', "application/json", 400, "must be a JSON object"),
        ('{"edges": "a0.h1->m1"}', "application/json", 400, "'edges' must be a list"),
        ('{"edges": [], "colour": 1}', "application/json", 400, "unknown field(s) 'colour'"),
        ('{"edges": [], "prompt": 16}', "application/json", 400, "'prompt' must be a prompt number from 0 to 15"),
        ('{"edges": [], "ablate_nodes": ["a9.h9"]}', "application/json", 400, "unknown node(s) 'a9.h9'"),
    ],
)
def test_bad_input_is_a_4xx_with_one_line(explorer: Explorer, client: Any, body: str, content_type: str, status: int,
                                          message: str) -> None:
    before = _snapshot(explorer.folder)
    for path in ("/api/evaluate", "/api/save"):
        r = client.post(path, data=body, content_type=content_type)
        assert r.status_code == status and r.is_json, (path, r.data[:200])
        err = r.get_json()["error"]
        assert message in err and "\n" not in err and "Traceback" not in err, err
    assert _snapshot(explorer.folder) == before


def test_save_writes_a_new_circuit_and_never_overwrites(explorer: Explorer, client: Any) -> None:
    names = Circuit.load(explorer.folder / "circuits" / "eap-ig.json", explorer.graph).edge_names()
    r = _post(client, "/api/save", {"edges": names, "ablate_nodes": ["m0"], "name": "no-m0"})
    assert r.status_code == 200, r.get_json()
    saved = Circuit.load(explorer.folder / "circuits" / "edited" / "no-m0.json", explorer.graph)
    assert saved.n_edges == r.get_json()["edges"] and not any("m0" in e.split("->")[0] or e.endswith("->m0")
                                                               for e in saved.edge_names())
    assert saved.meta["ablated_nodes"] == ["m0"]
    assert not list((explorer.folder / "circuits" / "edited").glob(".*"))  # no temporary file left
    before = _snapshot(explorer.folder)
    again = _post(client, "/api/save", {"edges": [], "name": "no-m0"})
    assert again.status_code == 409 and "exists already" in again.get_json()["error"]
    for bad in ("../escape", "", "a/b", ".hidden", "x" * 65):
        r = _post(client, "/api/save", {"edges": [], "name": bad})
        assert r.status_code == 400 and "'name' must be" in r.get_json()["error"], bad
    assert _snapshot(explorer.folder) == before
    # listed and reloaded as the page does
    files = client.get("/api/circuits").get_json()["files"]
    assert "circuits/edited/no-m0.json" in files and "circuits/eap.json" in files
    loaded = client.get("/api/circuit?file=circuits/edited/no-m0.json").get_json()
    assert sorted(loaded["edges"]) == sorted(saved.edge_names())
    for bad in ("../summary.json", "summary.json", "circuits/none.json"):
        r = client.get(f"/api/circuit?file={bad}")
        assert r.status_code == 400 and "no circuit file" in r.get_json()["error"]


def test_prompts_that_do_not_reproduce_the_run_are_noted(explorer: Explorer, client: Any) -> None:
    full = _post(client, "/api/evaluate", {"edges": []}).get_json()
    for base, expect in (({"full": full["full"], "empty": full["empty"]}, 0), ({"full": 99.0, "empty": 0.0}, 2)):
        summary = {**explorer.summary, "pareto": {**explorer.summary["pareto"], "baseline": base}}
        ex = dataclasses.replace(explorer, summary=summary, notes=[], lock=threading.Lock())
        ex._check_against_run()
        assert len(ex.notes) == expect and all("numbers here may differ" in n for n in ex.notes)


def test_evaluations_over_the_memory_budget_are_refused(explorer: Explorer) -> None:
    chunk, note = _plan_memory(explorer.model, explorer.data, explorer.graph, explorer.ablation, 2**20)
    assert chunk == 0 and "MiB" in note
    small = dataclasses.replace(explorer, budget_bytes=2**20, chunk=chunk, memory_note=note, lock=threading.Lock())
    client = make_app(small).test_client()
    r = _post(client, "/api/evaluate", {"edges": []})
    assert r.status_code == 507 and r.get_json()["error"].startswith("evaluation refused: exact needs")
    assert client.get("/").status_code == 200  # the page still works


def test_routes_and_hosts(client: Any) -> None:
    page = client.get("/")
    assert page.status_code == 200 and b'data-live="1"' in page.data
    assert client.get("/nowhere").get_json() == {"error": "no such page: /nowhere"}
    assert client.get("/api/evaluate").status_code == 405
    r = client.get("/api/info", headers={"Host": "attacker.example:80"})
    assert r.status_code == 403 and "loopback" in r.get_json()["error"]
    info = client.get("/api/info").get_json()
    assert info["n_prompts"] == 16 and info["notes"] == [] and "prompts per pass" in info["memory"]


def test_served_on_a_free_loopback_port(explorer: Explorer) -> None:
    server = serve(explorer, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{url}/api/info", timeout=10) as r:
            assert json.loads(r.read())["task"] == "ioi"
        req = urllib.request.Request(f"{url}/api/evaluate", data=b'{"edges": ["bad"]}',
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=10)
        assert info.value.code == 400
    finally:
        server.shutdown()
        server.server_close()


def test_cli_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    from cli.main import main

    r = CliRunner().invoke(main, ["explore", str(tmp_path)])
    assert r.exit_code == 2 and r.output.startswith("error: no summary.json in") and r.output.count("\n") == 1
