"""Exact greedy circuit search (ACDC; Conmy et al. 2023), made fast without changing its answer.

The algorithm. Start from the full graph; D(H) is the distance of circuit H from the full model: the prompt-averaged
KL(full || H) at the task's metric positions (``distance="kl"``, the default), or |M(H) - M(full)| for the task
metric (``distance="metric"``). Visit the readers in descending index order (the logits first, then each layer from
the top: its MLP reader, then its attention readers v, k, q from the last head to the first); for each reader, try
its remaining incoming edges in descending source order (the latest writer first). Remove an edge for good when
``D(H without it) - D(H) < threshold``. A reader whose node has no outgoing edge left cannot affect the output:
its incoming edges are removed without evaluation (this changes nothing).

Fast, same answer (``fast=True``):
- every candidate of one reader leaves everything below that reader unchanged, so the masked forward starts at
  the reader's layer from the writers' outputs computed once per reader (``start``/``prefix`` of the masked pass);
- ``speculate`` candidates are evaluated in one batched pass, candidate j assuming candidates 1..j-1 removed; the
  decisions are then replayed in order and, at the first rejection, speculation restarts after the rejected edge.
  Every decision compares exactly the two circuits the sequential search compares.

Checkpoints: with ``checkpoint=PATH`` the state (mask, distance, next reader) is written atomically after every
reader; a search started again with the same path, task data and options resumes there and returns the same circuit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from acdc.arch import get_arch
from acdc.errors import InputError
from acdc.graph import Circuit, Graph
from acdc.io import atomic_write_text
from acdc.metrics import kl_divergence, task_metric
from acdc.patching import _check_graph, _masked, ablation_cache, prefix_writers, reader_group
from acdc.types import TaskData


@dataclass
class SearchCost:
    """What a search cost: masked-forward calls, masks evaluated, full-model-equivalent forward passes (a pass
    over a fraction f of the layers with K masks counts K·f), and wall time."""

    passes: int = 0
    masks: int = 0
    forward_equivalents: float = 0.0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"passes": self.passes, "masks": self.masks, "forward_equivalents": round(self.forward_equivalents, 2),
                "seconds": round(self.seconds, 3), **self.extra}


def _distance_fn(data: TaskData, full_logits: torch.Tensor, distance: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if distance == "kl":
        return lambda logits: kl_divergence(logits, full_logits, data.positions).mean(-1)
    if distance == "metric":
        full = task_metric(data, full_logits, full_logits).mean()
        return lambda logits: (task_metric(data, logits, full_logits).mean(-1) - full).abs()
    raise InputError(f"unknown distance '{distance}'; use kl or metric")


def acdc_search(
    model: Any,
    graph: Graph,
    data: TaskData,
    threshold: float,
    *,
    distance: str = "kl",
    ablation: str = "patch",
    fast: bool = True,
    speculate: int = 8,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> tuple[Circuit, SearchCost]:
    """Greedy exact edge search; returns the circuit (edges whose removal would raise D by ``threshold`` or more)
    and its cost. ``fast=False`` is the plain sequential reference: one full masked forward per edge."""
    from tqdm.auto import tqdm

    if threshold < 0:
        raise InputError(f"threshold must be >= 0, got {threshold}")
    if speculate < 1:
        raise InputError(f"speculate must be >= 1, got {speculate}")
    arch = get_arch(model)
    _check_graph(graph, arch)
    clean = data.clean.to(arch.device)
    cache = ablation_cache(model, graph, data.corrupt if ablation != "zero" else None, ablation)  # type: ignore[arg-type]
    valid = graph.valid.to(arch.device)
    cost = SearchCost()
    groups = 2 * graph.n_layers + 1
    t0 = time.perf_counter()

    def run(masks: torch.Tensor, start: int = 0, prefix: torch.Tensor | None = None,
            keep: list[torch.Tensor] | None = None) -> torch.Tensor:
        cost.passes += 1
        cost.masks += masks.shape[0]
        cost.forward_equivalents += masks.shape[0] * (groups - (start if prefix is not None else 0)) / groups
        with torch.no_grad():
            return _masked(arch, graph, clean, cache, masks.to(arch.dtype), start=start, prefix=prefix, keep=keep)

    with torch.no_grad():
        full_logits = run(valid.unsqueeze(0))[0]
    dist = _distance_fn(data, full_logits, distance)
    options = {"threshold": threshold, "distance": distance, "ablation": ablation, "n": len(data),
               "graph": graph.signature(), "clean_sum": int(data.clean.sum()), "corrupt_sum": int(data.corrupt.sum())}
    mask = valid.clone()
    current = 0.0
    first = 0
    readers = list(range(graph.n_dst - 1, -1, -1))
    if checkpoint is not None and Path(checkpoint).is_file():
        state = json.loads(Path(checkpoint).read_text())
        if state.get("options") != options:
            raise InputError(f"checkpoint {checkpoint} is for another search ({state.get('options')}); delete it or "
                             "use another path")
        mask = torch.zeros_like(valid)
        for s, d in state["edges"]:
            mask[s, d] = True
        current, first = float(state["distance"]), int(state["next"])
        cost.extra["resumed_at_reader"] = first

    bar = tqdm(total=len(readers), initial=first, desc="acdc", unit="reader", disable=not progress, leave=False)
    for pos in range(first, len(readers)):
        r = readers[pos]
        owners = graph.feeds[r].nonzero().flatten().tolist()
        cands = [u for u in mask[:, r].nonzero().flatten().tolist()][::-1]  # descending source index
        if r != graph.logits_index and not any(bool(mask[w].any()) for w in owners):
            mask[:, r] = False  # the reader's node feeds nothing: its inputs cannot matter
        elif cands:
            if fast:
                current = _visit_fast(run, dist, mask, r, cands, current, threshold, speculate, graph)
            else:
                for u in cands:
                    trial = mask.clone()
                    trial[u, r] = False
                    d_new = float(dist(run(trial.unsqueeze(0)))[0])
                    if d_new - current < threshold:
                        mask, current = trial, d_new
        bar.update(1)
        bar.set_postfix(edges=int(mask.sum()), distance=f"{current:.4g}")
        if checkpoint is not None:
            atomic_write_text(Path(checkpoint), json.dumps({
                "format": "acdc-search-checkpoint/1", "options": options, "next": pos + 1, "distance": current,
                "edges": mask.nonzero().tolist()}))
    bar.close()
    cost.seconds = time.perf_counter() - t0
    circuit = Circuit(graph, mask.cpu(), meta={"method": "acdc", "threshold": threshold, "distance": distance,
                                                "final_distance": current, "fast": fast, **cost.as_dict()})
    return circuit, cost


def _visit_fast(run, dist, mask: torch.Tensor, r: int, cands: list[int], current: float, threshold: float,
                speculate: int, graph: Graph) -> float:
    """Decide every candidate edge into reader ``r`` (in order) exactly as the sequential search does, evaluating
    up to ``speculate`` cumulative removals per pass from a prefix shared by all of them. Updates ``mask``."""
    group = reader_group(graph, r)
    keep: list[torch.Tensor] = []
    if group > 0:
        run(mask.unsqueeze(0), keep=keep)  # the writers below this reader, once (they never change here)
        prefix = keep[0][: prefix_writers(graph, group), 0]
    else:
        prefix = None
    i = 0
    while i < len(cands):
        batch = cands[i : i + speculate]
        trials = mask.unsqueeze(0).repeat(len(batch), 1, 1)
        for j, u in enumerate(batch):
            trials[j:, u, r] = False  # trial j removes batch[0..j]
        values = dist(run(trials, start=group, prefix=prefix) if prefix is not None else run(trials))
        rejected = None
        for j, u in enumerate(batch):
            d_new = float(values[j])
            if d_new - current < threshold:
                mask[u, r] = False
                current = d_new
            else:
                rejected = j
                break
        i += len(batch) if rejected is None else rejected + 1
    return current
