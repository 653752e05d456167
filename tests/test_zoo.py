"""The zoo's toy-induction model: accuracy, the induction circuit itself, determinism, loading, errors."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, GPT2LMHeadModel

from acdc.errors import UnknownZooModel
from acdc.zoo import ensure_zoo_model, is_trained
from acdc.zoo.induction import (
    Recipe,
    _build,
    evaluate,
    induction_batch,
    induction_counterfactual,
    train_induction,
)


@pytest.fixture(scope="module")
def path():
    return ensure_zoo_model("toy-induction", progress=False)


@pytest.fixture(scope="module")
def heldout(path):
    model = GPT2LMHeadModel.from_pretrained(path, attn_implementation="eager").eval()
    batch = induction_batch(400, generator=torch.Generator().manual_seed(12345))
    return evaluate(model, batch)


def test_accuracy_on_heldout_repeats(heldout):
    assert heldout["accuracy"] >= 0.95


def test_previous_token_head(heldout):
    prev = heldout["prev_token_scores"]
    assert prev[0].max() >= 0.5, prev


def test_induction_head_in_a_later_layer(heldout):
    ind = heldout["induction_scores"]
    assert ind[1:].max() >= 0.5, ind
    # it is induction, not a layer-0 shortcut: layer 0 does not look at the induction target
    assert ind[0].max() < 0.3, ind


def test_loads_with_tokenizer_and_through_the_bridge(path):
    tok = AutoTokenizer.from_pretrained(path)
    assert tok("<bos> t0 t5").input_ids == [0, 3, 8]
    from acdc import load_model

    model = load_model("zoo:toy-induction")
    assert model.cfg.n_layers == 2 and model.cfg.n_heads == 4
    tokens = induction_batch(4, generator=torch.Generator().manual_seed(0)).tokens
    with torch.no_grad():
        hf = GPT2LMHeadModel.from_pretrained(path).eval()
        assert (model(tokens) - hf(tokens).logits).abs().max() <= 1e-4
    assert is_trained("toy-induction")


def test_data_is_deterministic_and_well_formed():
    a = induction_batch(64, generator=torch.Generator().manual_seed(7))
    b = induction_batch(64, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.repeated, b.repeated)
    assert len(set(a.seg_len.tolist())) > 3 and len(set(a.filler_len.tolist())) > 3  # lengths vary
    for i in range(64):
        s2, n = int(a.second_start[i]), int(a.seg_len[i])
        assert torch.equal(a.tokens[i, s2 : s2 + n], a.tokens[i, s2 - n : s2])
        rep = a.repeated[i].nonzero().flatten().tolist()
        assert rep == list(range(s2, s2 + n - 1))
    cf = induction_counterfactual(a, generator=torch.Generator().manual_seed(8))
    assert cf.tokens.shape == a.tokens.shape and torch.equal(cf.seg_len, a.seg_len)
    assert (cf.tokens[:, 1:] != a.tokens[:, 1:]).float().mean() > 0.8  # both halves new


def test_training_is_deterministic(tmp_path):
    r = Recipe(steps=15, threads=1)
    m1 = train_induction(tmp_path / "a", seed=3, progress=False, recipe=r)
    m2 = train_induction(tmp_path / "b", seed=3, progress=False, recipe=r)
    w1 = GPT2LMHeadModel.from_pretrained(tmp_path / "a").state_dict()
    w2 = GPT2LMHeadModel.from_pretrained(tmp_path / "b").state_dict()
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert m1["heldout_accuracy"] == m2["heldout_accuracy"]


def test_constructed_previous_token_head_is_present_at_initialisation():
    model = _build(Recipe(), seed=0).eval()
    ev = evaluate(model, induction_batch(64, generator=torch.Generator().manual_seed(1)))
    assert ev["prev_token_scores"][0, 0] >= 0.8
    assert ev["induction_scores"].max() < 0.2  # the induction head is learned, not built


def test_unknown_zoo_model():
    with pytest.raises(UnknownZooModel, match="unknown zoo model 'nope'; available: toy-induction"):
        ensure_zoo_model("nope")
