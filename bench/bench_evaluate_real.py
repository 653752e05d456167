"""Exact evaluation of K circuits on a real model against K bare forwards of the same prompts, in one process.

    python bench/bench_evaluate_real.py [--model zoo:smollm2-135m-instruct] [--task ioi] [--n 64] [--k 16]

The circuits are EAP's greedy circuits at ``--k`` sizes on a log grid (what a pareto sweep evaluates);
``evaluate_masks`` computes them plus the full and the empty circuit, so the floor is K + 2 bare Hugging Face
forwards of the test prompts, timed in interleaved pairs; the median ratio of ``--repeats`` pairs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def wall(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="zoo:smollm2-135m-instruct")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from acdc import Graph, attribute, get_task, load_model
    from acdc.evaluate import evaluate_masks
    from acdc.selection import greedy

    model = load_model(args.model)
    graph = Graph.from_model(model)
    task = get_task(args.task)
    test = task.build(model, args.n, split="test")
    scores = attribute(model, graph, task.build(model, args.n, split="train"), "eap", progress=False)
    sizes = sorted({int(x) for x in np.geomspace(20, graph.n_edges, args.k)})
    masks = [greedy(graph, scores.scores, n).mask for n in sizes]
    hf = model.original_model

    def bare() -> None:
        with torch.no_grad():
            hf(test.clean)

    def exact() -> None:
        evaluate_masks(model, graph, test, masks, ablation=task.spec.defaults.ablation)

    # interleaved (bare, exact) pairs, so that load from other jobs hits both alike; the ratio of each pair counts
    bare()
    exact()
    pairs = [(wall(bare), wall(exact)) for _ in range(args.repeats)]
    k = len(masks) + 2
    ratios = [e / (k * b) for b, e in pairs]
    print(f"{args.model}: {graph.n_edges} edges; {args.task} test {test.clean.shape[0]} x {test.clean.shape[1]} "
          f"tokens; {args.threads} threads; {args.repeats} interleaved pairs (median)")
    print(f"bare forward {np.median([b for b, _ in pairs]):.2f} s; evaluating {len(masks)} circuits (+ full and "
          f"empty) {np.median([e for _, e in pairs]):.1f} s = {np.median(ratios):.2f}x {k} bare forwards "
          f"(pairs: {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
