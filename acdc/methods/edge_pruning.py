"""Edge pruning (Bhaskar et al. 2024): learn hard-concrete edge masks against KL to the full model under a
Lagrangian sparsity constraint. The hard-concrete mathematics is in acdc.methods.hard_concrete.

In ``acdc run`` the masks are trained for one size (5% of the edges, at least 20, unless asked otherwise) and every
edge is ranked by its keep probability ``sigmoid(log alpha)``; ``acdc discover`` returns the circuit of exactly the
asked size.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from acdc.arch import get_arch
from acdc.attribution import EdgeScores
from acdc.errors import InputError
from acdc.graph import Circuit, Graph, prune_dangling
from acdc.incremental import metric_positions
from acdc.methods.base import Context, Method, Outcome, SearchCost, Settings, default_size
from acdc.methods.hard_concrete import expected_kept, sample
from acdc.metrics import kl_divergence
from acdc.patching import AblationCache, ablation_cache, check_graph, masked_forward_unchecked
from acdc.types import TaskData


def exact_size(graph: Graph, key: torch.Tensor, n: int) -> torch.Tensor:
    """The top-k edges by ``key`` with the smallest k whose dangling-free circuit has ``n`` edges (or the largest
    circuit below ``n`` when no k gives exactly ``n``)."""
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


INIT_HIGH, INIT_LOW = 3.0, -3.0  # log alpha of the default start, and of the least important edge in a warm start


def warm_init(graph: Graph, scores: torch.Tensor) -> torch.Tensor:
    """A starting ``log alpha`` from an attribution ranking (the MIB 2025 shared task's "sequential" ensemble):
    ``INIT_LOW + (INIT_HIGH - INIT_LOW) * |score| / max |score|``, so the most important edge starts where every
    edge starts by default (3: kept with probability ~1) and an edge of score 0 at -3 (kept with probability ~0.05);
    invalid edges at ``INIT_LOW``."""
    a = scores.double().abs() * graph.valid
    top = float(a.max())
    norm = a / top if top > 0 else a
    return (INIT_LOW + (INIT_HIGH - INIT_LOW) * norm).masked_fill(~graph.valid, INIT_LOW)


LARGE_GRAPH = 10_000  # edges above which the large-graph schedule applies


def schedule(graph: Graph) -> tuple[int, float]:
    """The default (prompts per step, learning rate of log alpha) for ``graph``: (32, 0.1) up to
    :data:`LARGE_GRAPH` edges, (8, 0.3) above. Measured (README, "Edge pruning and the hybrid at real scale"): on
    SmolLM2-135M (70,651 edges) a step of 8 prompts takes 2.3 s against 12 s for 32 on 2 cores, and with 300 steps
    the masks starting at log alpha 3 only come down to the target with the larger rate (f >= 0.9 at 10,988 edges
    on test with 0.3; 0.76 there with 0.1); on the zoo's ~110-edge graphs the rate 0.3 overshoots (toy IOI f at 40
    edges 0.72 against 0.92) and a step is cheap anyway."""
    return (8, 0.3) if graph.n_edges > LARGE_GRAPH else (32, 0.1)


PRECOMPUTE_BYTES = 2 * 2**30  # the ablated run and the reference logits for all prompts are kept below this


def _cache_bytes(arch: Any, graph: Graph, data: TaskData) -> int:
    """Bytes of an ablation cache (writers and residuals) and the reference logits for all of ``data``."""
    B, P = data.clean.shape
    item = torch.finfo(arch.dtype).bits // 8
    n_t = int(data.positions.sum(1).max())
    return item * B * (P * arch.d_model * (graph.n_src + 2 * arch.n_layers + 1) + n_t * arch.W_U.shape[1])


def _rows(cache: AblationCache, idx: torch.Tensor) -> AblationCache:
    """The cache of the prompts ``idx`` (a mean or zero cache is shared by every prompt)."""
    if cache.batch == 1:
        return cache
    return AblationCache(cache.ablation, cache.writers[:, idx], cache.base_attn[:, idx], cache.base_mlp[:, idx],
                         cache.base_final[idx])


def edge_pruning(
    model: Any,
    graph: Graph,
    data: TaskData,
    *,
    edges: int | None = None,
    fraction: float | None = None,
    ablation: str = "patch",
    steps: int = 300,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    budget_s: float | None = None,
    progress: bool = True,
    init: torch.Tensor | None = None,
) -> tuple[Circuit, torch.Tensor, SearchCost]:
    """Learn hard-concrete edge masks against KL to the full model with a Lagrangian sparsity constraint (edge pruning,
    Bhaskar et al. 2024); return the circuit of exactly ``edges`` edges (or ``fraction`` of all edges) after
    dangling-edge removal, the learned ``log alpha`` (as scores, larger = keep) and the cost.

    Sparsity target ramps linearly from the start's expected sparsity (0 by default) to the requested sparsity over
    the first half of training; the multipliers
    of ``λ1 (s - t) + λ2 (s - t)^2`` are trained by gradient ascent. Deterministic for a seed. With ``budget_s``, the
    number of steps is cut to what fits, planned once after the first 5% of the steps (at least 3), or as soon as a
    quarter of the budget is spent, from their measured time,
    and the schedule follows the new count; ``cost.extra["budget_note"]`` says so.
    ``batch_size`` (prompts per step) and ``lr`` (Adam's rate for log alpha and the multipliers) default to
    :func:`schedule`'s choice for the graph's size.
    ``init``: the starting ``log alpha`` of every edge ``[n_src, n_dst]`` (default 3.0 everywhere: every edge
    starts almost surely kept); :func:`warm_init` makes one from an attribution ranking.
    """
    from tqdm.auto import tqdm

    if (edges is None) == (fraction is None):
        raise InputError("give exactly one of edges (a count) or fraction (of all edges)")
    n_target = edges if edges is not None else round(float(fraction) * graph.n_edges)  # type: ignore[arg-type]
    if not 0 < n_target <= graph.n_edges:
        raise InputError(f"the target size must be between 1 and {graph.n_edges} edges, got {n_target}")
    arch = get_arch(model)
    check_graph(graph, arch)
    auto_batch, auto_lr = schedule(graph)
    batch_size = auto_batch if batch_size is None else batch_size
    lr = auto_lr if lr is None else lr
    gen = torch.Generator().manual_seed(seed)
    valid = graph.valid.to(arch.device)
    n_valid = graph.n_edges
    target = 1.0 - n_target / n_valid
    if init is not None:
        graph.check_mask(init, batched=False)
        log_alpha = init.detach().to(device=arch.device, dtype=torch.float32).clone()
    else:
        log_alpha = torch.full((graph.n_src, graph.n_dst), INIT_HIGH, dtype=torch.float32, device=arch.device)
    log_alpha.requires_grad_(True)
    lambdas = torch.zeros(2, dtype=torch.float32, device=arch.device, requires_grad=True)
    # The sparsity target ramps from where the masks start: 0 for the default start (every edge kept), the warm
    # start's own expected sparsity otherwise (ramping from 0 would first push a warm start back to keeping edges).
    start = 0.0
    if init is not None:
        with torch.no_grad():
            start = min(target, max(0.0, 1.0 - float(expected_kept(log_alpha)[valid].sum()) / n_valid))
    opt = torch.optim.Adam([log_alpha], lr=lr)
    opt_l = torch.optim.Adam([lambdas], lr=lr, maximize=True)
    cost = SearchCost()
    t0 = time.perf_counter()
    n = len(data)
    # The loss reads the metric positions only: logits are computed there alone (on a large vocabulary the
    # unembedding of every position is a large share of a step). The ablated run and the full model's logits do
    # not depend on the masks: computed once for all prompts when they fit in a memory share, else per step.
    mp = metric_positions(data)
    clean_all = data.clean.to(arch.device)
    whole: AblationCache | None = None
    full_all: torch.Tensor | None = None
    if _cache_bytes(arch, graph, data) <= PRECOMPUTE_BYTES:
        whole = ablation_cache(model, graph, data.corrupt, ablation)  # type: ignore[arg-type]
        with torch.no_grad():
            full_all = masked_forward_unchecked(arch, graph, clean_all, whole, valid.to(arch.dtype).unsqueeze(0),
                                                at=mp.index)[0]
    bar = tqdm(total=steps, desc="edge pruning", disable=not progress, leave=False)
    step, first_s, planned, planned_at = 0, 0.0, False, 0
    plan_at = min(steps, max(3, steps // 20))  # steps timed before planning (the first one, with warm-up, apart)
    while step < steps:
        idx = torch.randperm(n, generator=gen)[: min(batch_size, n)]
        sub = mp.data.take(idx)
        at = mp.index[idx]
        clean = clean_all[idx.to(arch.device)]
        if whole is not None and full_all is not None:
            cache = _rows(whole, idx.to(arch.device))
            full = full_all[idx.to(full_all.device)]
        else:
            cache = ablation_cache(model, graph, data.corrupt[idx], ablation)  # type: ignore[arg-type]
            with torch.no_grad():
                full = masked_forward_unchecked(arch, graph, clean, cache, valid.to(arch.dtype).unsqueeze(0),
                                                at=at)[0]
        u = torch.rand(log_alpha.shape, generator=gen).clamp(1e-6, 1 - 1e-6).to(arch.device)
        with torch.enable_grad():
            z = sample(log_alpha, u) * valid
            logits = masked_forward_unchecked(arch, graph, clean, cache, z.to(arch.dtype).unsqueeze(0), at=at)[0]
            kl = kl_divergence(logits, full, sub.positions).mean()
            expected = expected_kept(log_alpha)[valid].sum()
            sparsity = 1.0 - expected / n_valid
            t = start + (target - start) * min(1.0, step / max(1, steps // 2))
            gap = sparsity - t
            loss = kl + lambdas[0] * gap + lambdas[1] * gap * gap
            opt.zero_grad()
            opt_l.zero_grad()
            loss.backward()
        opt.step()
        opt_l.step()
        cost.passes += 1 if whole is not None else 2
        cost.forward_equivalents += 3 if whole is not None else 5  # (ablated run, reference,) forward + backward
        bar.set_postfix(kl=f"{float(kl.detach()):.3g}", kept=f"{float(expected.detach()):.0f}")
        bar.update(1)
        step += 1
        if step == 1:
            first_s = time.perf_counter() - t0
        elapsed = time.perf_counter() - t0
        if budget_s is not None and not planned and (step == plan_at or (step >= 2 and elapsed > budget_s / 4)):
            planned = True  # plan the steps that fit, once, early, from measured steps (the first one apart)
            planned_at = step
            per = (elapsed - first_s) / max(1, step - 1)
            fit = max(step + 1, int((budget_s - first_s) / max(per, 1e-9)) + 1)
            if fit < steps:
                cost.extra["budget_note"] = (f"edge-pruning: {fit} of {steps} steps fit the budget of {budget_s:.0f} s "
                                             f"({per:.2f} s per step)")
                steps = fit
                bar.total = steps
                bar.refresh()
        if budget_s is not None and planned and elapsed > budget_s and planned_at < step < steps:
            # the plan is an estimate (a machine shared with other jobs slows later steps): the budget is a deadline
            cost.extra["budget_note"] = (f"edge-pruning: stopped at the budget of {budget_s:.0f} s after {step} "
                                         f"steps (planned {steps}; {elapsed / step:.2f} s per step)")
            steps = step
    bar.close()
    scores = log_alpha.detach().cpu().double() * graph.valid
    mask = exact_size(graph, scores.masked_fill(~graph.valid, float("-inf")), n_target)
    cost.seconds = time.perf_counter() - t0
    circuit = Circuit(graph, mask, scores=scores, meta={"method": "edge-pruning", "requested_edges": n_target,
                                                         "seed": seed, "steps": steps, "batch_size": batch_size,
                                                         "lr": lr, **cost.as_dict()})
    return circuit, scores, cost


def _run(ctx: Context, s: Settings, *, warm: bool = False) -> Outcome:
    n = s.edges or default_size(ctx.graph)
    name = "edge-pruning-warm" if warm else "edge-pruning"
    options = dict(s.options)
    warm_cost = SearchCost()
    if warm:
        from acdc.methods.attribution import score

        ranking = score(ctx, WARM_FROM, s)
        options["init"] = warm_init(ctx.graph, ranking.scores)
        warm_cost = SearchCost(passes=int(ranking.meta.get("passes", 0)),
                               forward_equivalents=float(ranking.meta.get("forward_equivalents", 0.0)))
    circuit, log_alpha, cost = edge_pruning(ctx.model, ctx.graph, ctx.data, edges=n, ablation=s.ablation,
                                            steps=s.train_steps, seed=s.seed, budget_s=s.budget_s,
                                            progress=ctx.progress, **options)
    cost.add(warm_cost)
    circuit.meta["method"] = name
    steps = circuit.meta["steps"]
    keep = torch.sigmoid(log_alpha.double()) * ctx.graph.valid  # monotone in log alpha, positive: |.| ranks right
    circuit.meta["label"] = f"n={n}"
    scores = EdgeScores(ctx.graph, keep, name, meta={"ranking": "keep probability sigmoid(log alpha)",
                                                    "requested_edges": n, "steps": steps,
                                                    **({"warm_start": WARM_FROM} if warm else {})})
    notes = [f"{name}: masks trained for {n} edges ({steps} steps of {circuit.meta['batch_size']} prompts, "
             f"rate {circuit.meta['lr']:g}"
             + (f", log alpha started from the normalised {WARM_FROM} scores" if warm else "")
             + "); the curve ranks every edge by its learned keep probability sigmoid(log alpha)"]
    if "budget_note" in cost.extra:
        notes.append(cost.extra["budget_note"])
    return Outcome(scores=scores, circuits=[circuit], cost=cost, notes=notes)


WARM_FROM = "eap-ig"  # the ranking a warm start begins from


def _run_warm(ctx: Context, s: Settings) -> Outcome:
    return _run(ctx, s, warm=True)


METHODS = (
    Method("edge-pruning", "ranking", "learned hard-concrete edge masks at one size; every edge ranked by its keep "
           "probability", _run, cost=lambda graph, s: 3.0 * s.train_steps, ranking_sense="keep", in_job=True,
           controls=("edges", "train_steps", "seed", "budget_s")),
    Method("edge-pruning-warm", "ranking", "edge pruning with log alpha started from the normalised eap-ig scores "
           "(MIB 2025's sequential ensemble)", _run_warm,
           cost=lambda graph, s: 3.0 * s.train_steps + 3.0 * s.ig_steps + 1.0, ranking_sense="keep",
           controls=("edges", "train_steps", "seed", "budget_s", "ig_steps")),
)
