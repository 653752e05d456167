"""load_model's specs and errors, and the CLI's one-line errors with exit status 2."""

from __future__ import annotations

import json
import time

import pytest
import torch
from acdc.cli.main import main
from click.testing import CliRunner

from acdc import Graph, load_model, masked_forward
from acdc.errors import ModelLoadError, UnknownZooModel, UnsupportedArchitecture
from acdc.models import random_gpt2_hf, word_level_tokenizer
from acdc.zoo import ZOO


@pytest.fixture(scope="module")
def local_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-gpt2"
    hf = random_gpt2_hf(n_layer=2, n_head=2, d_model=16, vocab=30, n_ctx=16, seed=3, init_std=0.1)
    hf.save_pretrained(path)
    word_level_tokenizer([f"w{i}" for i in range(30)]).save_pretrained(path)
    return path, hf


def test_load_local_directory(local_checkpoint):
    path, hf = local_checkpoint
    model = load_model(str(path))
    assert model.cfg.use_attn_result and model.cfg.use_split_qkv_input and model.cfg.use_hook_mlp_in
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    tokens = torch.randint(0, 30, (2, 7))
    with torch.no_grad():
        assert (model(tokens) - hf(tokens).logits).abs().max() <= 1e-5
        graph = Graph.from_model(model)
        ones = torch.ones(graph.n_src, graph.n_dst)
        assert (masked_forward(model, graph, tokens, tokens.flip(0), ones) - hf(tokens).logits).abs().max() <= 1e-4


def test_unknown_hub_model_fails_fast_with_one_line():
    t = time.time()
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache and the hub is unreachable") as e:
        load_model("acdc-test/no-such-model")
    assert "\n" not in str(e.value)
    assert time.time() - t < 15  # no 30-second retry loop


def test_bad_specs():
    with pytest.raises(ModelLoadError, match="no model directory at"):
        load_model("./no/such/dir")
    with pytest.raises(ModelLoadError, match="neither a local directory, a zoo:NAME nor a hub name"):
        load_model("not a model!")
    with pytest.raises(UnknownZooModel, match="unknown zoo model 'nope'; available: .*toy-induction"):
        load_model("zoo:nope")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    with pytest.raises(UnsupportedArchitecture, match="architecture BertForMaskedLM.*per-head q/k/v inputs"):
        load_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(ModelLoadError, match="not a readable Hugging Face config.json"):
        load_model(str(tmp_path))


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "nope"], "error: unknown task 'nope'; built-in tasks: induction, ioi, refusal (or give a path to a "
                          "YAML task file)"),
        (["scores", "ioi", "--split", "dev"], None),
        (["run", "induction", "--model", "./missing-dir"],
         "error: no model directory at missing-dir; give a Hugging Face checkpoint folder or zoo:NAME"),
        (["run", "induction", "--model", "zoo:nope"],
         f"error: unknown zoo model 'nope'; available: {', '.join(sorted(ZOO))}"),
        (["zoo", "train", "nope"], f"error: unknown zoo model 'nope'; available: {', '.join(sorted(ZOO))}"),
        (["scores", "ioi", "--device-map", "[1, 2]"],
         "error: --device-map must be a directive like auto or a JSON object of module -> device"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    if message is None:  # click's own usage error: a usage line, a hint and one error line
        assert lines[-1].startswith("Error: Invalid value for '--split'")
    else:
        assert lines == [message]


def test_cli_help_has_examples():
    for args in (["--help"], ["run", "--help"], ["pareto", "-h"], ["draw", "-h"], ["evaluate", "-h"], ["report", "-h"],
                 ["discover", "-h"], ["zoo", "--help"], ["zoo", "train", "--help"], ["zoo", "list", "-h"],
                 ["scores", "--help"], ["tasks", "--help"], ["tasks", "show", "-h"], ["tasks", "validate", "-h"],
                 ["tasks", "list", "-h"]):
        out = CliRunner().invoke(main, args).output
        assert "Example" in out, args


def test_device_map_passes_through_to_the_bridge(local_checkpoint):
    """An explicit device_map (every module placed on the CPU: the mechanism, not speed) loads through the bridge and
    the masked forward still reproduces the model; a map the bridge cannot dispatch fails in one line."""
    path, hf = local_checkpoint
    placement = {"transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.h.0": "cpu",
                 "transformer.h.1": "cpu", "transformer.ln_f": "cpu", "lm_head": "cpu"}
    model = load_model(str(path), device_map=placement)
    tokens = torch.randint(0, 30, (2, 7))
    graph = Graph.from_model(model)
    with torch.no_grad():
        ones = torch.ones(graph.n_src, graph.n_dst)
        assert (masked_forward(model, graph, tokens, tokens.flip(0), ones) - hf(tokens).logits).abs().max() <= 1e-4
    with pytest.raises(ModelLoadError) as e:
        load_model(str(path), device_map={**placement, "transformer.h.1": "meta"})
    assert "\n" not in str(e.value) and "meta" in str(e.value)
