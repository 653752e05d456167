"""The task registry: ``get_task(name_or_path)`` and ``Task.build(model, ...)`` -> :class:`~acdc.types.TaskData`.

Built-in tasks are the YAML files shipped in ``tasks/`` (installed as the package data ``acdc.tasks``); any other
path to a YAML file works the same way. Building renders the prompts and their counterfactuals for one model's
tokenizer, checks what needs a tokenizer (single-token answers, equal clean/counterfactual lengths), and returns
token ids. Prompts of different lengths are right-padded and the metric reads each prompt's own last token: with
causal attention, padding after a position never changes it.

Splits: every prompt belongs to exactly one of train/validation/test, decided by a hash of the task name and the
prompt's text (or token ids), so a circuit found on one split is evaluated on prompts it has never seen, and the
assignment is the same for every seed and machine. Building draws prompts from the seeded generator and keeps those
whose hash falls in the requested split.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acdc.errors import InputError
from acdc.task_schema import (
    SPLITS,
    AnswerSpec,
    Counterfactual,
    LineMap,
    Loc,
    PairsDataset,
    RepeatedTokensDataset,
    TaskFileError,
    TaskSpec,
    TemplatesDataset,
    dataset_loc,
    fmt_loc,
    load_task_file,
    parse_task_text,
    template_parts,
)
from acdc.types import TaskData

log = logging.getLogger(__name__)

MAX_TRIES = 20
"""Counterfactual re-draws allowed per prompt before a length mismatch is reported."""


def builtin_dir() -> Path:
    """The directory of the built-in task files."""
    return Path(str(importlib.resources.files("acdc.tasks")))


def list_tasks() -> list[str]:
    """Names of the built-in tasks."""
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def get_task(name_or_path: str | Path) -> Task:
    """A built-in task by name (``ioi``, ``induction``, ``refusal``) or a task file by path.

    Raises:
        InputError: unknown name; TaskFileError: the file is malformed (message names field and line).
    """
    s = str(name_or_path)
    p = Path(s).expanduser()
    builtin = builtin_dir() / f"{s}.yaml"
    if p.is_file() or (not builtin.is_file() and (p.suffix in (".yaml", ".yml") or "/" in s)):
        if not p.is_file():
            raise InputError(f"no task file at {p}; give a built-in task ({', '.join(list_tasks())}) or a YAML path")
        spec, lines = load_task_file(p)
        return Task(spec, lines, path=p.resolve())
    if not builtin.is_file():
        raise InputError(f"unknown task '{s}'; built-in tasks: {', '.join(list_tasks())} (or give a path to a YAML "
                         "task file)")
    spec, lines = load_task_file(builtin)
    return Task(spec, lines, path=builtin, builtin=True)


def task_from_text(text: str, base_dir: str | Path = ".") -> Task:
    """A task from YAML text (relative data paths resolve against ``base_dir``)."""
    spec, lines = parse_task_text(text)
    return Task(spec, lines, path=Path(base_dir).resolve() / "<text>")


# ---- helpers ----------------------------------------------------------------------------------------------------
def _bucket(task: str, key: bytes) -> float:
    h = hashlib.blake2b(task.encode() + b"\0" + key, digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0**64


def _split_of(task: Task, key: bytes) -> str:
    u = _bucket(task.name, key)
    s = task.spec.splits
    if u < s.train:
        return "train"
    return "validation" if u < s.train + s.validation else "test"


@dataclass
class _Tok:
    """The tokenizer side of a model: encoding with the dataset's BOS/chat conventions, and checks."""

    tok: Any
    d_vocab: int
    n_ctx: int
    chat: bool
    bos: bool

    @classmethod
    def for_dataset(cls, model: Any, ds: TemplatesDataset | PairsDataset) -> _Tok:
        """The model's tokenizer with the dataset's chat-template and BOS conventions."""
        bos = ds.prepend_bos if ds.prepend_bos is not None else not ds.chat_template
        return cls(_model_tokenizer(model), int(model.cfg.d_vocab), _n_ctx(model), ds.chat_template, bos)

    def render(self, text: str) -> str:
        if not self.chat:
            return text
        if not getattr(self.tok, "chat_template", None):
            raise InputError("this task renders prompts with the model's chat template, but the model's tokenizer has "
                             "none; use a chat model (or a zoo chat model such as zoo:toy-refusal)")
        out = self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
        return str(out)

    def encode(self, text: str) -> list[int]:
        ids = list(self.tok(self.render(text), add_special_tokens=False)["input_ids"])
        bos = self.tok.bos_token_id
        if self.bos and bos is not None and (not ids or ids[0] != bos):
            ids = [int(bos), *ids]
        return ids

    def word_ids(self, word: str) -> list[int]:
        return list(self.tok(word, add_special_tokens=False)["input_ids"])

    def single(self, word: str, where: str) -> int:
        ids = self.word_ids(word)
        unk = self.tok.unk_token_id
        if len(ids) != 1:
            pieces = " + ".join(repr(t) for t in self.tok.convert_ids_to_tokens(ids))
            raise InputError(f"{where}: {word.strip()!r} is not a single token for this model's tokenizer "
                             f"({word!r} -> {pieces or 'nothing'}); answers must be single tokens")
        if unk is not None and ids[0] == unk and word.strip() != self.tok.unk_token:
            raise InputError(f"{where}: {word.strip()!r} is not in this model's vocabulary (it becomes "
                             f"{self.tok.unk_token}); answers must be known single tokens")
        if ids[0] >= self.d_vocab:
            raise InputError(f"{where}: {word.strip()!r} has token id {ids[0]} outside the model's vocabulary")
        return ids[0]

    @property
    def pad_id(self) -> int:
        for t in (self.tok.pad_token_id, self.tok.eos_token_id, self.tok.bos_token_id):
            if t is not None:
                return int(t)
        return 0


def _model_tokenizer(model: Any) -> Any:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise InputError("the model has no tokenizer; tasks are built from text and need one")
    return tok


def _n_ctx(model: Any) -> int:
    return int(getattr(model.cfg, "n_ctx", 0) or 1 << 30)


@dataclass
class _Pair:
    clean: list[int]
    corrupt: list[int]
    answer: list[int]
    wrong: list[int] | None
    text: tuple[str, str]


# ---- the task ---------------------------------------------------------------------------------------------------
@dataclass
class Task:
    """A validated task definition. ``build`` turns it into token ids for one model."""

    spec: TaskSpec
    lines: LineMap = field(repr=False)
    path: Path | None = None
    builtin: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def description(self) -> str:
        return self.spec.description

    @property
    def default_model(self) -> str:
        return self.spec.models.default

    def where(self, loc: Loc) -> str:
        """``file:line: field`` for messages about a field of this task file."""
        line = self.lines.line(loc)
        name = self.path.name if self.path is not None else "<task>"
        return f"{name}:{line}: {fmt_loc(loc)}" if line else f"{name}: {fmt_loc(loc)}"

    def dataset_name_for(self, model_spec: str | None) -> str:
        for m in self.spec.models.written_for:
            if model_spec is not None and m.name == model_spec and m.dataset:
                return m.dataset
        return self.spec.default_dataset_name

    def build(
        self,
        model: Any,
        n: int | None = None,
        *,
        seed: int | None = None,
        split: str = "train",
        counterfactual: str | None = None,
        dataset: str | None = None,
    ) -> TaskData:
        """Render ``n`` prompt pairs of ``split`` for ``model``'s tokenizer, deterministically from ``seed``.

        Args:
            model: a loaded model (its ``tokenizer`` and ``cfg`` are used).
            n: number of pairs (default: the task's ``defaults.n``; for a file of pairs, at most what the split
                holds).
            seed: generator seed (default: the task's ``defaults.seed``).
            split: ``train``, ``validation`` or ``test``.
            counterfactual: a rule name from ``counterfactuals`` (default: ``default_counterfactual``).
            dataset: a dataset name (default: the one the task declares for this model, else ``default_dataset``).
        """
        if split not in SPLITS:
            raise InputError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        spec = self.spec
        datasets = spec.all_datasets()
        model_spec = getattr(model, "acdc_spec", None)
        dname = dataset or self.dataset_name_for(model_spec)
        if dname not in datasets:
            raise InputError(f"task {self.name} has no dataset '{dname}'; datasets: {', '.join(datasets)}")
        ds = datasets[dname]
        seed = spec.defaults.seed if seed is None else int(seed)
        explicit_n = n is not None
        n = spec.defaults.n if n is None else int(n)
        if n < 1:
            raise InputError(f"need at least one prompt, got n={n}")
        rule: Counterfactual | None = None
        cname: str | None = None
        if isinstance(ds, PairsDataset):
            if counterfactual is not None:
                raise InputError(f"dataset '{dname}' of task {self.name} takes its counterfactuals from its file; "
                                 "drop the counterfactual option")
        else:
            cname = counterfactual or spec.default_counterfactual_name
            if cname not in spec.counterfactuals:
                raise InputError(f"task {self.name} has no counterfactual '{cname}'; counterfactuals: "
                                 f"{', '.join(spec.counterfactuals)}")
            rule = spec.counterfactuals[cname]
        gen = np.random.default_rng([seed, SPLITS.index(split)])
        loc = dataset_loc(spec, dname)
        if isinstance(ds, TemplatesDataset):
            pairs = self._build_templates(model, ds, rule, n, split, gen, loc)  # type: ignore[arg-type]
        elif isinstance(ds, PairsDataset):
            pairs = self._build_pairs(model, ds, n, explicit_n, split, gen, loc)
        else:
            assert rule is not None and rule.sequence is not None
            return self._build_repeated(model, ds, rule.sequence, n, split, seed, model_spec, cname or "", dname)
        return self._assemble(model, pairs, split=split, seed=seed, dataset=dname, counterfactual=cname)

    # -- templates --------------------------------------------------------------------------------------------------
    def _answer_words(self, tk: _Tok, which: str) -> list[int] | None:
        ans: AnswerSpec | None = getattr(self.spec, which)
        if ans is None or ans.tokens is None:
            return None
        return [tk.single(ans.word_prefix + w, self.where((which, "tokens", i))) for i, w in enumerate(ans.tokens)]

    def _build_templates(
        self, model: Any, ds: TemplatesDataset, rule: Counterfactual, n: int, split: str,
        gen: np.random.Generator, loc: Loc,
    ) -> list[_Pair]:
        tk = _Tok.for_dataset(model, ds)
        spec = self.spec
        fixed_answer, fixed_wrong = self._answer_words(tk, "answer"), self._answer_words(tk, "wrong")
        slot_answers: dict[str, dict[str, int]] = {}
        for which in ("answer", "wrong"):
            ans: AnswerSpec | None = getattr(spec, which)
            if ans is not None and ans.slot is not None and ans.slot not in slot_answers:
                lst = ds.slots[ans.slot]
                slot_answers[ans.slot] = {
                    w: tk.single(ans.word_prefix + w, self.where((*loc, "words", lst, j)))
                    for j, w in enumerate(ds.words[lst])
                }
        parts = [template_parts(t) for t in ds.templates]
        wlen_cache: dict[str, int] = {}

        def wlen(w: str) -> int:
            if w not in wlen_cache:
                wlen_cache[w] = len(tk.word_ids(" " + w))
            return wlen_cache[w]

        pairs: list[_Pair] = []
        seen: set[tuple[str, str]] = set()
        budget = 50 * n + 2000
        while len(pairs) < n:
            if budget <= 0:
                raise InputError(f"task {self.name}: could draw only {len(pairs)} distinct prompt pairs for split "
                                 f"'{split}'; ask for fewer (n) or add templates / words")
            budget -= 1
            t = int(gen.integers(len(ds.templates)))
            values = self._draw_slots(ds, parts[t], gen)
            clean_text = self._render(parts[t], values)
            if _split_of(self, clean_text.encode()) != split:
                continue
            clean_ids = tk.encode(clean_text)
            for _ in range(MAX_TRIES):
                cvalues = self._counterfactual_values(ds, parts[t], values, rule, gen, wlen)
                corrupt_text = self._render(parts[t], cvalues)
                corrupt_ids = tk.encode(corrupt_text)
                if len(corrupt_ids) == len(clean_ids):
                    break
            else:
                raise InputError(f"{self.where((*loc, 'templates', t))}: counterfactual rule could not produce a "
                                 f"prompt of the clean prompt's token length ({len(clean_ids)}) in {MAX_TRIES} tries, "
                                 f"e.g. {clean_text!r} vs {corrupt_text!r}; use words of equal token length")
            if (clean_text, corrupt_text) in seen:
                continue
            seen.add((clean_text, corrupt_text))
            if len(clean_ids) > tk.n_ctx:
                raise InputError(f"{self.where((*loc, 'templates', t))}: prompt has {len(clean_ids)} tokens, more "
                                 f"than the model's context ({tk.n_ctx})")
            answer = fixed_answer or [slot_answers[spec.answer.slot][values[(spec.answer.slot, 1)]]]  # type: ignore[index]
            wrong = None
            if spec.wrong is not None:
                wrong = fixed_wrong or [slot_answers[spec.wrong.slot][values[(spec.wrong.slot, 1)]]]  # type: ignore[index]
            pairs.append(_Pair(clean_ids, corrupt_ids, answer, wrong, (clean_text, corrupt_text)))
        return pairs

    @staticmethod
    def _draw_slots(ds: TemplatesDataset, parts: list[str | tuple[str, int]], gen: np.random.Generator
                    ) -> dict[tuple[str, int], str]:
        """One value per slot (every mention of it), distinct among slots drawing from the same word list."""
        slots = list(dict.fromkeys(p[0] for p in parts if isinstance(p, tuple)))
        used: dict[str, set[str]] = {}
        chosen: dict[str, str] = {}
        for s in slots:
            lst = ds.slots[s]
            pool = [w for w in ds.words[lst] if w not in used.setdefault(lst, set())]
            if not pool:
                raise InputError(f"word list '{lst}' has too few words for the slots drawing from it")
            w = pool[int(gen.integers(len(pool)))]
            used[lst].add(w)
            chosen[s] = w
        return {p: chosen[p[0]] for p in parts if isinstance(p, tuple)}

    @staticmethod
    def _counterfactual_values(
        ds: TemplatesDataset, parts: list[str | tuple[str, int]], values: dict[tuple[str, int], str],
        rule: Counterfactual, gen: np.random.Generator, wlen: Any,
    ) -> dict[tuple[str, int], str]:
        out = dict(values)
        first = {s: v for (s, k), v in values.items() if k == 1}

        def mentions(ref: str) -> list[tuple[str, int]]:
            slot, _, k = ref.partition("#")
            return [p for p in values if p[0] == slot and (not k or p[1] == int(k))]

        for ref, src in (rule.copy_ or {}).items():
            for m in mentions(ref):
                out[m] = first[src]
        resample = rule.resample if isinstance(rule.resample, dict) else {r: None for r in (rule.resample or [])}
        taken = set(values.values())
        for ref, lst in resample.items():
            ms = mentions(ref)
            if not ms:
                continue
            slot = ms[0][0]
            words = ds.words[lst or ds.slots[slot]]
            old = values[ms[0]]
            pool = [w for w in words if w not in taken]
            same = [w for w in pool if wlen(w) == wlen(old)]
            pool = same or pool
            if not pool:
                raise InputError(f"word list '{lst or ds.slots[slot]}' has no fresh word left to resample {ref}")
            w = pool[int(gen.integers(len(pool)))]
            taken.add(w)
            for m in ms:
                out[m] = w
        return out

    @staticmethod
    def _render(parts: list[str | tuple[str, int]], values: dict[tuple[str, int], str]) -> str:
        return "".join(p if isinstance(p, str) else values[p] for p in parts)

    # -- pairs ------------------------------------------------------------------------------------------------------
    def _pairs_file(self, ds: PairsDataset) -> Path:
        p = Path(ds.path).expanduser()
        if not p.is_absolute():
            base = self.path.parent if self.path is not None else Path.cwd()
            p = base / p
        return p

    def read_pairs(self, ds: PairsDataset, loc: Loc) -> Iterator[tuple[int, dict[str, Any]]]:
        """(line number, record) for every non-blank line of the dataset's JSONL file."""
        p = self._pairs_file(ds)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TaskFileError(f"{self.where((*loc, 'path'))}: cannot read {p}: {e}") from None
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskFileError(f"{p.name}:{i}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise TaskFileError(f"{p.name}:{i}: each line must be a JSON object with clean and counterfactual")
            for key in ("clean", "counterfactual"):
                if not isinstance(rec.get(key), str) or not rec[key].strip():
                    raise TaskFileError(f"{p.name}:{i}: '{key}' must be a non-empty string")
            for key in ("answer", "wrong"):
                if key in rec and not isinstance(rec[key], str):
                    raise TaskFileError(f"{p.name}:{i}: '{key}' must be a string (one answer word)")
            yield i, rec

    def _build_pairs(
        self, model: Any, ds: PairsDataset, n: int, explicit_n: bool, split: str, gen: np.random.Generator,
        loc: Loc,
    ) -> list[_Pair]:
        tk = _Tok.for_dataset(model, ds)
        spec = self.spec
        fixed_answer, fixed_wrong = self._answer_words(tk, "answer"), self._answer_words(tk, "wrong")
        fname = self._pairs_file(ds).name
        records = [(i, r) for i, r in self.read_pairs(ds, loc) if _split_of(self, r["clean"].encode()) == split]
        order = gen.permutation(len(records))
        pairs: list[_Pair] = []
        dropped = 0
        for j in order:
            line, rec = records[int(j)]
            clean_ids, corrupt_ids = tk.encode(rec["clean"]), tk.encode(rec["counterfactual"])
            if len(clean_ids) != len(corrupt_ids):
                if ds.on_length_mismatch == "error":
                    raise TaskFileError(f"{fname}:{line}: clean and counterfactual tokenize to different lengths "
                                        f"({len(clean_ids)} vs {len(corrupt_ids)}) for this model; make them equal "
                                        "or set on_length_mismatch: drop")
                dropped += 1
                continue
            answer = fixed_answer
            if "answer" in rec:
                answer = [tk.single(spec.answer.word_prefix + rec["answer"], f"{fname}:{line}: answer")]
            if answer is None:
                raise TaskFileError(f"{fname}:{line}: needs an 'answer' (the task's answer is a slot)")
            wrong = fixed_wrong
            if spec.wrong is not None and "wrong" in rec:
                wrong = [tk.single(spec.wrong.word_prefix + rec["wrong"], f"{fname}:{line}: wrong")]
            if spec.wrong is not None and wrong is None:
                raise TaskFileError(f"{fname}:{line}: needs a 'wrong' answer (the task's wrong answer is a slot)")
            pairs.append(_Pair(clean_ids, corrupt_ids, answer, wrong, (rec["clean"], rec["counterfactual"])))
            if len(pairs) == n:
                break
        if dropped:
            log.warning("task %s: dropped %d pair(s) of %s whose two sides tokenize to different lengths for this "
                        "model", self.name, dropped, fname)
        if len(pairs) < n:
            if explicit_n or not pairs:
                raise InputError(f"task {self.name}: split '{split}' of {fname} has {len(pairs)} usable pair(s); ask "
                                 f"for at most {len(pairs)} (n)")
            log.info("task %s: using all %d pairs of split '%s'", self.name, len(pairs), split)
        return pairs

    # -- assembly ---------------------------------------------------------------------------------------------------
    def _assemble(self, model: Any, pairs: list[_Pair], **info: Any) -> TaskData:
        tok = _model_tokenizer(model)
        pad = _Tok(tok, 0, 0, False, False).pad_id
        n = len(pairs)
        width = max(len(p.clean) for p in pairs)
        clean = torch.full((n, width), pad, dtype=torch.long)
        corrupt = torch.full((n, width), pad, dtype=torch.long)
        positions = torch.zeros((n, width), dtype=torch.bool)
        a_width = max(len(p.answer) for p in pairs)
        answers = torch.full((n, width, a_width), -1, dtype=torch.long)
        wrong = None
        if pairs[0].wrong is not None:
            w_width = max(len(p.wrong or []) for p in pairs)
            wrong = torch.full((n, width, w_width), -1, dtype=torch.long)
        lengths = torch.tensor([len(p.clean) for p in pairs])
        for i, p in enumerate(pairs):
            L = len(p.clean)
            clean[i, :L] = torch.tensor(p.clean)
            corrupt[i, :L] = torch.tensor(p.corrupt)
            positions[i, L - 1] = True
            answers[i, :, : len(p.answer)] = torch.tensor(p.answer)
            if wrong is not None and p.wrong is not None:
                wrong[i, :, : len(p.wrong)] = torch.tensor(p.wrong)
        ans_t = answers[..., 0] if a_width == 1 else answers
        wrong_t = None if wrong is None else (wrong[..., 0] if wrong.shape[-1] == 1 else wrong)
        return TaskData(
            clean=clean, corrupt=corrupt, positions=positions, answers=ans_t, wrong=wrong_t,
            metric=self.spec.metric.name, description=self._metric_description(),
            lengths=lengths, texts=[p.text for p in pairs], info={"task": self.name, "n": n, **info},
        )

    def _metric_description(self) -> str:
        m = self.spec.metric
        a, w = self.spec.answer, self.spec.wrong

        def show(x: AnswerSpec | None) -> str:
            if x is None:
                return ""
            if x.slot is not None:
                return x.slot
            if x.tokens is not None:
                return "{" + ", ".join(x.tokens) + "}"
            return "next token"

        where = "the last position" if m.positions == "last" else "the repeated positions"
        if m.name == "logit_diff":
            if (a is not None and a.tokens and len(a.tokens) > 1) or (w is not None and w.tokens and len(w.tokens) > 1):
                return f"log p({show(a)}) - log p({show(w)}) at {where}"  # a set's logit is its logsumexp
            return f"logit({show(a)}) - logit({show(w)}) at {where}"
        if m.name == "prob_diff":
            return f"p({show(a)}) - p({show(w)}) at {where}"
        if m.name == "logprob":
            return f"log p({show(a)}) at {where}"
        return f"KL from the clean model at {where}"

    # -- repeated tokens -------------------------------------------------------------------------------------------
    def _build_repeated(
        self, model: Any, ds: RepeatedTokensDataset, sequence: str, n: int, split: str, seed: int,
        model_spec: str | None, cname: str, dname: str,
    ) -> TaskData:
        from acdc.zoo.induction import _fill

        tok = _model_tokenizer(model)
        d_vocab = int(model.cfg.d_vocab)
        rng = ds.token_range
        for entry in self.spec.models.written_for:
            if model_spec is not None and entry.name == model_spec and entry.token_range is not None:
                rng = entry.token_range
        special = set(getattr(tok, "all_special_ids", []) or [])
        size = min(d_vocab, len(tok))
        if rng is None:
            cand = torch.tensor([i for i in range(size) if i not in special])
        else:
            lo, hi = rng
            if hi > d_vocab:
                raise InputError(f"{self.where((*dataset_loc(self.spec, dname), 'token_range'))}: [{lo}, {hi}) "
                                 f"exceeds the model's vocabulary of {d_vocab} tokens")
            cand = torch.tensor([i for i in range(lo, hi) if i not in special])
        need = ds.segment_length[1] + ds.filler_length[1] + 1
        if len(cand) < max(need, 16):
            raise InputError(f"task {self.name}: only {len(cand)} tokens to sample from; need at least "
                             f"{max(need, 16)} distinct tokens")
        length = ds.length or 1 + ds.filler_length[1] + 2 * ds.segment_length[1] + 1
        if length > _n_ctx(model):
            raise InputError(f"task {self.name}: prompts of {length} tokens exceed the model's context "
                             f"({_n_ctx(model)})")
        bos = tok.bos_token_id if ds.prepend_bos else None
        gen = torch.Generator().manual_seed(seed * 3 + SPLITS.index(split))
        frac = getattr(self.spec.splits, split)
        rows: list[torch.Tensor] = []
        reps: list[torch.Tensor] = []
        fills: list[torch.Tensor] = []
        segs: list[torch.Tensor] = []
        seen: set[bytes] = set()
        have, rounds = 0, 0
        while have < n:
            rounds += 1
            if rounds > 1000:
                raise InputError(f"task {self.name}: could not draw {n} distinct sequences for split '{split}'")
            m = min(4096, max(16, 20_000_000 // len(cand)), int((n - have) / frac * 1.3) + 16)  # bounded memory
            f = torch.randint(ds.filler_length[0], ds.filler_length[1] + 1, (m,), generator=gen)
            s = torch.randint(ds.segment_length[0], ds.segment_length[1] + 1, (m,), generator=gen)
            b = _fill(f, s, generator=gen, vocab_lo=0, vocab_hi=len(cand), seq_len=length, bos_id=0)
            ids = cand[b.tokens]
            ids[:, 0] = bos if bos is not None else cand[b.tokens[:, 0]]
            for i in range(m):
                key = ids[i].numpy().tobytes()
                if key in seen or _split_of(self, key) != split:
                    continue
                seen.add(key)
                rows.append(ids[i])
                reps.append(b.repeated[i])
                fills.append(f[i])
                segs.append(s[i])
                have += 1
                if have == n:
                    break
        clean = torch.stack(rows)
        repeated = torch.stack(reps)
        fl, sl = torch.stack(fills), torch.stack(segs)
        cb = _fill(fl, sl, generator=gen, vocab_lo=0, vocab_hi=len(cand), seq_len=length, bos_id=0)
        fresh = cand[cb.tokens]
        fresh[:, 0] = clean[:, 0]
        if sequence == "fresh":
            corrupt = fresh
        else:
            pos = torch.arange(length).unsqueeze(0)
            second = (1 + fl + sl).unsqueeze(1)
            in_second = (pos >= second) & (pos < second + sl.unsqueeze(1))
            corrupt = torch.where(in_second, fresh, clean)
        answers = torch.zeros_like(clean)
        answers[:, :-1] = clean[:, 1:]
        return TaskData(
            clean=clean, corrupt=corrupt, positions=repeated, answers=answers, wrong=None,
            metric=self.spec.metric.name, description=self._metric_description(),
            lengths=torch.full((n,), length), texts=None,
            info={"task": self.name, "n": n, "split": split, "seed": seed, "dataset": dname,
                  "counterfactual": cname},
        )
