"""The main job (`acdc run`) and the commands around it: pareto, draw, evaluate, report."""

from __future__ import annotations

import json

import pytest
from acdc.cli.main import main
from click.testing import CliRunner

from acdc import Circuit, Graph
from acdc.pareto import pareto_front


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, toy_induction):  # type: ignore[no-untyped-def]
    """A small but complete `acdc run induction` (all five methods, few prompts and steps)."""
    out = tmp_path_factory.mktemp("job") / "run"
    r = CliRunner().invoke(main, ["run", "induction", "--n", "24", "--bootstrap", "50", "--ep-steps", "30",
                                  "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out, r.output


def test_run_writes_every_output(run_folder) -> None:  # type: ignore[no-untyped-def]
    out, output = run_folder
    for name in ("report.html", "pareto.json", "pareto.svg", "pareto.png", "circuit.svg", "circuit.png",
                 "summary.json", "run.yaml"):
        assert (out / name).stat().st_size > 0, name
    s = json.loads((out / "summary.json").read_text())
    assert s["format"] == "acdc-run/1" and s["task"] == "induction" and s["model"] == "zoo:toy-induction"
    methods = [c["method"] for c in s["circuits"]]
    assert methods == ["eap", "eap-ig", "edge-pruning", "hybrid", "acdc"]
    for c in s["circuits"]:
        for key in ("json", "svg", "png"):
            assert (out / c[key]).exists(), (c["method"], key)
        saved = Circuit.load(out / c["json"])
        assert saved.n_edges == c["edges"]
        assert c["f_ci"][0] <= c["f"] <= c["f_ci"][1]
    assert s["headline"] in methods
    assert (out / "mib" / "eap-ig" / "induction_toy-induction" / "importances.json").exists()
    # the printed table names every method and the report's path
    for m in methods:
        assert m in output
    assert f"report: {out}/report.html" in output
    # the frontier in the file is the frontier of the file's points
    p = s["pareto"]
    flat = [(q["edges"], q["f"]) for cv in p["curves"] for q in cv["points"]]
    assert {(f["edges"], f["f"]) for f in p["frontier"]} == {flat[i] for i in pareto_front(flat)}
    html = (out / "report.html").read_text()
    assert "data:image/svg+xml;base64," in html and "http://" not in html and "https://" not in html


def test_chosen_circuit_is_reproduced_by_evaluate(run_folder) -> None:  # type: ignore[no-untyped-def]
    out, _ = run_folder
    s = json.loads((out / "summary.json").read_text())
    c = next(c for c in s["circuits"] if c["method"] == "eap-ig")
    r = CliRunner().invoke(main, ["evaluate", "induction", str(out / c["json"]), "--n", "24", "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    row = r.output.strip().splitlines()[-1].split()
    assert int(row[1]) == c["edges"]
    assert float(row[3]) == pytest.approx(c["f"], abs=1e-3)


def test_evaluate_without_circuits_checks_full_and_empty(toy_ioi) -> None:  # type: ignore[no-untyped-def]
    r = CliRunner().invoke(main, ["evaluate", "ioi", "--n", "16", "--bootstrap", "20"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    clean = float(next(x for x in lines if x.startswith("clean model")).split()[-1])
    corrupt = float(next(x for x in lines if x.startswith("counterfactual model")).split()[-1])
    full = next(x for x in lines if x.startswith("full circuit")).split()
    empty = next(x for x in lines if x.startswith("empty circuit")).split()
    assert float(full[3]) == pytest.approx(clean, abs=1e-3) and float(full[4]) == pytest.approx(1.0)
    assert float(empty[3]) == pytest.approx(corrupt, abs=1e-3) and float(empty[4]) == pytest.approx(0.0, abs=1e-6)


def test_draw_and_report_commands(run_folder, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out, _ = run_folder
    r = CliRunner().invoke(main, ["draw", str(out / "circuits" / "hybrid.json"), "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "hybrid.svg").read_text().lstrip().startswith(("<?xml", "<svg", "<!--"))
    assert (tmp_path / "hybrid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (out / "report.html").unlink()
    r = CliRunner().invoke(main, ["report", str(out)])
    assert r.exit_code == 0 and (out / "report.html").exists(), r.output
    r = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert r.exit_code == 2 and r.output.count("\n") == 1 and r.output.startswith("error:"), r.output


def test_pareto_command_sweeps_saved_scores(tmp_path, toy_ioi) -> None:  # type: ignore[no-untyped-def]
    scores_dir = tmp_path / "scores"
    r = CliRunner().invoke(main, ["scores", "ioi", "--method", "eap", "--n", "16", "--out", str(scores_dir)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "pareto"
    r = CliRunner().invoke(main, ["pareto", "ioi", "--methods", "eap-ig", "--scores", str(scores_dir), "--n", "16",
                                  "--bootstrap", "20", "--out", str(out)])
    assert r.exit_code == 0, r.output
    p = json.loads((out / "pareto.json").read_text())
    assert [c["method"] for c in p["curves"]] == ["eap-ig", "eap"]
    assert (out / "pareto.png").exists() and not (out / "report.html").exists()
    assert "frontier:" in r.output
    graph = Graph.from_model(toy_ioi)
    assert p["n_edges_total"] == graph.n_edges


@pytest.mark.parametrize("args, message", [
    (["run", "ioi", "--methods", "eap,nope"], "error: unknown method(s) nope in --methods; choose from eap, eap-ig, "
                                              "eap-ig-inputs, eap-ig-left, eap-ig-midpoint, eap-ig-activations, "
                                              "clean-corrupted, relp, mask-ig, exact, edge-pruning, edge-pruning-warm, "
                                              "hybrid, acdc, ensemble, ensemble-max, ensemble-min, eap-ig-ilp, "
                                              "eap-ig-stable (comma-separated)"),
    (["draw", "/no/such/circuit.json"], "error: no circuit file at /no/such/circuit.json"),
])
def test_bad_input_is_one_line(args, message) -> None:  # type: ignore[no-untyped-def]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and r.output.strip() == message, r.output
