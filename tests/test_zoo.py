"""The zoo's toy-induction model: accuracy, the induction circuit itself, determinism, loading; and the zoo's
machinery: a model folder is only ever visible whole (the marker is written last and atomically), and every failure
a user can meet is a typed one-line error."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoTokenizer, GPT2LMHeadModel

from acdc.errors import UnknownZooModel, ZooTrainingError
from acdc.zoo import ZOO, ZooSpec, ensure_zoo_model, is_trained, zoo_dir
from acdc.zoo.induction import (
    Recipe,
    build_model,
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
    model = build_model(Recipe(), seed=0).eval()
    ev = evaluate(model, induction_batch(64, generator=torch.Generator().manual_seed(1)))
    assert ev["prev_token_scores"][0, 0] >= 0.8
    assert ev["induction_scores"].max() < 0.2  # the induction head is learned, not built


def test_unknown_zoo_model():
    with pytest.raises(UnknownZooModel, match="unknown zoo model 'nope'; available: .*toy-induction"):
        ensure_zoo_model("nope")


# ---- atomic writes and typed errors ---------------------------------------------------------------------------------
def tiny_induction(out_dir: Path, *, seed: int, progress: bool) -> dict:
    """A two-step toy-induction: the whole training and saving path in about a second."""
    return train_induction(out_dir, seed=seed, progress=progress, recipe=Recipe(steps=2, threads=1))


def trainer_without_marker(out_dir: Path, *, seed: int, progress: bool) -> dict:
    (Path(out_dir) / "model.safetensors").write_bytes(b"half a model")
    return {}


@pytest.fixture
def fake_zoo(tmp_path, monkeypatch):
    """An empty zoo folder, and ``add(name, trainer)`` to register a zoo entry trained by a function of this file."""
    monkeypatch.setenv("ACDC_ZOO_DIR", str(tmp_path / "zoo"))

    def add(name, trainer):
        monkeypatch.setitem(ZOO, name, ZooSpec(name, "a test model", f"{__name__}:{trainer.__name__}"))

    return add


def _disk_full(fd: int) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_the_marker_is_written_last_and_atomically(tmp_path, monkeypatch):
    """A failure while zoo.json is being written (a full disk) leaves no marker, not half of one: the folder never
    passes for a trained model."""
    monkeypatch.setattr(os, "fsync", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        tiny_induction(tmp_path / "m", seed=0, progress=False)
    names = sorted(f.name for f in (tmp_path / "m").iterdir())
    assert "model.safetensors" in names and "tokenizer.json" in names  # the model was saved first ...
    assert "zoo.json" not in names and not [n for n in names if n.startswith(".")]  # ... no marker, no temp file
    monkeypatch.undo()
    meta = tiny_induction(tmp_path / "m", seed=0, progress=False)
    assert (tmp_path / "m" / "zoo.json").read_text().startswith("{") and meta["recipe"]["steps"] == 2


def test_interrupted_training_leaves_no_model_and_a_typed_error(fake_zoo, monkeypatch):
    fake_zoo("tiny", tiny_induction)
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", _disk_full)
        with pytest.raises(ZooTrainingError, match=r"could not save zoo model 'tiny' in .*No space left") as e:
            ensure_zoo_model("tiny", progress=False)
    assert e.value.exit_code == 1 and "\n" not in str(e.value)
    assert not is_trained("tiny") and list(zoo_dir().iterdir()) == []  # no model folder, no temporary folder
    path = ensure_zoo_model("tiny", progress=False)
    assert is_trained("tiny") and sorted(p.name for p in zoo_dir().iterdir()) == ["tiny"] and path.name == "tiny"


def test_a_trainer_that_writes_no_marker_is_a_typed_error(fake_zoo):
    fake_zoo("broken", trainer_without_marker)
    with pytest.raises(ZooTrainingError, match="'broken' finished without writing zoo.json"):
        ensure_zoo_model("broken", progress=False)
    assert not is_trained("broken") and list(zoo_dir().iterdir()) == []


def test_a_diverging_recipe_is_a_typed_error(tmp_path):
    with pytest.raises(ZooTrainingError, match=r"training zoo:toy-induction diverged: the loss is nan at step \d+"):
        train_induction(tmp_path / "m", seed=0, progress=False, recipe=Recipe(steps=5, lr=1e38, threads=1))
    assert not (tmp_path / "m").exists()


def test_an_unwritable_zoo_folder_is_one_line_from_the_cli(tmp_path, monkeypatch):
    from acdc.cli.main import main

    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("ACDC_ZOO_DIR", str(blocked / "zoo"))
    with pytest.raises(ZooTrainingError, match="set ACDC_ZOO_DIR to a writable folder"):
        ensure_zoo_model("toy-induction", progress=False)
    r = CliRunner().invoke(main, ["zoo", "train", "toy-induction"])
    assert r.exit_code == 1, r.output
    assert r.output.count("\n") == 1 and "ACDC_ZOO_DIR" in r.output
