"""Greedy removals decided exactly on the incremental engine, several cumulative candidates per call.

Both exact searches (ACDC's per-reader pass, the hybrid's refinement) walk an ordered list of candidate edges and
remove each one whose removal is acceptable given the circuit so far. Candidate j of a call assumes candidates
1..j-1 of that call removed; the decisions are replayed in order and the engine commits the accepted prefix, so
every decision compares exactly the two circuits the one-at-a-time search compares. After a call whose candidates
were all accepted the width doubles (up to ``width``); after a rejection it restarts at the run of acceptances
seen (this changes the cost, never the decisions).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from acdc.incremental import Incremental
from acdc.methods.base import SearchCost


def remove_greedily(
    engine: Incremental,
    mask: torch.Tensor,
    candidates: Sequence[tuple[int, int]],
    value: Callable[[torch.Tensor], Any],
    accept: Callable[[float, float], bool],
    current: float,
    width: int,
    cost: SearchCost,
    *,
    deadline: float | None = None,
    progress: Callable[[int], object] | None = None,
) -> tuple[torch.Tensor, float, int]:
    """Decide ``candidates`` (edges ``(u, v)`` of ``mask``, in order) on ``engine``, whose current circuit must be
    ``mask``. ``value(logits [K, B, n, V])`` gives each candidate's number (indexable by j), ``accept(new,
    current)`` decides; an accepted candidate's value becomes ``current``. Stops early once ``time.perf_counter()``
    passes ``deadline`` (after the first batch, so that a stopped call has decided something to estimate from);
    ``progress(k)`` is told the number of candidates each call decided. Returns the final mask
    (CPU), ``current`` and how many candidates were decided (all of them unless the deadline stopped it)."""
    mask = mask.cpu().clone()
    i = 0
    w = width
    while i < len(candidates):
        if deadline is not None and i and time.perf_counter() > deadline:  # one batch at least: progress to time
            break
        batch = candidates[i : i + w]
        trials = mask.unsqueeze(0).repeat(len(batch), 1, 1)
        for j, (u, v) in enumerate(batch):
            trials[j:, u, v] = False  # trial j removes batch[0..j]
        values = value(engine.propagate(trials, {v for _, v in batch}))
        cost.passes += 1
        cost.masks += len(batch)
        accepted = 0
        for j in range(len(batch)):
            new = float(values[j])
            if accept(new, current):
                current, accepted = new, j + 1
            else:
                break
        if accepted:
            engine.commit(accepted - 1)
            mask = trials[accepted - 1].clone()
        rejected = accepted < len(batch)
        done = accepted + (1 if rejected else 0)
        i += done
        if progress is not None:
            progress(done)
        w = min(width, 2 * w) if not rejected else max(1, min(width, accepted + 1))
    return mask, current, i
