"""Better selection from the EAP-IG ranking (BlackboxNLP 2025 MIB shared task, circuit localisation):

- ``eap-ig-ilp``: the EAP-IG scores, with each circuit of a size chosen by the integer linear program of
  acdc.selection.ilp (the connected circuit of exactly that size with the largest total |score|) instead of greedy
  growth; greedy where the graph is too large for the program (a note says so).
- ``eap-ig-stable``: EAP-IG scored on chunks of the prompts; edges ranked by how reliably they are among the best
  under bootstrap resampling of the chunks (acdc.selection.stable_key): the top n of this ranking are the edges in
  the top n of at least half of the resamples, where they are that many.
"""

from __future__ import annotations

import torch

from acdc.attribution import DEFAULT_IG, EdgeScores, attribute
from acdc.methods.attribution import ranking_cost, ranking_key, score
from acdc.methods.base import Context, Method, Outcome, SearchCost, Settings
from acdc.selection import stable_key

CHUNKS = 8  # prompt chunks scored separately for the bootstrap
RESAMPLES = 200
FRACTION = 0.5


def _ilp(ctx: Context, s: Settings) -> Outcome:
    scores = score(ctx, DEFAULT_IG, s)
    cost = SearchCost(passes=int(scores.meta.get("passes", 0)),
                      forward_equivalents=float(scores.meta.get("forward_equivalents", 0.0)))
    return Outcome(scores=scores, cost=cost)


def _stable(ctx: Context, s: Settings) -> Outcome:
    """Scores on ``CHUNKS`` equal chunks of the prompts (the last ones dropped when they do not divide), then the
    stable ranking; the chunks' mean is the plain ranking, kept for later methods of the job."""
    data = ctx.data
    n = len(data)
    c = max(1, min(CHUNKS, n))
    size = n // c
    parts = [attribute(ctx.model, ctx.graph, data.rows(i * size, (i + 1) * size), DEFAULT_IG,
                       ablation=s.ablation, steps=s.ig_steps, progress=ctx.progress)  # type: ignore[arg-type]
             for i in range(c)]
    chunks = torch.stack([p.scores for p in parts])
    if c * size == n:
        ctx.rankings.setdefault(ranking_key(DEFAULT_IG, s), EdgeScores(ctx.graph, chunks.mean(0), DEFAULT_IG,
                                                                       meta=dict(parts[0].meta, n_prompts=n)))
    key = stable_key(ctx.graph, chunks, fraction=FRACTION, resamples=RESAMPLES, seed=s.seed)
    cost = SearchCost(passes=sum(int(p.meta.get("passes", 0)) for p in parts),
                      forward_equivalents=sum(float(p.meta.get("forward_equivalents", 0.0)) * size / n
                                              for p in parts))
    meta = {"ranking": f"{FRACTION:g}-quantile of the bootstrap rank of {DEFAULT_IG}", "chunks": c,
            "prompts_per_chunk": size, "resamples": RESAMPLES}
    notes = [] if c * size == n else [f"eap-ig-stable: {n - c * size} of {n} prompts left out (chunks of {size})"]
    return Outcome(scores=EdgeScores(ctx.graph, key, "eap-ig-stable", meta=meta), cost=cost, notes=notes)


METHODS = (
    Method("eap-ig-ilp", "ranking", f"{DEFAULT_IG} scores; each circuit of a size is the connected circuit of exactly "
           "that size with the largest total |score| (integer linear program, HiGHS; greedy on graphs too large)",
           _ilp, cost=lambda graph, s: ranking_cost(DEFAULT_IG, s.ig_steps, graph)[1], controls=("ig_steps",),
           selector="ilp"),
    Method("eap-ig-stable", "ranking", f"{DEFAULT_IG} on {CHUNKS} prompt chunks; edges ranked by the median of their "
           f"rank over {RESAMPLES} bootstrap resamples of the chunks (stable under resampling the prompts)", _stable,
           cost=lambda graph, s: ranking_cost(DEFAULT_IG, s.ig_steps, graph)[1], ranking_sense="keep",
           controls=("ig_steps", "seed")),
)
