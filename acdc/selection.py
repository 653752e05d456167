"""Choosing a circuit from edge scores: top-n, threshold, greedy growth from the logits, the best connected circuit of
a size (an integer linear program), and bootstrap-stable edges; then dangling-edge removal.

Scores follow :class:`acdc.attribution.EdgeScores`: a score estimates ``M(edge ablated) - M(full)``, so the edges that
matter most have the largest ``|score|`` (``absolute=True``, the default) or the most negative score
(``absolute=False``: only edges that support the metric rank high). Every selector returns a circuit with its
dangling edges removed (source unreachable from ``input`` or destination with no path to ``logits``), so the size
after pruning can be below the number requested; ``Circuit.meta`` records both. The ILP's circuits have no dangling
edges by construction: exactly the requested size.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch

from acdc.errors import InputError
from acdc.graph import Circuit, Graph, prune_dangling

Selector = Literal["topn", "threshold", "greedy", "ilp"]
SELECTORS: tuple[str, ...] = ("topn", "threshold", "greedy", "ilp")
SIZE_SELECTORS: tuple[str, ...] = ("greedy", "topn", "ilp")  # the selectors that give a circuit of a given size
ILP_MAX_EDGES = 20_000  # larger graphs get the greedy circuit (HiGHS's branch and bound does not scale to them)
ILP_TIME_LIMIT = 20.0  # seconds per program


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


# ---- the best connected circuit of a size: an integer linear program -----------------------------------------------
def _ilp_program(graph: Graph) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """The constraints of a connected circuit, shared by every size: ``(A, lb, ub, edges)`` over the variables
    ``x`` (one per valid edge, in ``edges`` order ``[E, 2]``) then ``y`` (one per writer other than ``input``: the
    node is in the circuit). Row 0 is the size (its bounds are set per size). The rest:

    - an edge needs its source's node: ``x_(u,r) <= y_u`` (``input`` is always there);
    - an edge needs a node its reader feeds: ``x_(u,r) <= sum of y_w over the writers w that reader r feeds`` (a
      head's q/k/v reader feeds that head; a shared key/value reader every head of its group; ``logits`` nothing);
    - a node needs an incoming edge: ``y_w <= sum of x into the readers that feed w``;
    - a node needs an outgoing edge: ``y_w <= sum of x out of w``.

    In a DAG these imply that every chosen edge lies on a path from ``input`` to ``logits`` within the chosen edges
    (walk back along incoming edges to ``input``, forward along outgoing ones to ``logits``): exactly the circuits
    :func:`acdc.graph.prune_dangling` leaves unchanged.
    """
    from scipy.sparse import coo_matrix

    edges = graph.valid.nonzero().numpy()  # [E, 2] (u, r)
    E, S = len(edges), graph.n_src
    feeds = graph.feeds.numpy()  # [D, S]
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    lb: list[float] = [0.0]
    ub: list[float] = [0.0]
    n_rows = 1

    def add(r: np.ndarray, c: np.ndarray, v: np.ndarray) -> None:
        rows.append(r)
        cols.append(c)
        vals.append(v)

    eidx = np.arange(E)
    add(np.zeros(E, dtype=np.int64), eidx, np.ones(E))  # row 0: the size
    # x_(u,r) - y_u <= 0 for u != input
    src = edges[:, 0]
    k = eidx[src > 0]
    r_ids = n_rows + np.arange(len(k))
    add(r_ids, k, np.ones(len(k)))
    add(r_ids, E + src[k] - 1, -np.ones(len(k)))
    n_rows += len(k)
    lb += [-np.inf] * len(k)
    ub += [0.0] * len(k)
    # x_(u,r) - sum_{w: feeds[r, w]} y_w <= 0 for r != logits
    for e in eidx[edges[:, 1] != graph.logits_index]:
        owners = np.nonzero(feeds[edges[e, 1]])[0]
        add(np.full(1 + len(owners), n_rows), np.concatenate([[e], E + owners - 1]),
            np.concatenate([[1.0], -np.ones(len(owners))]))
        n_rows += 1
        lb.append(-np.inf)
        ub.append(0.0)
    for w in range(1, S):
        # y_w - sum of x into the readers that feed w <= 0
        into = np.nonzero(feeds[edges[:, 1], w])[0]
        add(np.full(1 + len(into), n_rows), np.concatenate([[E + w - 1], into]),
            np.concatenate([[1.0], -np.ones(len(into))]))
        # y_w - sum of x out of w <= 0
        out = np.nonzero(src == w)[0]
        add(np.full(1 + len(out), n_rows + 1), np.concatenate([[E + w - 1], out]),
            np.concatenate([[1.0], -np.ones(len(out))]))
        n_rows += 2
        lb += [-np.inf, -np.inf]
        ub += [0.0, 0.0]
    A = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(n_rows, E + S - 1)).tocsr()
    return A, np.asarray(lb), np.asarray(ub), edges


def ilp(graph: Graph, scores: torch.Tensor, n: int, *, absolute: bool = True, time_limit: float = ILP_TIME_LIMIT,
        max_edges: int = ILP_MAX_EDGES, _program: Any = None) -> Circuit:
    """The connected circuit of exactly ``n`` edges with the largest total ranking key (``|score|``, or ``-score``
    with ``absolute=False``): every edge on a path from ``input`` to ``logits`` within the circuit. Solved as an
    integer linear program by SciPy's ``milp`` (HiGHS); see :func:`_ilp_program` for the constraints.

    Where the graph has more than ``max_edges`` edges, or the solver stops at ``time_limit`` seconds without a proven
    optimum, the greedy circuit of ``n`` edges is returned instead (or the solver's best circuit when its total is
    higher), and ``meta["fallback"]`` says why. ``meta["total"]`` is the circuit's total key."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    key = _key(graph, scores, absolute)
    n = min(n, graph.n_edges)

    def total(mask: torch.Tensor) -> float:
        return float(key[mask].sum()) if bool(mask.any()) else 0.0

    def fallback(why: str, best: torch.Tensor | None = None) -> Circuit:
        g = greedy(graph, scores, n, absolute=absolute)
        if best is not None and total(best) > total(g.mask):
            return _circuit(graph, best, scores, "ilp", n=n, absolute=absolute, total=total(best), optimal=False,
                            fallback=why + "; the solver's best circuit, better than greedy's")
        return _circuit(graph, g.mask, scores, "ilp", n=n, absolute=absolute, total=total(g.mask), optimal=False,
                        fallback=why + "; the greedy circuit")

    if graph.n_edges > max_edges:
        return fallback(f"{graph.n_edges} edges are more than the ILP's {max_edges}")
    if n == 0:
        return _circuit(graph, torch.zeros_like(graph.valid), scores, "ilp", n=0, absolute=absolute, total=0.0,
                        optimal=True)
    A, lb, ub, edges = _program if _program is not None else _ilp_program(graph)
    lb, ub = lb.copy(), ub.copy()
    lb[0] = ub[0] = n
    E = len(edges)
    c = np.zeros(A.shape[1])
    c[:E] = -key[edges[:, 0], edges[:, 1]].numpy()  # milp minimises
    t0 = time.perf_counter()
    res = milp(c, constraints=LinearConstraint(A, lb, ub), integrality=np.ones_like(c), bounds=Bounds(0, 1),
               options={"time_limit": time_limit, "disp": False})
    seconds = round(time.perf_counter() - t0, 3)
    found = None
    if res.x is not None:
        found = torch.zeros_like(graph.valid)
        on = res.x[:E] > 0.5
        found[edges[on, 0], edges[on, 1]] = True
    if res.status != 0 or found is None:
        return fallback(f"the solver stopped without a proven optimum ({res.message.strip()}, {seconds} s)", found)
    return _circuit(graph, found, scores, "ilp", n=n, absolute=absolute, total=total(found), optimal=True,
                    seconds=seconds)


# ---- bootstrap-stable edges ----------------------------------------------------------------------------------------
def bootstrap_ranks(graph: Graph, chunk_scores: torch.Tensor, *, resamples: int = 200, seed: int = 0,
                    absolute: bool = True) -> torch.Tensor:
    """``[R, n_src, n_dst]`` rank (1 = best) of every valid edge in each of ``resamples`` bootstrap resamples of
    the prompt chunks: ``chunk_scores [C, n_src, n_dst]`` holds one ranking's scores on each of C chunks of the
    prompts (equal-sized, so a resample's scores are the mean of C chunks drawn with replacement). Invalid edges get
    rank ``n_edges + 1``."""
    if chunk_scores.dim() != 3 or tuple(chunk_scores.shape[1:]) != (graph.n_src, graph.n_dst):
        raise InputError(f"chunk scores must be [C, {graph.n_src}, {graph.n_dst}], got {list(chunk_scores.shape)}")
    if resamples < 1:
        raise InputError(f"resamples must be >= 1, got {resamples}")
    C = chunk_scores.shape[0]
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(C, (resamples, C), generator=gen)
    means = chunk_scores.double()[idx].mean(1)  # [R, S, D]
    key = means.abs() if absolute else -means
    flat = key.masked_fill(~graph.valid, float("-inf")).flatten(1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(1, flat.shape[1] + 1).expand_as(order).contiguous())
    ranks = ranks.view(resamples, graph.n_src, graph.n_dst)
    return ranks.masked_fill(~graph.valid, graph.n_edges + 1)


def stability(graph: Graph, chunk_scores: torch.Tensor, n: int, **kw: Any) -> torch.Tensor:
    """``[n_src, n_dst]``: the fraction of bootstrap resamples (:func:`bootstrap_ranks`) in which each edge is among
    the ``n`` best."""
    return (bootstrap_ranks(graph, chunk_scores, **kw) <= n).double().mean(0)


def stable_key(graph: Graph, chunk_scores: torch.Tensor, *, fraction: float = 0.5, **kw: Any) -> torch.Tensor:
    """A ranking key (larger = keep) whose top-n edges are the edges among the n best in at least ``fraction`` of
    the bootstrap resamples: minus the ``fraction``-quantile of each edge's bootstrap rank (an edge is in the top
    n of at least a fraction q of the resamples exactly when that quantile of its ranks is <= n), ties broken by the
    mean score's key. Invalid edges 0; every valid edge's key is positive."""
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    ranks = bootstrap_ranks(graph, chunk_scores, **kw).double()
    R = ranks.shape[0]
    k = max(0, int(np.ceil(fraction * R)) - 1)  # the k-th smallest rank: reached by >= fraction of the resamples
    q = torch.kthvalue(ranks, k + 1, dim=0).values  # [S, D]
    mean = chunk_scores.double().mean(0)
    absolute = kw.get("absolute", True)
    tie = mean.abs() if absolute else -mean
    tie = tie.masked_fill(~graph.valid, 0.0)
    spread = float(tie[graph.valid].abs().max()) if graph.n_edges else 0.0
    tie = 0.5 * tie / spread + 0.5 if spread > 0 else torch.zeros_like(tie)  # in [0, 1]
    key = (graph.n_edges + 2 - q) + 0.5 * tie
    return key * graph.valid


def stable(graph: Graph, chunk_scores: torch.Tensor, n: int, *, fraction: float = 0.5, **kw: Any) -> Circuit:
    """The edges among the ``n`` best in at least ``fraction`` of the bootstrap resamples of the prompt chunks (so
    possibly fewer than ``n``), dangling edges removed."""
    freq = stability(graph, chunk_scores, n, **kw)
    mask = (freq >= fraction - 1e-12) & graph.valid
    return _circuit(graph, mask, chunk_scores.double().mean(0), "stable", n=n, fraction=fraction)


def ordered_circuits(graph: Graph, scores: torch.Tensor, sizes: Sequence[int], *, selector: str = "greedy",
                     absolute: bool = True) -> list[Circuit]:
    """The circuits of ``sizes`` edges chosen by ``greedy`` or ``topn`` from one ranking (computed once: both
    selectors' circuits are prefixes of one edge order), dangling edges removed; or by ``ilp``, one program per
    size (sharing its constraints)."""
    if selector not in SIZE_SELECTORS:
        raise InputError(f"a curve needs a size-based selector ({', '.join(SIZE_SELECTORS)}), got '{selector}'")
    if any(n < 0 for n in sizes):
        raise InputError("circuit sizes must be >= 0")
    if selector == "ilp":
        program = _ilp_program(graph) if graph.n_edges <= ILP_MAX_EDGES else None
        return [ilp(graph, scores, n, absolute=absolute, _program=program) for n in sizes]
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
    """``topn`` / ``greedy`` / ``ilp`` need ``n``; ``threshold`` needs ``tau``."""
    if how not in SELECTORS:
        raise InputError(f"unknown selector '{how}'; choose one of {', '.join(SELECTORS)}")
    if how == "threshold":
        if tau is None:
            raise InputError("threshold selection needs a threshold (tau)")
        return threshold(graph, scores, tau, absolute=absolute)
    if n is None:
        raise InputError(f"{how} selection needs a number of edges (n)")
    return {"topn": top_n, "greedy": greedy, "ilp": ilp}[how](graph, scores, n, absolute=absolute)
