"""The zoo's task models do their tasks: accuracy on held-out templates (never seen in training), and each task's
clean metric far from its counterfactual metric on its default model (the task is worth explaining).

Held-out prompts are built by the task registry itself from a copy of the task file restricted to the templates the
zoo model was not trained on (their indices are in the model's zoo.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from acdc.errors import InputError
from acdc.metrics import task_metric
from acdc.task import TaskFileError, builtin_dir, get_task, task_from_text
from acdc.zoo import zoo_model_path
from acdc.zoo.ioi import load_ioi_dataset
from acdc.zoo.refusal import RefusalData


def _heldout_task(name: str, zoo: str, dataset_key: tuple[str, ...]):
    meta = json.loads((zoo_model_path(zoo) / "zoo.json").read_text())
    held = meta["heldout_templates"]
    doc = yaml.safe_load((builtin_dir() / f"{name}.yaml").read_text())
    ds = doc
    for k in dataset_key:
        ds = ds[k]
    ds["templates"] = [ds["templates"][i] for i in held]
    doc["splits"] = {"train": 0.98, "validation": 0.01, "test": 0.01}  # every held-out prompt is usable
    return task_from_text(yaml.safe_dump(doc, sort_keys=False), builtin_dir()), held


def _last(logits: torch.Tensor, data) -> torch.Tensor:
    return logits[data.positions]  # one position per prompt: [B, V]


def test_toy_ioi_heldout_accuracy(toy_ioi):
    task, held = _heldout_task("ioi", "toy-ioi", ("dataset",))
    assert len(held) >= 2
    data = task.build(toy_ioi, 600, seed=123)
    with torch.no_grad():
        logits = toy_ioi(data.clean)
    last = _last(logits, data)
    io = data.answers[data.positions]
    acc = (last.argmax(-1) == io).float().mean()
    ld = task_metric(data, logits).mean()
    assert acc >= 0.95, acc
    assert ld >= 2.0, ld


def test_toy_refusal_heldout_rates(toy_refusal):
    task, held = _heldout_task("refusal", "toy-refusal", ("datasets", "synthetic"))
    data = task.build(toy_refusal, 300, seed=123)
    with torch.no_grad():
        harmful = task_metric(data, toy_refusal(data.clean))
        harmless = task_metric(data, toy_refusal(data.corrupt))
    assert (harmful > 0).float().mean() >= 0.95, harmful
    assert (harmless < 0).float().mean() >= 0.95, harmless


@pytest.mark.parametrize(
    ("name", "fixture", "clean_min", "corrupt_max"),
    [
        ("ioi", "toy_ioi", 2.0, 0.5),
        ("refusal", "toy_refusal", 2.0, -2.0),
        ("induction", "toy_induction", -1.5, -6.0),
    ],
)
def test_task_is_worth_explaining(name, fixture, clean_min, corrupt_max, request):
    """Clean and counterfactual metrics far apart on the default model (test split)."""
    model = request.getfixturevalue(fixture)
    data = get_task(name).build(model, 200, split="test")
    with torch.no_grad():
        clean = task_metric(data, model(data.clean)).mean()
        corrupt = task_metric(data, model(data.corrupt)).mean()
    assert clean >= clean_min, (clean, corrupt)
    assert corrupt <= corrupt_max, (clean, corrupt)


def test_ioi_flip_counterfactual_reverses_the_answer(toy_ioi):
    data = get_task("ioi").build(toy_ioi, 200, split="test", counterfactual="s2-io-flip")
    with torch.no_grad():
        clean = task_metric(data, toy_ioi(data.clean)).mean()
        flip = task_metric(data, toy_ioi(data.corrupt)).mean()
    assert clean >= 2.0 and flip <= 0.0, (clean, flip)


def test_zoo_models_have_their_tokenizers(toy_ioi, toy_refusal):
    assert Path(zoo_model_path("toy-ioi") / "tokenizer.json").is_file()
    tok = toy_refusal.tokenizer
    assert tok.chat_template and "<assistant>" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)


def test_zoo_trainers_read_their_data_through_the_task_registry(tmp_path):
    """The zoo trains on exactly what the validated task files say, and a task file it cannot use is a typed error."""
    assert load_ioi_dataset() == get_task("ioi").spec.dataset
    spec = get_task("refusal").spec
    syn = spec.all_datasets()["synthetic"]
    data = RefusalData.from_task()
    assert data.templates == tuple(syn.templates) and data.harmful == tuple(syn.words["harmful"])
    assert data.refusal == tuple(spec.answer.tokens) and data.compliance == tuple(spec.wrong.tokens)
    with pytest.raises(InputError, match="needs a templates dataset with the slots IO, S, PLACE, OBJECT"):
        load_ioi_dataset("induction")
    with pytest.raises(InputError, match="needs a 'synthetic' templates dataset"):
        RefusalData.from_task(get_task("ioi"))
    bad = tmp_path / "ioi.yaml"
    bad.write_text((builtin_dir() / "ioi.yaml").read_text().replace("    PLACE: places", "    PLACE: venues"))
    with pytest.raises(TaskFileError, match=r"ioi\.yaml:\d+: dataset\.slots\.PLACE: word list 'venues'"):
        load_ioi_dataset(bad)
