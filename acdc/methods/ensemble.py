"""The parallel ensemble of attribution rankings, the best entry of the BlackboxNLP 2025 MIB shared task (circuit
localisation): each member ranking's |scores| are normalised by their largest value over the graph's edges, and
the normalised scores are averaged; edges are ranked by the average. Members computed earlier in the same job
(``acdc run --methods eap,eap-ig,ensemble``) are reused, not scored again."""

from __future__ import annotations

import torch

from acdc.attribution import EdgeScores
from acdc.methods.attribution import ranking_cost, score
from acdc.methods.base import Context, Method, Outcome, SearchCost, Settings

MEMBERS: tuple[str, ...] = ("eap", "eap-ig-inputs", "eap-ig-activations")


def normalised(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``|scores|`` over the valid edges divided by their maximum (all zeros stay zero)."""
    a = scores.double().abs() * valid
    top = float(a.max())
    return a / top if top > 0 else a


def _run(ctx: Context, s: Settings) -> Outcome:
    members = [score(ctx, m, s) for m in MEMBERS]
    avg = sum(normalised(m.scores, ctx.graph.valid) for m in members) / len(members)
    assert isinstance(avg, torch.Tensor)
    cost = SearchCost(passes=sum(int(m.meta.get("passes", 0)) for m in members),
                      forward_equivalents=sum(float(m.meta.get("forward_equivalents", 0.0)) for m in members))
    return Outcome(scores=EdgeScores(ctx.graph, avg, "ensemble", meta={"members": list(MEMBERS)}), cost=cost)


METHODS = (
    Method("ensemble", "ranking", "mean of the max-normalised |scores| of eap, eap-ig-inputs and eap-ig-activations "
           "(MIB 2025's parallel ensemble)", _run,
           cost=lambda graph, s: sum(ranking_cost(m, s.ig_steps, graph)[1] for m in MEMBERS),
           ranking_sense="keep", distributed=True, controls=("ig_steps",)),
)
