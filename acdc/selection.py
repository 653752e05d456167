"""Choosing a circuit from edge scores: top-n, threshold, greedy growth from the logits; then dangling-edge removal.

Scores follow :class:`acdc.attribution.EdgeScores`: a score estimates ``M(edge ablated) - M(full)``, so the edges that
matter most have the largest ``|score|`` (``absolute=True``, the default) or the most negative score
(``absolute=False``: only edges that support the metric rank high). Every selector returns a circuit with its
dangling edges removed (source unreachable from ``input`` or destination with no path to ``logits``), so the size
after pruning can be below the number requested; ``Circuit.meta`` records both.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Literal

import torch

from acdc.errors import InputError
from acdc.graph import Circuit, Graph, prune_dangling

Selector = Literal["topn", "threshold", "greedy"]
SELECTORS: tuple[str, ...] = ("topn", "threshold", "greedy")


def _key(graph: Graph, scores: torch.Tensor, absolute: bool) -> torch.Tensor:
    if tuple(scores.shape) != (graph.n_src, graph.n_dst):
        raise InputError(f"scores must be [{graph.n_src}, {graph.n_dst}] edge scores, got {list(scores.shape)}")
    key = scores.double().abs() if absolute else -scores.double()
    return key.masked_fill(~graph.valid, float("-inf"))


def _circuit(graph: Graph, mask: torch.Tensor, scores: torch.Tensor, how: str, **meta: object) -> Circuit:
    pruned = prune_dangling(graph, mask)
    return Circuit(graph, pruned, scores=scores.float(), meta={"selector": how, "selected": int(mask.sum()),
                                                                "edges": int(pruned.sum()), **meta})


def top_n(graph: Graph, scores: torch.Tensor, n: int, *, absolute: bool = True) -> Circuit:
    """The ``n`` highest-ranked edges (ties broken by edge index), then dangling edges removed."""
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    key = _key(graph, scores, absolute).flatten()
    order = torch.argsort(key, descending=True, stable=True)[: min(n, graph.n_edges)]
    mask = torch.zeros(graph.n_src * graph.n_dst, dtype=torch.bool)
    mask[order] = True
    return _circuit(graph, mask.view_as(graph.valid), scores, "topn", n=n, absolute=absolute)


def threshold(graph: Graph, scores: torch.Tensor, tau: float, *, absolute: bool = True) -> Circuit:
    """Every edge whose ranking key (``|score|``, or ``-score``) is at least ``tau``, then dangling edges removed."""
    key = _key(graph, scores, absolute)
    return _circuit(graph, key >= tau, scores, "threshold", tau=tau, absolute=absolute)


def greedy_order(graph: Graph, scores: torch.Tensor, *, absolute: bool = True, limit: int | None = None
                 ) -> list[tuple[int, int]]:
    """The order in which greedy growth from ``logits`` adds edges: repeatedly the best edge into a reader already
    connected to the logits (the logits themselves, or a reader of a writer already in the circuit). Every prefix
    of it is the greedy circuit of that size (before dangling-edge removal)."""
    key = _key(graph, scores, absolute)
    feeds = graph.feeds  # [D, S]: reader r is an input of writer w
    readers_of = [feeds[:, w].nonzero().flatten().tolist() for w in range(graph.n_src)]
    valid = graph.valid
    heap: list[tuple[float, int, int]] = []

    def open_reader(r: int) -> None:
        for u in valid[:, r].nonzero().flatten().tolist():
            heapq.heappush(heap, (-float(key[u, r]), u * graph.n_dst + r, r))

    taken = torch.zeros_like(valid)
    in_circuit = torch.zeros(graph.n_src, dtype=torch.bool)
    open_reader(graph.logits_index)
    order: list[tuple[int, int]] = []
    stop = graph.n_edges if limit is None else limit
    while heap and len(order) < stop:
        _, idx, r = heapq.heappop(heap)
        u = idx // graph.n_dst
        if taken[u, r]:
            continue
        taken[u, r] = True
        order.append((u, r))
        if not in_circuit[u]:
            in_circuit[u] = True
            for rr in readers_of[u]:
                open_reader(rr)
    return order


def greedy(graph: Graph, scores: torch.Tensor, n: int, *, absolute: bool = True) -> Circuit:
    """Grow from ``logits`` (see :func:`greedy_order`), stop at ``n`` edges, so every chosen edge lies on a path to
    the logits; then remove edges whose source is unreachable from ``input``."""
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    mask = torch.zeros_like(graph.valid)
    for u, r in greedy_order(graph, scores, absolute=absolute, limit=n):
        mask[u, r] = True
    return _circuit(graph, mask, scores, "greedy", n=n, absolute=absolute)


def ordered_circuits(graph: Graph, scores: torch.Tensor, sizes: Sequence[int], *, selector: str = "greedy",
                     absolute: bool = True) -> list[Circuit]:
    """The circuits of ``sizes`` edges chosen by ``greedy`` or ``topn`` from one ranking (computed once: both
    selectors' circuits are prefixes of one edge order), dangling edges removed."""
    if selector not in ("greedy", "topn"):
        raise InputError(f"a curve needs a size-based selector (greedy or topn), got '{selector}'")
    if any(n < 0 for n in sizes):
        raise InputError("circuit sizes must be >= 0")
    if selector == "greedy":
        order = greedy_order(graph, scores, absolute=absolute, limit=max(sizes, default=0))
    else:
        flat = torch.argsort(_key(graph, scores, absolute).flatten(), descending=True, stable=True)
        order = [(int(i) // graph.n_dst, int(i) % graph.n_dst) for i in flat[: min(max(sizes, default=0),
                                                                                    graph.n_edges)]]
    out = []
    for n in sizes:
        mask = torch.zeros_like(graph.valid)
        if n:
            idx = torch.tensor(order[:n], dtype=torch.long).view(-1, 2)
            mask[idx[:, 0], idx[:, 1]] = True
        out.append(_circuit(graph, mask, scores, selector, n=n, absolute=absolute))
    return out


def select(graph: Graph, scores: torch.Tensor, how: str, *, n: int | None = None, tau: float | None = None,
           absolute: bool = True) -> Circuit:
    """``topn`` / ``greedy`` need ``n``; ``threshold`` needs ``tau``."""
    if how not in SELECTORS:
        raise InputError(f"unknown selector '{how}'; choose one of {', '.join(SELECTORS)}")
    if how == "threshold":
        if tau is None:
            raise InputError("threshold selection needs a threshold (tau)")
        return threshold(graph, scores, tau, absolute=absolute)
    if n is None:
        raise InputError(f"{how} selection needs a number of edges (n)")
    return (top_n if how == "topn" else greedy)(graph, scores, n, absolute=absolute)
