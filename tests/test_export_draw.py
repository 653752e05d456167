"""Circuit drawings (graphviz) and pareto plots (matplotlib): content, layout, encodings and the files written.

Layout facts are read back from graphviz itself (``json`` output: the nodes it placed, their coordinates, and each
edge's colour and style as graphviz parsed them), so the tests check the drawing rather than our own string."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import graphviz
import pytest
import torch

from acdc.errors import InputError
from acdc.export import circuit as draw
from acdc.export.circuit import EDGE_STYLE, circuit_dot, draw_circuit
from acdc.export.plot import METHOD_COLORS, method_colors, pareto_figure, plot_pareto
from acdc.graph import Circuit, Graph

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = ["input->a0.h0<v>", "a0.h0->a1.h1<k>", "a1.h1->logits"]


def layout(dot: str) -> tuple[dict[str, tuple[float, float]], list[tuple[str, str, str, str]]]:
    """Graphviz's own reading of the DOT: node -> (x, y), and (tail, head, style, colour) per visible edge."""
    data = json.loads(graphviz.Source(dot).pipe(format="json", encoding="utf-8"))
    names, nodes, edges = {}, {}, []
    for o in data["objects"]:
        if "nodes" in o:  # a rank=same subgraph, not a node
            continue
        names[o["_gvid"]] = o["name"]
        if not o["name"].startswith("rank:"):
            x, y = o["pos"].split(",")
            nodes[o["name"]] = (float(x), float(y))
    for e in data.get("edges", []):
        if e.get("style") != "invis":
            edges.append((names[e["tail"]], names[e["head"]], e["style"], e["color"]))
    return nodes, edges


def edge_attrs(dot: str) -> dict[tuple[str, str, str], dict[str, str]]:
    """(tail, head, role) -> attributes of each drawn edge, role read from its tooltip."""
    out = {}
    for m in re.finditer(r'^  "([^"]+)" -> "([^"]+)" \[(.*)\];$', dot, re.M):
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3)))
        if attrs.get("style") == "invis":
            continue
        role = re.search(r"\((q|k|v)\)", attrs.get("tooltip", ""))
        key = (m.group(1), m.group(2), role.group(1) if role else "")
        assert key not in out
        out[key] = attrs
    return out


def svg_texts(path: Path) -> list[str]:
    root = ET.parse(path).getroot()
    assert root.tag.endswith("svg")
    return ["".join(t.itertext()).strip() for t in root.iter() if t.tag.endswith("text")]


# ---- circuit drawings ----------------------------------------------------------------------------------------------


def test_nodes_are_exactly_the_circuits():
    g = Graph.from_config(2, 4)
    nodes, edges = layout(circuit_dot(Circuit.from_edges(g, SMALL)))
    assert set(nodes) == {"input", "a0.h0", "a1.h1", "logits"}
    assert {(t, h) for t, h, _, _ in edges} == {("input", "a0.h0"), ("a0.h0", "a1.h1"), ("a1.h1", "logits")}


def test_edges_styled_by_reader_type():
    g = Graph.from_config(2, 2)
    names = ["input->a1.h0<q>", "a0.h1->a1.h0<k>", "m0->a1.h0<v>", "a0.h1->m0", "a1.h0->logits", "input->a0.h1<k>"]
    c = Circuit.from_edges(g, names)
    dot = circuit_dot(c)
    _, edges = layout(dot)
    drawn = {(t, h): (style, color) for t, h, style, color in edges}
    expect = {("input", "a1.h0"): "q", ("a0.h1", "a1.h0"): "k", ("m0", "a1.h0"): "v", ("a0.h1", "m0"): "mlp",
              ("a1.h0", "logits"): "logits", ("input", "a0.h1"): "k"}
    for pair, role in expect.items():
        assert drawn[pair] == (EDGE_STYLE[role]["style"], EDGE_STYLE[role]["color"]), (pair, role)
    # the five kinds differ by colour, and q/k/v also by line style and arrowhead
    assert len({EDGE_STYLE[r]["color"] for r in ("q", "k", "v", "mlp", "logits")}) == 5
    for attr in ("style", "arrowhead"):
        assert len({EDGE_STYLE[r][attr] for r in "qkv"}) == 3
    attrs = edge_attrs(dot)
    assert attrs[("a0.h1", "a1.h0", "k")]["tooltip"] == "a0.h1 -> a1.h0 (k)"
    assert attrs[("a0.h1", "a1.h0", "k")]["headlabel"] == "k"
    assert attrs[("m0", "a1.h0", "v")]["headlabel"] == "v"
    assert "headlabel" not in attrs[("a0.h1", "m0", "")]


def test_same_pair_through_q_k_and_v_gives_three_edges():
    g = Graph.from_config(2, 2)
    c = Circuit.from_edges(g, ["a0.h0->a1.h1<q>", "a0.h0->a1.h1<k>", "a0.h0->a1.h1<v>", "input->a0.h0<v>"])
    attrs = edge_attrs(circuit_dot(c))
    assert {k for k in attrs if k[:2] == ("a0.h0", "a1.h1")} == {("a0.h0", "a1.h1", r) for r in "qkv"}


def test_layout_runs_bottom_to_top_by_layer():
    g = Graph.from_config(2, 3)
    names = ["input->a0.h0<q>", "input->a0.h2<v>", "a0.h0->m0", "a0.h2->m0", "m0->a1.h1<k>", "a1.h1->m1",
             "m1->logits", "input->logits", "a0.h2->logits"]
    dot = circuit_dot(Circuit.from_edges(g, names))
    assert 'rankdir="BT"' in dot
    nodes, _ = layout(dot)
    y = {n: p[1] for n, p in nodes.items()}
    assert y["input"] == min(y.values()) and y["logits"] == max(y.values())
    assert y["a0.h0"] == y["a0.h2"]  # a layer's heads share one rank
    assert y["input"] < y["a0.h0"] < y["m0"] < y["a1.h1"] < y["m1"] < y["logits"]


def test_penwidth_follows_abs_score():
    g = Graph.from_config(2, 2)
    names = ["input->a0.h0<q>", "a0.h0->a1.h1<k>", "a1.h1->logits", "input->logits"]
    values = [0.5, -2.0, 1.0, 0.0]
    scores = torch.zeros(g.n_src, g.n_dst)
    for n, v in zip(names, values, strict=True):
        scores[g.edge_index(n)] = v
    scores[g.edge_index("a0.h1->m0")] = 100.0  # not in the circuit: must not set the scale
    c = Circuit(g, Circuit.from_edges(g, names).mask, scores=scores)
    attrs = edge_attrs(circuit_dot(c))
    width = {(t, h): float(a["penwidth"]) for (t, h, _), a in attrs.items()}
    order = [("input", "a0.h0"), ("a0.h0", "a1.h1"), ("a1.h1", "logits"), ("input", "logits")]
    w = [width[p] for p in order]
    assert w[1] == pytest.approx(draw.MAX_PENWIDTH) and w[3] == pytest.approx(draw.MIN_PENWIDTH)
    assert w[1] > w[2] > w[0] > w[3]
    assert w[0] - w[3] == pytest.approx((w[1] - w[3]) / 4)  # affine in |score|
    assert "score -2" in attrs[("a0.h0", "a1.h1", "k")]["tooltip"]

    unscored = edge_attrs(circuit_dot(Circuit.from_edges(g, names)))
    assert {a["penwidth"] for a in unscored.values()} == {str(draw.FLAT_PENWIDTH)}


def test_gqa_kv_edges_end_at_the_shared_head():
    g = Graph.from_config(2, 4, n_kv_heads=2)  # group 0 = heads 0, 1; group 1 = heads 2, 3
    names = ["input->a0.h1<q>", "a0.h1->a1.g0<k>", "a0.h1->a1.h2<q>", "a1.h2->logits", "a1.h0->logits"]
    c = Circuit.from_edges(g, names)
    dot = circuit_dot(c)
    nodes, edges = layout(dot)
    assert set(nodes) == set(c.nodes()) | {"a1.g0"}
    pairs = {(t, h) for t, h, _, _ in edges}
    assert ("a0.h1", "a1.g0") in pairs
    assert {h for t, h in pairs if t == "a1.g0"} == {h for h in c.nodes() if h in ("a1.h0", "a1.h1")}
    assert edge_attrs(dot)[("a0.h1", "a1.g0", "k")]["style"] == EDGE_STYLE["k"]["style"]
    y = {n: p[1] for n, p in nodes.items()}
    assert y["a0.h1"] < y["a1.g0"] < y["a1.h0"] == y["a1.h2"]


def test_empty_circuit_draws(tmp_path):
    c = Circuit.empty(Graph.from_config(2, 2))
    dot = circuit_dot(c)
    nodes, edges = layout(dot)
    assert set(nodes) == {"input", "logits", "empty"} and edges == []
    assert "empty circuit" in dot
    svg, png = draw_circuit(c, tmp_path / "empty")
    assert "empty circuit" in svg_texts(svg) and png.read_bytes().startswith(PNG_MAGIC)


def test_draw_writes_valid_files_and_no_temporaries(tmp_path):
    g = Graph.from_config(2, 4)
    c = Circuit.from_edges(g, SMALL)
    c.scores = torch.rand(g.n_src, g.n_dst)
    out = draw_circuit(c, tmp_path / "sub" / "circ", title="my circuit")
    assert out == [tmp_path / "sub" / "circ.svg", tmp_path / "sub" / "circ.png"]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["circ.png", "circ.svg"]
    texts = svg_texts(out[0])
    assert "my circuit" in texts and "a1.h1" in texts and "into a key" in texts
    data = out[1].read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert draw_circuit(c, tmp_path / "only", formats=("svg",)) == [tmp_path / "only.svg"]


def test_bad_format_writes_nothing(tmp_path):
    c = Circuit.from_edges(Graph.from_config(1, 1), ["input->a0.h0<q>"])
    with pytest.raises(InputError, match="nope"):
        draw_circuit(c, tmp_path / "x", formats=("svg", "nope"))
    assert list(tmp_path.iterdir()) == []


def test_large_circuit_drops_edge_labels(monkeypatch):
    g = Graph.from_config(2, 2)
    c = Circuit.from_edges(g, ["input->a0.h0<q>", "input->a0.h1<k>", "a0.h0->a1.h1<v>", "a1.h1->logits"])
    assert "headlabel" in circuit_dot(c)
    monkeypatch.setattr(draw, "MAX_LABELLED_EDGES", 3)
    dot = circuit_dot(c)
    assert "headlabel" not in dot and "edge labels omitted" in dot
    assert edge_attrs(dot)[("input", "a0.h1", "k")]["tooltip"] == "input -> a0.h1 (k)"  # still says which


def test_missing_dot_program_is_an_input_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` anywhere on it
    with pytest.raises(InputError) as e:
        draw_circuit(Circuit.from_edges(Graph.from_config(1, 1), ["input->logits"]), tmp_path / "c")
    assert "apt-get install graphviz" in str(e.value) and "\n" not in str(e.value)


# ---- pareto plots --------------------------------------------------------------------------------------------------


def _curve(method: str, kind: str, pts: list[tuple[int, float, list[float] | None]]) -> dict:
    return {"method": method, "kind": kind,
            "points": [{"edges": e, "fraction": e / 110, "f": f, "f_ci": ci, "kl": 0.5, "kl_ci": None,
                        "label": f"n={e}"} for e, f, ci in pts]}


def _pareto(curves: list[dict], frontier: list[dict] | None = None) -> dict:
    return {"format": "acdc-pareto/1", "task": "ioi", "model": "zoo:toy-ioi", "split": "test", "n_prompts": 200,
            "n_edges_total": 110, "metric": "logit(IO) - logit(S) at the last position", "ablation": "patch",
            "curves": curves, "frontier": frontier or [],
            "summary": [{"method": "eap-ig", "cpr": 0.81, "cmd": 0.22, "edges_for": {"0.8": 10}}]}


THREE = _pareto(
    [_curve("eap", "scores", [(3, 0.2, [0.1, 0.3]), (10, 0.6, [0.5, 0.7]), (30, 0.9, [0.85, 0.95])]),
     _curve("eap-ig", "scores", [(3, 0.41, [0.35, 0.47]), (12, 0.93, [0.9, 0.96]), (40, 0.99, [0.98, 1.0])]),
     _curve("acdc", "circuits", [(0, 0.0, None), (34, 0.85, [0.8, 0.9]), (60, 0.97, [0.95, 0.99])])],
    [{"method": "eap-ig", "edges": 3, "f": 0.41}, {"method": "eap-ig", "edges": 12, "f": 0.93},
     {"method": "eap-ig", "edges": 40, "f": 0.99}])


def test_pareto_files_legend_and_frontier(tmp_path):
    svg, png = plot_pareto(THREE, tmp_path / "pareto")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pareto.png", "pareto.svg"]
    texts = svg_texts(svg)  # text stays text in the SVG
    for method in ("eap", "eap-ig", "acdc"):
        assert sum(t == method or t.startswith(method + " (") for t in texts) == 1, method
    assert "eap-ig (CPR 0.81, CMD 0.22)" in texts
    assert texts.count("pareto frontier") == 1
    assert "ioi on zoo:toy-ioi: circuit size vs loss recovered (test split, n=200)" in texts
    assert {"0.8", "0.9", "0.99"} <= set(texts)
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_pareto_figure_contents():
    fig = pareto_figure(THREE, title="custom")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines["acdc"].get_xdata()) == [34, 60]  # the 0-edge circuit has no place on a log axis
    assert lines["eap"].get_color() == METHOD_COLORS["eap"]
    assert list(lines["pareto frontier"].get_xdata()) == [3, 12, 40]
    assert len(ax.collections) >= 3  # two bands and acdc's error bars
    lo, hi = ax.get_ylim()
    assert lo <= -0.05 and hi >= 1.05
    assert fig.get_suptitle() == "custom"


def test_pareto_single_method_without_ci_and_outliers(tmp_path):
    d = _pareto([_curve("mine", "scores", [(1, -7.0, None), (4, 0.5, None), (16, 2.5, None)])])
    d["frontier"], d["summary"] = [], []
    fig = pareto_figure(d)
    ax = fig.axes[0]
    assert not any(type(c).__name__ == "FillBetweenPolyCollection" or c.get_label() == "mine"
                   for c in ax.collections)  # no interval, no band
    y = list(next(ln for ln in ax.get_lines() if ln.get_label() == "mine").get_ydata())
    assert y == [-0.5, 0.5, 1.5]  # off-scale values sit at the clip edges ...
    assert any("off-scale" in t.get_text() for t in ax.get_legend().get_texts())  # ... and are marked
    lo, hi = ax.get_ylim()
    assert -0.6 < lo <= -0.5 and 1.5 <= hi < 1.6
    assert [p.name for p in plot_pareto(d, tmp_path / "p", formats=("png",))] == ["p.png"]


def test_pareto_bad_format_writes_nothing(tmp_path):
    with pytest.raises(InputError, match="nope"):
        plot_pareto(THREE, tmp_path / "p", formats=("svg", "nope"))
    assert list(tmp_path.iterdir()) == []


def test_method_colors_fixed_then_distinct():
    c = method_colors(["new-a", "eap-ig", "new-b", "eap", "new-a"])
    assert c["eap-ig"] == METHOD_COLORS["eap-ig"] and c["eap"] == METHOD_COLORS["eap"]
    assert len(set(c.values())) == 4 and not set(METHOD_COLORS.values()) & {c["new-a"], c["new-b"]}
