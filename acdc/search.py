"""Exact greedy circuit search (ACDC; Conmy et al. 2023), made fast without changing its answer.

The algorithm. Start from the full graph; D(H) is the distance of circuit H from the full model: the prompt-averaged
KL(full || H) at the task's metric positions (``distance="kl"``, the default), or |M(H) - M(full)| for the task
metric (``distance="metric"``). Visit the readers in descending index order (the logits first, then each layer from
the top: its MLP reader, then its attention readers v, k, q from the last head to the first); for each reader, try
its remaining incoming edges in descending source order (the latest writer first). Remove an edge for good when
``D(H without it) - D(H) < threshold``. A reader whose node has no outgoing edge left cannot affect the output:
its incoming edges are removed without evaluation (this changes nothing).

Fast, same answer (``fast=True``, see acdc.incremental):
- a candidate removal of edge (u -> r) changes only r's node and the nodes reachable from it through edges still in
  the circuit; the search keeps the current circuit's state (writer deltas, rotated q/k/v) and recomputes only
  those nodes, only at the positions that can reach the metric (the metric positions themselves for nodes that
  reach the logits without passing through a later key or value; every position up to the last metric position
  otherwise), and the logits only at the metric positions;
- up to ``speculate`` candidates are evaluated in one batched call, candidate j assuming candidates 1..j-1 removed
  (default 8 on a GPU, where a batch costs about one call; 1 on a CPU, where K candidates cost K), and the
  decisions are replayed in order; at the first rejection, speculation restarts after the rejected edge, with a
  width that follows the recent run of acceptances (doubling after a batch fully accepted).
  Every decision compares exactly the two circuits the sequential search compares.
Cost is counted in FLOPs and reported as full-model forward equivalents (FLOPs / one plain forward of the batch);
the plain search counts one per masked forward.

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
from acdc.incremental import Incremental
from acdc.io import atomic_write_text
from acdc.metrics import kl_divergence, task_metric
from acdc.patching import _check_graph, _masked, ablation_cache
from acdc.types import TaskData


@dataclass
class SearchCost:
    """What a search cost: evaluation calls (masked forwards, or calls of the incremental engine), masks
    evaluated, full-model-equivalent forward passes (a full masked forward of K masks counts K; the incremental
    engine counts its FLOPs over those of one plain forward), and wall time."""

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
    _check_graph(graph, arch)
    clean = data.clean.to(arch.device)
    cache = ablation_cache(model, graph, data.corrupt if ablation != "zero" else None, ablation)  # type: ignore[arg-type]
    valid = graph.valid.to(arch.device)
    cost = SearchCost()
    t0 = time.perf_counter()

    def run(masks: torch.Tensor) -> torch.Tensor:  # the plain search: one full masked forward per mask
        cost.passes += 1
        cost.masks += masks.shape[0]
        cost.forward_equivalents += masks.shape[0]
        with torch.no_grad():
            return _masked(arch, graph, clean, cache, masks.to(arch.dtype))

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
                    current = _visit_incremental(engine, dist, mask, r, cands, current, threshold, speculate, cost)
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


def _visit_incremental(engine: Incremental, dist, mask: torch.Tensor, r: int, cands: list[int], current: float,
                       threshold: float, speculate: int, cost: SearchCost) -> float:
    """Decide every candidate edge into reader ``r`` (in order) exactly as the sequential search does, evaluating
    up to ``speculate`` cumulative removals per call of the incremental engine. Updates ``mask``."""
    i = 0
    width = speculate
    while i < len(cands):
        batch = cands[i : i + width]
        trials = mask.cpu().unsqueeze(0).repeat(len(batch), 1, 1)
        for j, u in enumerate(batch):
            trials[j:, u, r] = False  # trial j removes batch[0..j]
        values = dist(engine.propagate(trials, {r}))
        cost.passes += 1
        cost.masks += len(batch)
        accepted = 0
        for j in range(len(batch)):
            d_new = float(values[j])
            if d_new - current < threshold:
                current = d_new
                accepted = j + 1
            else:
                break
        if accepted:
            engine.commit(accepted - 1)
            for u in batch[:accepted]:
                mask[u, r] = False
        rejected = accepted < len(batch)
        i += accepted + (1 if rejected else 0)
        # speculate as far as acceptances have been running (this changes the cost, never the decisions)
        width = min(speculate, 2 * width) if not rejected else max(1, min(speculate, accepted + 1))
    return current


# ---- learned edge masks ------------------------------------------------------------------------------------------
BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
"""Hard-concrete constants (Louizos et al. 2018), as used by edge pruning (Bhaskar et al. 2024)."""


def _hard_concrete(log_alpha: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    if u is None:  # deterministic at evaluation
        s = torch.sigmoid(log_alpha)
    else:
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / BETA)
    return (s * (ZETA - GAMMA) + GAMMA).clamp(0.0, 1.0)


def _exact_size(graph: Graph, key: torch.Tensor, n: int) -> torch.Tensor:
    """The top-k edges by ``key`` with the smallest k whose dangling-free circuit has ``n`` edges (or the largest
    circuit below ``n`` when no k gives exactly ``n``)."""
    from acdc.graph import prune_dangling

    order = torch.argsort(key.masked_fill(~graph.valid, float("-inf")).flatten(), descending=True, stable=True)
    best = torch.zeros_like(graph.valid)
    for k in range(n, graph.n_edges + 1):
        m = torch.zeros(graph.n_src * graph.n_dst, dtype=torch.bool)
        m[order[:k]] = True
        pruned = prune_dangling(graph, m.view_as(graph.valid))
        c = int(pruned.sum())
        if c == n:
            return pruned
        if c < n and c > int(best.sum()):
            best = pruned
        if c > n:
            break
    return best


def edge_pruning(
    model: Any,
    graph: Graph,
    data: TaskData,
    *,
    edges: int | None = None,
    fraction: float | None = None,
    ablation: str = "patch",
    steps: int = 300,
    lr: float = 0.1,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Circuit, torch.Tensor, SearchCost]:
    """Learn hard-concrete edge masks against KL to the full model with a Lagrangian sparsity constraint (edge pruning,
    Bhaskar et al. 2024); return the circuit of exactly ``edges`` edges (or ``fraction`` of all edges) after
    dangling-edge removal, the learned ``log alpha`` (as scores, larger = keep) and the cost.

    Sparsity target ramps linearly from 0 to the requested sparsity over the first half of training; the multipliers
    of ``λ1 (s - t) + λ2 (s - t)^2`` are trained by gradient ascent. Deterministic for a seed.
    """
    from tqdm.auto import tqdm

    from acdc.patching import masked_forward

    if (edges is None) == (fraction is None):
        raise InputError("give exactly one of edges (a count) or fraction (of all edges)")
    n_target = edges if edges is not None else round(float(fraction) * graph.n_edges)  # type: ignore[arg-type]
    if not 0 < n_target <= graph.n_edges:
        raise InputError(f"the target size must be between 1 and {graph.n_edges} edges, got {n_target}")
    arch = get_arch(model)
    _check_graph(graph, arch)
    gen = torch.Generator().manual_seed(seed)
    valid = graph.valid.to(arch.device)
    n_valid = graph.n_edges
    target = 1.0 - n_target / n_valid
    log_alpha = torch.full((graph.n_src, graph.n_dst), 3.0, dtype=torch.float32, device=arch.device)
    log_alpha.requires_grad_(True)
    lambdas = torch.zeros(2, dtype=torch.float32, device=arch.device, requires_grad=True)
    opt = torch.optim.Adam([log_alpha], lr=lr)
    opt_l = torch.optim.Adam([lambdas], lr=lr, maximize=True)
    cost = SearchCost()
    t0 = time.perf_counter()
    n = len(data)
    shift = BETA * torch.log(torch.tensor(-GAMMA / ZETA))
    bar = tqdm(range(steps), desc="edge pruning", disable=not progress, leave=False)
    for step in bar:
        idx = torch.randperm(n, generator=gen)[: min(batch_size, n)]
        sub_clean, sub_corrupt = data.clean[idx], data.corrupt[idx]
        sub = TaskData(sub_clean, sub_corrupt, data.positions[idx], data.answers[idx],
                       None if data.wrong is None else data.wrong[idx], data.metric)
        cache = ablation_cache(model, graph, sub_corrupt if ablation != "zero" else None, ablation)  # type: ignore[arg-type]
        with torch.no_grad():
            full = masked_forward(model, graph, sub_clean, cache, valid.float())
        u = torch.rand(log_alpha.shape, generator=gen).clamp(1e-6, 1 - 1e-6).to(arch.device)
        with torch.enable_grad():
            z = _hard_concrete(log_alpha, u) * valid
            logits = masked_forward(model, graph, sub_clean, cache, z.to(arch.dtype))
            kl = kl_divergence(logits, full, sub.positions).mean()
            expected = torch.sigmoid(log_alpha - shift)[valid].sum()
            sparsity = 1.0 - expected / n_valid
            t = target * min(1.0, step / max(1, steps // 2))
            gap = sparsity - t
            loss = kl + lambdas[0] * gap + lambdas[1] * gap * gap
            opt.zero_grad()
            opt_l.zero_grad()
            loss.backward()
        opt.step()
        opt_l.step()
        cost.passes += 2
        cost.forward_equivalents += 3  # a forward for the reference, a forward and a backward for the masks
        bar.set_postfix(kl=f"{float(kl.detach()):.3g}", kept=f"{float(expected.detach()):.0f}")
    bar.close()
    scores = log_alpha.detach().cpu().double() * graph.valid
    mask = _exact_size(graph, scores.masked_fill(~graph.valid, float("-inf")), n_target)
    cost.seconds = time.perf_counter() - t0
    circuit = Circuit(graph, mask, scores=scores, meta={"method": "edge-pruning", "requested_edges": n_target,
                                                         "seed": seed, "steps": steps, **cost.as_dict()})
    return circuit, scores, cost


def evaluate_circuits(
    model: Any, graph: Graph, data: TaskData, circuits: list[Circuit], *, ablation: str = "patch", batch: int = 16,
) -> list[dict[str, float]]:
    """Exact faithfulness of each circuit on ``data``: the task metric M of the circuit, of the full and of the empty
    circuit (prompt-averaged), ``f = (M(C) - M(empty)) / (M(full) - M(empty))`` and KL(full || C). Circuits are
    evaluated ``batch`` masks per masked forward (see :func:`acdc.pareto.evaluate_masks`; intervals:
    :func:`acdc.pareto.faithfulness_ci`)."""
    from acdc.pareto import evaluate_masks

    ev = evaluate_masks(model, graph, data, [c.mask for c in circuits], ablation=ablation, batch=batch)
    full, empty = float(ev.full.mean()), float(ev.empty.mean())
    return [{"metric": float(v), "faithfulness": (float(v) - empty) / (full - empty) if full != empty
             else float("nan"), "kl": float(k), "full": full, "empty": empty}
            for v, k in zip(ev.metric.mean(1), ev.kl.mean(1), strict=True)]


# ---- hybrid: attribution ranking, exact decisions ----------------------------------------------------------------
def hybrid_search(
    model: Any,
    graph: Graph,
    data: TaskData,
    *,
    target: float = 0.9,
    method: str = "eap-ig-inputs",
    steps: int = 5,
    ablation: str = "patch",
    width: int | None = None,
    refine: bool = True,
    scores: Any = None,
    progress: bool = True,
) -> tuple[Circuit, SearchCost]:
    """Rank edges by attribution, then let exact evaluations decide (see the README's "hybrid" section).

    ``scores``: an :class:`EdgeScores` of ``method`` computed earlier on the same data, reused instead of scoring
    again (several targets from one ranking; its cost is then not counted again).

    1. Score every edge with ``method`` (EAP-IG by default) and order circuits by size with greedy growth from the
       logits (each size's circuit has every edge on a path to the logits; dangling edges removed).
    2. Search the sizes: ``width`` sizes spread over the current interval are evaluated exactly (normalised
       faithfulness f on ``data``); the interval shrinks to lie between the largest size below ``target`` and the
       smallest size reaching it, until they are adjacent. Returns the smallest size found with f >= ``target``
       (f need not be monotone in size; the search finds a crossing, not necessarily the first).
    3. ``refine``: try removing the circuit's edges, least important first, keeping each removal that leaves
       f >= ``target`` (``width`` cumulative removals per call, decisions replayed in order). Each removal is
       evaluated by the incremental engine of the fast ACDC (only the nodes the edge reaches are recomputed).

    ``width`` defaults to 8 on a GPU (a batch costs about one pass) and 1 on a CPU (bisection).
    Every evaluation runs on the incremental engine (acdc.incremental), at the metric positions only.
    """
    from acdc.attribution import attribute
    from acdc.selection import greedy

    if not 0 < target <= 1:
        raise InputError(f"target faithfulness must be in (0, 1], got {target}")
    arch = get_arch(model)
    _check_graph(graph, arch)
    if width is None:
        width = 8 if arch.device.type == "cuda" else 1
    if width < 1:
        raise InputError(f"width must be >= 1, got {width}")
    t0 = time.perf_counter()
    cost = SearchCost()
    ranking_fe = 0.0
    if scores is None:
        scores = attribute(model, graph, data, method, steps=steps, ablation=ablation, progress=progress)  # type: ignore[arg-type]
        k = steps if method in ("eap-ig-inputs", "eap-ig") else 1
        ranking_fe = 1.0 + 3.0 * k  # counterfactual fwd + k (fwd + bwd ~ 2 fwd)
        cost.passes += 1 + 2 * k
    cache = ablation_cache(model, graph, data.corrupt if ablation != "zero" else None, ablation)  # type: ignore[arg-type]
    engine = Incremental(arch, graph, data.clean.to(arch.device), cache, data)
    sub = engine.sub
    with torch.no_grad():
        full_logits = engine.reset(graph.valid)
        empty_logits = engine.reset(torch.zeros_like(graph.valid))
    full_m = float(task_metric(sub, full_logits.unsqueeze(0), full_logits).mean())
    empty_m = float(task_metric(sub, empty_logits.unsqueeze(0), full_logits).mean())
    cost.passes += 2
    cost.masks += 2

    def f_of(logits: torch.Tensor) -> list[float]:
        vals = task_metric(sub, logits, full_logits).mean(-1)
        return ((vals - empty_m) / (full_m - empty_m)).tolist()

    def faith(masks: list[torch.Tensor]) -> list[float]:
        out = []
        with torch.no_grad():
            for m in masks:
                out += f_of(engine.reset(m).unsqueeze(0))
        cost.passes += len(masks)
        cost.masks += len(masks)
        return out

    circuits: dict[int, Circuit] = {}

    def circuit(n: int) -> Circuit:
        if n not in circuits:
            circuits[n] = greedy(graph, scores.scores, n)
        return circuits[n]

    lo, hi = 0, graph.n_edges  # f(lo) < target (the empty circuit) <= f(hi) (the full one)
    f_at: dict[int, float] = {graph.n_edges: 1.0}
    while hi - lo > 1:
        sizes = sorted({lo + max(1, round((hi - lo) * (j + 1) / (width + 1))) for j in range(width)} - {hi})
        sizes = [s for s in sizes if lo < s < hi] or [lo + 1]
        for s, f in zip(sizes, faith([circuit(s).mask for s in sizes]), strict=True):
            f_at[s] = f
        reach = [s for s in sizes if f_at[s] >= target]
        if reach:
            hi = reach[0]
            below = [s for s in sizes if s < hi]
            lo = below[-1] if below else lo
        else:
            lo = sizes[-1]
    chosen = circuit(hi).mask.clone()
    f_now = f_at[hi]
    if refine:
        key = scores.scores.abs()
        order = sorted(chosen.nonzero().tolist(), key=lambda e: float(key[e[0], e[1]]))
        with torch.no_grad():
            engine.reset(chosen)
            cost.passes += 1
            cost.masks += 1
            i = 0
            w = width
            while i < len(order):
                batch = order[i : i + w]
                trials = chosen.unsqueeze(0).repeat(len(batch), 1, 1)
                for j, (u, v) in enumerate(batch):
                    trials[j:, u, v] = False
                fs = f_of(engine.propagate(trials, {v for _, v in batch}))
                cost.passes += 1
                cost.masks += len(batch)
                accepted = 0
                for j in range(len(batch)):
                    if fs[j] >= target:
                        f_now, accepted = fs[j], j + 1
                    else:
                        break
                if accepted:
                    engine.commit(accepted - 1)
                    chosen = trials[accepted - 1].clone()
                rejected = accepted < len(batch)
                i += accepted + (1 if rejected else 0)
                w = min(width, 2 * w) if not rejected else max(1, min(width, accepted + 1))
        from acdc.graph import prune_dangling

        chosen = prune_dangling(graph, chosen)
    cost.forward_equivalents = ranking_fe + engine.flops / engine.full_flops
    cost.seconds = time.perf_counter() - t0
    cost.extra["size_before_refine"] = circuit(hi).n_edges
    cost.extra["ranking_forward_equivalents"] = ranking_fe
    out = Circuit(graph, chosen, scores=scores.scores, meta={"method": "hybrid", "target": target,
                                                             "ranking": method, "train_faithfulness": f_now,
                                                             **cost.as_dict()})
    return out, cost


# ---- one interface ---------------------------------------------------------------------------------------------------
DISCOVERY_METHODS = ("acdc", "edge-pruning", "hybrid", "eap", "eap-ig", "eap-ig-inputs", "eap-ig-activations",
                     "clean-corrupted", "mask-ig", "exact")


def discover(
    model: Any,
    graph: Graph,
    data: TaskData,
    method: str = "hybrid",
    *,
    threshold: float | None = None,
    edges: int | None = None,
    target: float = 0.9,
    selector: str = "greedy",
    ablation: str = "patch",
    seed: int = 0,
    steps: int | None = None,
    progress: bool = True,
    **options: Any,
) -> tuple[Circuit, SearchCost]:
    """Find a circuit with any method; returns the circuit (scores attached where the method has them) and its cost.

    - ``acdc``: ``threshold`` (default 0.01) on the KL increase; options ``fast``, ``speculate``, ``checkpoint``,
      ``distance``.
    - ``edge-pruning``: ``edges`` (default 5% of the graph, at least 20); ``steps`` (300), ``seed``.
    - ``hybrid``: ``target`` faithfulness; options ``refine``, ``width``.
    - attribution methods (``eap``, ``eap-ig``, ...): scores, then ``selector`` (greedy / topn) for ``edges`` edges,
      or every edge with |score| >= ``threshold``.
    """
    from acdc.attribution import METHODS as ATTRIBUTION
    from acdc.attribution import attribute
    from acdc.selection import select

    if method not in DISCOVERY_METHODS:
        raise InputError(f"unknown discovery method '{method}'; choose one of {', '.join(DISCOVERY_METHODS)}")
    default_size = min(graph.n_edges, max(20, round(0.05 * graph.n_edges)))
    if method == "acdc":
        return acdc_search(model, graph, data, 0.01 if threshold is None else threshold, ablation=ablation,
                           progress=progress, **options)
    if method == "edge-pruning":
        c, _, cost = edge_pruning(model, graph, data, edges=edges or default_size, ablation=ablation,
                                  steps=steps or 300, seed=seed, progress=progress, **options)
        return c, cost
    if method == "hybrid":
        return hybrid_search(model, graph, data, target=target, ablation=ablation, steps=steps or 5,
                             progress=progress, **options)
    assert method in ATTRIBUTION
    t0 = time.perf_counter()
    s = attribute(model, graph, data, method, ablation=ablation, steps=steps or 5, progress=progress,  # type: ignore[arg-type]
                  **options)
    if threshold is not None:
        c = select(graph, s.scores, "threshold", tau=threshold)
    else:
        c = select(graph, s.scores, selector, n=edges or default_size)
    k = (steps or 5) if method in ("eap-ig", "eap-ig-inputs", "mask-ig") else 1
    cost = SearchCost(passes=1 + 2 * k, forward_equivalents=float(1 + 3 * k),  # data passes; a bwd ~ 2 fwd
                      seconds=time.perf_counter() - t0)
    c.meta.update({"method": method, **cost.as_dict()})
    return c, cost
