"""The ``pairs`` dataset builder: explicit clean/counterfactual prompt pairs from a JSONL file next to the task file."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from acdc.errors import InputError
from acdc.task.prompts import PromptPair, PromptTokenizer, fixed_answer_ids
from acdc.task.schema import Loc, PairsDataset, TaskFileError

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
) -> list[PromptPair]:
    """Up to ``n`` pairs of ``split`` in an order drawn from ``gen`` (all of them when ``n`` was not given and the
    split holds fewer)."""
    tk = PromptTokenizer.for_dataset(model, ds)
    spec = task.spec
    fixed_answer, fixed_wrong = fixed_answer_ids(task, tk, "answer"), fixed_answer_ids(task, tk, "wrong")
    fname = pairs_file(task, ds).name
    records = [(i, r) for i, r in read_pairs(task, ds, loc)
               if spec.splits.split_of(task.name, r["clean"].encode()) == split]
    order = gen.permutation(len(records))
    pairs: list[PromptPair] = []
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
        pairs.append(PromptPair(clean_ids, corrupt_ids, answer, wrong, (rec["clean"], rec["counterfactual"])))
        if len(pairs) == n:
            break
    if dropped:
        log.warning("task %s: dropped %d pair(s) of %s whose two sides tokenize to different lengths for this "
                    "model", task.name, dropped, fname)
    if len(pairs) < n:
        if explicit_n or not pairs:
            raise InputError(f"task {task.name}: split '{split}' of {fname} has {len(pairs)} usable pair(s); ask "
                             f"for at most {len(pairs)} (n)")
        log.info("task %s: using all %d pairs of split '%s'", task.name, len(pairs), split)
    return pairs
