"""Parallel ensembles of attribution rankings, after the best entry of the BlackboxNLP 2025 MIB shared task (circuit
localisation): each member ranking's |scores| are normalised by their largest value over the graph's edges, and the
normalised scores are aggregated edge by edge: ``ensemble`` takes the mean (the shared task's winner),
``ensemble-max`` the maximum (an edge counts when any member finds it important), ``ensemble-min`` the minimum (only
when every member does). Members computed earlier in the same job (``acdc run --methods eap,eap-ig,ensemble``) are
reused, not scored again."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from acdc.attribution import EdgeScores
from acdc.errors import InputError
from acdc.methods.attribution import ranking_cost, score
from acdc.methods.base import Context, Method, Outcome, SearchCost, Settings

MEMBERS: tuple[str, ...] = ("eap", "eap-ig-inputs", "eap-ig-activations")
AGGREGATIONS: tuple[str, ...] = ("mean", "max", "min")


def normalised(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``|scores|`` over the valid edges divided by their maximum (all zeros stay zero)."""
    a = scores.double().abs() * valid
    top = float(a.max())
    return a / top if top > 0 else a


def aggregate(members: Sequence[torch.Tensor], valid: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """The ``how`` (mean, max or min) over the members' normalised |scores|, edge by edge."""
    if how not in AGGREGATIONS:
        raise InputError(f"unknown aggregation '{how}'; choose one of {', '.join(AGGREGATIONS)}")
    if not members:
        raise InputError("an ensemble needs at least one member ranking")
    stack = torch.stack([normalised(m, valid) for m in members])
    out = {"mean": lambda: stack.mean(0), "max": lambda: stack.max(0).values, "min": lambda: stack.min(0).values}[how]()
    return out * valid


def _runner(how: str, name: str) -> Callable[[Context, Settings], Outcome]:
    def run(ctx: Context, s: Settings) -> Outcome:
        members = [score(ctx, m, s) for m in MEMBERS]
        agg = aggregate([m.scores for m in members], ctx.graph.valid, how)
        cost = SearchCost(passes=sum(int(m.meta.get("passes", 0)) for m in members),
                          forward_equivalents=sum(float(m.meta.get("forward_equivalents", 0.0)) for m in members))
        return Outcome(scores=EdgeScores(ctx.graph, agg, name, meta={"members": list(MEMBERS), "aggregation": how}),
                       cost=cost)

    return run


def _record(name: str, how: str, summary: str) -> Method:
    return Method(name, "ranking", summary, _runner(how, name),
                  cost=lambda graph, s: sum(ranking_cost(m, s.ig_steps, graph)[1] for m in MEMBERS),
                  ranking_sense="keep", distributed=True, controls=("ig_steps",))


METHODS = (
    _record("ensemble", "mean", "mean of the max-normalised |scores| of eap, eap-ig-inputs and eap-ig-activations "
            "(MIB 2025's parallel ensemble)"),
    _record("ensemble-max", "max", "maximum of the max-normalised |scores| of eap, eap-ig-inputs and "
            "eap-ig-activations (an edge any member ranks high)"),
    _record("ensemble-min", "min", "minimum of the max-normalised |scores| of eap, eap-ig-inputs and "
            "eap-ig-activations (an edge every member ranks high)"),
)
