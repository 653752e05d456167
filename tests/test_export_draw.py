"""Circuit drawings (graphviz) and pareto plots (matplotlib): content, layout, encodings and the files written.

Layout facts are read back from graphviz itself (``json`` output: the nodes it placed, their coordinates, and each
edge's colour and style as graphviz parsed them), so the tests check the drawing rather than our own string."""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import graphviz
import pytest
import torch

from acdc.errors import InputError
from acdc.export import circuit as draw
from acdc.export.circuit import EDGE_STYLE, MAX_DRAWN_EDGES, circuit_dot, draw_circuit, drawing_plan
from acdc.export.plot import METHOD_COLORS, method_colors, pareto_figure, plot_pareto
from acdc.graph import Circuit, Graph
from acdc.selection import top_n

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


# ---- large circuits: summaries -------------------------------------------------------------------------------------

# DOT text of circuits drawn before summaries existed (acdc/export/circuit.py at 82686d4): the SMALL circuit's, and
# for a 189-edge circuit on the 30-layer graph (whose node order within a rank follows set order, so the lines are
# compared sorted) with and without scores.
SMALL_DOT_SHA256 = "48e7a4417f43477dbbb8c5a4d619c9f6202819daed6edcda92eebd69c32dcbd4"
MID_SORTED_SHA256 = {True: "39157c97033140cab00e20337ef3494977280e88f687892feac1316151f1eb7e",
                     False: "6f353216732ab570f2e05b84ad979ad291112f15df47a4c0470731d2c804e169"}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def random_circuit(n: int, seed: int, scored: bool = True) -> Circuit:
    """top-n on random scores over SmolLM2-135M's graph shape (30 layers, 9 heads, 3 k/v heads: 70,651 edges)."""
    g = Graph.from_config(30, 9, n_kv_heads=3)
    c = top_n(g, torch.rand(g.n_src, g.n_dst, generator=torch.Generator().manual_seed(seed)), n)
    return c if scored else Circuit(g, c.mask)


def arrows(dot: str) -> dict[tuple[str, str, str], dict[str, str]]:
    """The drawn arrows, without the thin links from a shared k/v head to its heads."""
    return {k: a for k, a in edge_attrs(dot).items() if "(shared k/v)" not in a["tooltip"]}


@pytest.mark.parametrize("scored", [True, False])
def test_small_circuits_drawn_exactly_as_before(scored):
    g = Graph.from_config(2, 4)
    c = Circuit.from_edges(g, SMALL)
    if scored:
        c.scores = torch.rand(g.n_src, g.n_dst)
    else:
        assert sha256(circuit_dot(c)) == SMALL_DOT_SHA256
    plan = drawing_plan(c)
    assert (plan.kind, plan.summary, plan.note, plan.n_drawn) == ("full", False, None, 3)
    assert circuit_dot(c) == circuit_dot(c, max_edges=None) == circuit_dot(c, max_edges=3)

    c = random_circuit(1350, seed=7, scored=scored)
    assert c.n_edges == 189 <= MAX_DRAWN_EDGES and not drawing_plan(c).summary
    dot = circuit_dot(c)
    assert sha256("\n".join(sorted(dot.splitlines()))) == MID_SORTED_SHA256[scored]
    assert len(arrows(dot)) == 189 and len(edge_attrs(dot)) == 288  # and 99 k/v-head-to-head links
    assert "summary" not in dot and "mclimit" not in dot


def test_large_scored_circuit_drawn_as_its_top_edges(tmp_path):
    c = random_circuit(6000, seed=0)
    assert c.n_edges == 4824 and c.scores is not None
    plan = drawing_plan(c)
    assert (plan.kind, plan.summary, plan.n_edges, plan.n_drawn) == ("top-score", True, 4824, MAX_DRAWN_EDGES)
    dot = circuit_dot(c)
    drawn = arrows(dot)
    assert len(drawn) == MAX_DRAWN_EDGES
    # exactly the largest |score|s (tooltips give 4 significant digits)
    mag = c.scores[c.mask].abs().sort(descending=True).values
    shown = sorted(abs(float(re.search(r"score (\S+)", a["tooltip"]).group(1))) for a in drawn.values())
    assert shown[0] >= float(mag[MAX_DRAWN_EDGES - 1]) * (1 - 1e-3)
    assert shown[-1] == pytest.approx(float(mag[0]), rel=1e-3)
    assert plan.note == (f"summary: {MAX_DRAWN_EDGES} of 4,824 edges drawn (largest |score|); "
                         "the circuit's JSON file lists them all")
    assert plan.note in dot and 'mclimit="0.1"' in dot
    assert dot == circuit_dot(c, max_edges=MAX_DRAWN_EDGES)

    svg, png = draw_circuit(c, tmp_path / "big", title="big one", max_edges=40)
    texts = svg_texts(svg)
    assert "big one" in texts and "summary: 40 of 4,824 edges drawn (largest |score|); " \
        "the circuit's JSON file lists them all" in texts
    assert len(re.findall(r'<g id="edge\d+" class="edge">', svg.read_text())) >= 40
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_large_unscored_circuit_drawn_as_links_between_layers(tmp_path):
    c = random_circuit(6000, seed=0, scored=False)
    plan = drawing_plan(c)
    assert (plan.kind, plan.n_edges, plan.n_drawn) == ("layers", 4824, MAX_DRAWN_EDGES)
    assert plan.n_links > MAX_DRAWN_EDGES
    assert plan.note is not None and plan.note.startswith("summary: 4,824 edges merged into links between layers")

    def links(dot: str) -> dict[tuple[str, str], tuple[int, int]]:
        out = {}
        for (t, h, _), a in arrows(dot).items():
            assert re.fullmatch(r"input|a\d+|m\d+", t) and re.fullmatch(r"a\d+|m\d+|logits", h)
            have, possible = re.search(r": ([\d,]+) of ([\d,]+) edges$", a["tooltip"]).groups()
            out[t, h] = (int(have.replace(",", "")), int(possible.replace(",", "")))
        return out

    every = links(circuit_dot(c, max_edges=c.n_edges - 1))  # below n_edges: still a summary, and every link fits
    assert len(every) == plan.n_links
    assert sum(have for have, _ in every.values()) == c.n_edges  # each edge in exactly one link
    assert all(0 < have <= possible for have, possible in every.values())
    for (t, h), (_, possible) in every.items():  # writers (9 heads or 1) times readers (9 q + 3 k + 3 v, or 1)
        assert possible == (9 if t[0] == "a" else 1) * (15 if h[0] == "a" else 1)

    dot = circuit_dot(c)
    top = links(dot)
    assert len(top) == MAX_DRAWN_EDGES and plan.note in dot
    share = {k: have / possible for k, (have, possible) in every.items()}
    assert min(share[k] for k in top) >= max(share[k] for k in every if k not in top)  # the heaviest links
    heads = sorted(h for layer, h in c.heads() if layer == 7)
    label = re.search(r'^  "a7" \[.*label="([^"]*)"', dot, re.M).group(1)
    assert label.startswith(f"a7: {len(heads)} of 9 heads")

    svg, _ = draw_circuit(c, tmp_path / "big", max_edges=30)
    assert any(t.startswith("summary: 4,824 edges merged into links") for t in svg_texts(svg))


def test_max_edges_none_draws_every_edge(tmp_path):
    c = random_circuit(6000, seed=0)
    plan = drawing_plan(c, max_edges=None)
    assert (plan.kind, plan.n_drawn) == ("full", 4824)
    dot = circuit_dot(c, max_edges=None)
    assert len(arrows(dot)) == 4824 and "summary" not in dot

    g = Graph.from_config(2, 4)
    small = Circuit(g, Circuit.from_edges(g, SMALL).mask, scores=torch.rand(g.n_src, g.n_dst))
    texts = svg_texts(draw_circuit(small, tmp_path / "two", formats=("svg",), max_edges=2)[0])
    assert "summary: 2 of 3 edges drawn (largest |score|); the circuit's JSON file lists them all" in texts
    texts = svg_texts(draw_circuit(small, tmp_path / "all", formats=("svg",), max_edges=None)[0])
    assert not any("summary" in t for t in texts) and {"a0.h0", "a1.h1"} <= set(texts)


def test_one_dot_process_per_distinct_dot_text(monkeypatch, tmp_path):
    runs = []
    real = draw.subprocess.run

    def spy(args, **kwargs):
        runs.append([a for a in args if a.startswith("-T")])
        return real(args, **kwargs)

    monkeypatch.setattr(draw.subprocess, "run", spy)
    g = Graph.from_config(2, 4)
    c = Circuit(g, Circuit.from_edges(g, SMALL).mask, scores=torch.rand(g.n_src, g.n_dst))
    draw_circuit(c, tmp_path / "full")  # the PNG of a small drawing is sharper: its own DOT text, its own layout
    assert runs == [["-Tsvg"], ["-Tpng"]]
    runs.clear()
    svg, png = draw_circuit(c, tmp_path / "summary", max_edges=2)  # one DOT text: one layout for both
    assert runs == [["-Tsvg", "-Tpng"]]
    assert "summary: 2 of 3 edges drawn (largest |score|); the circuit's JSON file lists them all" in svg_texts(svg)
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.png", "full.svg", "summary.png", "summary.svg"]


def test_max_edges_must_be_positive(tmp_path):
    c = Circuit.from_edges(Graph.from_config(1, 1), ["input->a0.h0<q>"])
    with pytest.raises(InputError, match="max_edges"):
        draw_circuit(c, tmp_path / "x", max_edges=0)
    assert list(tmp_path.iterdir()) == []


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
