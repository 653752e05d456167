"""bench/induction_heads.py: the head scores on hand-made patterns with known answers, and on toy-induction."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

from acdc import Circuit, Graph, get_task


def _load() -> ModuleType:
    """bench/induction_heads.py as a module (bench/ is a folder of scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "induction_heads.py"
    spec = importlib.util.spec_from_file_location("induction_heads", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ih = _load()

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
