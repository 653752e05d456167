"""bench/induction_heads.py and bench/ioi_heads.py: the head scores on hand-made patterns with known answers, on
toy-induction and toy-ioi, and circuits held against head roles."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from acdc import Circuit, Graph, get_task


def _load(name: str) -> ModuleType:
    """bench/{name}.py as a module (bench/ is a folder of scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ih = _load("induction_heads")
ioi = _load("ioi_heads")

# [BOS, filler, x1 x2 x3, x1 x2 x3, tail, pad]: the metric reads 5 and 6 (their next token is in the copy).
TOKENS = torch.tensor([[0, 9, 3, 4, 5, 3, 4, 5, 7, 1]])
LENGTHS = torch.tensor([9])
POSITIONS = torch.zeros_like(TOKENS, dtype=torch.bool)
POSITIONS[0, 5:7] = True
EARLIER = {5: 2, 6: 3, 7: 4}


def one_hot_patterns(key: Callable[[int], int], n_layers: int = 2, n_heads: int = 3) -> torch.Tensor:
    """Patterns ``[L, 1, H, P, P]`` in which every head puts all attention of query ``i`` on ``key(i)``; padding
    rows attend to BOS."""
    p = TOKENS.shape[1]
    pat = torch.zeros(n_layers, 1, n_heads, p, p)
    for i in range(p):
        pat[:, 0, :, i, key(i) if i < int(LENGTHS[0]) else 0] = 1.0
    return pat


def scores(pat: torch.Tensor) -> dict[str, dict[str, float]]:
    return ih.scores_from_patterns(pat, TOKENS, POSITIONS, LENGTHS)


def test_earlier_copy() -> None:
    j = ih.earlier_copy(TOKENS)[0].tolist()
    assert j == [-1, -1, -1, -1, -1, 2, 3, 4, -1, -1]
    assert ih.earlier_copy(torch.tensor([[5, 6, 5, 5]]))[0].tolist() == [-1, -1, 0, 2]  # the latest copy


def test_previous_token_pattern() -> None:
    s = scores(one_hot_patterns(lambda i: max(i - 1, 0)))
    assert set(s) == {f"a{layer}.h{h}" for layer in range(2) for h in range(3)}
    for head in s.values():
        # padding attends to BOS here; a score of exactly 1 means it was left out
        assert head["prev_token"] == pytest.approx(1.0)
        assert head["induction"] == pytest.approx(0.0)
        assert head["duplicate"] == pytest.approx(0.0)
        assert head["bos"] == pytest.approx(0.0)


def test_induction_and_duplicate_patterns() -> None:
    ind = scores(one_hot_patterns(lambda i: EARLIER[i] + 1 if i in EARLIER else 0))
    dup = scores(one_hot_patterns(lambda i: EARLIER.get(i, 0)))
    for head in ind.values():
        # previous-token 1/8: of the 8 real non-BOS positions only position 1 (resting on BOS) hits i - 1
        assert (head["induction"], head["duplicate"], head["prev_token"]) == pytest.approx((1.0, 0.0, 1 / 8))
    for head in dup.values():
        assert (head["induction"], head["duplicate"]) == pytest.approx((0.0, 1.0))


def test_scores_are_means_and_roles_are_per_head() -> None:
    """Half the attention on the target gives 0.5; heads differ; roles use a strict threshold."""
    p = TOKENS.shape[1]
    pat = torch.zeros(1, 1, 2, p, p)
    for i in range(p):
        pat[0, 0, 0, i, max(i - 1, 0)] = 1.0
        if i in EARLIER:
            pat[0, 0, 1, i, EARLIER[i] + 1] = 0.5
            pat[0, 0, 1, i, 0] = 0.5
        else:
            pat[0, 0, 1, i, 0] = 1.0
    s = scores(pat)
    assert s["a0.h1"]["induction"] == pytest.approx(0.5)
    assert s["a0.h1"]["bos"] == pytest.approx(0.5)
    assert ih.roles(s) == {"prev_token": ["a0.h0"], "induction": ["a0.h1"], "duplicate": []}
    assert ih.roles(s, threshold=0.5)["induction"] == []


def test_composition_edges() -> None:
    g = Graph.from_config(2, 4)
    c = Circuit.from_edges(g, ["a0.h0->a1.h2<k>", "a0.h0->a1.h2<q>", "a0.h1->a1.h2<v>", "a0.h0->a1.h3<v>",
                               "input->a1.h2<k>", "a1.h2->logits"])
    assert ih.composition_edges(c, ["a0.h0"], ["a1.h2"]) == ["a0.h0->a1.h2<q>", "a0.h0->a1.h2<k>"]
    assert ih.composition_edges(c, ["a0.h0", "a0.h1"], ["a1.h2", "a1.h3"]) == [
        "a0.h0->a1.h2<q>", "a0.h0->a1.h2<k>", "a0.h0->a1.h3<v>", "a0.h1->a1.h2<v>"]
    assert ih.composition_edges(c, ["a1.h2"], ["a0.h0"]) == []
    lines = ih.describe_circuit(c, ["a0.h0"], ["a1.h2"])
    assert any("K-composition present" in line for line in lines)
    lines = ih.describe_circuit(c, ["a0.h0", "a0.h1"], ["a1.h2", "a1.h3"], limit=1)
    assert lines[2:4] == ["    a0.h0->a1.h2<q>  (Q-composition)", "    ... and 3 more"]
    # grouped-query attention: the key input is the shared group's
    gq = Circuit.from_edges(Graph.from_config(2, 4, 2), ["a0.h0->a1.g1<k>"])
    assert ih.composition_edges(gq, ["a0.h0"], ["a1.h3"]) == ["a0.h0->a1.g1<k>"]
    assert ih.composition_edges(gq, ["a0.h0"], ["a1.h1"]) == []


def test_toy_induction_has_previous_token_and_induction_heads(toy_induction) -> None:
    """Measured (200 test prompts, seed 0): a0.h0 previous-token 0.867, other layer-0 heads <= 0.07; layer 1's
    four heads induction 0.948-0.979, layer 0's <= 0.09; no duplicate-token head (all <= 0.09)."""
    data = get_task("induction").build(toy_induction, 100, seed=0, split="test")
    hooked = ih.attention_patterns(toy_induction, data.clean)
    assert hooked.shape == (2, 100, 4, data.clean.shape[1], data.clean.shape[1])
    # the hooks and a hand-computed forward from the plain weights agree
    torch.testing.assert_close(hooked, ih.patterns_from_weights(toy_induction, data.clean), atol=1e-4, rtol=0)
    s = ih.scores_from_patterns(hooked, data.clean, data.positions, data.lengths)
    assert max(s[f"a0.h{h}"]["prev_token"] for h in range(4)) > 0.5
    assert max(s[f"a1.h{h}"]["induction"] for h in range(4)) > 0.5
    found = ih.roles(s)
    assert all(h.startswith("a0.") for h in found["prev_token"])
    assert found["induction"] and all(h.startswith("a1.") for h in found["induction"])


def test_head_weights_and_role_lines() -> None:
    """A head is used when an edge leaves it; its weight is the |score| of those edges; an edge into a shared key
    reader does not make the group's other heads used."""
    g = Graph.from_config(2, 4, 2)
    c = Circuit.from_edges(g, ["input->a0.g0<v>", "a0.h0->a1.g1<k>", "a0.h1->a1.h3<q>", "a1.h3->logits",
                               "a0.h0->logits"])
    assert ih.head_weights(c) == {"a0.h0": 2.0, "a0.h1": 1.0, "a1.h3": 1.0}  # edge counts without scores
    scores = torch.zeros(g.n_src, g.n_dst)
    for edge, value in [("a0.h0->a1.g1<k>", -0.5), ("a0.h0->logits", 0.25), ("a0.h1->a1.h3<q>", 2.0),
                        ("a1.h3->logits", -3.0), ("a0.h2->logits", 9.0)]:  # a0.h2 is not in the circuit
        scores[g.edge_index(edge)] = value
    c.scores = scores
    assert list(ih.head_weights(c).items()) == [("a1.h3", 3.0), ("a0.h1", 2.0), ("a0.h0", 0.75)]
    found = {"induction": ["a1.h3", "a1.h2"], "prev_token": []}
    lines = ih.role_lines(c, found, ih.ROLE_NAMES, top=2)
    assert "  induction heads used 1/2: a1.h3; missed: a1.h2" in lines
    assert "  previous-token heads used 0/0: -; missed: -" in lines
    assert lines[-1] == "  of these, no role: a0.h1"


# ---- bench/ioi_heads.py -------------------------------------------------------------------------------------------
# Two ABBA-like prompts [w, IO, w, S, w, w, S, w, END, pad] (IO 21, S 22; the second prompt names them the other way
# round, BABA) and one prompt whose IO never appears before END, which every score must leave out.
IOI_TOKENS = torch.tensor([[10, 21, 11, 22, 12, 13, 22, 14, 15, 0],
                           [10, 22, 11, 21, 12, 13, 22, 14, 15, 0],
                           [10, 23, 11, 22, 12, 13, 22, 14, 15, 21]])
IOI_END = 8
IOI_POSITIONS = torch.zeros_like(IOI_TOKENS, dtype=torch.bool)
IOI_POSITIONS[:, IOI_END] = True
IOI_ANSWERS = torch.full_like(IOI_TOKENS, 21)
IOI_WRONG = torch.full_like(IOI_TOKENS, 22)
IO_AT, S1_AT, S2_AT = [1, 3, 1], [3, 1, 1], 6


def test_name_positions() -> None:
    names = ioi.name_positions(IOI_TOKENS, IOI_POSITIONS, IOI_ANSWERS, IOI_WRONG)
    assert names.end.tolist() == [8, 8, 8]
    assert names.s2.tolist() == [6, 6, 6]
    assert names.io[0].nonzero().flatten().tolist() == [1]
    assert names.s[1].nonzero().flatten().tolist() == [1, 6]
    assert names.io[2].sum() == 0  # the 21 after END does not count
    assert names.keep.tolist() == [True, True, False]
    with pytest.raises(ValueError, match="one position per prompt"):
        ioi.name_positions(IOI_TOKENS, torch.ones_like(IOI_POSITIONS), IOI_ANSWERS, IOI_WRONG)


def ioi_patterns() -> torch.Tensor:
    """Patterns ``[2, 3, 4, P, P]``. Every query rests on position 0 except: from END, a0.h0 attends to IO, a0.h1 to
    S2, a0.h2 half to IO and half to S1, a0.h3 to position 0; from S2, a0.h0 attends to S1 and a0.h1 to S1 + 1; in
    the prompt left out, every head attends from END to position 3 (S1). Layer 1 rests everywhere."""
    b, p = IOI_TOKENS.shape
    pat = torch.zeros(2, b, 4, p, p)
    pat[..., 0] = 1.0
    for row in range(b):
        def put(head: int, query: int, keys: dict[int, float], row: int = row) -> None:
            pat[0, row, head, query] = 0.0
            for key, w in keys.items():
                pat[0, row, head, query, key] += w

        if row == 2:
            for head in range(4):
                put(head, IOI_END, {3: 1.0})
            continue
        put(0, IOI_END, {IO_AT[row]: 1.0})
        put(1, IOI_END, {S2_AT: 1.0})
        put(2, IOI_END, {IO_AT[row]: 0.5, S1_AT[row]: 0.5})
        put(0, S2_AT, {S1_AT[row]: 1.0})
        put(1, S2_AT, {S1_AT[row] + 1: 1.0})
    return pat


def test_ioi_scores_on_known_patterns() -> None:
    names = ioi.name_positions(IOI_TOKENS, IOI_POSITIONS, IOI_ANSWERS, IOI_WRONG)
    s = ioi.ioi_scores_from_patterns(ioi_patterns(), IOI_TOKENS, names)
    assert set(s) == {f"a{layer}.h{h}" for layer in range(2) for h in range(4)}
    keys = ("name_mover", "io", "s", "s2", "duplicate", "induction")
    expected = {"a0.h0": (1.0, 1.0, 0.0, 0.0, 1.0, 0.0), "a0.h1": (-1.0, 0.0, 1.0, 1.0, 0.0, 1.0),
                "a0.h2": (0.0, 0.5, 0.5, 0.0, 0.0, 0.0), "a0.h3": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)}
    expected.update({f"a1.h{h}": (0.0,) * 6 for h in range(4)})
    for head, values in expected.items():
        assert tuple(s[head][k] for k in keys) == pytest.approx(values), head
    assert ioi.ioi_roles(s) == {"name_mover": ["a0.h0"], "s2": ["a0.h1"], "duplicate": ["a0.h0"],
                                "induction": ["a0.h1"], "prev_token": []}
    assert ioi.ioi_roles(s, nm_threshold=1.0)["name_mover"] == []  # the threshold is strict
    no_prompt = names._replace(keep=torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="no prompt"):
        ioi.ioi_scores_from_patterns(ioi_patterns(), IOI_TOKENS, no_prompt)


def test_toy_ioi_heads_suppress_s(toy_ioi) -> None:
    """Measured (200 test prompts, seed 0): toy-ioi's layer-1 heads attend from END to S2 (0.79-0.98) and not to IO
    (<= 0.02), its layer-0 heads split END's attention between the names (name-mover -0.04..0.02): no name mover;
    the model answers by suppressing S."""
    data = get_task("ioi").build(toy_ioi, 100, seed=0, split="test")
    s, names = ioi.ioi_head_scores(toy_ioi, data)
    assert bool(names.keep.all())
    for head in s.values():
        assert head["name_mover"] == pytest.approx(head["io"] - head["s"])
        assert head["io"] + head["s"] <= 1 + 1e-5
        assert head["s2"] <= head["s"] + 1e-5
    found = ioi.ioi_roles(s)
    assert found["name_mover"] == []
    assert found["s2"] == [f"a1.h{h}" for h in range(4)]
    assert all(abs(s[f"a0.h{h}"]["name_mover"]) < 0.1 for h in range(4))
