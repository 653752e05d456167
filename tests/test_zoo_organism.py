"""zoo:smollm2-refusal, the refusal model organism fine-tuned from SmolLM2-135M-Instruct: its training code on a tiny
random Llama (the cached forward pass is the model's own, the loss falls, the refusal/compliance split appears on
the training templates, only the last MLP moves, same seed -> same weights), and (slow) the real organism refusing
held-out templates in a plain forward pass and through the bridge."""

from __future__ import annotations

import json

import pytest
import torch

from acdc.models import random_llama_hf
from acdc.task import builtin_dir
from acdc.zoo import ZOO, ensure_zoo_model
from acdc.zoo.refusal import RefusalData, encode, evaluate, render_prompts
from acdc.zoo.smollm2_refusal import OrganismRecipe, answer_logits, fine_tune_refusal, mlp_inputs, shared_prefix
from acdc.zoo.train import last_logits, torch_threads

# Tiny ops run ~100x slower with 2 threads than with 1 when the other core is busy (a shared CI machine); these tests
# check behaviour, not the 2-thread reproducibility of the real recipe.
THREADS = 1
TINY = OrganismRecipe(steps=200, lr=3e-3, threads=THREADS)


def tiny_chat_llama(seed: int = 0):
    """A random 1-layer Llama over toy-refusal's word-level chat tokenizer (every template word, object and answer)."""
    data = RefusalData.from_task()
    tok = data.tokenizer()
    model = random_llama_hf(n_layer=1, n_head=4, n_kv_head=2, d_model=64, d_mlp=256, vocab=len(tok), n_ctx=64,
                            seed=seed, init_std=0.1)
    return model, tok, data


def test_cached_mlp_inputs_give_the_models_own_logits():
    """The shared-prefix forward pass and the last block's second half reproduce a plain forward pass, at the answer
    position and at every other position after the prefix."""
    model, tok, data = tiny_chat_llama()
    ids, last = encode(tok, render_prompts(data, [0, 7], "harmful", tok=tok)
                       + render_prompts(data, [3, 11], "harmless", tok=tok))
    p = shared_prefix(ids, last)
    assert p == 2 and tok.convert_ids_to_tokens(ids[0, :p].tolist()) == ["<bos>", "<user>"]
    with torch_threads(THREADS), torch.no_grad():
        x, p2 = mlp_inputs(model, ids, last, batch=7)
        assert p2 == p and x.shape == (ids.shape[0], ids.shape[1] - p, 64)
        plain = model(ids, attention_mask=(torch.arange(ids.shape[1]) <= last.unsqueeze(1)).long()).logits
        got = answer_logits(model, x.flatten(0, 1), chunk=50).view(x.shape[0], x.shape[1], -1)
        real = torch.arange(ids.shape[1] - p).unsqueeze(0) <= (last - p).unsqueeze(1)
        assert (got - plain[:, p:])[real].abs().max() <= 1e-4
        at_last, _ = last_logits(model, ids, last)
        assert (answer_logits(model, x[torch.arange(len(ids)), last - p]) - at_last).abs().max() <= 1e-4


def test_fine_tune_teaches_a_tiny_llama_to_refuse():
    model, tok, _ = tiny_chat_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch_threads(THREADS):
        out = fine_tune_refusal(model, tok, seed=0, recipe=TINY, curated=False)
    assert out["last_loss"] < 0.5 * out["first_loss"], out
    base, tuned = out["before"]["train"], out["train"]
    assert base["mean_score_harmful"] - base["mean_score_harmless"] < 0.5, base  # no split before training
    assert tuned["refusal_rate_harmful"] >= 0.95 and tuned["compliance_rate_harmless"] >= 0.95, tuned
    assert tuned["mean_score_harmful"] > 2.0 > -2.0 > tuned["mean_score_harmless"], tuned
    assert out["n_harmful"] == 3 * 16 and out["n_harmless"] == 3 * 20  # the held-out templates, every object
    # only the last layer's MLP moved; its inputs were cached, so every other weight is bit-identical
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.startswith("model.layers.0.mlp.") for n in moved), moved


def test_fine_tune_is_deterministic_and_measures_the_curated_pairs():
    outs, weights = [], []
    for _ in range(2):
        model, tok, _ = tiny_chat_llama()
        with torch_threads(THREADS):
            outs.append(fine_tune_refusal(model, tok, seed=3, recipe=OrganismRecipe(steps=5, threads=THREADS)))
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    cur = outs[0]["curated"]
    assert {k: v for k, v in outs[0].items() if not k.startswith("seconds")} == {
        k: v for k, v in outs[1].items() if not k.startswith("seconds")}
    lines = len((builtin_dir() / "refusal_pairs.jsonl").read_text().splitlines())
    assert cur["n_harmful"] == cur["n_harmless"] and cur["n_harmful"] + sum(cur["dropped"].values()) == lines
    assert outs[0]["before"]["curated"]["n_harmful"] == cur["n_harmful"]


def test_registered_as_a_real_model_organism():
    spec = ZOO["smollm2-refusal"]
    assert spec.kind == "real" and spec.licence.startswith("Apache-2.0") and callable(spec.train)
    assert "SmolLM2-135M-Instruct" in spec.description and "fine-tuned here" in spec.description


@pytest.mark.slow
def test_smollm2_refusal_refuses_heldout_templates():
    """The real organism (trained on first use, ~1-6 min on 2 cores): a plain forward pass of the saved checkpoint
    refuses the held-out templates' harmful requests and complies with their harmless ones (measured for seed 0:
    47/48 and 60/60; the bars sit a little under), and the task built on the bridge sees it too."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from acdc import get_task, load_model
    from acdc.metrics import task_metric

    path = ensure_zoo_model("smollm2-refusal", progress=False)
    meta = json.loads((path / "zoo.json").read_text())
    assert meta["seed"] == 0 and meta["trained"] == "model.layers.29.mlp"
    with torch_threads(2):
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(path)
        held = evaluate(hf, tok, meta["heldout_templates"])
        assert held["refusal_rate_harmful"] >= 0.95 and held["compliance_rate_harmless"] >= 0.95, held
        assert held["mean_score_harmful"] >= 5.0 and held["mean_score_harmless"] <= -5.0, held
        for k in ("refusal_rate_harmful", "compliance_rate_harmless", "mean_score_harmful", "mean_score_harmless"):
            assert abs(held[k] - meta[k]) <= 1e-2, (k, held[k], meta[k])  # the trainer's cached numbers are real

        model = load_model("zoo:smollm2-refusal")
        data = get_task("refusal").build(model, None, split="test", dataset="curated")  # all the split holds
        with torch.no_grad():
            harmful = task_metric(data, model(data.clean))
            harmless = task_metric(data, model(data.corrupt))
    assert (harmful - harmless).mean() >= 5.0, (harmful, harmless)

