"""The ``repeated_tokens`` dataset: ``[BOS, filler, x1..xn, x1..xn, tail]`` with random tokens (induction).

Position 0 is the tokenizer's BOS token by the same rule as plain text prompts (:func:`acdc.task.prompts.prepends_bos`:
not when that token is a chat-template marker, and ``prepend_bos`` decides when given); without it, position 0 is
one more random token.

:func:`fill_repeated` and :func:`sample_repeated` make the sequences over a contiguous id range; the task builder
(:func:`build_repeated`) maps them onto a model's usable token ids, and the zoo trains ``toy-induction`` on the same
sequences over its own small vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from acdc.errors import InputError
from acdc.task.identity import written_for_entries
from acdc.task.prompts import model_n_ctx, model_tokenizer, prepends_bos
from acdc.task.schema import SPLITS, RepeatedTokensDataset, dataset_loc
from acdc.types import TaskData

if TYPE_CHECKING:
    from acdc.task.registry import Task


@dataclass(frozen=True)
class RepeatedBatch:
    """Repeated-segment sequences.

    tokens: ``[n, seq_len]``. repeated: ``[n, seq_len]`` bool, True at positions p inside the second occurrence
    whose next token ``tokens[:, p + 1]`` is also inside it (so it is predictable by copying). filler_len, seg_len:
    ``[n]``; the first occurrence starts at ``1 + filler_len``, the second at ``1 + filler_len + seg_len``.
    """

    tokens: torch.Tensor
    repeated: torch.Tensor
    filler_len: torch.Tensor
    seg_len: torch.Tensor

    @property
    def second_start(self) -> torch.Tensor:
        return 1 + self.filler_len + self.seg_len


def fill_repeated(
    filler_len: torch.Tensor,
    seg_len: torch.Tensor,
    *,
    generator: torch.Generator,
    vocab_lo: int,
    vocab_hi: int,
    seq_len: int,
    bos_id: int,
) -> RepeatedBatch:
    """Sequences with the given filler and segment lengths ``[n]``: tokens before the repeat are distinct ids drawn
    from ``[vocab_lo, vocab_hi)``, the tail after it random ones, and position 0 is ``bos_id``."""
    n = filler_len.shape[0]
    if int((1 + filler_len + 2 * seg_len).max()) > seq_len:
        raise InputError(f"seq_len {seq_len} is too short for BOS + filler + two segments "
                         f"({int((1 + filler_len + 2 * seg_len).max())} tokens)")
    n_vocab = vocab_hi - vocab_lo
    tokens = torch.randint(vocab_lo, vocab_hi, (n, seq_len), generator=generator)
    distinct = torch.rand((n, n_vocab), generator=generator).argsort(dim=1) + vocab_lo
    pos = torch.arange(seq_len).unsqueeze(0)
    second = (1 + filler_len + seg_len).unsqueeze(1)
    end = second + seg_len.unsqueeze(1)
    width = min(seq_len - 1, n_vocab)
    head = torch.zeros_like(tokens)
    head[:, 1 : 1 + width] = distinct[:, :width]
    tokens = torch.where((pos >= 1) & (pos < second), head, tokens)
    tokens[:, 0] = bos_id
    src = torch.where((pos >= second) & (pos < end), pos - seg_len.unsqueeze(1), pos)
    tokens = tokens.gather(1, src)
    repeated = (pos >= second) & (pos < end - 1)
    return RepeatedBatch(tokens=tokens, repeated=repeated, filler_len=filler_len, seg_len=seg_len)


def sample_repeated(
    n: int,
    *,
    generator: torch.Generator,
    seg_len: tuple[int, int],
    filler_len: tuple[int, int],
    vocab_lo: int,
    vocab_hi: int,
    seq_len: int,
    bos_id: int,
) -> RepeatedBatch:
    """``n`` sequences of :func:`fill_repeated` with filler and segment lengths drawn uniformly from the given
    ``[min, max]`` ranges (filler lengths first, from the same ``generator``)."""
    f = torch.randint(filler_len[0], filler_len[1] + 1, (n,), generator=generator)
    s = torch.randint(seg_len[0], seg_len[1] + 1, (n,), generator=generator)
    return fill_repeated(f, s, generator=generator, vocab_lo=vocab_lo, vocab_hi=vocab_hi, seq_len=seq_len,
                         bos_id=bos_id)


def build_repeated(
    task: Task, model: Any, ds: RepeatedTokensDataset, sequence: str, n: int, split: str, seed: int,
    model_spec: str | None, cname: str, dname: str,
) -> TaskData:
    """``n`` distinct sequences of ``split`` over the model's usable tokens, with counterfactual ``sequence``
    (``fresh``: new tokens throughout; ``second_half``: only the second occurrence replaced)."""
    tok = model_tokenizer(model)
    d_vocab = int(model.cfg.d_vocab)
    rng = ds.token_range
    for entry in written_for_entries(task.spec.models, model_spec):
        if entry.token_range is not None:
            rng = entry.token_range
            break
    special = set(getattr(tok, "all_special_ids", []) or [])
    size = min(d_vocab, len(tok))
    if rng is None:
        cand = torch.tensor([i for i in range(size) if i not in special])
    else:
        lo, hi = rng
        if hi > d_vocab:
            raise InputError(f"{task.where((*dataset_loc(task.spec, dname), 'token_range'))}: [{lo}, {hi}) "
                             f"exceeds the model's vocabulary of {d_vocab} tokens")
        cand = torch.tensor([i for i in range(lo, hi) if i not in special])
    need = ds.segment_length[1] + ds.filler_length[1] + 1
    if len(cand) < max(need, 16):
        raise InputError(f"task {task.name}: only {len(cand)} tokens to sample from; need at least "
                         f"{max(need, 16)} distinct tokens")
    length = ds.length or 1 + ds.filler_length[1] + 2 * ds.segment_length[1] + 1
    if length > model_n_ctx(model):
        raise InputError(f"task {task.name}: prompts of {length} tokens exceed the model's context "
                         f"({model_n_ctx(model)})")
    bos = tok.bos_token_id if prepends_bos(tok, ds.prepend_bos, chat=False) else None
    gen = torch.Generator().manual_seed(seed * 3 + SPLITS.index(split))
    frac = getattr(task.spec.splits, split)
    rows: list[torch.Tensor] = []
    reps: list[torch.Tensor] = []
    fills: list[torch.Tensor] = []
    segs: list[torch.Tensor] = []
    seen: set[bytes] = set()
    have, rounds = 0, 0
    while have < n:
        rounds += 1
        if rounds > 1000:
            raise InputError(f"task {task.name}: could not draw {n} distinct sequences for split '{split}'")
        m = min(4096, max(16, 20_000_000 // len(cand)), int((n - have) / frac * 1.3) + 16)  # bounded memory
        b = sample_repeated(m, generator=gen, seg_len=ds.segment_length, filler_len=ds.filler_length, vocab_lo=0,
                            vocab_hi=len(cand), seq_len=length, bos_id=0)
        ids = cand[b.tokens]
        ids[:, 0] = bos if bos is not None else cand[b.tokens[:, 0]]
        for i in range(m):
            key = ids[i].numpy().tobytes()
            if key in seen or task.spec.splits.split_of(task.name, key) != split:
                continue
            seen.add(key)
            rows.append(ids[i])
            reps.append(b.repeated[i])
            fills.append(b.filler_len[i])
            segs.append(b.seg_len[i])
            have += 1
            if have == n:
                break
    clean = torch.stack(rows)
    repeated = torch.stack(reps)
    fl, sl = torch.stack(fills), torch.stack(segs)
    cb = fill_repeated(fl, sl, generator=gen, vocab_lo=0, vocab_hi=len(cand), seq_len=length, bos_id=0)
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
        metric=task.spec.metric.name, description=task.metric_description(),
        lengths=torch.full((n,), length), texts=None,
        info={"task": task.name, "n": n, "split": split, "seed": seed, "dataset": dname,
              "counterfactual": cname},
    )
