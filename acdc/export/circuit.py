"""Circuit drawings: a circuit as a layered graphviz graph, written as SVG and PNG.

Layout: ``input`` at the bottom, ``logits`` at the top (``rankdir=BT``). Each layer takes up to three ranks, bottom to
top: its shared key/value heads (grouped-query attention only), its attention heads, and its MLP (the MLP reads the
heads of its own layer, so it sits just above them). Only ranks with a node in the circuit are drawn; a column of grey
layer labels (``L3 attn``, ``L3 mlp``) names them and keeps them in order.

Encodings (the drawing's legend repeats them):

- node fill by type: ``input`` grey, attention heads blue, MLPs orange, ``logits`` pink, shared k/v heads white;
- edge colour, line style and arrowhead by the reader: q blue/solid/filled arrow, k vermillion/dashed/open arrow,
  v green/dotted/diamond, MLP dark grey/solid, logits purple/solid; q/k/v edges carry a small ``q``/``k``/``v`` label
  at their head and every edge has a tooltip such as ``a0.h0 -> a1.h1 (k)``;
- pen width: ``0.8 + 5.2 * |score| / max|score|`` over the circuit's edges when the circuit has scores, constant
  otherwise.

Grouped-query attention: a k/v reader ``a{L}.g{G}<k>`` belongs to a key/value head shared by the heads of group G, so
it is drawn as its own small node ``a{L}.g{G}``; k/v edges end there, and thin links go from it to each head of the
group that is in the circuit (the heads listed by :meth:`Circuit.nodes`).

Large circuits: graphviz's layout time grows steeply with the number of edges, above all with edges that span many
layers, so a circuit of more than ``max_edges`` edges (:data:`MAX_DRAWN_EDGES` by default) is drawn as a summary, and
a red line under the title says so and what was left out:

- ``"top-score"`` (the circuit has scores): its ``max_edges`` edges of largest |score|, drawn as above;
- ``"layers"`` (no scores): the attention heads of a layer merge into one node ``a{L}`` (its label lists the heads
  in the circuit), and all the edges between two nodes into one link, labelled with the roles it feeds (``qkv``),
  drawn in that role's style or sky blue for several. A link's weight is the share of the graph's edges between its
  two nodes that are in the circuit: pen width is affine in it (0 -> thinnest, all -> thickest), and the
  ``max_edges`` heaviest links are drawn. (A finer view, one node per head, hardly helps: with grouped-query
  attention almost every edge is a link of its own.)

:func:`drawing_plan` says in advance which drawing a circuit gets, without running graphviz.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Literal

import torch

from acdc.errors import AcdcError, InputError
from acdc.graph import Circuit, Graph
from acdc.io import atomic_write_bytes

#: Above this many edges the drawing drops edge labels, which dominate layout time and clutter the picture.
MAX_LABELLED_EDGES = 1500

#: Above this many edges dot's crossing minimisation and x-placement get iteration limits (about 6x faster at 1000
#: edges, slightly more crossings) and PNGs stay at graphviz's default resolution.
LARGE_CIRCUIT = 300

#: Default ``max_edges`` of :func:`draw_circuit`: circuits with more edges are drawn as a summary of this many arrows.
#: Measured with graphviz 2.43 on a 30-layer, 9-head, 3-kv-head graph (70,651 edges, the shape of SmolLM2-135M), as
#: CPU seconds of ``dot`` for SVG + PNG (wall time on an idle core is about the same; the machine was shared):
#:
#: - top-n circuits on random scores, drawn in full: 44 edges 0.6 s, 134 edges 2.1 s, 189 edges 4.5 s, 228 edges
#:   5.8 s, 293 edges 9.5 s (up to LARGE_CIRCUIT: no layout limits, PNG at 150 dpi, one layout per format); then
#:   with limits 406 edges 3.3 s, 720 edges 7.5 s, 1,296 edges 23 s; 23,132 edges took 8 minutes per format;
#: - summaries of a 23,154-edge circuit (max_edges arrows scattered over all 30 layers, one layout for both
#:   formats): top-score 100 -> 1.7 s, 200 -> 2.5 s, 300 -> 5.3 s, 500 -> 8.0 s; layers 100 -> 1.4 s, 200 -> 2.7 s,
#:   300 -> 3.0 s, 500 -> 5.4 s.
#:
#: 200 keeps both a full drawing and a summary within a few seconds. Above a few hundred edges rasterising the PNG
#: costs more than the layout: the drawings are thousands of pixels wide.
MAX_DRAWN_EDGES = 200

MIN_PENWIDTH, MAX_PENWIDTH, FLAT_PENWIDTH = 0.8, 6.0, 1.6

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies.
NODE_STYLE: dict[str, dict[str, str]] = {
    "input": {"shape": "box", "style": "rounded,filled", "fillcolor": "#e6e6e6", "color": "#7f7f7f"},
    "head": {"shape": "ellipse", "style": "filled", "fillcolor": "#cfe6f5", "color": "#0072b2"},
    "kv": {"shape": "ellipse", "style": "filled,dashed", "fillcolor": "#ffffff", "color": "#0072b2",
           "fontsize": "10"},
    "mlp": {"shape": "box", "style": "filled", "fillcolor": "#fbe0bd", "color": "#e69f00"},
    "logits": {"shape": "box", "style": "rounded,filled", "fillcolor": "#f3d3e6", "color": "#cc79a7"},
}
EDGE_STYLE: dict[str, dict[str, str]] = {
    "q": {"color": "#0072b2", "style": "solid", "arrowhead": "normal"},
    "k": {"color": "#d55e00", "style": "dashed", "arrowhead": "empty"},
    "v": {"color": "#009e73", "style": "dotted", "arrowhead": "diamond"},
    "mlp": {"color": "#4d4d4d", "style": "solid", "arrowhead": "normal"},
    "logits": {"color": "#7b3f8c", "style": "solid", "arrowhead": "normal"},
    "group": {"color": "#0072b2", "style": "solid", "arrowhead": "none"},
    "qkv": {"color": "#56b4e9", "style": "solid", "arrowhead": "normal"},  # a summary link into several of q/k/v
}
_NODE_LEGEND = [("input", "input (embeddings)"), ("head", "attention head"), ("mlp", "MLP"), ("logits", "logits")]
_EDGE_LEGEND = [("q", "into a query"), ("k", "into a key"), ("v", "into a value"), ("mlp", "into an MLP"),
                ("logits", "into the logits")]

_READER = re.compile(r"a(\d+)\.([hg])(\d+)<([qkv])>")
_ROLES = ("q", "k", "v", "mlp", "logits")

DrawingKind = Literal["full", "top-score", "layers"]


@dataclass(frozen=True)
class DrawingPlan:
    """What :func:`draw_circuit` draws for a circuit: every edge (``kind == "full"``) or a summary (see the module
    docstring). ``n_drawn`` counts arrows: edges, or for ``"layers"`` links between nodes."""

    kind: DrawingKind
    n_edges: int  # edges in the circuit
    n_drawn: int  # arrows drawn (the k/v-head-to-head links of grouped-query attention not counted)
    n_links: int  # "layers": links between the view's nodes in the circuit; otherwise n_edges

    @property
    def summary(self) -> bool:
        return self.kind != "full"

    @property
    def note(self) -> str | None:
        """The line the drawing carries under its title when it is a summary; None for a full drawing."""
        if self.kind == "top-score":
            return (f"summary: {self.n_drawn:,} of {self.n_edges:,} edges drawn (largest |score|); "
                    "the circuit's JSON file lists them all")
        if self.kind == "layers":
            shown = (f"all {self.n_links:,} drawn" if self.n_drawn == self.n_links else
                     f"the {self.n_drawn:,} heaviest of {self.n_links:,} drawn")
            return (f"summary: {self.n_edges:,} edges merged into links between layers' heads and MLPs, {shown}; "
                    "the circuit's JSON file lists every edge")
        return None


@dataclass(frozen=True)
class _Selection:
    plan: DrawingPlan
    mask: torch.Tensor | None = None  # "top-score": the edges drawn
    links: torch.Tensor | None = None  # "layers": rows (writer node, reader node, edges, possible edges, role bits)


def _q(s: str) -> str:
    """A DOT double-quoted string."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _attrs(d: dict[str, str]) -> str:
    return "[" + ", ".join(f"{k}={_q(v)}" for k, v in d.items()) + "]"


def _html(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _node_kind(name: str) -> str:
    if name in ("input", "logits"):
        return name
    if re.fullmatch(r"a\d+(\.h\d+)?", name):  # a head, or all heads of a layer ("layers" summary)
        return "head"
    if re.fullmatch(r"a\d+\.g\d+", name):
        return "kv"
    return "mlp"


def _rank_key(name: str) -> tuple[int, int]:
    """(layer, sub-rank) of a node: sub-rank 0 shared k/v heads, 1 heads, 2 MLP; input/logits at the ends."""
    if name == "input":
        return (-1, 0)
    if name == "logits":
        return (1 << 30, 0)
    if name[0] == "m":
        return (int(name[1:]), 2)
    layer, _, kind = name[1:].partition(".")
    if not kind:
        return (int(layer), 1)
    return (int(layer), 0 if kind[0] == "g" else 1)


def _reader_target(reader: str) -> tuple[str, str]:
    """(node, role) of a reader: ``a1.h2<k>`` -> (``a1.h2``, ``k``), ``m3`` -> (``m3``, ``mlp``)."""
    m = _READER.fullmatch(reader)
    if m:
        layer, kind, idx, role = m.groups()
        return f"a{layer}.{kind}{idx}", role
    return ("logits", "logits") if reader == "logits" else (reader, "mlp")


def _penwidths(circuit: Circuit, src: torch.Tensor, dst: torch.Tensor) -> tuple[list[float], float | None]:
    """Pen width per listed edge (affine in |score|, 0 -> MIN, max -> MAX) and the max |score| (None if unscored)."""
    if circuit.scores is None or len(src) == 0:
        return [FLAT_PENWIDTH] * len(src), None
    mag = circuit.scores[src, dst].abs().double()
    top = float(mag.max())
    if not top > 0 or not torch.isfinite(mag).all():
        return [FLAT_PENWIDTH] * len(src), None
    widths = MIN_PENWIDTH + (MAX_PENWIDTH - MIN_PENWIDTH) * mag / top
    return [round(float(w), 3) for w in widths], top


def _legend(title: str, note: str | None, width: str, edge_legend: Sequence[tuple[str, str]]) -> str:
    """The graph label: title, then a table explaining node fills and edge styles."""
    cells = []
    for kind, text in _NODE_LEGEND:
        st = NODE_STYLE[kind]
        cells.append(f'<td bgcolor="{st["fillcolor"]}" color="{st["color"]}" border="1">&nbsp;&nbsp;&nbsp;</td>'
                     f'<td align="left">{_html(text)}&nbsp;&nbsp;</td>')
    nodes_row = "".join(cells)
    cells = []
    for kind, text in edge_legend:
        st = EDGE_STYLE[kind]
        # a cell with only its bottom border drawn is a short line in the edge's colour and style
        line = (f'<table border="0" cellspacing="0" cellpadding="0"><tr><td sides="B" border="2" '
                f'color="{st["color"]}" style="{st["style"]}" width="30" height="8"></td></tr>'
                '<tr><td height="8"></td></tr></table>')
        cells.append(f"<td>{line}</td>"
                     f'<td align="left"><font color="{st["color"]}">{_html(text)}</font>&nbsp;&nbsp;</td>')
    edges_row = "".join(cells)
    span = 2 * len(edge_legend)
    rows = [f'<tr><td colspan="{span}"><font point-size="16"><b>{_html(title)}</b></font></td></tr>']
    if note:
        rows.append(f'<tr><td colspan="{span}"><font color="#b00000">{_html(note)}</font></td></tr>')
    rows += [
        f'<tr>{nodes_row}<td colspan="{span - 2 * len(_NODE_LEGEND)}"></td></tr>',
        f"<tr>{edges_row}</tr>",
        f'<tr><td colspan="{span}" align="left">{width}; edges into q/k/v are labelled at the arrow</td></tr>',
    ]
    return '<<table border="0" cellborder="0" cellspacing="3" cellpadding="1">' + "".join(rows) + "</table>>"


def _select(circuit: Circuit, max_edges: int | None) -> _Selection:
    """The drawing plan, and for a summary what it draws (tensor operations over the circuit's edges)."""
    if max_edges is not None and max_edges < 1:
        raise InputError(f"max_edges must be at least 1, or None to draw every edge; got {max_edges}")
    n = circuit.n_edges
    if max_edges is None or n <= max_edges:
        return _Selection(DrawingPlan("full", n, n, n))
    g = circuit.graph
    src, dst = circuit.mask.nonzero(as_tuple=True)
    if circuit.scores is not None:
        mag = circuit.scores[src, dst].abs()
        if bool(((mag > 0) & torch.isfinite(mag)).any()):  # all zero or NaN would make the choice arbitrary
            keep = torch.argsort(torch.nan_to_num(mag, nan=-1.0), descending=True, stable=True)[:max_edges]
            mask = torch.zeros_like(circuit.mask)
            mask[src[keep], dst[keep]] = True
            return _Selection(DrawingPlan("top-score", n, max_edges, n), mask=mask)

    # layers: one node per layer's heads (and k/v heads), per MLP; one link per pair of nodes, with its roles' bits
    # and how many edges it carries out of how many the graph has. Links are ranked by that share, not by the count,
    # which would always favour head-to-head links (up to n_heads * (n_heads + 2 * n_kv_heads) edges) over MLPs'.
    names, wid, rid, role = _layer_nodes(g)
    pair = wid[src] * len(names) + rid[dst]
    keys, counts = torch.unique(pair, return_counts=True)
    all_src, all_dst = g.valid.nonzero(as_tuple=True)
    possible = torch.bincount(wid[all_src] * len(names) + rid[all_dst], minlength=len(names) ** 2)[keys]
    combos = torch.unique(pair * 8 + role[dst])  # distinct (link, role)
    bits = torch.zeros_like(keys).index_add_(0, torch.searchsorted(keys, combos // 8), 1 << (combos % 8))
    share = counts.double() / possible
    by_count = torch.argsort(counts, descending=True, stable=True)  # ties in share: more edges first
    order = by_count[torch.argsort(share[by_count], descending=True, stable=True)]
    chosen = order[:max_edges].sort().values  # back to graph order
    links = torch.stack([keys[chosen] // len(names), keys[chosen] % len(names), counts[chosen], possible[chosen],
                         bits[chosen]], 1)
    return _Selection(DrawingPlan("layers", n, len(chosen), len(keys)), links=links)


def _layer_nodes(g: Graph) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The "layers" view's nodes (``input``, ``a{L}``, ``m{L}``, ``logits``); per writer and per reader the index of
    its node; per reader the index of its role in ``_ROLES``."""
    index: dict[str, int] = {}
    wid = [index.setdefault(w.split(".")[0], len(index)) for w in g.src_names]
    rid, role = [], []
    for reader in g.dst_names:
        node, r = _reader_target(reader)
        rid.append(index.setdefault(node.split(".")[0], len(index)))
        role.append(_ROLES.index(r))
    return list(index), torch.tensor(wid), torch.tensor(rid), torch.tensor(role)


def drawing_plan(circuit: Circuit, max_edges: int | None = MAX_DRAWN_EDGES) -> DrawingPlan:
    """What :func:`draw_circuit` with this ``max_edges`` will draw: ``plan.summary`` is True when the circuit has
    more than ``max_edges`` edges and the drawing is a summary (``plan.kind``, ``plan.note``: see the module
    docstring). Cheap: no graphviz. Call it first to tell the user a summary is coming, or to note it in a report."""
    return _select(circuit, max_edges).plan


def _edge_lines(circuit: Circuit) -> tuple[set[str], list[str], float | None, bool]:
    """Nodes and DOT edge lines of every edge of the circuit; the max |score|; whether edges carry labels."""
    g = circuit.graph
    src_idx, dst_idx = circuit.mask.nonzero(as_tuple=True)
    widths, max_score = _penwidths(circuit, src_idx, dst_idx)
    labelled = len(src_idx) <= MAX_LABELLED_EDGES

    nodes = set(circuit.nodes()) | {"input", "logits"}
    edges: list[str] = []
    group_links: set[tuple[str, str]] = set()
    for s, t, w in zip(src_idx.tolist(), dst_idx.tolist(), widths, strict=True):
        src = g.src_names[s]
        target, role = _reader_target(g.dst_names[t])
        if role in ("k", "v") and ".g" in target:  # a shared key/value head: link it to the heads of its group drawn
            nodes.add(target)
            for o in g.feeds[t].nonzero().flatten().tolist():
                if g.src_names[o] in nodes:
                    group_links.add((target, g.src_names[o]))
        attrs = dict(EDGE_STYLE[role])
        tip = f"{src} -> {target}" + (f" ({role})" if role in ("q", "k", "v") else "")
        if circuit.scores is not None:
            tip += f", score {float(circuit.scores[s, t]):.4g}"
        # graphviz grows arrowheads with the pen width; shrink them on thick edges so they don't swamp the nodes
        attrs.update(penwidth=str(w), arrowsize=f"{0.7 * min(1.0, 2.5 / w):.2f}", tooltip=tip)
        if labelled and role in ("q", "k", "v"):
            attrs.update(headlabel=role, fontcolor=attrs["color"])
        edges.append(f"  {_q(src)} -> {_q(target)} {_attrs(attrs)};")
    for grp, head in sorted(group_links):
        attrs = dict(EDGE_STYLE["group"], penwidth="0.8", tooltip=f"{grp} (shared k/v) -> {head}")
        edges.append(f"  {_q(grp)} -> {_q(head)} {_attrs(attrs)};")
    return nodes, edges, max_score, labelled


def _layer_lines(circuit: Circuit, links: torch.Tensor) -> tuple[set[str], list[str], dict[str, str]]:
    """"layers" summary: its nodes, the DOT lines of the chosen links, and a label per attention node (the heads in
    the circuit)."""
    g = circuit.graph
    names, _, _, _ = _layer_nodes(g)
    heads: dict[str, list[int]] = {}
    for layer, head in circuit.heads():
        heads.setdefault(f"a{layer}", []).append(head)
    nodes = {n.split(".")[0] for n in circuit.nodes()} | {"input", "logits"}
    labels = {a: f"{a}: {len(hs)} of {g.n_heads} heads\n{_spans(hs)}" for a, hs in heads.items()}

    labelled = len(links) <= MAX_LABELLED_EDGES
    edges: list[str] = []
    for w, r, count, possible, bits in links.tolist():
        src, dst = names[w], names[r]
        roles = [x for i, x in enumerate(_ROLES) if bits >> i & 1]
        attrs = dict(EDGE_STYLE[roles[0] if len(roles) == 1 else "qkv"])
        width = round(MIN_PENWIDTH + (MAX_PENWIDTH - MIN_PENWIDTH) * count / possible, 3)
        tip = f"{src} -> {dst}" + (f" ({', '.join(roles)})" if roles[0] in ("q", "k", "v") else "")
        attrs.update(penwidth=f"{width:.3g}", arrowsize=f"{0.7 * min(1.0, 2.5 / width):.2f}",
                     tooltip=f"{tip}: {count:,} of {possible:,} edges")
        if labelled and roles[0] in ("q", "k", "v"):
            attrs.update(headlabel="".join(roles), fontcolor=attrs["color"])
        edges.append(f"  {_q(src)} -> {_q(dst)} {_attrs(attrs)};")
    return nodes, edges, labels


def _spans(ints: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``h0-2 h5 h7-8``."""
    out: list[tuple[int, int]] = []
    for i in sorted(ints):
        if out and out[-1][1] == i - 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return " ".join(f"h{a}" if a == b else f"h{a}-{b}" for a, b in out)


def circuit_dot(circuit: Circuit, title: str | None = None, *, max_edges: int | None = MAX_DRAWN_EDGES) -> str:
    """The DOT source of the circuit's drawing (see the module docstring for the encodings); a summary when the
    circuit has more than ``max_edges`` edges (None: never)."""
    return _dot(circuit, title, _select(circuit, max_edges))


def _dot(circuit: Circuit, title: str | None, sel: _Selection) -> str:
    plan = sel.plan
    labels: dict[str, str] = {}
    edge_legend: Sequence[tuple[str, str]] = _EDGE_LEGEND
    if sel.links is not None:
        nodes, edges, labels = _layer_lines(circuit, sel.links)
        labelled = len(edges) <= MAX_LABELLED_EDGES
        width = "pen width &#8733; share of the graph's edges between the two nodes that the circuit has"
        edge_legend = [*_EDGE_LEGEND, ("qkv", "into several of q/k/v")]
    else:
        shown = circuit if sel.mask is None else Circuit(circuit.graph, sel.mask, circuit.scores, circuit.meta)
        nodes, edges, max_score, labelled = _edge_lines(shown)
        width = ("pen width &#8733; |score| (thickest = " + f"{max_score:.3g})" if max_score is not None
                 else "all edges drawn at one width (no scores)")

    default = f"circuit: {circuit.n_edges} edges, {len(circuit.nodes())} nodes"
    if circuit.meta.get("method"):
        default = f"{circuit.meta['method']} {default}"
    notes = [plan.note] if plan.note else []
    if not labelled:
        notes.append(f"{plan.n_drawn} edges: edge labels omitted (more than {MAX_LABELLED_EDGES})")

    out = [
        "digraph circuit {",
        '  graph [rankdir="BT", ranksep="0.45", nodesep="0.25", newrank="true", labelloc="t", '
        'fontname="Helvetica", fontsize="12", tooltip="circuit"];',
        '  node [fontname="Helvetica", fontsize="12", margin="0.08,0.04", height="0.35"];',
        '  edge [fontname="Helvetica", fontsize="10", arrowsize="0.6", labeldistance="1.3", labelangle="30"];',
        f"  label={_legend(title or default, '; '.join(notes) or None, width, edge_legend)};",
    ]
    if _compact(circuit, plan):
        out.append('  graph [mclimit="0.1", nslimit="0.2"];')
    for n in sorted(nodes, key=_rank_key):
        kind = _node_kind(n)
        attrs = dict(NODE_STYLE[kind], tooltip=f"{n} ({'shared key/value head' if kind == 'kv' else kind})")
        if kind == "kv":
            attrs["label"] = f"{n}\nk/v"
        if n in labels:  # a layer's attention heads, merged
            attrs.update(label=labels[n], tooltip=labels[n].replace("\n", ": "))
        out.append(f"  {_q(n)} {_attrs(attrs)};")

    # one rank per (layer, sub-rank) present, kept in order by an invisible chain through the grey rank labels
    ranks: dict[tuple[int, int], list[str]] = {}
    for n in nodes:
        ranks.setdefault(_rank_key(n), []).append(n)
    names = {0: "k/v", 1: "attn", 2: "mlp"}
    chain = []
    for key in sorted(ranks):
        members = sorted(ranks[key], key=lambda n: int(re.sub(r"\D", "", n.split(".")[-1]) or 0))
        if key[0] in (-1, 1 << 30):
            label_node = members[0]
        else:
            label_node = f"rank:{key[0]}:{key[1]}"
            out.append(f"  {_q(label_node)} [shape=plaintext, fontcolor=\"#808080\", fontsize=\"10\", "
                       f"label={_q(f'L{key[0]} {names[key[1]]}')}];")
            members = [label_node] + members
        chain.append(label_node)
        out.append("  { rank=same; " + " ".join(_q(m) for m in members) + " }")
    if circuit.n_edges == 0:
        out.append('  "empty" [shape=note, label="empty circuit", fontcolor="#b00000", color="#b00000"];')
        chain.insert(1, "empty")
    for a, b in pairwise(chain):
        ends = a in ("input", "empty") or b == "logits"  # weight 0: don't pull input/logits over to the labels
        out.append(f"  {_q(a)} -> {_q(b)} [style=\"invis\", weight=\"{0 if ends else 10}\"];")
    out += edges
    out.append("}")
    return "\n".join(out) + "\n"


def _compact(circuit: Circuit, plan: DrawingPlan) -> bool:
    """Large drawings and every summary get dot's iteration limits (about 6x faster at 1000 edges, slightly more
    crossings; a summary's edges are scattered over the whole model, the slowest kind to lay out) and PNGs at
    graphviz's default resolution."""
    return plan.summary or circuit.n_edges > LARGE_CIRCUIT


def _render(dots: dict[str, str]) -> dict[str, bytes]:
    """Render DOT source per format with the graphviz ``dot`` program: one process, so one layout, for all the
    formats that share a DOT text."""
    by_text: dict[str, list[str]] = {}
    for fmt, dot in dots.items():
        by_text.setdefault(dot, []).append(fmt)
    out: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="acdc-draw-") as tmp:
        for dot, fmts in by_text.items():
            args = ["dot"]
            for fmt in fmts:
                args += [f"-T{fmt}", "-o", str(Path(tmp) / f"out.{fmt}")]
            try:
                proc = subprocess.run(args, input=dot.encode("utf-8"), capture_output=True, check=False)
            except FileNotFoundError as e:
                raise InputError("drawing circuits needs the graphviz 'dot' program: install graphviz "
                                 "(apt-get install graphviz, brew install graphviz or conda install graphviz)") from e
            if proc.returncode != 0:
                raise AcdcError(f"graphviz could not render the circuit as {', '.join(fmts)}: {proc.stderr!r}")
            for fmt in fmts:
                out[fmt] = (Path(tmp) / f"out.{fmt}").read_bytes()
    return out


def draw_circuit(circuit: Circuit, stem: str | Path, *, title: str | None = None,
                 formats: Sequence[str] = ("svg", "png"), max_edges: int | None = MAX_DRAWN_EDGES) -> list[Path]:
    """Draw the circuit to ``stem.<fmt>`` for each format (atomically); returns the paths written.

    A circuit of more than ``max_edges`` edges is drawn as a summary (None: always every edge, however long graphviz
    takes); ``drawing_plan(circuit, max_edges)`` says beforehand whether it will be, and which."""
    import graphviz

    bad = [f for f in formats if f not in graphviz.FORMATS]
    if bad:
        raise InputError(f"graphviz cannot write format(s) {', '.join(bad)}; try svg, png or pdf")
    sel = _select(circuit, max_edges)
    dot = _dot(circuit, title, sel)
    # 150 dpi makes a small drawing's raster sharp enough for slides and papers; vector formats ignore it
    sharp = dot.replace("\n", '\n  graph [dpi="150"];\n', 1)
    data = _render({fmt: sharp if fmt == "png" and not _compact(circuit, sel.plan) else dot for fmt in formats})
    stem = Path(stem)
    return [atomic_write_bytes(stem.with_name(f"{stem.name}.{fmt}"), data[fmt]) for fmt in formats]
