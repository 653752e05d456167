"""The hybrid search: rank edges by attribution, then let exact evaluations on the incremental engine decide.

In ``acdc run`` it finds one circuit per target faithfulness (0.5, 0.8, 0.9, 0.95, 0.99) from one EAP-IG ranking,
reusing the job's ``eap-ig`` ranking when it was computed with the same steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from acdc.arch import get_arch
from acdc.attribution import attribute
from acdc.errors import InputError
from acdc.evaluate import Faithfulness
from acdc.graph import Circuit, Graph, prune_dangling
from acdc.incremental import Incremental, metric_positions
from acdc.methods.attribution import ranking_cost
from acdc.methods.base import Context, Method, Outcome, SearchCost, Settings
from acdc.methods.speculative import remove_greedily
from acdc.patching import ablation_cache, check_graph, masked_forward_unchecked
from acdc.selection import greedy
from acdc.types import TaskData

RANKING = "eap-ig-inputs"
DEFAULT_TARGETS = (0.9,)


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
    budget_s: float | None = None,
    progress: bool = True,
    memo: dict[int, float] | None = None,
    groups: bool | None = None,
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
       evaluated by the incremental engine of the fast ACDC (only the nodes the edge reaches are recomputed);
       a large circuit is refined by groups instead (``groups`` below).

    ``budget_s``: seconds the search may take; past it the bisection stops at the smallest size found reaching
    ``target`` and the refinement keeps the removals decided so far (``cost.extra["budget_note"]`` says so).

    ``width`` defaults to 8 on a GPU (a batch costs about one pass) and 1 on a CPU (bisection); the refinement
    evaluates 8 (GPU) or 4 (CPU: one unembedding GEMM for four candidates is ~1.5x faster per candidate on a large
    vocabulary) cumulative removals per call. The sizes are evaluated with the batched masked forward (a whole
    circuit is computed anyway: ~3x faster than resetting the engine to it); the engine is built for the
    refinement only. ``memo``: f of each size already evaluated on the same ranking and data (shared by the targets
    of one job, which bisect the same curve).
    ``groups``: refine by groups of edges instead (default: when the circuit has more than
    :data:`GROUP_ABOVE` edges): the least important edges not yet decided are removed as a group when the circuit
    without them still reaches ``target``; the group doubles after an accepted removal and halves after a rejected
    one, down to single edges (:func:`remove_in_groups`). Each decision is one exact evaluation of the whole
    circuit by the masked forward (on a large circuit a single-edge removal on the engine recomputes most of the
    model anyway, ~1 forward), so a 20,000-edge circuit is thinned by hundreds of evaluations rather than 20,000.
    Every evaluation is at the metric positions only.
    """
    if not 0 < target <= 1:
        raise InputError(f"target faithfulness must be in (0, 1], got {target}")
    arch = get_arch(model)
    check_graph(graph, arch)
    if width is None:
        width = 8 if arch.device.type == "cuda" else 1
    if width < 1:
        raise InputError(f"width must be >= 1, got {width}")
    t0 = time.perf_counter()
    cost = SearchCost()
    ranking_fe = 0.0
    if scores is None:
        scores = attribute(model, graph, data, method, steps=steps, ablation=ablation, progress=progress)  # type: ignore[arg-type]
        ranking_fe = float(scores.meta["forward_equivalents"])
        cost.passes += int(scores.meta["passes"])
    cache = ablation_cache(model, graph, data.corrupt, ablation)  # type: ignore[arg-type]
    clean = data.clean.to(arch.device)
    sub = metric_positions(data)

    def logits_of(masks: list[torch.Tensor]) -> torch.Tensor:
        """Logits [K, B, n, V] of whole circuits at the metric positions, by the masked forward."""
        m = torch.stack(masks).to(arch.device, arch.dtype)
        with torch.no_grad():
            logits = masked_forward_unchecked(arch, graph, clean, cache, m, at=sub.index.to(arch.device))
        cost.passes += 1
        cost.masks += len(masks)
        cost.forward_equivalents += len(masks)
        return logits

    both = logits_of([graph.valid, torch.zeros_like(graph.valid)])
    f_of = Faithfulness(sub.data, both[0], both[1])
    f_at: dict[int, float] = memo if memo is not None else {}

    def faith(masks: list[torch.Tensor]) -> list[float]:
        return [x for m in masks for x in f_of(logits_of([m]))]

    circuits: dict[int, Circuit] = {}

    def circuit(n: int) -> Circuit:
        if n not in circuits:
            circuits[n] = greedy(graph, scores.scores, n)
        return circuits[n]

    deadline = None if budget_s is None else t0 + budget_s
    notes: list[str] = []
    lo, hi = 0, graph.n_edges  # f(lo) < target (the empty circuit) <= f(hi) (the full one)
    f_at[graph.n_edges] = 1.0
    for n_known in sorted(f_at):  # sizes another target's search evaluated narrow the interval at no cost
        if f_at[n_known] >= target:
            hi = min(hi, n_known)
    lo = max([n_known for n_known in f_at if n_known < hi and f_at[n_known] < target], default=0)
    bar = tqdm(total=max(1, graph.n_edges).bit_length(), desc=f"hybrid f>={target:g}: sizes", unit="round",
               disable=not progress, leave=False)
    while hi - lo > 1:
        if deadline is not None and time.perf_counter() > deadline:
            notes.append(f"bisection stopped by the budget at {hi} edges (the smallest size found reaching the "
                         f"target; the crossing lies above {lo})")
            break
        sizes = sorted({lo + max(1, round((hi - lo) * (j + 1) / (width + 1))) for j in range(width)} - {hi})
        sizes = [s for s in sizes if lo < s < hi] or [lo + 1]
        todo = [s for s in sizes if s not in f_at]
        for s, f in zip(todo, faith([circuit(s).mask for s in todo]), strict=True):
            f_at[s] = f
        reach = [s for s in sizes if f_at[s] >= target]
        if reach:
            hi = reach[0]
            below = [s for s in sizes if s < hi]
            lo = below[-1] if below else lo
        else:
            lo = sizes[-1]
        bar.update(1)
        bar.set_postfix(edges=f"{lo}..{hi}")
    bar.close()
    chosen = circuit(hi).mask.clone()
    f_now = f_at[hi]
    engine = None
    key = scores.scores.abs()
    order = sorted(chosen.nonzero().tolist(), key=lambda e: float(key[e[0], e[1]])) if refine else []
    if groups is None:
        groups = len(order) > GROUP_ABOVE
    if refine and groups:
        bar = tqdm(total=len(order), desc=f"hybrid f>={target:g}: refine (groups)", unit="edge",
                   disable=not progress, leave=False)
        chosen, f_now, decided, n_eval = remove_in_groups(chosen, [(u, v) for u, v in order],
                                                          lambda m: faith([m])[0], target, f_now,
                                                          deadline=deadline, progress=bar.update)
        bar.close()
        cost.extra["group_evaluations"] = n_eval
        if decided < len(order):
            notes.append(f"refinement by groups stopped by the budget after {decided} of {len(order)} edges "
                         f"({n_eval} exact evaluations)")
        chosen = prune_dangling(graph, chosen)
    elif refine:
        engine = Incremental(arch, graph, clean, cache, data)
        with torch.no_grad():
            engine.reset(chosen)
            cost.passes += 1
            cost.masks += 1
            bar = tqdm(total=len(order), desc=f"hybrid f>={target:g}: refine", unit="edge", disable=not progress,
                       leave=False)
            spec = 8 if arch.device.type == "cuda" else 4
            chosen, f_now, decided = remove_greedily(engine, chosen, [(u, v) for u, v in order], f_of,
                                                     lambda new, cur: new >= target, f_now, spec, cost,
                                                     deadline=deadline, progress=bar.update)
            bar.close()
        if decided < len(order):
            notes.append(f"refinement stopped by the budget after {decided} of {len(order)} edges")
        chosen = prune_dangling(graph, chosen)
    cost.forward_equivalents += ranking_fe + (engine.flops / engine.full_flops if engine is not None else 0.0)
    cost.seconds = time.perf_counter() - t0
    cost.extra["size_before_refine"] = circuit(hi).n_edges
    cost.extra["ranking_forward_equivalents"] = ranking_fe
    if notes:
        cost.extra["budget_note"] = f"hybrid (target {target:g}): " + "; ".join(notes) + f" ({budget_s:.0f} s)"
    out = Circuit(graph, chosen, scores=scores.scores, meta={"method": "hybrid", "target": target,
                                                             "ranking": method, "train_faithfulness": f_now,
                                                             **cost.as_dict()})
    return out, cost


GROUP_ABOVE = 2000  # circuits larger than this are refined by groups of edges (see hybrid_search)


def remove_in_groups(
    mask: torch.Tensor,
    candidates: list[tuple[int, int]],
    faith: Callable[[torch.Tensor], float],
    target: float,
    current: float,
    *,
    first: int | None = None,
    grow: bool = True,
    deadline: float | None = None,
    progress: Callable[[int], object] | None = None,
) -> tuple[torch.Tensor, float, int, int]:
    """Remove ``candidates`` (edges of ``mask``, in order) in groups while the circuit keeps ``faith >= target``.

    The next ``g`` undecided candidates are removed together when the circuit without them reaches ``target``
    (then ``g`` doubles, if ``grow``); otherwise ``g`` halves and the same candidates are tried again, and a single
    candidate that fails is kept. ``first``: the starting group size (default a 32nd of the candidates). With
    ``first=1, grow=False`` this is the one-edge-at-a-time greedy removal. Stops once ``time.perf_counter()`` passes
    ``deadline``. Returns the mask, its faithfulness, the number of candidates decided and of evaluations."""
    mask = mask.cpu().clone()
    g = max(1, first if first is not None else len(candidates) // 32)
    i = n_eval = 0
    while i < len(candidates):
        if deadline is not None and time.perf_counter() > deadline:
            break
        group = candidates[i : i + g]
        trial = mask.clone()
        for u, v in group:
            trial[u, v] = False
        f = faith(trial)
        n_eval += 1
        if f >= target:
            mask, current = trial, f
            i += len(group)
            if progress is not None:
                progress(len(group))
            if grow:
                g *= 2
        elif len(group) == 1:
            i += 1
            if progress is not None:
                progress(1)
        else:
            g = max(1, len(group) // 2)
    return mask, current, i, n_eval


def _run(ctx: Context, s: Settings) -> Outcome:
    key = f"{RANKING}:{s.ig_steps}:{s.ablation}"
    scores = ctx.rankings.get(key)
    if scores is None:
        scores = attribute(ctx.model, ctx.graph, ctx.data, RANKING, ablation=s.ablation,  # type: ignore[arg-type]
                           steps=s.ig_steps, progress=ctx.progress)
        ctx.rankings[key] = scores
    out = Outcome(scores=scores)
    out.cost.forward_equivalents = float(scores.meta["forward_equivalents"])
    targets = s.targets or DEFAULT_TARGETS
    t0 = time.perf_counter()
    memo: dict[int, float] = {}  # f of each ranked size: every target bisects the same curve
    for i, tgt in enumerate(targets):
        # each target gets an even share of what is left, so time one target leaves over goes to the next, and a
        # round that runs past its share shortens the later ones: the whole stays within the budget and one round
        left = None if s.budget_s is None else s.budget_s - (time.perf_counter() - t0)
        if left is not None and i and left <= 0:
            out.notes.append(f"hybrid: targets {', '.join(f'{t:g}' for t in targets[i:])} skipped: the budget of "
                             f"{s.budget_s:.0f} s was spent")
            break
        c, cost = hybrid_search(ctx.model, ctx.graph, ctx.data, target=tgt, ablation=s.ablation, scores=scores,
                                budget_s=None if left is None else max(left, 0.0) / (len(targets) - i),
                                progress=ctx.progress, memo=memo, **s.options)
        out.record(c, cost, label=f"target={tgt:g}")
        if "budget_note" in cost.extra:
            out.notes.append(cost.extra["budget_note"])
    return out


METHODS = (
    Method("hybrid", "circuits", "EAP-IG ranking, then exact evaluations pick the smallest ranked circuit reaching "
           "each target faithfulness and prune it edge by edge", _run,
           cost=lambda graph, s: ranking_cost(RANKING, s.ig_steps, graph)[1]
           + len(s.targets or DEFAULT_TARGETS) * 2 * max(1, graph.n_edges).bit_length(),
           in_job=True, controls=("targets", "ig_steps", "budget_s", "options")),
)
