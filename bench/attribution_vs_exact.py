"""How well each attribution method ranks edges, against exact single-edge patching, on the zoo's task models.

For each task (on its default zoo model, 200 train prompts, patch ablation) every method's |score| is compared with
|exact effect| over all edges: Pearson correlation (how well magnitudes agree) and Spearman (how well the ranking
agrees).

    python bench/attribution_vs_exact.py [--n 200]
"""

from __future__ import annotations

import argparse

import torch

from acdc import Graph, get_task, load_model
from acdc.attribution import attribute

METHODS = (("eap", 1), ("eap-ig-inputs", 5), ("eap-ig-activations", 5), ("clean-corrupted", 1), ("mask-ig", 5))


def ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().double()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'task':<10} {'method':<20} {'pearson |s|,|exact|':>20} {'spearman':>10}")
    for task in ("ioi", "induction", "refusal"):
        t = get_task(task)
        model = load_model(t.default_model)
        graph = Graph.from_model(model)
        data = t.build(model, args.n, seed=0)
        exact = attribute(model, graph, data, "exact", progress=False).edge_vector().abs()
        for method, steps in METHODS:
            s = attribute(model, graph, data, method, steps=steps, progress=False).edge_vector().abs()
            r = torch.corrcoef(torch.stack([s, exact]))[0, 1].item()
            rs = torch.corrcoef(torch.stack([ranks(s), ranks(exact)]))[0, 1].item()
            print(f"{task:<10} {method:<20} {r:>20.3f} {rs:>10.3f}")


if __name__ == "__main__":
    main()
