"""The shared vocabulary: option types and the data containers every module speaks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

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
    positions; entries elsewhere are ignored.
    """

    clean: torch.Tensor
    corrupt: torch.Tensor
    positions: torch.Tensor
    answers: torch.Tensor
    wrong: torch.Tensor | None
    metric: MetricName
    description: str = ""

    def __len__(self) -> int:
        return int(self.clean.shape[0])
