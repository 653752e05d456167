"""The ``templates`` dataset builder: prompts rendered from templates with named slots filled from word lists, and
their counterfactuals made by a task's ``resample`` / ``copy`` rule."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from acdc.errors import InputError
from acdc.task.prompts import PromptPair, PromptTokenizer, fixed_answer_ids
from acdc.task.schema import AnswerSpec, Counterfactual, Loc, TemplatesDataset, template_parts

if TYPE_CHECKING:
    from acdc.task.registry import Task

log = logging.getLogger(__name__)

MAX_TRIES = 20
"""Counterfactual re-draws allowed per prompt before a length mismatch is reported."""

Parts = list[str | tuple[str, int]]
Values = dict[tuple[str, int], str]


def build_templates(
    task: Task, model: Any, ds: TemplatesDataset, rule: Counterfactual, n: int, split: str,
    gen: np.random.Generator, loc: Loc,
) -> tuple[list[PromptPair], int]:
    """``n`` distinct prompt pairs of ``split`` drawn from ``gen``, their two sides of equal token length, and how
    many drawn prompts were dropped for want of a counterfactual of their length (``on_length_mismatch: drop``)."""
    tk = PromptTokenizer.for_dataset(model, ds)
    spec = task.spec
    fixed_answer, fixed_wrong = fixed_answer_ids(task, tk, "answer"), fixed_answer_ids(task, tk, "wrong")
    slot_answers: dict[str, dict[str, int]] = {}
    for which in ("answer", "wrong"):
        ans: AnswerSpec | None = getattr(spec, which)
        if ans is not None and ans.slot is not None and ans.slot not in slot_answers:
            lst = ds.slots[ans.slot]
            slot_answers[ans.slot] = {
                w: tk.single(ans.word_prefix + w, task.where((*loc, "words", lst, j)))
                for j, w in enumerate(ds.words[lst])
            }
    parts = [template_parts(t) for t in ds.templates]
    wlen_cache: dict[str, int] = {}

    def wlen(w: str) -> int:
        if w not in wlen_cache:
            wlen_cache[w] = len(tk.word_ids(" " + w))
        return wlen_cache[w]

    pairs: list[PromptPair] = []
    seen: set[tuple[str, str]] = set()
    budget = 50 * n + 2000
    dropped = 0
    while len(pairs) < n:
        if budget <= 0:
            raise InputError(f"task {task.name}: could draw only {len(pairs)} distinct prompt pairs for split "
                             f"'{split}'; ask for fewer (n) or add templates / words")
        budget -= 1
        t = int(gen.integers(len(ds.templates)))
        values = draw_slots(ds, parts[t], gen)
        clean_text = render(parts[t], values)
        if spec.splits.split_of(task.name, clean_text.encode()) != split:
            continue
        clean_ids = tk.encode(clean_text)
        for _ in range(MAX_TRIES):
            cvalues = counterfactual_values(ds, values, rule, gen, wlen)
            corrupt_text = render(parts[t], cvalues)
            corrupt_ids = tk.encode(corrupt_text)
            if len(corrupt_ids) == len(clean_ids):
                break
        else:
            if ds.on_length_mismatch == "drop":
                dropped += 1
                continue
            raise InputError(f"{task.where((*loc, 'templates', t))}: counterfactual rule could not produce a "
                             f"prompt of the clean prompt's token length ({len(clean_ids)}) in {MAX_TRIES} tries, "
                             f"e.g. {clean_text!r} vs {corrupt_text!r}; use words of equal token length, or set "
                             "on_length_mismatch: drop")
        if (clean_text, corrupt_text) in seen:
            continue
        seen.add((clean_text, corrupt_text))
        if len(clean_ids) > tk.n_ctx:
            raise InputError(f"{task.where((*loc, 'templates', t))}: prompt has {len(clean_ids)} tokens, more "
                             f"than the model's context ({tk.n_ctx})")
        answer = fixed_answer or [slot_answers[spec.answer.slot][values[(spec.answer.slot, 1)]]]  # type: ignore[index]
        wrong = None
        if spec.wrong is not None:
            wrong = fixed_wrong or [slot_answers[spec.wrong.slot][values[(spec.wrong.slot, 1)]]]  # type: ignore[index]
        pairs.append(PromptPair(clean_ids, corrupt_ids, answer, wrong, (clean_text, corrupt_text)))
    if dropped:
        log.warning("task %s: dropped %d drawn prompt(s) with no counterfactual of their token length for this model",
                    task.name, dropped)
    return pairs, dropped


def draw_slots(ds: TemplatesDataset, parts: Parts, gen: np.random.Generator) -> Values:
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


def counterfactual_values(
    ds: TemplatesDataset, values: Values, rule: Counterfactual, gen: np.random.Generator,
    wlen: Callable[[str], int],
) -> Values:
    """The slot values of the counterfactual prompt: ``rule``'s copies, then its resamples (fresh words, of the old
    word's token length ``wlen`` where the list allows)."""
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


def render(parts: Parts, values: Values) -> str:
    """A template's text with its slots filled."""
    return "".join(p if isinstance(p, str) else values[p] for p in parts)
