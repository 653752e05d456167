"""Exact greedy circuit search (ACDC; Conmy et al. 2023), made fast without changing its answer.

The algorithm. Start from the full graph; D(H) is the distance of circuit H from the full model: the prompt-averaged
KL(full || H) at the task's metric positions (``distance="kl"``, the default), or |M(H) - M(full)| for the task
metric (``distance="metric"``). Visit the readers in descending index order (the logits first, then each layer from
the top: its MLP reader, then its attention readers v, k, q from the last head to the first); for each reader, try
its remaining incoming edges in descending source order (the latest writer first). Remove an edge for good when
``D(H without it) - D(H) < threshold``. A reader whose node has no outgoing edge left cannot affect the output:
its incoming edges are removed without evaluation (this changes nothing).

Fast, same answer (``fast=True``, see acdc.incremental): a candidate removal of edge (u -> r) changes only r's node
and the nodes reachable from it through edges still in the circuit; the search keeps the current circuit's state and
recomputes only those nodes, only at the positions that can reach the metric. Up to ``speculate`` candidates are
evaluated per call of the engine (acdc.methods.speculative; 8 on a GPU, where a batch costs about one call, 1 on a
CPU, where K candidates cost K). Every decision compares exactly the two circuits the sequential search compares.
Cost is counted in FLOPs and reported as full-model forward equivalents (FLOPs / one plain forward of the batch);
the plain search counts one per masked forward.

Checkpoints: with ``checkpoint=PATH`` the state (mask, distance, next reader) is written atomically after every
reader; a search started again with the same path, task data and options resumes there and returns the same circuit.

In ``acdc run`` the search runs once per threshold, as many thresholds as fit the time budget
(:func:`plan_thresholds`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from acdc.arch import get_arch
from acdc.errors import InputError
from acdc.graph import Circuit, Graph
from acdc.incremental import Incremental
from acdc.io import atomic_write_text
from acdc.methods.base import Context, Method, Outcome, SearchCost, Settings
from acdc.methods.speculative import remove_greedily
from acdc.metrics import kl_divergence, task_metric
from acdc.patching import ablation_cache, check_graph, masked_forward_unchecked
from acdc.types import TaskData

DEFAULT_THRESHOLD = 0.01


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
    speculate: int | None = None,
    checkpoint: str | Path | None = None,
    progress: bool = True,
) -> tuple[Circuit, SearchCost]:
    """Greedy exact edge search; returns the circuit (edges whose removal would raise D by ``threshold`` or more)
    and its cost. ``fast=False`` is the plain sequential reference: one full masked forward per edge."""
    from tqdm.auto import tqdm

    if threshold < 0:
        raise InputError(f"threshold must be >= 0, got {threshold}")
    arch = get_arch(model)
    if speculate is None:
        speculate = 8 if arch.device.type == "cuda" else 1
    if speculate < 1:
        raise InputError(f"speculate must be >= 1, got {speculate}")
    check_graph(graph, arch)
    clean = data.clean.to(arch.device)
    cache = ablation_cache(model, graph, data.corrupt, ablation)  # type: ignore[arg-type]
    valid = graph.valid.to(arch.device)
    cost = SearchCost()
    t0 = time.perf_counter()

    def run(masks: torch.Tensor) -> torch.Tensor:  # the plain search: one full masked forward per mask
        cost.passes += 1
        cost.masks += masks.shape[0]
        cost.forward_equivalents += masks.shape[0]
        with torch.no_grad():
            return masked_forward_unchecked(arch, graph, clean, cache, masks.to(arch.dtype))

    engine = Incremental(arch, graph, clean, cache, data) if fast else None
    with torch.no_grad():
        if engine is not None:
            full_logits = engine.reset(valid.cpu())
            cost.passes += 1
            cost.masks += 1
            dist = _distance_fn(engine.sub, full_logits, distance)
        else:
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
        if engine is not None:
            with torch.no_grad():
                engine.reset(mask.cpu())

    bar = tqdm(total=len(readers), initial=first, desc="acdc", unit="reader", disable=not progress, leave=False)
    for pos in range(first, len(readers)):
        r = readers[pos]
        owners = graph.feeds[r].nonzero().flatten().tolist()
        cands = [u for u in mask[:, r].nonzero().flatten().tolist()][::-1]  # descending source index
        if r != graph.logits_index and not any(bool(mask[w].any()) for w in owners):
            mask[:, r] = False  # the reader's node feeds nothing: its inputs cannot matter
            if engine is not None:
                engine.set_mask(mask.cpu())
        elif cands:
            if engine is not None:
                with torch.no_grad():
                    kept, current, _ = remove_greedily(engine, mask, [(u, r) for u in cands], dist,
                                                       lambda new, cur: new - cur < threshold, current, speculate,
                                                       cost)
                mask = kept.to(mask.device)
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
    if engine is not None:
        cost.forward_equivalents = engine.flops / engine.full_flops
    cost.seconds = time.perf_counter() - t0
    circuit = Circuit(graph, mask.cpu(), meta={"method": "acdc", "threshold": threshold, "distance": distance,
                                                "final_distance": current, "fast": fast, **cost.as_dict()})
    return circuit, cost


def plan_thresholds(model: Any, graph: Graph, data: TaskData, ablation: str, thresholds: tuple[float, ...],
                    budget_s: float, notes: list[str]) -> list[float]:
    """The thresholds that fit the time budget: one search evaluates about one candidate per edge; a candidate's
    cost is measured on the full circuit (an upper bound: the circuit only gets sparser). Thresholds dropped are
    spread evenly and said in ``notes``."""
    arch = get_arch(model)
    cache = ablation_cache(model, graph, data.corrupt, ablation)  # type: ignore[arg-type]
    edges = graph.valid.nonzero().tolist()
    sample = edges[:: max(1, len(edges) // 12)][:12]
    with torch.no_grad():
        engine = Incremental(arch, graph, data.clean.to(arch.device), cache, data)
        engine.reset(graph.valid)
        t0 = time.perf_counter()
        for u, r in sample:
            trial = graph.valid.clone()
            trial[u, r] = False
            engine.propagate(trial.unsqueeze(0), {r})
        per = (time.perf_counter() - t0) / len(sample)
    per_search = per * graph.n_edges
    fit = int(budget_s // max(per_search, 1e-9))
    chosen = list(thresholds)
    if fit < len(chosen):
        if fit == 0:
            notes.append(f"acdc skipped: one search needs about {per_search:.0f} s ({graph.n_edges} edges x "
                         f"{per * 1e3:.0f} ms per candidate), over the budget of {budget_s:.0f} s "
                         "(raise it with --budget)")
            return []
        step = len(chosen) / fit
        chosen = [chosen[int(i * step)] for i in range(fit)]
        notes.append(f"acdc: {fit} of {len(thresholds)} thresholds fit the budget of "
                     f"{budget_s:.0f} s (~{per_search:.0f} s per search)")
    return chosen


def _run(ctx: Context, s: Settings) -> Outcome:
    out = Outcome()
    thresholds = list(s.thresholds or (DEFAULT_THRESHOLD,))
    if s.budget_s is not None:
        thresholds = plan_thresholds(ctx.model, ctx.graph, ctx.data, s.ablation, tuple(thresholds), s.budget_s,
                                     out.notes)
    for tau in thresholds:
        out.record(*acdc_search(ctx.model, ctx.graph, ctx.data, tau, ablation=s.ablation, progress=ctx.progress,
                                **s.options), label=f"tau={tau:g}")
    return out


METHODS = (
    Method("acdc", "circuits", "exact greedy search: remove each edge whose removal raises KL(full || C) by less than "
           "the threshold (evaluated incrementally)", _run,
           cost=lambda graph, s: float(graph.n_edges * len(s.thresholds or (DEFAULT_THRESHOLD,))),
           in_job=True, controls=("thresholds", "budget_s", "options")),
)
