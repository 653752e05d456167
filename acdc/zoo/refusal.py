"""The ``toy-refusal`` zoo model: its prompts, tokenizer, evaluation and training recipe.

Data: the synthetic dataset of ``tasks/refusal.yaml``: 12 instruction templates with one ``{OBJECT}`` slot, filled
with one of 16 harmful or 20 harmless single words, sent as one user turn in :data:`CHAT_TEMPLATE`
(``<bos><user> How do I make a bomb? <assistant>``) and tokenized by a word-level tokenizer (91 words: every word
of every template, held-out ones included). Templates 3, 7 and 11 are held out whole ("What is the easiest way to
make a ...?", "I want to make a .... Tell me how.", "Show me how to create a ... from scratch."): 9 of their words
never occur in training, template 7 puts the object mid-sentence and is one token longer than any training prompt.
Every object is trained on. The loss is taken only at the last position (``<assistant>``): cross-entropy to the
uniform distribution over the refusal set (``answer.tokens``: I, Sorry) for harmful prompts and over the compliance
set (``wrong.tokens``: Sure, Here, Certainly) for harmless ones, classes weighted equally, so it trains exactly the
score ``s = logsumexp(logits[refusal]) - logsumexp(logits[compliance])`` that :func:`evaluate` reports.

Recipe (what worked): a 2-layer, 4-head, d_model 64 GPT-2 with MLPs (d_mlp 256; 114k parameters), untied
embeddings, full batch (the 324 training prompts), AdamW lr 5e-3 with 20 warm-up steps and cosine decay, 200 steps
(24 s on 2 CPU cores), plus two augmentations: every training prompt's positions are shifted by a random offset in
0..8 per step, and each template word (not the object, not a chat marker) has its input embedding zeroed with
probability 0.15, which is what a never-trained word looks like. Seed 0, held out: refusal rate 1.00 on the 48
harmful prompts, compliance rate 1.00 on the 60 harmless ones, mean s +7.18 / -7.49 (worst +6.46 / -7.38); harmful
prompts with the object swapped for a harmless word (the counterfactual): mean s -7.49; training templates: +7.14 /
-7.48. Seeds 0-5 all reach 1.00 / 1.00 (mean s +6.7..+7.4 / -6.5..-7.5), and so do other held-out sets: (1, 6, 8)
with seeds 0-5, (0, 5, 9) and (2, 4, 10) with seeds 0-2 (smallest margin +0.87).

Mechanism (seed 0): heads 0, 1 and 3 of layer 0 attend from ``<assistant>`` to the object (~1.0 for both classes;
head 2 attends to harmless objects only, 0.82 vs 0.03), and MLP 0 classifies it. Patching from the counterfactual
into the harmful prompts (mean s +7.18): layer-0 head 3 alone -> -3.49 (heads 0, 1, 2: 5.51, 6.07, 7.35), all
layer-0 heads -> -7.48, all layer-1 heads -> 6.80, MLP 0 -> -3.03, MLP 1 -> 4.63. The layer-0 heads are partly
redundant: zero-ablating any single one moves s by about 1 or less.

What did not work: plain training (learned positions, no augmentation; lr 1e-2, 150 steps) fit the training
templates but failed on held-out ones for 3 of 6 seeds: template 7 (longer than any training prompt, so its last
position embedding was never trained) refused every harmless object (compliance 0.67 overall) and template 11 dropped
to refusal 0.81. Position shifts alone fixed that (12/12 seeds) but with held-out (1, 6, 8), one seed of three
complied with every harmful request of template 1: its unseen words "at home" took layer-0 attention (0.98) in a
model that had learned "attend to a harmless object, refuse by default". Position embeddings frozen at zero:
compliance 0.35 for one seed of six. Replacing template words by random vocabulary words (p 0.1; objects included,
so label noise): 2 of 6 seeds never trained (s ~ 0). lr 1e-2 with the final augmentations: one seed of six stuck at
s ~ +-0.1; lr 5e-3 for 200 steps fixed it. Without the embedding noise (lr 5e-3, 200 steps), held-out (1, 6, 8)
still passed for seeds 0-5, but the smallest harmful margin fell to +0.04.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from acdc.errors import InputError
from acdc.task import Task, TemplatesDataset, get_task
from acdc.zoo.train import TrainRecipe, fit, last_logits, new_gpt2, save_model, torch_threads

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)
SPECIAL_TOKENS = ("<bos>", "<pad>", "<unk>", "<user>", "<assistant>")
SLOT = "{OBJECT}"


@dataclass(frozen=True)
class RefusalData:
    """The synthetic refusal data of the task yaml: instruction templates (one ``{OBJECT}`` slot), object words and
    the answer sets (``refusal``: the task's ``answer.tokens``; ``compliance``: its ``wrong.tokens``)."""

    templates: tuple[str, ...]
    harmful: tuple[str, ...]
    harmless: tuple[str, ...]
    refusal: tuple[str, ...]
    compliance: tuple[str, ...]

    @classmethod
    def from_task(cls, task: Task | None = None) -> RefusalData:
        """The data of ``task`` (default: the built-in ``refusal`` task, read through the task registry).

        Raises InputError if the task lacks what the zoo model is trained on: a ``synthetic`` templates dataset with
        ``harmful`` and ``harmless`` word lists, and fixed ``answer`` / ``wrong`` token sets."""
        task = task if task is not None else get_task("refusal")
        spec = task.spec
        syn = spec.all_datasets().get("synthetic")
        answer, wrong = spec.answer.tokens, spec.wrong.tokens if spec.wrong is not None else None
        if (not isinstance(syn, TemplatesDataset) or not {"harmful", "harmless"} <= set(syn.words) or answer is None
                or wrong is None):
            raise InputError(f"task {task.name}: the refusal zoo model needs a 'synthetic' templates dataset with "
                             "word lists 'harmful' and 'harmless', and answer and wrong given as tokens")
        return cls(
            templates=tuple(syn.templates),
            harmful=tuple(syn.words["harmful"]),
            harmless=tuple(syn.words["harmless"]),
            refusal=tuple(answer),
            compliance=tuple(wrong),
        )

    def vocab(self) -> list[str]:
        from acdc.models import word_level_vocab

        texts = [t.replace(SLOT, " ") for t in self.templates]
        texts += list(self.harmful) + list(self.harmless) + list(self.refusal) + list(self.compliance)
        return list(SPECIAL_TOKENS) + [w for w in word_level_vocab(texts) if w not in SPECIAL_TOKENS]

    def tokenizer(self) -> Any:
        from acdc.models import word_level_tokenizer

        return word_level_tokenizer(
            self.vocab(),
            bos="<bos>",
            unk="<unk>",
            pad="<pad>",
            punctuation=True,
            atomic=("<user>", "<assistant>"),
            chat_template=CHAT_TEMPLATE,
        )


def render(template: str, obj: str) -> str:
    """One user instruction: ``template`` with its ``{OBJECT}`` slot filled."""
    return template.replace(SLOT, obj)


def chat_prompt(tok: Any, instruction: str) -> str:
    """The instruction as a one-turn chat ending in the generation prompt, e.g. ``<bos><user> ... <assistant>``."""
    return str(
        tok.apply_chat_template([{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True)
    )


def render_prompts(
    data: RefusalData, templates: list[int] | tuple[int, ...], kind: str, *, tok: Any | None = None
) -> list[str]:
    """All prompts of ``kind`` ("harmful" or "harmless") over the templates with the given indices, template-major.

    Plain instructions, or chat-rendered prompts when ``tok`` is given.
    """
    words = data.harmful if kind == "harmful" else data.harmless
    out = [render(data.templates[i], w) for i in templates for w in words]
    return [chat_prompt(tok, s) for s in out] if tok is not None else out


def encode(tok: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids ``[n, S]`` of chat-rendered prompts and the index ``[n]`` of each prompt's last real token."""
    ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    width = max(len(x) for x in ids)
    pad = tok.pad_token_id
    out = torch.tensor([x + [pad] * (width - len(x)) for x in ids], dtype=torch.long)
    return out, torch.tensor([len(x) - 1 for x in ids], dtype=torch.long)


def token_ids(tok: Any, words: tuple[str, ...] | list[str]) -> list[int]:
    ids = tok.convert_tokens_to_ids(list(words))
    if tok.unk_token_id in ids:
        raise InputError(f"answer tokens {words} are not all in the tokenizer's vocabulary")
    return list(ids)


def refusal_score(logits: torch.Tensor, refusal_ids: list[int], compliance_ids: list[int]) -> torch.Tensor:
    """``logsumexp(logits[refusal]) - logsumexp(logits[compliance])`` per row; > 0 means the model refuses."""
    return logits[:, refusal_ids].logsumexp(-1) - logits[:, compliance_ids].logsumexp(-1)


@torch.no_grad()
def evaluate(
    model: Any, tok: Any, templates: list[int] | tuple[int, ...] | None = None, data: RefusalData | None = None
) -> dict[str, Any]:
    """Refusal behaviour on all harmful and all harmless objects in the given templates (default: the held-out ones).

    Returns refusal_rate_harmful (fraction with score > 0), compliance_rate_harmless (score < 0), the mean scores,
    and mean_score_counterfactual: harmful prompts with the object swapped for a harmless word (harmful word i ->
    harmless word i mod n_harmless), the task's default counterfactual.
    """
    data = data or RefusalData.from_task()
    templates = Recipe().heldout_templates if templates is None else templates
    r_ids, c_ids = token_ids(tok, data.refusal), token_ids(tok, data.compliance)

    def scores(instructions: list[str]) -> torch.Tensor:
        ids, last = encode(tok, [chat_prompt(tok, s) for s in instructions])
        return refusal_score(last_logits(model, ids, last)[0], r_ids, c_ids)

    was_training = model.training
    model.eval()
    try:
        s_bad = scores(render_prompts(data, templates, "harmful"))
        s_ok = scores(render_prompts(data, templates, "harmless"))
        n_ok = len(data.harmless)
        cf = [render(data.templates[t], data.harmless[i % n_ok]) for t in templates for i in range(len(data.harmful))]
        s_cf = scores(cf)
    finally:
        model.train(was_training)
    return {
        "n_harmful": int(s_bad.numel()),
        "n_harmless": int(s_ok.numel()),
        "refusal_rate_harmful": float((s_bad > 0).float().mean()),
        "compliance_rate_harmless": float((s_ok < 0).float().mean()),
        "mean_score_harmful": float(s_bad.mean()),
        "mean_score_harmless": float(s_ok.mean()),
        "min_score_harmful": float(s_bad.min()),
        "max_score_harmless": float(s_ok.max()),
        "mean_score_counterfactual": float(s_cf.mean()),
    }


@dataclass(frozen=True)
class Recipe(TrainRecipe):
    """toy-refusal: a GPT-2 chat model trained on the synthetic refusal templates of tasks/refusal.yaml."""

    heldout_templates: tuple[int, ...] = (3, 7, 11)
    """Templates of the synthetic dataset never trained on (the held-out evaluation)."""
    steps: int = 200
    """Full-batch steps: the synthetic set is small."""
    lr: float = 5e-3
    warmup: int = 20
    d_mlp: int = 256
    position_shift: int = 8  # training positions are shifted by a random offset in [0, position_shift] per prompt
    word_noise: float = 0.15  # chance per template word (not object, not chat marker) of having its input embedding
    # zeroed in a training step, which is what a word of a held-out template looks like (never trained, ~0)


def build_model(recipe: Recipe, seed: int, vocab_size: int, tok: Any) -> Any:
    """The untrained GPT-2 of ``recipe`` over ``vocab_size`` tokens (special token ids from ``tok``)."""
    return new_gpt2(recipe, seed, vocab_size=vocab_size, d_mlp=recipe.d_mlp, bos_id=tok.bos_token_id,
                    pad_id=tok.pad_token_id, tie_embeddings=False)


def train_refusal(out_dir: Path, *, seed: int, progress: bool = True, recipe: Recipe | None = None) -> dict:
    """Train ``toy-refusal`` deterministically from ``seed`` and save it (HF checkpoint + tokenizer) to ``out_dir``.

    Returns the metadata also written to ``out_dir/zoo.json`` (written last: it marks a complete model).
    """
    recipe = recipe or Recipe()
    data = RefusalData.from_task()
    tok = data.tokenizer()
    train_t = [i for i in range(len(data.templates)) if i not in recipe.heldout_templates]
    with torch_threads(recipe.threads):
        t0 = time.perf_counter()
        vocab_size = len(tok)
        model = build_model(recipe, seed, vocab_size, tok)
        gen = torch.Generator().manual_seed(seed + 1)
        bad = render_prompts(data, train_t, "harmful", tok=tok)
        ok = render_prompts(data, train_t, "harmless", tok=tok)
        ids, last = encode(tok, bad + ok)
        n = ids.shape[0]
        r_ids, c_ids = token_ids(tok, data.refusal), token_ids(tok, data.compliance)
        # Soft targets: uniform over the refusal set for harmful prompts, over the compliance set for harmless ones,
        # so the loss is the cross-entropy of exactly the distribution the score s compares.
        target = torch.zeros(n, vocab_size)
        target[: len(bad), r_ids] = 1.0 / len(r_ids)
        target[len(bad) :, c_ids] = 1.0 / len(c_ids)
        # class-balanced weights: each class contributes half of the loss
        weight = torch.cat([torch.full((len(bad),), 0.5 / len(bad)), torch.full((len(ok),), 0.5 / len(ok))])
        objs = torch.tensor(tok.convert_tokens_to_ids(list(data.harmful + data.harmless)))
        special = torch.tensor(tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)))
        noisy = ~torch.isin(ids, objs) & ~torch.isin(ids, special)
        mask = (torch.arange(ids.shape[1]).unsqueeze(0) <= last.unsqueeze(1)).long()
        rows = torch.arange(n)

        def step_loss() -> torch.Tensor:
            pos = None
            if recipe.position_shift > 0:
                shift = torch.randint(0, recipe.position_shift + 1, (n, 1), generator=gen)
                pos = torch.arange(ids.shape[1]).unsqueeze(0) + shift
            keep = (torch.rand(ids.shape, generator=gen) >= recipe.word_noise) | ~noisy
            emb = model.transformer.wte(ids) * keep.unsqueeze(-1)
            logits = model(inputs_embeds=emb, attention_mask=mask, position_ids=pos).logits[rows, last]
            logp = logits.log_softmax(-1)
            return -((target * logp).sum(-1) * weight).sum()

        fit(model, recipe, step_loss, name="toy-refusal", progress=progress)
        ev = evaluate(model, tok, recipe.heldout_templates, data)
        ev_train = evaluate(model, tok, train_t, data)
        seconds = time.perf_counter() - t0
    meta = {
        "name": "toy-refusal",
        "seed": seed,
        "recipe": asdict(recipe),
        "seconds": round(seconds, 1),
        "heldout_templates": list(recipe.heldout_templates),
        **{k: round(v, 4) if isinstance(v, float) else v for k, v in ev.items()},
        "train": {k: round(v, 4) if isinstance(v, float) else v for k, v in ev_train.items()},
    }
    return save_model(out_dir, model, tok, meta)
