"""MIB circuit-track export: the file schema, name mapping, sign, grouped-query attention, round trips, atomicity."""

from __future__ import annotations

import json
import re

import pytest
import torch

from acdc.attribution import EdgeScores
from acdc.errors import CircuitFileError, InputError
from acdc.export import mib
from acdc.export.mib import EDGE_FRACTIONS, export_mib, load_mib, mib_edge_count, mib_from_dict
from acdc.graph import Circuit, Graph

# A complete file for a 1-layer, 1-head model, written by hand from the schema MIB documents (circuit_loading.py of
# hannamw/MIB-circuit-track; EAP-IG's Graph.to_json): "cfg"; "nodes" {name: {"in_graph"}}; "edges"
# {"src->dst<q|k|v>": {"score", "in_graph"}}. The nodes follow EAP-IG's rule: in the circuit if they have an edge
# out and an edge in (input needs none in), logits always.
HAND_WRITTEN = """
{"cfg": {"n_layers": 1, "n_heads": 1, "parallel_attn_mlp": false, "d_model": 8},
 "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": true}, "m0": {"in_graph": false},
           "logits": {"in_graph": true}},
 "edges": {"input->a0.h0<q>": {"score": 0.5, "in_graph": false},
           "input->a0.h0<k>": {"score": -0.25, "in_graph": false},
           "input->a0.h0<v>": {"score": 2.0, "in_graph": true},
           "input->m0": {"score": 0.125, "in_graph": false},
           "a0.h0->m0": {"score": -1.5, "in_graph": false},
           "input->logits": {"score": 0.75, "in_graph": true},
           "a0.h0->logits": {"score": 3.0, "in_graph": true},
           "m0->logits": {"score": 0.0, "in_graph": false}}}
"""

# total edges per model in MIB's evaluator (EDGE_COUNTS, MIB_circuit_track/evaluation.py of the leaderboard's
# evaluation code, mttk/MIB-circuit-track-autoeval)
MIB_EDGE_COUNTS = {"gpt2": 32491, "qwen2.5": 179749, "gemma2": 74218, "llama3": 1592881}

SRC = r"(input|a\d+\.h\d+|m\d+)"
DST = r"(a\d+\.h\d+<[qkv]>|m\d+|logits)"


def _random(graph: Graph, seed: int = 0, p: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(graph.n_src, graph.n_dst, generator=gen, dtype=torch.float64) * graph.valid
    mask = (torch.rand(graph.n_src, graph.n_dst, generator=gen) < p) & graph.valid
    return scores, mask


def _toy(monkeypatch: pytest.MonkeyPatch, graph: Graph) -> None:
    """Register ``graph``'s shape as an MIB model "toy" evaluated on ioi, so strict mode runs on a small graph."""
    shape = mib.MibModel(graph.n_layers, graph.n_heads, graph.n_kv_heads, 16)
    monkeypatch.setitem(mib.MIB_MODELS, "toy", shape)
    monkeypatch.setattr(mib, "MIB_PAIRS", mib.MIB_PAIRS | {("ioi", "toy")})


# ---- the schema ----------------------------------------------------------------------------------------------------
def test_hand_written_file_loads_and_is_written_back_identically(tmp_path):
    g = Graph.from_config(1, 1)
    doc = json.loads(HAND_WRITTEN)
    scores, mask = mib_from_dict(doc, g)
    assert sorted(g.edge_names(mask)) == sorted(["input->a0.h0<v>", "input->logits", "a0.h0->logits"])
    for name, entry in doc["edges"].items():
        assert scores[g.edge_index(name)].item() == -entry["score"]  # MIB's sign is the opposite of ours

    (path,) = export_mib(
        tmp_path, g, method="m", task="ioi", model="toy", circuits=[Circuit(g, mask, scores)], d_model=8, strict=False
    )
    assert json.loads(path.read_text()) == doc


def test_written_file_matches_the_schema(tmp_path):
    g = Graph.from_config(2, 3)
    scores, mask = _random(g)
    (path,) = export_mib(
        tmp_path, g, method="m", task="ioi", model="toy", circuits=[Circuit(g, mask)], scores=scores, d_model=16,
        strict=False,
    )
    doc = json.loads(path.read_text())
    assert set(doc) == {"cfg", "nodes", "edges"}
    assert doc["cfg"] == {"n_layers": 2, "n_heads": 3, "parallel_attn_mlp": False, "d_model": 16}
    assert list(doc["nodes"]) == [*g.src_names, "logits"]
    assert all(v.keys() == {"in_graph"} and isinstance(v["in_graph"], bool) for v in doc["nodes"].values())
    for name, v in doc["edges"].items():
        assert re.fullmatch(f"{SRC}->{DST}", name), name
        assert v.keys() == {"score", "in_graph"}
        assert type(v["score"]) is float and type(v["in_graph"]) is bool


# ---- names and counts ----------------------------------------------------------------------------------------------
def test_names_are_ours_and_every_valid_edge_is_written(tmp_path):
    g = Graph.from_config(3, 2)
    scores, _ = _random(g)
    (path,) = export_mib(tmp_path, g, method="m", task="ioi", model="toy", scores=scores, d_model=16, strict=False)
    edges = json.loads(path.read_text())["edges"]
    assert len(edges) == int(g.valid.sum())
    assert set(edges) == set(g.edge_names())
    assert {"a0.h1->m0", "a0.h0->a1.h1<k>", "m1->a2.h0<v>", "input->logits"} <= set(edges)  # MLP reads own layer


@pytest.mark.parametrize("model", list(MIB_EDGE_COUNTS))
def test_edge_counts_match_mib_for_its_models(model):
    shape = mib.MIB_MODELS[model]
    g = Graph.from_config(shape.n_layers, shape.n_heads, shape.n_kv_heads)
    assert mib_edge_count(g, gqa="split") == MIB_EDGE_COUNTS[model]
    if shape.n_kv_heads == shape.n_heads:
        assert mib_edge_count(g) == int(g.valid.sum())


def test_gqa_is_refused_by_default(tmp_path):
    g = Graph.from_config(2, 4, n_kv_heads=2)
    scores, _ = _random(g)
    with pytest.raises(InputError, match="gqa='split'"):
        export_mib(tmp_path, g, method="m", task="ioi", model="toy", scores=scores, d_model=16, strict=False)
    with pytest.raises(InputError, match="gqa='split'"):
        mib_from_dict(json.loads(HAND_WRITTEN), g)
    assert not any(tmp_path.iterdir())


def test_gqa_split_maps_group_edges_to_the_heads_in_the_circuit(tmp_path):
    g = Graph.from_config(2, 4, n_kv_heads=2)
    ours = ["input->a0.g1<k>", "a0.h2->a1.g0<v>", "a0.h2->logits", "a1.h0->logits", "a1.h1->logits"]
    # a0.h3 (group 1 with a0.h2) has no edge out, so only a0.h2 gets the key edge; a1.h0 and a1.h1 both get the value
    want = ["input->a0.h2<k>", "a0.h2->a1.h0<v>", "a0.h2->a1.h1<v>", "a0.h2->logits", "a1.h0->logits", "a1.h1->logits"]
    c = Circuit.from_edges(g, ours)
    (path,) = export_mib(tmp_path, g, method="m", task="ioi", model="toy", circuits=[c], gqa="split", d_model=16,
                         strict=False)
    doc = json.loads(path.read_text())
    assert sorted(n for n, v in doc["edges"].items() if v["in_graph"]) == sorted(want)
    assert len(doc["edges"]) == int(Graph.from_config(2, 4).valid.sum())  # keys and values counted per query head
    _, mask = load_mib(path, g, gqa="split")
    assert torch.equal(mask, c.mask)


def test_gqa_split_shares_scores_equally(tmp_path):
    g = Graph.from_config(2, 4, n_kv_heads=2)
    scores, _ = _random(g)
    (path,) = export_mib(tmp_path, g, method="m", task="ioi", model="toy", scores=scores, gqa="split", d_model=16,
                         strict=False)
    edges = json.loads(path.read_text())["edges"]
    group = scores[g.edge_index("m0->a1.g1<v>")].item()
    assert edges["m0->a1.h2<v>"]["score"] == edges["m0->a1.h3<v>"]["score"] == -group / 2
    assert edges["m0->a1.h2<q>"]["score"] == -scores[g.edge_index("m0->a1.h2<q>")].item()


def test_a_circuit_splitting_a_key_value_group_is_rejected(tmp_path):
    g = Graph.from_config(2, 4, n_kv_heads=2)
    c = Circuit.from_edges(g, ["input->a0.g0<k>", "a0.h0->logits", "a0.h1->logits"])
    (path,) = export_mib(tmp_path, g, method="m", task="ioi", model="toy", circuits=[c], gqa="split", d_model=16,
                         strict=False)
    doc = json.loads(path.read_text())
    doc["edges"]["input->a0.h1<k>"]["in_graph"] = False  # a0.h1 is in the circuit, its group's key edge is not
    with pytest.raises(CircuitFileError, match="input->a0.h1<k> is not in the circuit"):
        mib_from_dict(doc, g, gqa="split")


# ---- round trips and sign ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kv", [None, 2])
def test_round_trip_is_exact(tmp_path, kv):
    g = Graph.from_config(3, 4, n_kv_heads=kv)
    scores, mask = _random(g, seed=3)
    gqa = "split" if kv else "refuse"
    kw = dict(method="m", task="ioi", model="toy", d_model=16, gqa=gqa, strict=False)
    (imp,) = export_mib(tmp_path / "a", g, scores=scores, **kw)
    s, m = load_mib(imp, g, gqa=gqa)
    assert torch.equal(s, scores) and not m.any()

    c = Circuit(g, mask, scores=scores)  # circuits keep float32 scores
    (circ,) = export_mib(tmp_path / "b", g, circuits=[c], **kw)
    s, m = load_mib(circ, g, gqa=gqa)
    assert c.scores is not None
    assert torch.equal(m, c.mask) and torch.equal(s, c.scores.double())


def test_sign_follows_the_metric_direction(tmp_path):
    g = Graph.from_config(1, 2)
    scores, _ = _random(g)
    kw = dict(method="m", task="ioi", model="toy", d_model=16, strict=False)
    (up,) = export_mib(tmp_path / "up", g, scores=scores, **kw)
    (down,) = export_mib(tmp_path / "down", g, scores=scores, higher_is_better=False, **kw)
    e = "input->a0.h1<v>"
    assert json.loads(up.read_text())["edges"][e]["score"] == -scores[g.edge_index(e)].item()
    assert json.loads(down.read_text())["edges"][e]["score"] == scores[g.edge_index(e)].item()
    assert torch.equal(load_mib(down, g, higher_is_better=False)[0], scores)


def test_edge_scores_objects_are_accepted_and_node_scores_refused(tmp_path):
    g = Graph.from_config(1, 2)
    scores, _ = _random(g)
    kw = dict(method="m", task="ioi", model="toy", d_model=16, strict=False)
    (path,) = export_mib(tmp_path, g, scores=EdgeScores(g, scores, "eap"), **kw)
    assert torch.equal(load_mib(path, g)[0], scores)
    with pytest.raises(InputError, match="node-level"):
        export_mib(tmp_path, g, scores=EdgeScores(g, scores[:, 0], "eap", level="node"), **kw)


# ---- validation ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["cfg"].update(n_layers=2), "n_layers=2"),
        (lambda d: d["cfg"].update(parallel_attn_mlp=True), "parallel_attn_mlp"),
        (lambda d: d["edges"].pop("m0->logits"), "has 7 edges"),
        (lambda d: d["edges"].update({"m0->a0.h0<q>": d["edges"].pop("m0->logits")}), "'m0->a0.h0<q>' is not an"),
        (lambda d: d["edges"]["input->m0"].update(in_graph=1), 'boolean "in_graph"'),
        (lambda d: d["edges"]["input->m0"].update(score="0.1"), 'finite number "score"'),
        (lambda d: d["nodes"].pop("m0"), "node names"),
        (lambda d: d.pop("edges"), "not a MIB graph"),
    ],
)
def test_a_file_that_does_not_match_says_what_is_wrong_in_one_line(edit, message):
    doc = json.loads(HAND_WRITTEN)
    edit(doc)
    with pytest.raises(CircuitFileError, match=re.escape(message)) as e:
        mib_from_dict(doc, Graph.from_config(1, 1))
    assert "\n" not in str(e.value)


def test_strict_mode_checks_names_pairs_and_shapes(tmp_path):
    g = Graph.from_config(2, 2)
    scores, _ = _random(g)
    with pytest.raises(InputError, match="MIB's gpt2 has 12 x 12"):
        export_mib(tmp_path, g, method="m", task="ioi", model="gpt2", scores=scores)
    with pytest.raises(InputError, match="does not evaluate arc-easy on gpt2"):
        export_mib(tmp_path, g, method="m", task="arc_easy", model="gpt2", scores=scores)
    with pytest.raises(InputError, match="no model 'gpt-2'"):
        export_mib(tmp_path, g, method="m", task="ioi", model="gpt-2", scores=scores)
    with pytest.raises(InputError, match="splits on '_'"):
        export_mib(tmp_path, g, method="m", task="ioi", model="my_model", scores=scores, strict=False)
    with pytest.raises(InputError, match="pass d_model"):
        export_mib(tmp_path, g, method="m", task="ioi", model="toy", scores=scores, strict=False)
    bad = scores.clone()
    bad[g.edge_index("a0.h1->m1")] = float("nan")
    with pytest.raises(InputError, match="a0.h1->m1 is nan"):
        export_mib(tmp_path, g, method="m", task="ioi", model="toy", scores=bad, d_model=16, strict=False)
    with pytest.raises(InputError, match="nothing to export"):
        export_mib(tmp_path, g, method="m", task="ioi", model="toy", d_model=16, strict=False)
    assert not any(tmp_path.iterdir())


def test_task_names_are_spelled_as_mib_folders(tmp_path, monkeypatch):
    g = Graph.from_config(2, 2)
    _toy(monkeypatch, g)
    monkeypatch.setattr(mib, "MIB_PAIRS", mib.MIB_PAIRS | {("arc-easy", "toy")})
    (path,) = export_mib(tmp_path, g, method="EAP_patching_edge", task="arc_easy", model="toy", scores=_random(g)[0])
    assert path.relative_to(tmp_path).as_posix() == "EAP_patching_edge/arc-easy_toy/importances.json"


# ---- nine circuits -------------------------------------------------------------------------------------------------
def _budget_circuits(g: Graph, scores: torch.Tensor) -> list[Circuit]:
    """One circuit per MIB budget: the top-|score| edges, at most int(fraction x edges) of them."""
    order = torch.argsort(scores.abs().flatten().masked_fill(~g.valid.flatten(), -1), descending=True)
    out = []
    for frac in EDGE_FRACTIONS:
        mask = torch.zeros(g.n_src * g.n_dst, dtype=torch.bool)
        mask[order[: int(frac * g.n_edges)]] = True
        out.append(Circuit(g, mask.view(g.n_src, g.n_dst)))
    return out


def test_nine_circuits_are_written_smallest_first(tmp_path, monkeypatch):
    g = Graph.from_config(4, 4)
    _toy(monkeypatch, g)
    circuits = _budget_circuits(g, _random(g)[0])
    shuffled = [circuits[i] for i in (4, 0, 8, 2, 6, 1, 3, 7, 5)]
    paths = export_mib(tmp_path, g, method="acdc", task="ioi", model="toy", circuits=shuffled)
    folder = tmp_path / "acdc" / "ioi_toy"
    assert [p.name for p in paths] == [f"circuit_{i:02d}.json" for i in range(9)]
    assert sorted(q.name for q in folder.iterdir()) == [p.name for p in paths]
    for p, c in zip(paths, circuits, strict=True):
        assert torch.equal(load_mib(p, g)[1], c.mask)


def test_circuits_must_fit_mib_budgets(tmp_path, monkeypatch):
    g = Graph.from_config(4, 4)
    _toy(monkeypatch, g)
    circuits = _budget_circuits(g, _random(g)[0])
    with pytest.raises(InputError, match="takes 9 circuits"):
        export_mib(tmp_path, g, method="m", task="ioi", model="toy", circuits=circuits[:8])
    too_big = [*circuits[:8], Circuit.full(g)]
    with pytest.raises(InputError, match=r"within 50\.0% of its"):
        export_mib(tmp_path, g, method="m", task="ioi", model="toy", circuits=too_big)
    assert not any(tmp_path.iterdir())


# ---- files on disk -------------------------------------------------------------------------------------------------
def test_other_circuit_files_in_the_folder_are_refused(tmp_path):
    g = Graph.from_config(1, 2)
    scores, mask = _random(g)
    kw = dict(method="m", task="ioi", model="toy", d_model=16, strict=False)
    export_mib(tmp_path, g, circuits=[Circuit(g, mask), Circuit.full(g)], **kw)
    with pytest.raises(InputError, match="already holds circuit_00.json, circuit_01.json"):
        export_mib(tmp_path, g, scores=scores, **kw)
    export_mib(tmp_path, g, circuits=[Circuit(g, mask), Circuit.full(g)], **kw)  # same files again: fine


def test_writes_are_atomic_and_leave_no_temporary_files(tmp_path, monkeypatch):
    g = Graph.from_config(2, 2)
    scores, _ = _random(g)
    kw = dict(method="m", task="ioi", model="toy", d_model=16, strict=False)
    (path,) = export_mib(tmp_path, g, scores=scores, **kw)
    before = path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["importances.json"]

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("acdc.io.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        export_mib(tmp_path, g, scores=-scores, **kw)
    assert [p.name for p in path.parent.iterdir()] == ["importances.json"]
    assert path.read_bytes() == before
