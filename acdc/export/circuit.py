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
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import torch

from acdc.errors import AcdcError, InputError
from acdc.graph import Circuit
from acdc.io import atomic_write_bytes

#: Above this many edges the drawing drops edge labels, which dominate layout time and clutter the picture.
MAX_LABELLED_EDGES = 1500

#: Above this many edges dot's crossing minimisation and x-placement get iteration limits (about 6x faster at 1000
#: edges, slightly more crossings) and PNGs stay at graphviz's default resolution.
LARGE_CIRCUIT = 300

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
}
_NODE_LEGEND = [("input", "input (embeddings)"), ("head", "attention head"), ("mlp", "MLP"), ("logits", "logits")]
_EDGE_LEGEND = [("q", "into a query"), ("k", "into a key"), ("v", "into a value"), ("mlp", "into an MLP"),
                ("logits", "into the logits")]

_READER = re.compile(r"a(\d+)\.([hg])(\d+)<([qkv])>")


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
    if re.fullmatch(r"a\d+\.h\d+", name):
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
    layer, kind = name[1:].split(".")
    return (int(layer), 0 if kind[0] == "g" else 1)


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


def _legend(max_score: float | None, title: str, note: str | None) -> str:
    """The graph label: title, then a table explaining node fills and edge styles."""
    cells = []
    for kind, text in _NODE_LEGEND:
        st = NODE_STYLE[kind]
        cells.append(f'<td bgcolor="{st["fillcolor"]}" color="{st["color"]}" border="1">&nbsp;&nbsp;&nbsp;</td>'
                     f'<td align="left">{_html(text)}&nbsp;&nbsp;</td>')
    nodes_row = "".join(cells)
    cells = []
    for kind, text in _EDGE_LEGEND:
        st = EDGE_STYLE[kind]
        # a cell with only its bottom border drawn is a short line in the edge's colour and style
        line = (f'<table border="0" cellspacing="0" cellpadding="0"><tr><td sides="B" border="2" '
                f'color="{st["color"]}" style="{st["style"]}" width="30" height="8"></td></tr>'
                '<tr><td height="8"></td></tr></table>')
        cells.append(f"<td>{line}</td>"
                     f'<td align="left"><font color="{st["color"]}">{_html(text)}</font>&nbsp;&nbsp;</td>')
    edges_row = "".join(cells)
    width = ("pen width &#8733; |score| (thickest = " + f"{max_score:.3g})" if max_score is not None
             else "all edges drawn at one width (no scores)")
    span = 2 * len(_EDGE_LEGEND)
    rows = [f'<tr><td colspan="{span}"><font point-size="16"><b>{_html(title)}</b></font></td></tr>']
    if note:
        rows.append(f'<tr><td colspan="{span}"><font color="#b00000">{_html(note)}</font></td></tr>')
    rows += [
        f'<tr>{nodes_row}<td colspan="{span - 2 * len(_NODE_LEGEND)}"></td></tr>',
        f"<tr>{edges_row}</tr>",
        f'<tr><td colspan="{span}" align="left">{width}; edges into q/k/v are labelled at the arrow</td></tr>',
    ]
    return '<<table border="0" cellborder="0" cellspacing="3" cellpadding="1">' + "".join(rows) + "</table>>"


def circuit_dot(circuit: Circuit, title: str | None = None) -> str:
    """The DOT source of the circuit's drawing (see the module docstring for the encodings)."""
    g = circuit.graph
    src_idx, dst_idx = circuit.mask.nonzero(as_tuple=True)
    widths, max_score = _penwidths(circuit, src_idx, dst_idx)
    labelled = len(src_idx) <= MAX_LABELLED_EDGES

    nodes = set(circuit.nodes()) | {"input", "logits"}
    edges: list[str] = []
    group_links: set[tuple[str, str]] = set()
    for s, t, w in zip(src_idx.tolist(), dst_idx.tolist(), widths, strict=True):
        src, reader = g.src_names[s], g.dst_names[t]
        m = _READER.fullmatch(reader)
        if m:
            layer, kind, idx, role = m.groups()
            target = f"a{layer}.{kind}{idx}"
            if kind == "g":  # a shared key/value head: link it to the heads of its group that are drawn
                nodes.add(target)
                for o in g.feeds[t].nonzero().flatten().tolist():
                    if g.src_names[o] in nodes:
                        group_links.add((target, g.src_names[o]))
        else:
            role, target = ("logits", "logits") if reader == "logits" else ("mlp", reader)
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

    default = f"circuit: {circuit.n_edges} edges, {len(circuit.nodes())} nodes"
    if circuit.meta.get("method"):
        default = f"{circuit.meta['method']} {default}"
    note = None if labelled else f"{circuit.n_edges} edges: edge labels omitted (more than {MAX_LABELLED_EDGES})"

    out = [
        "digraph circuit {",
        '  graph [rankdir="BT", ranksep="0.45", nodesep="0.25", newrank="true", labelloc="t", '
        'fontname="Helvetica", fontsize="12", tooltip="circuit"];',
        '  node [fontname="Helvetica", fontsize="12", margin="0.08,0.04", height="0.35"];',
        '  edge [fontname="Helvetica", fontsize="10", arrowsize="0.6", labeldistance="1.3", labelangle="30"];',
        f"  label={_legend(max_score, title or default, note)};",
    ]
    if circuit.n_edges > LARGE_CIRCUIT:
        out.append('  graph [mclimit="0.1", nslimit="0.2"];')
    for n in sorted(nodes, key=_rank_key):
        kind = _node_kind(n)
        attrs = dict(NODE_STYLE[kind], tooltip=f"{n} ({'shared key/value head' if kind == 'kv' else kind})")
        if kind == "kv":
            attrs["label"] = f"{n}\nk/v"
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


def _render(dot: str, fmt: str) -> bytes:
    """Lay out and render DOT source with the graphviz ``dot`` program."""
    import graphviz

    try:
        return graphviz.Source(dot).pipe(format=fmt)
    except graphviz.ExecutableNotFound as e:
        raise InputError("drawing circuits needs the graphviz 'dot' program: install graphviz "
                         "(apt-get install graphviz, brew install graphviz or conda install graphviz)") from e
    except graphviz.CalledProcessError as e:
        raise AcdcError(f"graphviz could not render the circuit as {fmt}: {e.stderr!r}") from e


def draw_circuit(circuit: Circuit, stem: str | Path, *, title: str | None = None,
                 formats: Sequence[str] = ("svg", "png")) -> list[Path]:
    """Draw the circuit to ``stem.<fmt>`` for each format (atomically); returns the paths written."""
    import graphviz

    bad = [f for f in formats if f not in graphviz.FORMATS]
    if bad:
        raise InputError(f"graphviz cannot write format(s) {', '.join(bad)}; try svg, png or pdf")
    dot = circuit_dot(circuit, title)
    stem = Path(stem)
    out = []
    for fmt in formats:
        # 150 dpi makes the raster sharp enough for slides and papers; vector formats ignore it
        sharp = fmt == "png" and circuit.n_edges <= LARGE_CIRCUIT
        data = _render(dot.replace("\n", '\n  graph [dpi="150"];\n', 1) if sharp else dot, fmt)
        out.append(atomic_write_bytes(stem.with_name(f"{stem.name}.{fmt}"), data))
    return out
