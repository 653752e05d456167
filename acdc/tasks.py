"""Task datasets. For now one built-in builder, induction; the YAML task registry grows here.

Induction (Olsson et al. 2022): ``[BOS, filler, x1..xn, x1..xn]`` with segment and filler lengths varied per
prompt; the metric is the log-prob of the correct next token at the positions of the second occurrence whose next
token is a repeat. The counterfactual is a fresh random sequence of the same shape (both halves new, so the key
side of the circuit — previous-token head -> induction head — differs between the runs and shows up in patching).
"""

from __future__ import annotations

from typing import Any

import torch

from acdc.errors import InputError
from acdc.types import TaskData


def build_induction(
    model: Any,
    n: int,
    *,
    seed: int = 0,
    seq_len: int = 48,
    vocab: tuple[int, int] | None = None,
) -> TaskData:
    """``n`` induction prompts and counterfactuals for ``model`` (token ids sampled from ``vocab = (lo, hi)``)."""
    from acdc.zoo import induction as ind

    if n < 1:
        raise InputError(f"need at least one prompt, got n={n}")
    d_vocab = int(model.cfg.d_vocab)
    lo, hi = vocab or (ind.VOCAB_LO, min(ind.VOCAB_HI, d_vocab))
    if not 0 <= lo < hi <= d_vocab or hi - lo < 16:
        raise InputError(f"induction token range [{lo}, {hi}) must lie in the vocabulary [0, {d_vocab}) "
                         "and hold at least 16 tokens")
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    bos = ind.BOS_ID if bos is None else int(bos)
    gen = torch.Generator().manual_seed(seed)
    clean = ind.induction_batch(n, generator=gen, vocab_lo=lo, vocab_hi=hi, seq_len=seq_len, bos_id=bos)
    corrupt = ind.induction_counterfactual(clean, generator=gen, vocab_lo=lo, vocab_hi=hi, bos_id=bos)
    answers = torch.zeros_like(clean.tokens)
    answers[:, :-1] = clean.tokens[:, 1:]
    return TaskData(
        clean=clean.tokens,
        corrupt=corrupt.tokens,
        positions=clean.repeated,
        answers=answers,
        wrong=None,
        metric="logprob",
        description="log-prob of the repeated token at the second occurrence",
    )
