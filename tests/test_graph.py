"""Graph layout, circuit JSON round trips, and dangling-edge removal against a networkx reference."""

from __future__ import annotations

import json

import networkx as nx
import pytest
import torch

from acdc import Circuit, Graph, prune_dangling
from acdc.errors import CircuitFileError, InputError, ShapeError


def test_gpt2_small_counts_from_config():
    g = Graph.from_config(12, 12)
    assert (g.n_src, g.n_dst, g.n_edges) == (157, 445, 32491)


def test_gpt2_small_counts_from_model(gpt2_small):
    g = Graph.from_model(gpt2_small)
    assert (g.n_src, g.n_dst, g.n_edges) == (157, 445, 32491)
    assert g.src_names[:3] == ("input", "a0.h0", "a0.h1") and g.src_names[-1] == "m11"
    assert g.dst_names[:2] == ("a0.h0<q>", "a0.h1<q>") and g.dst_names[-1] == "logits"


def test_edge_validity_rules():
    g = Graph.from_config(2, 2)
    ok = ["input->a0.h0<q>", "a0.h1->m0", "a0.h0->a1.h1<k>", "m0->a1.h0<v>", "m1->logits", "input->logits"]
    for name in ok:
        g.edge_index(name)
    for bad in ["a1.h0->a0.h0<q>", "m0->m0", "a0.h0->a0.h1<q>", "m1->m1", "logits->m1"]:
        with pytest.raises(InputError):
            g.edge_index(bad)
    assert len(g.edge_names()) == g.n_edges
    assert sorted(g.edge_names()) == sorted(set(g.edge_names()))


def test_grouped_query_attention_readers():
    g = Graph.from_config(2, 4, n_kv_heads=2)
    assert "a0.g1<k>" in g.dst_index and "a0.h1<k>" not in g.dst_index
    assert g.n_dst == 2 * (4 + 2 + 2 + 1) + 1
    # a shared key head feeds both heads of its group
    r = g.dst_index["a1.g0<k>"]
    assert [g.src_names[w] for w in g.feeds[r].nonzero().flatten().tolist()] == ["a1.h0", "a1.h1"]


def test_circuit_json_round_trip(tmp_path):
    g = Graph.from_config(3, 4)
    gen = torch.Generator().manual_seed(0)
    mask = (torch.rand(g.n_src, g.n_dst, generator=gen) > 0.7) & g.valid
    scores = torch.randn(g.n_src, g.n_dst, generator=gen) * g.valid
    c = Circuit(g, mask, scores, meta={"method": "test", "threshold": 0.1})
    path = c.save(tmp_path / "sub" / "circuit.json")
    back = Circuit.load(path)
    assert torch.equal(back.mask, c.mask)
    assert torch.allclose(back.scores, c.scores)
    assert back.meta == c.meta
    assert back.edge_names() == c.edge_names()
    assert back.graph.signature() == g.signature()
    assert not list(tmp_path.glob("sub/.*.tmp"))  # the atomic write left no temporary file


def test_circuit_file_errors(tmp_path):
    g = Graph.from_config(2, 2)
    p = tmp_path / "c.json"
    p.write_text("{not json")
    with pytest.raises(CircuitFileError, match="is not valid JSON"):
        Circuit.load(p)
    with pytest.raises(CircuitFileError, match="no circuit file at"):
        Circuit.load(tmp_path / "missing.json")
    p.write_text(json.dumps({"format": "acdc-circuit/1", "graph": g.signature(), "edges": ["a1.h0->a0.h0<q>"]}))
    with pytest.raises(CircuitFileError, match="not a valid edge"):
        Circuit.load(p)
    p.write_text(json.dumps({"format": "acdc-circuit/1", "graph": g.signature(), "edges": ["input->m0"]}))
    with pytest.raises(CircuitFileError, match="circuit is for a graph"):
        Circuit.load(p, graph=Graph.from_config(3, 2))
    p.write_text(json.dumps({"edges": []}))
    with pytest.raises(CircuitFileError, match="not an acdc circuit"):
        Circuit.load(p)
    with pytest.raises(ShapeError):
        Circuit(g, torch.ones(3, 3, dtype=torch.bool))


def _networkx_live(g: Graph, mask: torch.Tensor) -> torch.Tensor:
    """Reference: a node graph (writers; readers feed the writers they belong to) and plain reachability."""
    dg = nx.DiGraph()
    dg.add_nodes_from(g.src_names)
    dg.add_node("logits")
    for s, d in (mask & g.valid).nonzero().tolist():
        for w in g.feeds[d].nonzero().flatten().tolist() or [None]:
            dg.add_edge(g.src_names[s], g.src_names[w] if w is not None else "logits")
    from_input = nx.descendants(dg, "input") | {"input"}
    to_logits = nx.ancestors(dg, "logits") | {"logits"}
    keep = torch.zeros_like(mask)
    for s, d in (mask & g.valid).nonzero().tolist():
        owners = [g.src_names[w] for w in g.feeds[d].nonzero().flatten().tolist()] or ["logits"]
        if g.src_names[s] in from_input and any(o in to_logits for o in owners):
            keep[s, d] = True
    return keep


@pytest.mark.parametrize("shape", [(3, 4, 4), (4, 4, 2), (2, 3, 3)])
def test_dangling_removal_matches_networkx(shape):
    g = Graph.from_config(*shape)
    gen = torch.Generator().manual_seed(sum(shape))
    for trial, density in enumerate([0.02, 0.05, 0.1, 0.3, 0.6] * 4):
        mask = (torch.rand(g.n_src, g.n_dst, generator=gen) < density) & g.valid
        got = prune_dangling(g, mask)
        want = _networkx_live(g, mask)
        assert torch.equal(got, want), (shape, trial, density)
        assert torch.equal(prune_dangling(g, got), got)  # a fixed point


def test_dangling_removal_examples():
    g = Graph.from_config(2, 2)
    c = Circuit.from_edges(g, ["input->a0.h0<q>", "a0.h0->a1.h1<v>", "a1.h1->logits", "a0.h1->m1"])
    # a0.h1 is reached by nothing; a0.h1->m1 goes, and m1 (no path to logits) would go too
    assert c.pruned().edge_names() == ["input->a0.h0<q>", "a0.h0->a1.h1<v>", "a1.h1->logits"]
    assert c.pruned().heads() == [(0, 0), (1, 1)]
    assert Circuit.empty(g).pruned().n_edges == 0
    assert Circuit.full(g).pruned().n_edges == g.n_edges


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os

    from acdc.io import atomic_write_text

    mask = os.umask(0o022)
    try:
        p = atomic_write_text(tmp_path / "x.json", "{}")
    finally:
        os.umask(mask)
    assert os.stat(p).st_mode & 0o777 == 0o644
    assert [q.name for q in tmp_path.iterdir()] == ["x.json"]
