"""Tasks meet real models' conventions: BOS only when it is a real beginning-of-sequence token (not a chat marker
such as SmolLM2's ``<|im_start|>``), per-model settings found whatever the spelling of the model's path, pairs files
whose lines carry their own answers, and pairs whose answer is several tokens (an error naming the line, or dropped
and counted)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from acdc.task import TaskFileError, task_from_text

WORDS = ("When Mary and John went home , Anna gave Paul a book to bio weapon Sorry Sure red green blue one two three "
         "four five six seven eight nine ten cat dog sun").split()

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + ' ' + m['content'] + ' <|im_end|> ' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant ' }}{% endif %}")
# the same turns, the marker written through the bos_token variable: the template renders BOS as each turn's start
CHATML_VIA_BOS = ("{% for m in messages %}{{ bos_token + m['role'] + ' ' + m['content'] + ' <|im_end|> ' }}"
                  "{% endfor %}")


# the zoo's chat models: BOS <bos>, written once at the start through the bos_token variable
ZOO_CHAT = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def tiny_model(special: list[str], template: str | None, atomic: tuple[str, ...] = ()):
    """A tiny random GPT-2 with a word-level tokenizer over ``special + WORDS``; ``special[0]`` is its BOS."""
    from acdc.models import bridge_from_hf, random_gpt2_hf, word_level_tokenizer

    vocab = [*special, "<unk>", "user", "assistant", *WORDS]
    tok = word_level_tokenizer(vocab, bos=special[0], unk="<unk>", pad=special[-1], punctuation=True,
                               atomic=atomic, chat_template=template)
    return bridge_from_hf(random_gpt2_hf(n_layer=1, n_head=2, d_model=16, vocab=len(vocab), n_ctx=64, seed=0), tok)


@pytest.fixture(scope="module")
def models():
    chatml = ["<|im_start|>", "<|im_end|>"]  # SmolLM2's: BOS is the chat marker <|im_start|>
    return {
        "chatml": tiny_model(chatml, CHATML, atomic=tuple(chatml)),
        "chatml-via-bos": tiny_model(chatml, CHATML_VIA_BOS, atomic=tuple(chatml)),
        "gpt2-style": tiny_model(["<|endoftext|>"], None),  # GPT-2's: BOS <|endoftext|>, no chat template
        "zoo-style": tiny_model(["<bos>", "<user>", "<assistant>", "<pad>"], ZOO_CHAT,
                                atomic=("<user>", "<assistant>")),
    }


PLAIN = """
name: plain
description: d
models: {default: zoo:toy-ioi}
dataset:
  kind: templates
  templates: ["When {IO} and {S} went home , {S} gave a book to"]
  slots: {IO: names, S: names}
  words: {names: [Mary, John, Anna, Paul]}
  EXTRA
counterfactuals: {abc: {resample: [IO, S]}}
answer: {slot: IO, prefix: ""}
wrong: {slot: S, prefix: ""}
metric: {name: logit_diff}
splits: {train: 0.9, validation: 0.05, test: 0.05}
"""

REPEATED = """
name: rep
description: d
models: {default: zoo:toy-induction}
dataset: {kind: repeated_tokens, segment_length: [2, 3], filler_length: [0, 1], EXTRA}
counterfactuals: {fresh: {sequence: fresh}}
answer: {next_token: true}
metric: {name: logprob, positions: repeated}
"""


def first_tokens(model, text: str, extra: str = "") -> set[str]:
    d = task_from_text(text.replace("EXTRA", extra)).build(model, 4)
    return set(model.tokenizer.convert_ids_to_tokens(d.clean[:, 0].tolist()))


def test_bos_only_when_it_is_a_real_beginning_of_sequence(models):
    """Plain prompts (templates and repeated tokens) start with BOS for GPT-2-style and zoo-style tokenizers, not
    when BOS is a chat marker; an explicit prepend_bos decides either way."""
    marker = models["chatml"].tokenizer.bos_token
    for name in ("chatml", "chatml-via-bos"):
        assert first_tokens(models[name], PLAIN) == {"When"}, name
        assert marker not in first_tokens(models[name], REPEATED), name
        assert first_tokens(models[name], PLAIN, "prepend_bos: true") == {marker}
        assert first_tokens(models[name], REPEATED, "prepend_bos: true") == {marker}
    assert first_tokens(models["gpt2-style"], PLAIN) == {"<|endoftext|>"}
    assert first_tokens(models["gpt2-style"], REPEATED) == {"<|endoftext|>"}
    assert first_tokens(models["zoo-style"], PLAIN) == {"<bos>"}
    assert first_tokens(models["gpt2-style"], PLAIN, "prepend_bos: false") == {"When"}
    assert "<|endoftext|>" not in first_tokens(models["gpt2-style"], REPEATED, "prepend_bos: false")
    # a prompt rendered in the chat template starts as the template writes it
    d = task_from_text(PLAIN.replace("EXTRA", "chat_template: true")).build(models["chatml"], 2)
    assert models["chatml"].tokenizer.convert_ids_to_tokens(d.clean[0, :2].tolist()) == [marker, "user"]
    from acdc.task.prompts import bos_is_chat_marker

    assert [bos_is_chat_marker(m.tokenizer) for m in models.values()] == [True, True, False, False]


# ---- per-model settings by identity -----------------------------------------------------------------------------
IDENT = """
name: ident
description: d
models:
  default: zoo:toy-induction
  written_for:
    - {name: "ENTRY", dataset: b, token_range: [10, 30]}
datasets:
  a: {kind: repeated_tokens, segment_length: [2, 3]}
  b: {kind: repeated_tokens, segment_length: [2, 3], filler_length: [0, 1]}
counterfactuals: {fresh: {sequence: fresh}}
answer: {next_token: true}
metric: {name: logprob, positions: repeated}
"""


def test_written_for_matches_every_spelling_of_a_model(tmp_path, monkeypatch, models):
    """DIR, DIR/, ./DIR, the absolute path and ~/DIR are one model, on either side; zoo and hub names match
    themselves; a directory whose config.json records a hub name answers to it too."""
    home = tmp_path / "home"
    (home / "smol").mkdir(parents=True)
    (home / "other").mkdir()
    (home / "smol" / "config.json").write_text(json.dumps({"_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    spellings = ["smol", "smol/", "./smol", str(home / "smol"), "~/smol", "../home/smol"]
    for entry in spellings:
        t = task_from_text(IDENT.replace("ENTRY", entry), tmp_path)
        for spec in spellings:
            assert t.dataset_name_for(spec) == "b", (entry, spec)
        for spec in ("other", "./other", "zoo:toy-induction", "gpt2", None):
            assert t.dataset_name_for(spec) == "a", (entry, spec)
    for entry, hits, misses in [
        ("zoo:toy-induction", ["zoo:toy-induction"], ["zoo:toy-ioi", "smol"]),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", ["HuggingFaceTB/SmolLM2-135M-Instruct", "./smol", "~/smol/"],
         ["other", "gpt2"]),
    ]:
        t = task_from_text(IDENT.replace("ENTRY", entry), tmp_path)
        assert [t.dataset_name_for(s) for s in hits] == ["b"] * len(hits), entry
        assert [t.dataset_name_for(s) for s in misses] == ["a"] * len(misses), entry
    # the token range of the entry reaches the repeated-tokens builder through the same match
    model = models["gpt2-style"]
    t = task_from_text(IDENT.replace("ENTRY", "./smol/"), tmp_path)
    for spec, dataset, in_range in [("~/smol", "b", True), (str(home / "smol"), "b", True), ("other", "a", False)]:
        monkeypatch.setattr(model, "acdc_spec", spec, raising=False)
        d = t.build(model, 8)
        body = d.clean[:, 1:]
        assert d.info["dataset"] == dataset
        assert bool(((body >= 10) & (body < 30)).all()) == in_range, spec
    # so does a per-model default n (an explicit n still wins); other models keep defaults.n
    t = task_from_text(IDENT.replace("ENTRY", "./smol/").replace("token_range: [10, 30]", "n: 5")
                       + "defaults: {n: 7}\n", tmp_path)
    for spec, n_default in [("~/smol", 5), ("other", 7), (None, 7)]:
        monkeypatch.setattr(model, "acdc_spec", spec, raising=False)
        assert t.default_n(spec) == n_default
        assert len(t.build(model)) == n_default, spec
        assert len(t.build(model, 3)) == 3, spec
    with pytest.raises(TaskFileError, match="n"):
        task_from_text(IDENT.replace("token_range: [10, 30]", "n: 0"), tmp_path)
    from acdc.task.identity import canonical_model_spec

    assert {canonical_model_spec(s) for s in spellings} == {str((home / "smol").resolve())}
    assert [canonical_model_spec(s) for s in ("zoo:toy-ioi", "gpt2", "org/model")] == ["zoo:toy-ioi", "gpt2",
                                                                                       "org/model"]


# ---- pairs: answers on the lines, multi-token answers -----------------------------------------------------------
PAIRS = """
name: p
description: d
models: {default: zoo:toy-ioi}
dataset: {kind: pairs, path: pairs.jsonl EXTRA}
metric: {name: logit_diff}
splits: {train: 0.98, validation: 0.01, test: 0.01}
"""


def write_pairs(tmp_path: Path, lines: list[dict[str, str]], extra: str = "") -> Path:
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    f = tmp_path / "p.yaml"
    f.write_text(PAIRS.replace("EXTRA", extra))
    return f


LINES = [
    {"clean": "When Mary and John went home , John gave a book to", "counterfactual":
     "When Anna and Paul went home , Paul gave a book to", "answer": "Mary", "wrong": "John"},
    {"clean": "When Anna and Paul went home , Paul gave a book to", "counterfactual":
     "When Mary and John went home , John gave a book to", "answer": "Anna", "wrong": "Paul"},
    {"clean": "When John and Mary went home , Mary gave a book to", "counterfactual":
     "When Paul and Anna went home , Anna gave a book to", "answer": "bio weapon", "wrong": "Mary"},
    {"clean": "When Paul and Anna went home , Anna gave a book to", "counterfactual":
     "When John and Mary went home , Mary gave a book to", "answer": "Paul", "wrong": "Anna"},
]


def test_pairs_lines_carry_their_own_answers(tmp_path, models):
    from acdc.task import get_task

    model = models["zoo-style"]
    tok = model.tokenizer
    keep = [x for x in LINES if x["answer"] != "bio weapon"]
    d = get_task(write_pairs(tmp_path, keep)).build(model, len(keep))
    assert d.texts is not None and len(d) == 3
    by_text = {x["clean"]: x for x in keep}
    for i, (clean, _) in enumerate(d.texts):
        assert int(d.answers[i, 0]) == tok.convert_tokens_to_ids(by_text[clean]["answer"])
        assert d.wrong is not None and int(d.wrong[i, 0]) == tok.convert_tokens_to_ids(by_text[clean]["wrong"])
    # a line without its answer (and no task-level answer) is one line naming the line
    missing = [keep[0], {k: v for k, v in keep[1].items() if k != "answer"}]
    with pytest.raises(TaskFileError, match=r"^pairs\.jsonl:2: needs an 'answer' \(the task gives no answer of its "
                                            r"own\)$"):
        get_task(write_pairs(tmp_path, missing)).build(model)
    # templates still need a task-level answer
    with pytest.raises(TaskFileError, match=r"answer: give exactly one of slot, tokens or next_token"):
        task_from_text(PLAIN.replace("EXTRA", "").replace('answer: {slot: IO, prefix: ""}\n', ""))


def test_multi_token_answer_is_an_error_or_dropped_and_counted(tmp_path, models, caplog):
    from acdc.task import get_task

    model = models["zoo-style"]
    err = get_task(write_pairs(tmp_path, LINES, ", on_multi_token_answer: error"))
    with pytest.raises(TaskFileError, match=r"^pairs\.jsonl:3: answer: 'bio weapon' is not a single token .*"
                                            r"on_multi_token_answer: drop$") as e:
        err.build(model)
    assert "\n" not in str(e.value)
    drop = get_task(write_pairs(tmp_path, LINES, ", on_multi_token_answer: drop"))
    with caplog.at_level(logging.WARNING, logger="acdc.task.pairs"):
        d = drop.build(model)
    assert d.texts is not None and len(d) == 3
    assert LINES[2]["clean"] not in {c for c, _ in d.texts}
    assert d.info["dropped"] == {"length_mismatch": 0, "multi_token_answer": 1}
    assert any("dropped 1 pair" in r.getMessage() and "single token" in r.getMessage() for r in caplog.records)
    # dropping is per pair: the same tensors as a file without that line
    (tmp_path / "sub").mkdir()
    clean_file = get_task(write_pairs(tmp_path / "sub", [x for x in LINES if x is not LINES[2]]))
    same = clean_file.build(model, seed=0)
    assert sorted(map(tuple, same.clean.tolist())) == sorted(map(tuple, d.clean.tolist()))
    assert torch.equal(same.lengths.sort().values, d.lengths.sort().values)
