"""Shared fixtures: small models built locally (no download) and the hook-based reference implementation."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny():
    from acdc.models import random_gpt2

    return random_gpt2(n_layer=3, n_head=4, d_model=32, vocab=50, n_ctx=32, seed=1, init_std=0.15)


@pytest.fixture(scope="session")
def tiny64():
    from acdc.models import random_gpt2

    return random_gpt2(n_layer=2, n_head=3, d_model=24, vocab=40, n_ctx=16, seed=2, dtype=torch.float64, init_std=0.15)


@pytest.fixture(scope="session")
def gpt2_small():
    """Randomly initialised model of GPT-2 small's shape (124M parameters), built locally."""
    from acdc.models import random_gpt2

    return random_gpt2(n_layer=12, n_head=12, d_model=768, vocab=50257, n_ctx=1024, seed=0)


@pytest.fixture(scope="session")
def toy_induction():
    """The zoo's induction model (trained on first use, then cached)."""
    from acdc import load_model

    return load_model("zoo:toy-induction")


CHAT = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}")


def word_model(texts: list[str], *, seed: int = 0, n_ctx: int = 64):
    """A tiny random GPT-2 whose word-level tokenizer knows every word of ``texts`` (and chat markers)."""
    from acdc.models import bridge_from_hf, random_gpt2_hf, word_level_tokenizer, word_level_vocab

    sp = ["<bos>", "<pad>", "<unk>", "<user>", "<assistant>"]
    vocab = sp + [w for w in word_level_vocab(texts) if w not in sp]
    tok = word_level_tokenizer(vocab, bos="<bos>", unk="<unk>", pad="<pad>", punctuation=True,
                               atomic=("<user>", "<assistant>"), chat_template=CHAT)
    hf = random_gpt2_hf(n_layer=2, n_head=2, d_model=16, vocab=len(vocab), n_ctx=n_ctx, seed=seed)
    return bridge_from_hf(hf, tok)


def task_words(*names: str) -> list[str]:
    """Every word of the built-in tasks ``names`` (templates, word lists, answer tokens, pair files)."""
    import json

    import yaml

    from acdc.task import builtin_dir

    texts: list[str] = []
    for name in names:
        y = yaml.safe_load((builtin_dir() / f"{name}.yaml").read_text())
        for ds in (y.get("datasets") or {"d": y.get("dataset")}).values():
            if ds["kind"] == "templates":
                texts += [t.replace("{", " ").replace("}", " ") for t in ds["templates"]]
                for words in ds["words"].values():
                    texts += words
            elif ds["kind"] == "pairs":
                for line in (builtin_dir() / ds["path"]).read_text().splitlines():
                    rec = json.loads(line)
                    texts += [rec["clean"], rec["counterfactual"]]
        for k in ("answer", "wrong"):
            texts += (y.get(k) or {}).get("tokens", [])
    return texts


@pytest.fixture(scope="session")
def words_model():
    """A tiny random model whose tokenizer covers the built-in ioi and refusal tasks."""
    return word_model(task_words("ioi", "refusal"))


@pytest.fixture(scope="session")
def toy_ioi():
    from acdc import load_model

    return load_model("zoo:toy-ioi")


@pytest.fixture(scope="session")
def toy_refusal():
    from acdc import load_model

    return load_model("zoo:toy-refusal")
