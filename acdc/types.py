"""The shared vocabulary: option types and the data containers every module speaks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch

Ablation = Literal["patch", "mean", "zero"]
ABLATIONS: tuple[str, ...] = get_args(Ablation)

MetricName = Literal["logit_diff", "prob_diff", "logprob", "kl"]


@dataclass(eq=False)
class TaskData:
    """Prompts of a task, built for one model's tokenizer.

    clean / corrupt: token ids ``[B, P]`` of the prompts and their counterfactuals (same shape).
    positions: bool ``[B, P]``, the positions the metric reads.
    answers / wrong: token ids ``[B, P]`` expected (and, for difference metrics, the wrong answer) at those
    positions, or ``[B, P, A]`` for a set of answers (padded with -1); entries elsewhere are ignored.
    lengths: ``[B]`` real length of each prompt (prompts are right-padded to ``P``; causal attention means padding
    never changes the positions before it).
    texts: the (clean, counterfactual) texts when the task is built from text.
    info: how the data was built (task, split, seed, dataset, counterfactual rule, n).
    """

    clean: torch.Tensor
    corrupt: torch.Tensor
    positions: torch.Tensor
    answers: torch.Tensor
    wrong: torch.Tensor | None
    metric: MetricName
    description: str = ""
    lengths: torch.Tensor | None = None
    texts: list[tuple[str, str]] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.clean.shape[0])

    def rows(self, lo: int, hi: int) -> TaskData:
        """Prompts ``lo:hi`` with every field kept (tensors, lengths and texts sliced; info copied, with the range
        recorded under ``info["rows"]``)."""
        return TaskData(
            clean=self.clean[lo:hi], corrupt=self.corrupt[lo:hi], positions=self.positions[lo:hi],
            answers=self.answers[lo:hi], wrong=None if self.wrong is None else self.wrong[lo:hi], metric=self.metric,
            description=self.description, lengths=None if self.lengths is None else self.lengths[lo:hi],
            texts=None if self.texts is None else list(self.texts[lo:hi]),
            info={**self.info, "rows": {"lo": lo, "hi": hi, "of": len(self)}},
        )

    def take(self, index: torch.Tensor) -> TaskData:
        """The prompts at ``index`` (a 1-D tensor of prompt indices), every field kept."""
        idx = index.tolist()
        return TaskData(
            clean=self.clean[index], corrupt=self.corrupt[index], positions=self.positions[index],
            answers=self.answers[index], wrong=None if self.wrong is None else self.wrong[index], metric=self.metric,
            description=self.description, lengths=None if self.lengths is None else self.lengths[index],
            texts=None if self.texts is None else [self.texts[i] for i in idx],
            info={**self.info, "rows": {"index": idx, "of": len(self)}},
        )
