"""Attribution rankings as search methods: every method of acdc.attribution scores every edge, and the circuits of
any size are chosen from the scores (acdc.selection). The attribution mathematics stays in acdc.attribution."""

from __future__ import annotations

from collections.abc import Callable

from acdc.attribution import DEFAULT_IG, EdgeScores, attribute, attribution_cost, canonical
from acdc.graph import Graph
from acdc.methods.base import Context, Method, Outcome, SearchCost, Settings


def ranking_cost(method: str, steps: int, graph: Graph) -> tuple[int, float]:
    """(passes, forward equivalents) of one ranking over the whole data, counterfactual run included."""
    per_batch, fwd = attribution_cost(method, steps, graph)
    return per_batch, fwd + 1.0


def ranking_key(method: str, s: Settings) -> str:
    """The key of a ranking in ``Context.rankings`` (aliases resolved: ``eap-ig`` and its rule share one)."""
    return f"{canonical(method)}:{s.ig_steps}:{s.ablation}"


def score(ctx: Context, method: str, s: Settings) -> EdgeScores:
    """The ``method`` ranking of ``ctx.data``, computed once per job (``ctx.rankings``) and shared among the
    torchrun processes when ``ctx.distributed``."""
    key = ranking_key(method, s)
    if key not in ctx.rankings:
        if ctx.distributed:
            from acdc.distributed import attribute_distributed

            ctx.rankings[key] = attribute_distributed(ctx.model, ctx.graph, ctx.data, method, ablation=s.ablation,
                                                      steps=s.ig_steps, progress=ctx.progress)
        else:
            ctx.rankings[key] = attribute(ctx.model, ctx.graph, ctx.data, method, ablation=s.ablation,  # type: ignore[arg-type]
                                          steps=s.ig_steps, progress=ctx.progress)
    return ctx.rankings[key]


def _runner(method: str) -> Callable[[Context, Settings], Outcome]:
    def run(ctx: Context, s: Settings) -> Outcome:
        scores = score(ctx, method, s)
        cost = SearchCost(passes=int(scores.meta.get("passes", 0)),
                          forward_equivalents=float(scores.meta.get("forward_equivalents", 0.0)))
        return Outcome(scores=scores, cost=cost)

    return run


def _record(name: str, summary: str, *, in_job: bool = False, method: str | None = None) -> Method:
    m = method or name
    return Method(name, "ranking", summary, _runner(m), cost=lambda graph, s: ranking_cost(m, s.ig_steps, graph)[1],
                  in_job=in_job, distributed=True, attribution=True, controls=("ig_steps",))


METHODS = (
    _record("eap", "edge attribution patching: (counterfactual - clean activation) x gradient, one backward",
            in_job=True),
    _record("eap-ig", f"EAP with integrated gradients along the input embeddings (= {DEFAULT_IG})", in_job=True,
            method=DEFAULT_IG),
    _record("eap-ig-inputs", "EAP with integrated gradients along the input embeddings, right-endpoint rule "
            "alpha = 1/k .. 1 (one step = eap)"),
    _record("eap-ig-left", "EAP-IG along the input embeddings by the left-endpoint rule, alpha = 0 .. (k-1)/k (the "
            "EAP-IG library's and MIB's convention)"),
    _record("eap-ig-midpoint", "EAP-IG along the input embeddings by the midpoint rule (no end point sampled)"),
    _record("eap-ig-activations", "EAP with integrated gradients along each writer group's activations"),
    _record("clean-corrupted", "EAP with the gradient averaged over the clean and the counterfactual run"),
    _record("relp", "relevance patching: EAP with LRP's propagation rules in the backward (LN-, Identity-, "
            "Half-rule), one backward"),
    _record("mask-ig", "integrated gradients along the edge-mask path m = a * 1, a in (0, 1]"),
    _record("exact", "one exact masked forward per edge: M(without the edge) - M(full)"),
)
