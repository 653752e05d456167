"""The ``toy-ioi`` zoo model: IOI prompts from ``tasks/ioi.yaml``, their tokenizer, the evaluation and the recipe.

Data: the templates, slots and word lists of ``tasks/ioi.yaml``; a prompt fills a template with IO != S (names), a
place and an object, and the target is IO at the last position (the loss is taken there only). Tokens: a word-level
tokenizer over every template word (held-out ones included) and every listed word, with punctuation split off;
ids are ``[<bos>] + words``, batches are right-padded with <pad>. Templates 4, 7 and their BABA twins 12, 15 (two
base sentences, both orders; :data:`HELDOUT_TEMPLATES`) are never trained on; five of their words (found,
Yesterday, had, lunch, showed) therefore never occur in training, and template 4/12 is the only one whose second
S is three tokens before the end. Every name, place and object is trained on.

Recipe (what worked): a 2-layer, 4-head, d_model 64 GPT-2 with ReLU MLPs (256) and tied embeddings, AdamW lr 5e-3
with 100 warm-up steps and cosine decay, batch 64, 1,200 steps: 57-61 s with 2 threads on an otherwise idle 2-core
machine (~60 s with 1 thread; with 2 threads while another process keeps a core busy a step is ~6x slower). Two
augmentations of the training prompts: each prompt starts at a random position 0..12 (position ids shifted; use and
evaluation start at 0), and each template word except the final "to" is replaced (p 0.1) by, and gets inserted
before it (p 0.1), a random training-template word, place or object. Seed 0, on 1,024 fresh prompts of the held-out
templates (a different seed stream): accuracy 1.000 (argmax over the vocabulary; IO vs S 1.000), logit(IO) -
logit(S) 10.9; ABC counterfactual 0.31; S2-IO flip -10.9 (argmax = S in 0.999). Over all 16 templates (4,096
prompts) accuracy 0.999, logit diff 10.9. The same seed and thread count give identical weights; another thread
count gives slightly different ones (1 thread: held-out 0.998, 9.9). Seeds 0-4 at 1,000 steps (1 thread): held-out
accuracy 0.991-0.999, logit diff 8.0-9.7.

Mechanism (seed 0): in layer 0 every head at the last position attends to IO and S1 (0.44-0.50 / 0.37-0.46) and
raises both names (direct effect on the logit difference ~0), and at the second S mention the heads attend to IO
(0.94 for head 0, 0.2-0.4 for the others: the earlier name that is *not* the query's own). In layer 1 every head at
the last position attends to S2 (0.95-0.99) and moves that IO information up (+2.1..+2.6 on IO, -0.3..-0.5 on S,
relative to the other names); the four layer-1 heads carry 10.9 of the 11.2 logit difference. So the comparison
happens at S2 and the last position reads it from there: IOI-like (S2-attending heads), but not GPT-2's name-mover
pattern (no head attends from the end to IO); a 3-layer model (same recipe, 1,000 steps) found the same solution.

What did not work: plain training (no augmentation, d_model 64; lr 2e-3..1e-2, up to 3,000 steps; also with tied
embeddings alone, or 2 heads of 32): stuck at the "one of the two names" plateau (loss ~ln 2, held-out accuracy
0.44-0.51, logit diff ~0). d_model 128 (d_head 32) left the plateau for 2 of 3 seeds (~500 steps) but generalised
poorly: held-out accuracy 0.66-0.68 (IO vs S 0.73-0.75, logit diff 3.1-4.2), near chance on template 4/12 (0.52 /
0.62). Random position offsets let that failing seed escape (~300 steps) and evened out the templates (held-out
0.80, IO vs S 0.90); adding word replacement/insertion gave 0.83-0.84, and 136 of 175 errors were *other* names,
which we put down to the untrained, randomly initialised embeddings of the held-out-only words. Tying the embeddings
(those words then sit with the other never-predicted tokens) fixed it. ReLU rather than GPT-2's GELU only for speed
(a GELU step costs ~25% more; not compared on accuracy); batch 128 roughly doubles the step time.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from acdc.errors import InputError
from acdc.task import TemplatesDataset, get_task
from acdc.zoo.train import TrainRecipe, fit, last_logits, new_gpt2, save_model, torch_threads

BOS_TOKEN = "<bos>"
PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (BOS_TOKEN, PAD_TOKEN, UNK_TOKEN)
HELDOUT_TEMPLATES = (4, 7, 12, 15)
"""Two base sentences in both orders: "... found a {OBJECT} at the {PLACE}. {S} gave it to" and
"Yesterday ... had lunch at the {PLACE}, and {S} showed a {OBJECT} to" (ABBA 4, 7; BABA 12, 15)."""

_SLOT = re.compile(r"\{(\w+)\}")


IOI_SLOTS = ("IO", "S", "PLACE", "OBJECT")


def load_ioi_dataset(task: str | Path = "ioi") -> TemplatesDataset:
    """The templates dataset of the IOI task (default: the built-in ``tasks/ioi.yaml``), read and validated by the
    task registry. Raises InputError if the task's default dataset is not a templates dataset with the slots
    IO, S, PLACE and OBJECT."""
    t = get_task(task)
    ds = t.spec.all_datasets()[t.spec.default_dataset_name]
    if not isinstance(ds, TemplatesDataset) or not set(IOI_SLOTS) <= set(ds.slots):
        raise InputError(f"task {t.name}: the IOI zoo model needs a templates dataset with the slots "
                         f"{', '.join(IOI_SLOTS)}")
    return ds


@dataclass(frozen=True)
class IOIPrompt:
    """One IOI prompt: its template index and slot fillers, and the rendered clean text."""

    template: int
    io: str
    s: str
    place: str
    obj: str
    text: str


def render(template: str, fill: dict[str, str], *, s2: str | None = None) -> str:
    """``template`` with its slots filled from ``fill``; ``s2`` (if given) replaces the second mention of ``{S}``."""
    seen: dict[str, int] = {}

    def sub(m: re.Match[str]) -> str:
        slot = m.group(1)
        seen[slot] = seen.get(slot, 0) + 1
        if slot == "S" and seen[slot] == 2 and s2 is not None:
            return s2
        return fill[slot]

    return _SLOT.sub(sub, template)


def _ioi_text(template: str, io: str, s: str, place: str, obj: str, *, s2: str | None = None) -> str:
    return render(template, {"IO": io, "S": s, "PLACE": place, "OBJECT": obj}, s2=s2)


def ioi_prompts(
    n: int, *, seed: int, templates: Sequence[int] | None = None, dataset: TemplatesDataset | None = None
) -> list[IOIPrompt]:
    """``n`` IOI prompts, deterministic in ``seed``: a template drawn uniformly from ``templates`` (default all),
    IO != S drawn from the names, a place and an object."""
    ds = dataset or load_ioi_dataset()
    tpl = ds.templates
    idx = list(range(len(tpl))) if templates is None else list(templates)
    words = ds.words
    slots = ds.slots
    names, places, objects = words[slots["IO"]], words[slots["PLACE"]], words[slots["OBJECT"]]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = rng.choice(idx)
        io, s = rng.sample(names, 2)
        place, obj = rng.choice(places), rng.choice(objects)
        out.append(IOIPrompt(t, io, s, place, obj, _ioi_text(tpl[t], io, s, place, obj)))
    return out


def abc_texts(prompts: Sequence[IOIPrompt], *, seed: int, dataset: TemplatesDataset | None = None) -> list[str]:
    """The "ABC" counterfactual: IO, S1 and S2 replaced by three distinct names not in the clean prompt."""
    ds = dataset or load_ioi_dataset()
    names = ds.words[ds.slots["IO"]]
    rng = random.Random(seed)
    out = []
    for p in prompts:
        a, b, c = rng.sample([x for x in names if x not in (p.io, p.s)], 3)
        out.append(_ioi_text(ds.templates[p.template], a, b, p.place, p.obj, s2=c))
    return out


def flip_texts(prompts: Sequence[IOIPrompt], *, dataset: TemplatesDataset | None = None) -> list[str]:
    """The "S2-IO flip" counterfactual: the second mention of S replaced by IO (the answer becomes S)."""
    ds = dataset or load_ioi_dataset()
    return [_ioi_text(ds.templates[p.template], p.io, p.s, p.place, p.obj, s2=p.io) for p in prompts]


def ioi_vocab(dataset: TemplatesDataset | None = None) -> list[str]:
    """Specials, then every word of every template (held-out ones included) and of every word list."""
    from acdc.models import word_level_vocab

    ds = dataset or load_ioi_dataset()
    texts = [_SLOT.sub(" ", t) for t in ds.templates]
    texts += [w for ws in ds.words.values() for w in ws]
    return list(SPECIAL_TOKENS) + [w for w in word_level_vocab(texts) if w not in SPECIAL_TOKENS]


def ioi_tokenizer(dataset: TemplatesDataset | None = None) -> Any:
    """The word-level tokenizer of ``toy-ioi`` over :func:`ioi_vocab` (punctuation split off words)."""
    from acdc.models import word_level_tokenizer

    return word_level_tokenizer(ioi_vocab(dataset), bos=BOS_TOKEN, unk=UNK_TOKEN, pad=PAD_TOKEN, punctuation=True)


def encode(tok: Any, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[n, S]`` (``[bos] + words``, right-padded with <pad>) and each prompt's last real index ``[n]``."""
    rows = [[tok.bos_token_id, *tok(t, add_special_tokens=False).input_ids] for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, torch.tensor([len(r) - 1 for r in rows])


def name_ids(tok: Any, names: Sequence[str]) -> torch.Tensor:
    """The single token id of each name (as it appears after a space)."""
    return torch.tensor([tok(" " + x, add_special_tokens=False).input_ids[0] for x in names])


@dataclass(frozen=True)
class IOIBatch:
    """Tokenized IOI prompts and their two counterfactuals (all three have the same lengths: names are single
    tokens). ids: ``[n, S]`` right-padded with <pad>; last, io, s, io_pos, s1_pos, s2_pos: ``[n]``."""

    prompts: list[IOIPrompt]
    clean: torch.Tensor
    abc: torch.Tensor
    flip: torch.Tensor
    last: torch.Tensor
    io: torch.Tensor
    s: torch.Tensor
    io_pos: torch.Tensor
    s1_pos: torch.Tensor
    s2_pos: torch.Tensor


def ioi_batch(
    tok: Any,
    n: int,
    *,
    seed: int,
    templates: Sequence[int] | None = None,
    dataset: TemplatesDataset | None = None,
) -> IOIBatch:
    """``n`` prompts of :func:`ioi_prompts` (``seed``; ``templates`` default all) with their ABC (names drawn from
    ``seed + 1``) and S2-IO flip counterfactuals, tokenized as the evaluation code does (:func:`encode`)."""
    ds = dataset or load_ioi_dataset()
    prompts = ioi_prompts(n, seed=seed, templates=templates, dataset=ds)
    clean, last = encode(tok, [p.text for p in prompts])
    abc, abc_last = encode(tok, abc_texts(prompts, seed=seed + 1, dataset=ds))
    flip, flip_last = encode(tok, flip_texts(prompts, dataset=ds))
    if not (torch.equal(last, abc_last) and torch.equal(last, flip_last)):
        raise InputError("IOI counterfactuals must tokenize to the same lengths as the clean prompts; every name must "
                         "be one token")
    io = name_ids(tok, [p.io for p in prompts])
    s = name_ids(tok, [p.s for p in prompts])
    is_s = clean == s[:, None]
    width = clean.shape[1]
    return IOIBatch(
        prompts=prompts, clean=clean, abc=abc, flip=flip, last=last, io=io, s=s,
        io_pos=(clean == io[:, None]).int().argmax(1),
        s1_pos=is_s.int().argmax(1),
        s2_pos=width - 1 - is_s.flip(1).int().argmax(1),
    )


@torch.no_grad()
def evaluate(
    model: Any,
    tok: Any,
    *,
    n: int = 1024,
    seed: int = 10_000,
    templates: Sequence[int] | None = HELDOUT_TEMPLATES,
    dataset: TemplatesDataset | None = None,
    batch: IOIBatch | None = None,
) -> dict[str, Any]:
    """IOI metrics of a Hugging Face GPT-2 on ``batch`` (default: ``ioi_batch(tok, n, seed=seed, templates=...)``,
    i.e. the held-out templates).

    accuracy: argmax over the whole vocabulary == IO; io_vs_s_accuracy: logit(IO) > logit(S); logit_diff: mean
    logit(IO) - logit(S); abc_logit_diff: the same two logits on the ABC counterfactual (about 0 if the model
    reads the names); flip_logit_diff: on the S2-IO flip (negative: S is now the answer); flip_accuracy: argmax
    == S there. With eager attention, also ``[n_layers, n_heads]`` mean attention patterns: end_to_io, end_to_s1,
    end_to_s2 (from the last position) and s2_to_io (from the second S mention to IO).
    """
    b = batch or ioi_batch(tok, n, seed=seed, templates=templates, dataset=dataset)
    ar = torch.arange(len(b.last))
    clean, out = last_logits(model, b.clean, b.last, output_attentions=True)
    abc, _ = last_logits(model, b.abc, b.last)
    flip, _ = last_logits(model, b.flip, b.last)
    diff = clean[ar, b.io] - clean[ar, b.s]
    res: dict[str, Any] = {
        "accuracy": (clean.argmax(-1) == b.io).float().mean().item(),
        "io_vs_s_accuracy": (diff > 0).float().mean().item(),
        "logit_diff": diff.mean().item(),
        "abc_logit_diff": (abc[ar, b.io] - abc[ar, b.s]).mean().item(),
        "flip_logit_diff": (flip[ar, b.io] - flip[ar, b.s]).mean().item(),
        "flip_accuracy": (flip.argmax(-1) == b.s).float().mean().item(),
    }
    if out.attentions:  # None unless the model runs eager attention
        att = torch.stack(out.attentions, dim=1)  # n, L, H, S, S
        for key, src, dst in (("end_to_io", b.last, b.io_pos), ("end_to_s1", b.last, b.s1_pos),
                              ("end_to_s2", b.last, b.s2_pos), ("s2_to_io", b.s2_pos, b.io_pos)):
            res[key] = att[ar, :, :, src, dst].mean(0)
    return res


@dataclass(frozen=True)
class Recipe(TrainRecipe):
    """toy-ioi: a GPT-2 with MLPs trained on the IOI templates of tasks/ioi.yaml, some templates held out."""

    steps: int = 1200
    lr: float = 5e-3
    """Peak learning rate (the schedule is TrainRecipe's warm-up and cosine)."""
    d_mlp: int = 256
    """MLP width (toy-induction has none)."""
    batch_size: int = 64
    tie_embeddings: bool = True
    activation: str = "relu"
    """The MLP's nonlinearity."""
    pos_offset: int = 12  # training prompts start at a random position 0..pos_offset
    p_replace: float = 0.1  # each literal template word (not the final "to") is replaced by a random one ...
    p_insert: float = 0.1  # ... and has a random word inserted before it


class _TemplateIds:
    """The templates as id tensors with slot codes, for sampling training batches without tokenizing text."""

    LITERAL, IO, S1, S2, PLACE, OBJECT = range(6)

    def __init__(self, tok: Any, dataset: TemplatesDataset, templates: Sequence[int]) -> None:
        rows: list[list[int]] = []
        codes: list[list[int]] = []
        for t in templates:
            row, code = [tok.bos_token_id], [self.LITERAL]
            pieces = _SLOT.split(dataset.templates[t])  # literal, slot, literal, slot, ..., literal
            n_s = 0
            for i, piece in enumerate(pieces):
                if i % 2 == 0:
                    ids = tok(piece, add_special_tokens=False).input_ids
                    row += ids
                    code += [self.LITERAL] * len(ids)
                    continue
                if piece == "S":
                    n_s += 1
                c = {"IO": self.IO, "S": self.S1 if n_s == 1 else self.S2, "PLACE": self.PLACE,
                     "OBJECT": self.OBJECT}[piece]
                row.append(tok.pad_token_id)
                code.append(c)
            rows.append(row)
            codes.append(code)
        width = max(len(r) for r in rows)
        self.ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        self.codes = torch.full((len(rows), width), self.LITERAL, dtype=torch.long)
        for i, (r, cs) in enumerate(zip(rows, codes, strict=True)):
            self.ids[i, : len(r)] = torch.tensor(r)
            self.codes[i, : len(cs)] = torch.tensor(cs)
        self.last = torch.tensor([len(r) - 1 for r in rows])
        words, slots = dataset.words, dataset.slots
        self.names = name_ids(tok, words[slots["IO"]])
        self.places = name_ids(tok, words[slots["PLACE"]])
        self.objects = name_ids(tok, words[slots["OBJECT"]])
        literal = self.ids[(self.codes == self.LITERAL) & (self.ids != tok.bos_token_id)
                           & (self.ids != tok.pad_token_id)]
        self.pool = torch.cat([literal, self.places, self.objects]).unique()
        self.pad_id = int(tok.pad_token_id)

    def sample(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` prompts: ids ``[n, S]`` (right-padded), last real index ``[n]``, IO id ``[n]``, slot codes."""
        k = len(self.names)
        t = torch.randint(len(self.ids), (n,), generator=generator)
        io = torch.randint(k, (n,), generator=generator)
        s = (io + 1 + torch.randint(k - 1, (n,), generator=generator)) % k
        place = torch.randint(len(self.places), (n,), generator=generator)
        obj = torch.randint(len(self.objects), (n,), generator=generator)
        ids, codes = self.ids[t].clone(), self.codes[t]
        fill = {self.IO: self.names[io], self.S1: self.names[s], self.S2: self.names[s],
                self.PLACE: self.places[place], self.OBJECT: self.objects[obj]}
        for c, v in fill.items():
            ids = torch.where(codes == c, v[:, None], ids)
        return ids, self.last[t], self.names[io], codes

    def batch(
        self, recipe: Recipe, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A training batch: :meth:`sample`, then :func:`_augment` and per-prompt position offsets in
        ``0..recipe.pos_offset`` (clipped to the context). Returns ids, last index, IO id and position ids."""
        ids, last, target, codes = self.sample(recipe.batch_size, generator)
        if recipe.p_replace > 0 or recipe.p_insert > 0:
            ids, last = _augment(ids, last, codes, self.pool, p_replace=recipe.p_replace, p_insert=recipe.p_insert,
                                 pad_id=self.pad_id, generator=generator)
        if int(last.max()) >= recipe.n_ctx:
            raise InputError(f"an augmented IOI prompt has {int(last.max()) + 1} tokens, more than the recipe's "
                             f"n_ctx {recipe.n_ctx}")
        room = (recipe.n_ctx - 1 - last).clamp(max=recipe.pos_offset)
        off = (torch.rand(len(last), generator=generator) * (room + 1)).long().clamp(max=room)
        # clamped only where padding would run past the context (it is never read)
        pos = (torch.arange(ids.shape[1])[None] + off[:, None]).clamp(max=recipe.n_ctx - 1)
        return ids, last, target, pos


def _augment(
    ids: torch.Tensor,
    last: torch.Tensor,
    codes: torch.Tensor,
    pool: torch.Tensor,
    *,
    p_replace: float,
    p_insert: float,
    pad_id: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each literal token but the final one (prob. ``p_replace``) by, and insert before it (prob.
    ``p_insert``), a random token of ``pool``; names and places/objects stay."""
    n, w = ids.shape
    u = torch.rand((n, w, 2), generator=generator)
    r = pool[torch.randint(len(pool), (n, w, 2), generator=generator)]
    rows: list[list[int]] = []
    ids_l, codes_l, u_l, r_l = ids.tolist(), codes.tolist(), u.tolist(), r.tolist()
    for i in range(n):
        end = int(last[i])
        row = [ids_l[i][0]]
        for j in range(1, end + 1):
            if 0 < j < end and codes_l[i][j] == _TemplateIds.LITERAL:
                if u_l[i][j][0] < p_insert:
                    row.append(r_l[i][j][0])
                row.append(r_l[i][j][1] if u_l[i][j][1] < p_replace else ids_l[i][j])
            else:
                row.append(ids_l[i][j])
        rows.append(row)
    width = max(len(x) for x in rows)
    out = torch.full((n, width), pad_id, dtype=torch.long)
    for i, x in enumerate(rows):
        out[i, : len(x)] = torch.tensor(x)
    return out, torch.tensor([len(x) - 1 for x in rows])


def build_model(recipe: Recipe, seed: int, vocab_size: int) -> Any:
    """The untrained GPT-2 of ``recipe`` over ``vocab_size`` tokens."""
    return new_gpt2(recipe, seed, vocab_size=vocab_size, d_mlp=recipe.d_mlp, bos_id=0, pad_id=1,
                    tie_embeddings=recipe.tie_embeddings, activation=recipe.activation)


def train_ioi(out_dir: Path, *, seed: int, progress: bool = True, recipe: Recipe | None = None) -> dict:
    """Train ``toy-ioi`` deterministically from ``seed`` and save it (HF checkpoint + tokenizer) to ``out_dir``.

    Trains on every template except :data:`HELDOUT_TEMPLATES`; evaluates on 1,024 prompts of the held-out ones.
    Returns the metadata also written to ``out_dir/zoo.json`` (written last: it marks a complete model).
    """
    recipe = recipe or Recipe()
    ds = load_ioi_dataset()
    tok = ioi_tokenizer(ds)
    train_tpl = [i for i in range(len(ds.templates)) if i not in HELDOUT_TEMPLATES]
    with torch_threads(recipe.threads):
        t0 = time.perf_counter()
        model = build_model(recipe, seed, len(tok))
        sampler = _TemplateIds(tok, ds, train_tpl)
        gen = torch.Generator().manual_seed(seed + 1)

        def step_loss() -> torch.Tensor:
            ids, last, target, pos = sampler.batch(recipe, gen)
            logits, _ = last_logits(model, ids, last, position_ids=pos)
            return torch.nn.functional.cross_entropy(logits, target)

        fit(model, recipe, step_loss, name="toy-ioi", progress=progress)
        ev = evaluate(model, tok, n=1024, seed=seed + 10_000, templates=HELDOUT_TEMPLATES, dataset=ds)
        seconds = time.perf_counter() - t0
    meta: dict[str, Any] = {
        "name": "toy-ioi",
        "seed": seed,
        "recipe": asdict(recipe),
        "seconds": round(seconds, 1),
        "heldout_templates": list(HELDOUT_TEMPLATES),
        "heldout_accuracy": round(ev["accuracy"], 4),
        "heldout_io_vs_s_accuracy": round(ev["io_vs_s_accuracy"], 4),
        "heldout_logit_diff": round(ev["logit_diff"], 3),
        "abc_logit_diff": round(ev["abc_logit_diff"], 3),
        "flip_logit_diff": round(ev["flip_logit_diff"], 3),
        "flip_accuracy": round(ev["flip_accuracy"], 4),
    }
    for key in ("end_to_io", "end_to_s1", "end_to_s2", "s2_to_io"):
        meta[key] = [[round(float(x), 3) for x in r] for r in ev[key]]
    return save_model(out_dir, model, tok, meta)
