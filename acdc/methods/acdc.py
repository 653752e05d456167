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
evaluated per call of the engine (acdc.methods.speculative; 8 on a GPU, where a batch costs about one call; 4 on a
CPU, where K candidates cost nearly K but the unembedding of K x B positions runs ~1.5x faster per candidate than
K separate ones on a large vocabulary: SmolLM2's 49,152 tokens, 32 instead of 46-51 ms per candidate). Every
decision compares exactly the two circuits the sequential search compares.
Cost is counted in FLOPs and reported as full-model forward equivalents (FLOPs / one plain forward of the batch);
the plain search counts one per masked forward.

Checkpoints: with ``checkpoint=PATH`` the state (mask, distance, next reader) is written atomically after every
reader; a search started again with the same path, task data and options resumes there and returns the same circuit.

In ``acdc run`` the search runs once per threshold, the largest (cheapest) first, as many as fit the time budget;
the budget stops a search at a reader boundary (:class:`SearchStopped`) and says what it would have needed.
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
from acdc.metrics import kl_to, task_metric
from acdc.patching import ablation_cache, check_graph, masked_forward_unchecked
from acdc.types import TaskData

DEFAULT_THRESHOLD = 0.01


def _distance_fn(data: TaskData, full_logits: torch.Tensor, distance: str,
                 world: int = 1, n_total: int = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    """D(logits [K, B, n, V]) -> [K]: the prompt average of the distance. With ``world > 1`` processes, each holding
    a shard of the prompts, the per-prompt values are summed on every rank and all-reduced (float64), so every rank
    gets the same average over all ``n_total`` prompts and takes the same decisions."""
    if world > 1:
        import torch.distributed as dist

        def mean(values: torch.Tensor) -> torch.Tensor:
            total = values.double().sum(-1).cpu()
            dist.all_reduce(total)
            return total / n_total
    else:
        def mean(values: torch.Tensor) -> torch.Tensor:
            return values.mean(-1)

    if distance == "kl":
        kl = kl_to(full_logits, data.positions)
        return lambda logits: mean(kl(logits))
    if distance == "metric":
        full = mean(task_metric(data, full_logits, full_logits).unsqueeze(0))[0]
        return lambda logits: (mean(task_metric(data, logits, full_logits)) - full).abs()
    raise InputError(f"unknown distance '{distance}'; use kl or metric")


ORDERS: tuple[str, ...] = ("acdc", "reference")


def _sender_key(graph: Graph, order: str) -> Callable[[int], tuple[int, int]]:
    """Sort key of a reader's candidate senders (writer indices) in the visiting ``order``."""
    if order == "acdc":
        return lambda u: (-u, 0)
    per = graph.n_heads + 1

    def key(u: int) -> tuple[int, int]:
        if u == 0:
            return (1, 0)  # input last
        layer, pos = divmod(u - 1, per)
        return (-layer - 1, 0 if pos == graph.n_heads else 1 + pos)  # layers from the top; MLP, then heads 0 up

    return key


class SearchStopped(Exception):
    """An exact search stopped at its deadline: ``readers`` of ``of`` visited in ``seconds``; ``estimate_s`` is the
    whole search's time at that pace (an upper bound: readers left without outgoing edges are skipped for free)."""

    def __init__(self, readers: int, of: int, seconds: float, estimate_s: float) -> None:
        super().__init__(f"stopped after {readers} of {of} readers in {seconds:.0f} s")
        self.readers, self.of, self.seconds, self.estimate_s = readers, of, seconds, estimate_s


def _passed(deadline: float, world: int) -> bool:
    """Whether the deadline has passed, agreed by every process (each has its own clock)."""
    late = time.perf_counter() > deadline
    if world == 1:
        return late
    import torch.distributed as dist

    flag = torch.tensor([1.0 if late else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag[0] > 0)


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
    on_reader: Callable[[int, int, int, int], object] | None = None,
    distributed: bool = False,
    deadline: float | None = None,
    order: str = "acdc",
    max_distance: float | None = None,
) -> tuple[Circuit, SearchCost]:
    """Greedy exact edge search; returns the circuit (edges whose removal would raise D by ``threshold`` or more)
    and its cost. ``fast=False`` is the plain sequential reference: one full masked forward per edge.
    ``on_reader(step, reader, candidates, edges)`` is called after each reader (benchmarks time the search with it;
    an exception it raises stops the search).

    ``distributed``: under torchrun (see acdc.distributed), every process holds a contiguous shard of the prompts
    and runs the same search on it; the distances are all-reduced, so all processes take the same decisions and
    return the circuit one process would (up to the order of the final float sums). Only rank 0 writes the
    checkpoint and shows progress.

    ``deadline`` (a ``time.perf_counter()`` value): checked after each reader, and in one process also between
    candidates inside a reader (the logits reader of a long-prompt task can take minutes); once passed, the search
    stops (the checkpoint keeps the last whole reader) with
    :class:`SearchStopped`, which says how far it got and what the whole search would cost at that pace (with a
    checkpoint, a later call resumes from there).

    ``order``: the order of a reader's incoming edges. ``acdc`` (default): descending source index, the latest
    writer first. ``reference``: the ACDC reference implementation's, a layer's senders from head 0 up: layers from
    the top, within a layer its MLP first and then its heads from head 0 up, ``input`` last (readers are visited in
    the same order either way: logits, then per layer from the top its MLP, v, k and q readers).

    ``max_distance``: a bound on the circuit's distance from the full model; a removal is accepted only while the
    distance after it stays within the bound (the per-edge threshold alone lets accepted increases add up). The
    circuit's final distance is ``meta["final_distance"]``, and the checkpoint's ``distance``."""
    from tqdm.auto import tqdm

    if threshold < 0:
        raise InputError(f"threshold must be >= 0, got {threshold}")
    if order not in ORDERS:
        raise InputError(f"unknown visiting order '{order}'; choose one of {', '.join(ORDERS)}")
    if max_distance is not None and max_distance < 0:
        raise InputError(f"max_distance must be >= 0, got {max_distance}")
    arch = get_arch(model)
    if speculate is None:
        speculate = 8 if arch.device.type == "cuda" else 4
    if speculate < 1:
        raise InputError(f"speculate must be >= 1, got {speculate}")
    check_graph(graph, arch)
    full_data = data
    rank, world = 0, 1
    if distributed:
        from acdc.distributed import mean_cache_distributed, rank_world, shard

        rank, world = rank_world()
    if world > 1:
        if len(data) < world:
            raise InputError(f"{len(data)} prompts cannot be shared among {world} processes; use at least {world}")
        data = shard(full_data, rank, world)
    progress = progress and rank == 0
    clean = data.clean.to(arch.device)
    if world > 1 and ablation == "mean":
        cache = mean_cache_distributed(model, graph, full_data)
    else:
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
            dist = _distance_fn(engine.sub, full_logits, distance, world, len(full_data))
        else:
            full_logits = run(valid.unsqueeze(0))[0]
            dist = _distance_fn(data, full_logits, distance, world, len(full_data))
    options = {"threshold": threshold, "distance": distance, "ablation": ablation, "n": len(full_data),
               "graph": graph.signature(), "clean_sum": int(full_data.clean.sum()),
               "corrupt_sum": int(full_data.corrupt.sum())}
    if order != "acdc":
        options["order"] = order
    if max_distance is not None:
        options["max_distance"] = max_distance

    def accept(new: float, cur: float) -> bool:
        return new - cur < threshold and (max_distance is None or new <= max_distance)

    sender_key = _sender_key(graph, order)
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
    decided = 0  # edges into the readers visited so far (this call): the work done, for the estimate when stopped
    total_work = int(graph.valid[:, readers[first:]].sum()) if first < len(readers) else 0
    for pos in range(first, len(readers)):
        r = readers[pos]
        owners = graph.feeds[r].nonzero().flatten().tolist()
        cands = sorted(mask[:, r].nonzero().flatten().tolist(), key=sender_key)
        evaluated = len(cands)
        if r != graph.logits_index and not any(bool(mask[w].any()) for w in owners):
            evaluated = 0
            mask[:, r] = False  # the reader's node feeds nothing: its inputs cannot matter
            if engine is not None:
                engine.set_mask(mask.cpu())
        elif cands:
            inside = deadline if world == 1 else None  # ranks must agree: with several, reader boundaries only
            if engine is not None:
                with torch.no_grad():
                    kept, new_current, n_done = remove_greedily(engine, mask, [(u, r) for u in cands], dist,
                                                                accept, current, speculate, cost, deadline=inside)
                if n_done < len(cands):  # the deadline passed inside this reader (e.g. the logits, the costliest)
                    bar.close()
                    elapsed = time.perf_counter() - t0
                    raise SearchStopped(pos - first, len(readers) - first, elapsed,
                                        elapsed * total_work / max(decided + n_done, 1))
                mask, current = kept.to(mask.device), new_current
            else:
                for j, u in enumerate(cands):
                    if inside is not None and j and time.perf_counter() > inside:
                        bar.close()
                        elapsed = time.perf_counter() - t0
                        raise SearchStopped(pos - first, len(readers) - first, elapsed,
                                            elapsed * total_work / max(decided + j, 1))
                    trial = mask.clone()
                    trial[u, r] = False
                    d_new = float(dist(run(trial.unsqueeze(0)))[0])
                    if accept(d_new, current):
                        mask, current = trial, d_new
        bar.update(1)
        bar.set_postfix(edges=int(mask.sum()), distance=f"{current:.4g}")
        if on_reader is not None:
            on_reader(pos, r, evaluated, int(mask.sum()))
        if checkpoint is not None and rank == 0:
            atomic_write_text(Path(checkpoint), json.dumps({
                "format": "acdc-search-checkpoint/1", "options": options, "next": pos + 1, "distance": current,
                "edges": mask.nonzero().tolist()}))
        decided += int(graph.valid[:, r].sum())
        if deadline is not None and pos + 1 < len(readers) and _passed(deadline, world):
            bar.close()
            elapsed = time.perf_counter() - t0
            raise SearchStopped(pos + 1 - first, len(readers) - first, elapsed,
                                elapsed * total_work / max(decided, 1))
    bar.close()
    if engine is not None:
        cost.forward_equivalents = engine.flops / engine.full_flops
    cost.seconds = time.perf_counter() - t0
    if world > 1:
        cost.extra["processes"] = world
    circuit = Circuit(graph, mask.cpu(), meta={"method": "acdc", "threshold": threshold, "distance": distance,
                                                "final_distance": current, "fast": fast, "order": order,
                                                "max_distance": max_distance, **cost.as_dict()})
    return circuit, cost


def _run(ctx: Context, s: Settings) -> Outcome:
    """One search per threshold. With a budget, the largest thresholds (the cheapest searches: more readers lose
    every outgoing edge and are skipped) run first, each until the budget is spent; a search the budget stops is
    dropped, and the thresholds left with it, with a note saying what the search would need."""
    out = Outcome()
    thresholds = list(s.thresholds or (DEFAULT_THRESHOLD,))
    found: dict[int, tuple[Circuit, SearchCost]] = {}
    start = time.perf_counter()
    deadline = None if s.budget_s is None else start + s.budget_s
    order = sorted(range(len(thresholds)), key=lambda i: -thresholds[i])
    for k, i in enumerate(order):
        tau = thresholds[i]
        options = {"distributed": ctx.distributed, **s.options}
        try:
            found[i] = acdc_search(ctx.model, ctx.graph, ctx.data, tau, ablation=s.ablation, progress=ctx.progress,
                                   deadline=deadline, **options)
        except SearchStopped as stop:
            left = [thresholds[j] for j in order[k:]]
            out.notes.append(
                f"acdc: the budget of {s.budget_s:.0f} s stopped the search at threshold {tau:g} after {stop.readers} "
                f"of {stop.of} readers; at that pace it needs up to ~{stop.estimate_s:.0f} s; dropped threshold"
                f"{'s' if len(left) > 1 else ''} {', '.join(f'{t:g}' for t in left)} (raise --budget, or run "
                "`acdc discover TASK --method acdc --threshold T --out DIR`, which can resume)")
            break
    acc = []
    for i in sorted(found):
        c = found[i][0]
        acc.append(f"tau={thresholds[i]:g}: {c.meta['final_distance']:.4g} ({c.n_edges} edges)")
        out.record(*found[i], label=f"tau={thresholds[i]:g}")
    if acc:  # the per-edge threshold lets accepted increases add up: say where each search ended
        distance = "KL(full || C)" if found[min(found)][0].meta["distance"] == "kl" else "|M(C) - M(full)|"
        out.notes.insert(0, f"acdc: accumulated {distance} on the train split: " + ", ".join(acc))
    return out


METHODS = (
    Method("acdc", "circuits", "exact greedy search: remove each edge whose removal raises KL(full || C) by less than "
           "the threshold (evaluated incrementally)", _run,
           cost=lambda graph, s: float(graph.n_edges * len(s.thresholds or (DEFAULT_THRESHOLD,))),
           in_job=True, distributed=True, controls=("thresholds", "budget_s", "options")),
)
