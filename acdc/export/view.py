"""The data behind the interactive circuit view of ``report.html`` and ``acdc explore``: what the page's script
draws, built from a run folder (``summary.json`` and ``circuits/<method>.json``).

The page must open fast for real-size graphs (70,651 possible edges, circuits of tens of thousands), so the data is
compact and bounded:

- an *edge table*: the edges any embedded circuit uses, as two index arrays into the writer and reader names, sorted
  by (writer, reader); every other array indexes this table;
- per ranking method (a method whose circuit file carries every edge's score): its greedy order (the order in which
  the sweep's selector adds edges; every curve point's circuit is a prefix of it with the dangling edges removed)
  up to the larger of :data:`ORDER_EDGES` and its chosen circuit, and for each curve point within that prefix the
  prefix length and the positions the pruning dropped. The circuits are recomputed here with the sweep's own
  functions and checked against the sizes the sweep recorded; a point that does not match is left out, with a note;
- per circuit method (ACDC, the hybrid): its chosen circuit only, the one circuit of its curve the run saved;
- scores of every table edge under every method that has scores, to four significant digits;
- per table edge, a bit per method saying whether that method's chosen circuit contains it (exact even where a
  chosen circuit is too large to embed);
- node positions: layers as rows from ``input`` (bottom) to ``logits`` (top), a layer's heads side by side with its
  MLP beside them, up and to the right; with grouped-query attention each shared key/value head sits under its
  group. The positions follow from the architecture, so no layout engine runs.

Circuits of more than :data:`MAX_CIRCUIT_EDGES` edges are not embedded (their f and interval still are); ``omitted``
lists in words everything left out; ``overlaps`` holds the pairwise overlaps of the chosen circuits (computed on the
whole circuits, embedded or not).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from acdc.errors import AcdcError
from acdc.graph import Circuit, Graph, prune_dangling
from acdc.io import file_inside

VIEW_FORMAT = "acdc-view/1"

#: Each ranking's first edges (in its greedy order) embedded beyond its chosen circuit: the slider can show every
#: curve point up to this size.
ORDER_EDGES = 3000

#: Circuits with more edges than this are not embedded (a drawing of them would be a wall of lines anyway).
MAX_CIRCUIT_EDGES = 30000

# Layout, in SVG user units.
COL, ROW, KV_DROP, MLP_RISE, MLP_GAP = 64.0, 120.0, 44.0, 52.0, 30.0


@dataclass
class _Method:
    name: str
    kind: str  # "scores" or "circuits" (the curve's kind)
    points: list[dict[str, Any]]
    chosen: Circuit | None = None
    chosen_point: int | None = None
    scores: torch.Tensor | None = None
    sense: str = "effect"


def view_data(summary: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """The view's JSON-able data for a run folder, or None when the run names no graph (nothing to draw)."""
    graph = _graph(summary, folder)
    if graph is None:
        return None
    omitted: list[str] = []
    methods = _methods(summary, folder, graph, omitted)
    table: dict[tuple[int, int], None] = {}
    plans: list[dict[str, Any]] = []
    for m in methods:
        plans.append(_plan(m, graph, table, omitted))
    keys = sorted(table)
    index = {k: i for i, k in enumerate(keys)}
    ks = torch.tensor(keys, dtype=torch.long).view(-1, 2)
    out_methods = []
    for m, plan in zip(methods, plans, strict=True):
        entry: dict[str, Any] = {"name": m.name, "kind": m.kind, "sense": m.sense if m.scores is not None else None,
                                 "chosen": m.chosen_point, "chosen_edges": m.chosen.n_edges if m.chosen else None,
                                 "order": [index[k] for k in plan["order"]], "points": []}
        for p, circ in zip(m.points, plan["circuits"], strict=True):
            point = {k: _clean(p.get(k)) for k in ("edges", "requested", "f", "f_ci", "kl", "kl_ci", "label")}
            if circ is not None and "edges" in circ:
                circ = {"edges": sorted(index[k] for k in circ["edges"])}
            point["circuit"] = circ
            entry["points"].append(point)
        if m.scores is not None:
            entry["scores"] = [_round(v) for v in m.scores[ks[:, 0], ks[:, 1]].tolist()]
        out_methods.append(entry)
    ks = torch.tensor(keys, dtype=torch.long).view(-1, 2)
    member = torch.zeros(len(keys), dtype=torch.long)
    for bit, m in enumerate(methods):
        if m.chosen is not None:
            member |= m.chosen.mask[ks[:, 0], ks[:, 1]].long() << bit
    return {
        "format": VIEW_FORMAT,
        "task": str(summary.get("task", "?")),
        "model": str(summary.get("model", "?")),
        "n_edges_total": graph.n_edges,
        "graph": {"n_layers": graph.n_layers, "n_heads": graph.n_heads, "n_kv_heads": graph.n_kv_heads,
                  "src": list(graph.src_names), "dst": list(graph.dst_names)},
        "nodes": layout(graph),
        "edges": {"src": ks[:, 0].tolist(), "dst": ks[:, 1].tolist(), "member": member.tolist()},
        "methods": out_methods,
        "headline": summary.get("headline"),
        "limits": {"order_edges": ORDER_EDGES, "max_circuit_edges": MAX_CIRCUIT_EDGES},
        "omitted": omitted,
        "overlaps": _overlaps(methods),
    }


def _overlaps(methods: list[_Method]) -> list[dict[str, Any]]:
    """Pairwise overlaps of the chosen circuits that load: ``a``, ``b``, edges of each, shared edges and Jaccard
    index (shared / union), every pair once in the curves' order."""
    chosen = [(m.name, m.chosen) for m in methods if m.chosen is not None]
    out = []
    for i, (a, ca) in enumerate(chosen):
        for b, cb in chosen[i + 1:]:
            both = int((ca.mask & cb.mask).sum())
            union = int((ca.mask | cb.mask).sum())
            out.append({"a": a, "b": b, "edges_a": ca.n_edges, "edges_b": cb.n_edges, "shared": both,
                        "jaccard": both / union if union else 1.0})
    return out


# ---- nodes ---------------------------------------------------------------------------------------------------------
def layout(graph: Graph) -> list[dict[str, Any]]:
    """Every node the view can draw with its kind, layer and position: ``input``, per layer its heads (``head``),
    shared key/value heads (``kv``, grouped-query attention only), its MLP and its collapsed heads (``layer``:
    the node ``a{L}`` that stands for all heads of layer L when the page collapses them), and ``logits``."""
    L, H, G = graph.n_layers, graph.n_heads, graph.n_kv_heads
    width = (H - 1) * COL
    mid = width / 2

    def row(layer: int) -> float:
        return (L - layer) * ROW

    nodes: list[dict[str, Any]] = [{"id": "input", "kind": "input", "layer": -1, "x": mid, "y": row(-1) - ROW / 3}]
    for layer in range(L):
        y = row(layer)
        for h in range(H):
            nodes.append({"id": f"a{layer}.h{h}", "kind": "head", "layer": layer, "x": h * COL, "y": y})
        if G != H:
            per = H // G
            for g in range(G):
                x = (g * per + (per - 1) / 2) * COL
                nodes.append({"id": f"a{layer}.g{g}", "kind": "kv", "layer": layer, "x": x, "y": y + KV_DROP})
        nodes.append({"id": f"m{layer}", "kind": "mlp", "layer": layer, "x": width + COL + MLP_GAP, "y": y - MLP_RISE})
        nodes.append({"id": f"a{layer}", "kind": "layer", "layer": layer, "x": mid, "y": y})
    nodes.append({"id": "logits", "kind": "logits", "layer": L, "x": mid, "y": row(L - 1) - ROW})
    return nodes


# ---- the run's methods ---------------------------------------------------------------------------------------------
def _graph(summary: dict[str, Any], folder: Path) -> Graph | None:
    """The run's graph: its shape from ``summary.graph`` and the key/value head count from a circuit file."""
    g = summary.get("graph")
    if not isinstance(g, dict):
        return None
    try:
        n_layers, n_heads = int(g["n_layers"]), int(g["n_heads"])
    except (KeyError, TypeError, ValueError):
        return None
    kv = g.get("n_kv_heads")
    for c in _circuit_entries(summary):
        if kv is not None:
            break
        sig = _read_signature(folder, c.get("json"))
        if sig is not None and sig.get("n_layers") == n_layers and sig.get("n_heads") == n_heads:
            kv = sig.get("n_kv_heads")
    try:
        graph = Graph.from_config(n_layers, n_heads, int(kv) if kv is not None else None)
    except (AcdcError, TypeError, ValueError):
        return None
    if g.get("edges") not in (None, graph.n_edges):
        return None
    return graph


def _read_signature(folder: Path, name: Any) -> dict[str, Any] | None:
    """The ``graph`` entry of a circuit file, read without parsing its (possibly large) edge lists twice."""
    path = file_inside(folder, name)
    if path is None:
        return None
    try:
        head = path.read_text(encoding="utf-8")[:2000]
    except (OSError, UnicodeDecodeError):
        return None
    m = re.search(r'"graph"\s*:\s*\{([^}]*)\}', head)
    if not m:
        return None
    sig = {k: int(v) for k, v in re.findall(r'"(n_layers|n_heads|n_kv_heads)"\s*:\s*(\d+)', m.group(1))}
    return sig if len(sig) == 3 else None


def _circuit_entries(summary: dict[str, Any]) -> list[dict[str, Any]]:
    circuits = summary.get("circuits")
    return [c for c in circuits if isinstance(c, dict)] if isinstance(circuits, list) else []


def _methods(summary: dict[str, Any], folder: Path, graph: Graph, omitted: list[str]) -> list[_Method]:
    """One record per curve of the sweep, with its chosen circuit and scores where the run folder has them."""
    pareto = summary.get("pareto") if isinstance(summary.get("pareto"), dict) else {}
    curves = [c for c in (pareto.get("curves") or []) if isinstance(c, dict)] if isinstance(pareto, dict) else []
    chosen = {str(c.get("method")): c for c in _circuit_entries(summary)}
    out: list[_Method] = []
    for cv in curves:
        name = str(cv.get("method", "?"))
        points = [p for p in (cv.get("points") or []) if isinstance(p, dict)]
        m = _Method(name, str(cv.get("kind", "?")), points)
        entry = chosen.get(name)
        if entry is not None:
            circuit = _load(folder, entry.get("json"), graph)
            if circuit is None:
                omitted.append(f"{name}: its chosen circuit's file ({entry.get('json')}) is missing or unreadable")
            else:
                m.chosen = circuit
                m.scores = circuit.scores
                labels = [p.get("label") for p in points]
                if entry.get("label") in labels:
                    m.chosen_point = labels.index(entry.get("label"))
        if m.scores is not None:
            from acdc.methods import get_method

            try:
                m.sense = get_method(name).ranking_sense
            except AcdcError:
                m.sense = "effect"
        out.append(m)
    return out


def _load(folder: Path, name: Any, graph: Graph) -> Circuit | None:
    path = file_inside(folder, name)
    if path is None:
        return None
    try:
        return Circuit.load(path, graph)
    except (AcdcError, OSError):
        return None


# ---- what to embed per method ---------------------------------------------------------------------------------------
def _plan(m: _Method, graph: Graph, table: dict[tuple[int, int], None], omitted: list[str]) -> dict[str, Any]:
    """The edges of ``m`` to embed (added to ``table``): ``order`` (a ranking's greedy order, as (src, dst) pairs) and
    per point its circuit: ``{"n": prefix, "drop": [positions]}``, ``{"edges": [(src, dst)]}`` or None."""
    circuits: list[dict[str, Any] | None] = [None] * len(m.points)
    order: list[tuple[int, int]] = []
    big = [i for i, p in enumerate(m.points) if _int(p.get("edges")) > MAX_CIRCUIT_EDGES]
    if m.kind == "scores" and m.scores is not None and m.chosen is not None:
        order, circuits = _ranking_points(m, graph, omitted)
    elif m.chosen is not None and m.chosen_point is not None:
        if m.chosen.n_edges <= MAX_CIRCUIT_EDGES:
            circuits[m.chosen_point] = {"edges": [tuple(e) for e in m.chosen.mask.nonzero().tolist()]}
        n_other = len(m.points) - 1
        if n_other:
            omitted.append(f"{m.name}: the run saved only its chosen circuit ({m.points[m.chosen_point].get('label')});"
                           f" the other {n_other} point(s) of its curve show f without a drawing")
    elif m.points:
        omitted.append(f"{m.name}: no circuit file in the run folder; its curve shows f without a drawing")
    if big:
        omitted.append(f"{m.name}: {len(big)} circuit(s) of more than {MAX_CIRCUIT_EDGES:,} edges not embedded "
                       f"(largest {max(_int(m.points[i].get('edges')) for i in big):,})")
    for k in order:
        table[k] = None
    for c in circuits:
        if c is not None and "edges" in c:
            for k in c["edges"]:
                table[k] = None
    return {"order": order, "circuits": circuits}


def _ranking_points(m: _Method, graph: Graph, omitted: list[str]
                    ) -> tuple[list[tuple[int, int]], list[dict[str, Any] | None]]:
    """A ranking's greedy order and each curve point's circuit as a prefix of it with the pruned positions."""
    from acdc.selection import greedy_order

    assert m.scores is not None and m.chosen is not None
    meta = m.chosen.meta
    selector = str(meta.get("selector", "greedy"))
    absolute = bool(meta.get("absolute", True))
    circuits: list[dict[str, Any] | None] = [None] * len(m.points)
    if selector not in ("greedy", "topn"):
        omitted.append(f"{m.name}: its circuits were chosen by '{selector}', which the view cannot replay")
        return [], circuits
    wanted = ORDER_EDGES
    if m.chosen_point is not None and m.chosen.n_edges <= MAX_CIRCUIT_EDGES:
        wanted = max(wanted, _int(m.points[m.chosen_point].get("requested")))
    sizes = [_int(p.get("requested"), -1) for p in m.points]
    limit = max([s for s in sizes if 0 <= s <= wanted], default=0)
    if selector == "greedy":
        pairs = greedy_order(graph, m.scores, absolute=absolute, limit=limit)
    else:
        key = m.scores.double().abs() if absolute else -m.scores.double()  # as acdc.selection ranks
        key = key.masked_fill(~graph.valid, float("-inf"))
        flat = torch.argsort(key.flatten(), descending=True, stable=True)[:limit]
        pairs = [(int(i) // graph.n_dst, int(i) % graph.n_dst) for i in flat]
    order = [(int(s), int(d)) for s, d in pairs]
    idx = torch.tensor(order, dtype=torch.long).view(-1, 2)
    mismatched = 0
    for i, (p, n) in enumerate(zip(m.points, sizes, strict=True)):
        if n < 0 or n > limit:
            continue
        mask = torch.zeros_like(graph.valid)
        if n:
            mask[idx[:n, 0], idx[:n, 1]] = True
        kept = prune_dangling(graph, mask)
        wrong_chosen = i == m.chosen_point and not torch.equal(kept, m.chosen.mask)
        if int(kept.sum()) != _int(p.get("edges"), -1) or wrong_chosen:
            mismatched += 1
            continue
        drop = (~kept[idx[:n, 0], idx[:n, 1]]).nonzero().flatten().tolist()
        circuits[i] = {"n": n, "drop": drop}
    if mismatched:
        omitted.append(f"{m.name}: {mismatched} curve point(s) could not be reproduced from the saved scores "
                       "and are shown without a drawing")
    beyond = [i for i, n in enumerate(sizes) if n > limit and _int(m.points[i].get("edges")) <= MAX_CIRCUIT_EDGES]
    if beyond:
        omitted.append(f"{m.name}: {len(beyond)} point(s) of its curve above {limit:,} edges show f without a "
                       "drawing (each ranking is embedded up to its chosen circuit or "
                       f"{ORDER_EDGES:,} edges, whichever is larger)")
    return order, circuits


# ---- numbers ---------------------------------------------------------------------------------------------------------
def _int(x: Any, default: int = 0) -> int:
    return int(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else default


def _round(x: float) -> float | None:
    """Four significant digits (None for NaN and infinities, which JSON cannot hold)."""
    if not math.isfinite(x):
        return None
    return float(f"{x:.4g}")


def _clean(x: Any) -> Any:
    """JSON-safe copy of a point's value: non-finite floats become None."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x if isinstance(x, (int, str)) or x is None else str(x)
