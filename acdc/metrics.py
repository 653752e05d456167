"""Task metrics on logits, reduced over the positions a task reads, and normalised faithfulness.

Every metric takes logits ``[..., B, P, V]`` (any leading dimensions, e.g. K masks), a boolean ``positions [B, P]``
selecting the positions read, and token ids ``[B, P]`` (answers / wrong answers at those positions; other entries are
ignored) — or ``[B, P, A]`` for a *set* of A answers per position (padded with -1), whose logit is the logsumexp of
its members' logits (so a set's log-probability is the log of its summed probabilities). It returns one value per
prompt, ``[..., B]``: the mean over that prompt's selected positions. Averaging
over prompts is left to the caller so that bootstrap intervals can resample prompts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from acdc.errors import ShapeError
from acdc.types import TaskData


def _check(logits: torch.Tensor, positions: torch.Tensor, *ids: torch.Tensor | None) -> torch.Tensor:
    if logits.dim() < 3:
        raise ShapeError(f"logits must be [..., batch, pos, vocab], got {list(logits.shape)}")
    bp = tuple(logits.shape[-3:-1])
    if positions.dtype != torch.bool or tuple(positions.shape) != bp:
        raise ShapeError(f"positions must be a bool tensor {list(bp)}, got {positions.dtype} {list(positions.shape)}")
    if not bool(positions.any(-1).all()):
        raise ShapeError("every prompt needs at least one position to read the metric at")
    for t in ids:
        if t is not None and tuple(t.shape[:2]) != bp or t is not None and t.dim() not in (2, 3):
            raise ShapeError(f"token ids must be [batch, pos] = {list(bp)} or [batch, pos, set], got {list(t.shape)}")
    return positions.to(logits.device)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision logits; float64 stays float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _reduce(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    w = positions.to(values.dtype)
    return (values * w).sum(-1) / w.sum(-1)


def _at(x: torch.Tensor, ids: torch.Tensor, *, probs: bool = False) -> torch.Tensor:
    """x[..., b, p, ids[b, p]]; for answer sets ``ids [B, P, A]`` the logsumexp over the set (the sum for
    probabilities), ignoring -1 padding."""
    ids = ids.to(x.device)
    if ids.dim() == 2:
        return x.gather(-1, ids.clamp_min(0).expand(*x.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    vals = x.gather(-1, ids.clamp_min(0).expand(*x.shape[:-1], ids.shape[-1]))
    pad = (ids < 0).expand_as(vals)
    if probs:
        return vals.masked_fill(pad, 0.0).sum(-1)
    return vals.masked_fill(pad, float("-inf")).logsumexp(-1)


def logit_diff(
    logits: torch.Tensor, positions: torch.Tensor, answers: torch.Tensor, wrong: torch.Tensor
) -> torch.Tensor:
    """logit(answer) - logit(wrong answer), e.g. IOI's logit(IO) - logit(S)."""
    pos = _check(logits, positions, answers, wrong)
    return _reduce(_at(logits, answers) - _at(logits, wrong), pos)


def prob_diff(
    logits: torch.Tensor, positions: torch.Tensor, answers: torch.Tensor, wrong: torch.Tensor
) -> torch.Tensor:
    """p(answer) - p(wrong answer)."""
    pos = _check(logits, positions, answers, wrong)
    p = _wide(logits).softmax(-1)
    return _reduce(_at(p, answers, probs=True) - _at(p, wrong, probs=True), pos)


def answer_logprob(logits: torch.Tensor, positions: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
    """log p(answer): not shift-invariant, unlike a raw logit (a raw logit gave faithfulness far above 1)."""
    pos = _check(logits, positions, answers)
    return _reduce(_at(_wide(logits).log_softmax(-1), answers), pos)


def kl_divergence(logits: torch.Tensor, reference: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """KL(reference || logits) per prompt: 0 when the circuit's distribution equals the reference (clean) one."""
    return kl_to(reference, positions)(logits)


def kl_to(reference: torch.Tensor, positions: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``logits -> KL(reference || logits)`` per prompt, the reference's log-probabilities computed once (a search
    calls it thousands of times with one reference); the same numbers as :func:`kl_divergence`."""
    ref = _wide(reference).log_softmax(-1)
    p = ref.exp()

    def kl(logits: torch.Tensor) -> torch.Tensor:
        pos = _check(logits, positions)
        if tuple(reference.shape[-3:]) != tuple(logits.shape[-3:]):
            raise ShapeError(f"reference logits {list(reference.shape)} do not match logits {list(logits.shape)}")
        lp = _wide(logits).log_softmax(-1)
        return _reduce((p * (ref - lp)).sum(-1), pos)

    return kl


def faithfulness(value: torch.Tensor | float, empty: torch.Tensor | float, full: torch.Tensor | float) -> torch.Tensor:
    """Normalised faithfulness f(C) = (M(C) - M(empty)) / (M(full) - M(empty)); 1 = all behaviour recovered.

    Computed on prompt-averaged metric values (average first, then normalise: per-prompt ratios explode where a
    prompt's full-vs-empty gap is near zero).
    """
    v, e, f = (torch.as_tensor(x, dtype=torch.float64) for x in (value, empty, full))
    return (v - e) / (f - e)


METRICS: dict[str, Callable[..., torch.Tensor]] = {
    "logit_diff": logit_diff,
    "prob_diff": prob_diff,
    "logprob": answer_logprob,
    "kl": kl_divergence,
}


def task_metric(data: TaskData, logits: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """The metric ``data.metric`` of a task on ``logits [..., B, P, V]``, one value per prompt ``[..., B]``.

    ``reference`` (clean logits) is needed only for ``kl``.
    """
    if data.metric == "kl":
        if reference is None:
            raise ShapeError("the kl metric needs the clean model's logits as reference")
        return kl_divergence(logits, reference, data.positions)
    if data.metric == "logprob":
        return answer_logprob(logits, data.positions, data.answers)
    if data.wrong is None:
        raise ShapeError(f"metric {data.metric} needs wrong-answer token ids")
    return METRICS[data.metric](logits, data.positions, data.answers, data.wrong)
