"""The ``pairs`` dataset builder: explicit clean/counterfactual prompt pairs from a JSONL file next to the task file.

A line may carry its own ``answer`` / ``wrong`` word (then the task needs none); a pair whose two sides tokenize to
different lengths, or whose own word is not a single token, stops the build with an error naming its line, or is
dropped and counted when the dataset says ``on_length_mismatch: drop`` / ``on_multi_token_answer: drop``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from acdc.errors import InputError
from acdc.task.prompts import PromptPair, PromptTokenizer, fixed_answer_ids
from acdc.task.schema import METRICS_WITH_WRONG, Loc, PairsDataset, TaskFileError

if TYPE_CHECKING:
    from acdc.task.registry import Task

log = logging.getLogger(__name__)


def pairs_file(task: Task, ds: PairsDataset) -> Path:
    """The dataset's JSONL file; a relative path is relative to the task file."""
    p = Path(ds.path).expanduser()
    if not p.is_absolute():
        base = task.path.parent if task.path is not None else Path.cwd()
        p = base / p
    return p


def read_pairs(task: Task, ds: PairsDataset, loc: Loc) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every non-blank line of the dataset's JSONL file."""
    p = pairs_file(task, ds)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TaskFileError(f"{task.where((*loc, 'path'))}: cannot read {p}: {e}") from None
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


def build_pairs(
    task: Task, model: Any, ds: PairsDataset, n: int, explicit_n: bool, split: str, gen: np.random.Generator,
    loc: Loc,
) -> tuple[list[PromptPair], dict[str, int]]:
    """Up to ``n`` pairs of ``split`` in an order drawn from ``gen`` (all of them when ``n`` was not given and the
    split holds fewer), and how many pairs were dropped on the way, by reason (``length_mismatch``,
    ``multi_token_answer``)."""
    tk = PromptTokenizer.for_dataset(model, ds)
    spec = task.spec
    fixed_answer, fixed_wrong = fixed_answer_ids(task, tk, "answer"), fixed_answer_ids(task, tk, "wrong")
    needs_wrong = spec.metric.name in METRICS_WITH_WRONG
    # a line's own words are tokenized after the task's prefix (the answer's, for a wrong answer the task leaves out)
    prefix = {"answer": spec.answer.word_prefix,
              "wrong": spec.wrong.word_prefix if spec.wrong is not None else spec.answer.word_prefix}
    fname = pairs_file(task, ds).name
    records = [(i, r) for i, r in read_pairs(task, ds, loc)
               if spec.splits.split_of(task.name, r["clean"].encode()) == split]
    order = gen.permutation(len(records))
    pairs: list[PromptPair] = []
    dropped = {"length_mismatch": 0, "multi_token_answer": 0}

    def own_word(rec: dict[str, Any], key: str, line: int, fixed: list[int] | None) -> list[int] | None:
        """The line's own ``key`` word as one token id (else the task's ``fixed`` ids); None: drop the pair."""
        if key not in rec:
            if fixed is None:
                what = "an 'answer'" if key == "answer" else "a 'wrong' answer"
                ans = spec.answer if key == "answer" else spec.wrong
                why = ("the task's answer is a slot" if ans is not None and ans.slot is not None
                       else f"the task gives no {key} of its own")
                raise TaskFileError(f"{fname}:{line}: needs {what} ({why})")
            return fixed
        try:
            return [tk.single(prefix[key] + rec[key], f"{fname}:{line}: {key}")]
        except InputError as e:
            if ds.on_multi_token_answer == "error":
                raise TaskFileError(f"{e}; or set on_multi_token_answer: drop") from None
            return None

    for j in order:
        line, rec = records[int(j)]
        clean_ids, corrupt_ids = tk.encode(rec["clean"]), tk.encode(rec["counterfactual"])
        if len(clean_ids) != len(corrupt_ids):
            if ds.on_length_mismatch == "error":
                raise TaskFileError(f"{fname}:{line}: clean and counterfactual tokenize to different lengths "
                                    f"({len(clean_ids)} vs {len(corrupt_ids)}) for this model; make them equal "
                                    "or set on_length_mismatch: drop")
            dropped["length_mismatch"] += 1
            continue
        answer = own_word(rec, "answer", line, fixed_answer)
        wrong = own_word(rec, "wrong", line, fixed_wrong) if needs_wrong else None
        if answer is None or (needs_wrong and wrong is None):
            dropped["multi_token_answer"] += 1
            continue
        pairs.append(PromptPair(clean_ids, corrupt_ids, answer, wrong, (rec["clean"], rec["counterfactual"])))
        if len(pairs) == n:
            break
    if dropped["length_mismatch"]:
        log.warning("task %s: dropped %d pair(s) of %s whose two sides tokenize to different lengths for this "
                    "model", task.name, dropped["length_mismatch"], fname)
    if dropped["multi_token_answer"]:
        log.warning("task %s: dropped %d pair(s) of %s whose answer or wrong answer is not a single token for this "
                    "model", task.name, dropped["multi_token_answer"], fname)
    if len(pairs) < n:
        if explicit_n or not pairs:
            raise InputError(f"task {task.name}: split '{split}' of {fname} has {len(pairs)} usable pair(s); ask "
                             f"for at most {len(pairs)} (n)")
        log.info("task %s: using all %d pairs of split '%s'", task.name, len(pairs), split)
    return pairs, dropped
