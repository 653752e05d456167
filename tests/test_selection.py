"""Selecting circuits from scores: top-n, threshold and greedy growth, with dangling-edge removal."""

from __future__ import annotations

import pytest
import torch

from acdc.errors import InputError
from acdc.graph import Graph, prune_dangling
from acdc.selection import greedy, ilp, ordered_circuits, select, stability, stable, stable_key, threshold, top_n


@pytest.fixture(scope="module")
def graph_scores():
    g = Graph.from_config(3, 2)
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(g.n_src, g.n_dst, generator=gen, dtype=torch.float64) * g.valid
    return g, s


def test_top_n_takes_the_highest_ranked_edges(graph_scores):
    g, s = graph_scores
    c = top_n(g, s, 15)
    assert c.meta["selected"] == 15 and c.n_edges <= 15
    chosen = s.abs()[c.mask]
    kth = torch.sort(s.abs()[g.valid], descending=True).values[14]
    assert bool((chosen >= kth - 1e-12).all())
    assert torch.equal(c.mask, prune_dangling(g, c.mask))
    signed = top_n(g, s, 15, absolute=False)  # the 15 most negative (most supportive) edges
    kth_low = torch.sort(s[g.valid]).values[14]
    assert bool((s[signed.mask] <= kth_low + 1e-12).all())
    assert top_n(g, s, 10**6).meta["selected"] == g.n_edges


def test_threshold(graph_scores):
    g, s = graph_scores
    c = threshold(g, s, 1.0)
    assert c.meta["selected"] == int((s.abs() >= 1.0).sum())
    assert bool((s.abs()[c.mask] >= 1.0).all())


def test_greedy_edges_all_reach_the_logits(graph_scores):
    g, s = graph_scores
    for n in (1, 5, 20, 60):
        c = greedy(g, s, n)
        assert c.meta["selected"] == min(n, g.n_edges)
        # before pruning every chosen edge leads to the logits, so pruning only removes unreachable sources
        assert c.n_edges <= n
        assert torch.equal(c.mask, prune_dangling(g, c.mask))
    one = greedy(g, s, 1)
    best_into_logits = int(s[:, g.logits_index].abs().argmax())
    assert one.meta["selected"] == 1 and (one.n_edges == 0 or bool(one.mask[best_into_logits, g.logits_index]))


def test_select_errors(graph_scores):
    g, s = graph_scores
    with pytest.raises(InputError, match="unknown selector"):
        select(g, s, "best")
    with pytest.raises(InputError, match="needs a threshold"):
        select(g, s, "threshold")
    with pytest.raises(InputError, match="must be"):
        select(g, s[:3], "topn", n=3)
    assert select(g, s, "greedy", n=4).meta["selector"] == "greedy"


# ---- the ILP: the best connected circuit of a size ------------------------------------------------------------------
def _total(g, s, mask, absolute=True):
    key = s.abs() if absolute else -s
    return float(key[mask & g.valid].sum())


def _brute_force(g, s, n, absolute=True):
    """The best total key over every set of exactly n edges that dangling-edge removal leaves unchanged."""
    from itertools import combinations

    edges = g.valid.nonzero().tolist()
    best = None
    for combo in combinations(range(len(edges)), n):
        m = torch.zeros_like(g.valid)
        for i in combo:
            m[edges[i][0], edges[i][1]] = True
        if torch.equal(prune_dangling(g, m), m):
            t = _total(g, s, m, absolute)
            best = t if best is None else max(best, t)
    return best


@pytest.mark.parametrize("shape", [(1, 1), (1, 2)])
def test_ilp_equals_brute_force_on_tiny_graphs(shape):
    g = Graph.from_config(*shape)
    gen = torch.Generator().manual_seed(sum(shape))
    s = torch.randn(g.n_src, g.n_dst, generator=gen, dtype=torch.float64) * g.valid
    for absolute in (True, False):
        for n in range(1, g.n_edges + 1):
            c = ilp(g, s, n, absolute=absolute)
            assert c.meta["optimal"] and c.n_edges == n
            assert torch.equal(prune_dangling(g, c.mask), c.mask)
            assert abs(c.meta["total"] - _brute_force(g, s, n, absolute)) < 1e-9, (shape, n, absolute)


@pytest.mark.parametrize("shape", [(2, 2), (3, 2), (2, 4, 2)])
def test_ilp_is_connected_exact_and_at_least_greedy(shape):
    """Random scores on small graphs (one with grouped key/value readers): every ILP circuit has exactly the budget,
    no dangling edge, and a total |score| at least greedy's circuit of that budget."""
    g = Graph.from_config(*shape)
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        s = torch.randn(g.n_src, g.n_dst, generator=gen, dtype=torch.float64).pow(3) * g.valid
        circuits = ordered_circuits(g, s, [1, 3, 7, 12, 20, 35], selector="ilp")
        for n, c in zip([1, 3, 7, 12, 20, 35], circuits, strict=True):
            assert c.meta["optimal"] and c.meta["selector"] == "ilp"
            assert c.n_edges == n and torch.equal(prune_dangling(g, c.mask), c.mask)
            gr = greedy(g, s, n)
            assert _total(g, s, c.mask) >= _total(g, s, gr.mask) - 1e-9
            assert abs(c.meta["total"] - _total(g, s, c.mask)) < 1e-9


def test_ilp_falls_back_to_greedy_where_too_large():
    g = Graph.from_config(2, 2)
    s = torch.randn(g.n_src, g.n_dst, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * g.valid
    c = ilp(g, s, 10, max_edges=5)
    assert torch.equal(c.mask, greedy(g, s, 10).mask) and "greedy" in c.meta["fallback"]
    assert not c.meta["optimal"]
    assert select(g, s, "ilp", n=4).n_edges == 4
    with pytest.raises(InputError, match="size-based selector"):
        ordered_circuits(g, s, [3], selector="threshold")


def test_ilp_falls_back_at_its_time_limit():
    """A solver stopped by its time limit without a proven optimum: the circuit is greedy's, or the solver's best
    one where its total is higher; either way not optimal, a dangling-free circuit, at least greedy's total."""
    g = Graph.from_config(3, 4)
    s = torch.randn(g.n_src, g.n_dst, generator=torch.Generator().manual_seed(1), dtype=torch.float64).pow(3) * g.valid
    c = ilp(g, s, 25, time_limit=1e-9)
    gr = greedy(g, s, 25)
    assert not c.meta["optimal"] and "stopped without a proven optimum" in c.meta["fallback"]
    assert torch.equal(prune_dangling(g, c.mask), c.mask)
    assert _total(g, s, c.mask) >= _total(g, s, gr.mask) - 1e-9
    if "greedy circuit" in c.meta["fallback"]:
        assert torch.equal(c.mask, gr.mask)
    assert ilp(g, s, 25).meta["optimal"]  # the same program with time to finish is solved


# ---- bootstrap-stable edges ---------------------------------------------------------------------------------------
def test_stability_recovers_a_planted_edge_set():
    """Planted edges have a moderate score on every chunk of prompts; each distractor a huge score on one chunk and
    none elsewhere, so its mean |score| is larger and the top 12 by the mean take all six distractors. A distractor
    is among a resample's best 12 only when its chunk is drawn (1 - (7/8)^8 = 66% of the resamples), a planted edge
    always: keeping the edges in the top 12 of at least 80% of the resamples recovers the planted set, and so does
    the top of the stable ranking."""
    g = Graph.from_config(2, 2)
    gen = torch.Generator().manual_seed(0)
    C = 8
    chunks = 0.05 * torch.randn(C, g.n_src, g.n_dst, generator=gen, dtype=torch.float64)
    edges = g.valid.nonzero().tolist()
    perm = torch.randperm(len(edges), generator=gen).tolist()
    planted, distract = [edges[i] for i in perm[:6]], [edges[i] for i in perm[6:12]]
    for u, r in planted:
        chunks[:, u, r] -= 1.0 + 0.1 * torch.rand(C, generator=gen, dtype=torch.float64)
    for k, (u, r) in enumerate(distract):  # zero elsewhere: below every noisy edge when its chunk is not drawn
        chunks[:, u, r] = 0.0
        chunks[k % C, u, r] = -12.0
    chunks *= g.valid
    want, decoys = torch.zeros_like(g.valid), torch.zeros_like(g.valid)
    for u, r in planted:
        want[u, r] = True
    for u, r in distract:
        decoys[u, r] = True
    mean = chunks.mean(0)
    by_mean = torch.zeros_like(g.valid)
    by_mean.view(-1)[torch.argsort(mean.abs().masked_fill(~g.valid, -1).flatten(), descending=True)[:12]] = True
    assert torch.equal(by_mean, want | decoys)
    freq = stability(g, chunks, 12, resamples=400)
    assert bool((freq[want] == 1).all()) and bool((freq[decoys] < 0.75).all())
    c = stable(g, chunks, 12, fraction=0.8, resamples=400)
    assert torch.equal(c.mask, prune_dangling(g, want)) and c.meta["selected"] == 6
    key = stable_key(g, chunks, fraction=0.8, resamples=400)
    top = torch.zeros_like(g.valid)
    top.view(-1)[torch.argsort(key.flatten(), descending=True)[:6]] = True
    assert torch.equal(top, want)
    assert bool((key[g.valid] > 0).all()) and bool((key[~g.valid] == 0).all())
