"""Selecting circuits from scores: top-n, threshold and greedy growth, with dangling-edge removal."""

from __future__ import annotations

import pytest
import torch

from acdc.errors import InputError
from acdc.graph import Graph, prune_dangling
from acdc.selection import greedy, select, threshold, top_n


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
