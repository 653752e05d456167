"""Circuit search on zoo:toy-ioi: the fast ACDC against the plain sequential one (same result required), and every
discovery method's size, test-split faithfulness, cost and wall time. fwd-equiv: FLOPs / one plain forward of the
batch for the fast ACDC and the hybrid's exact part; one per masked forward for the plain ACDC; 1 + 3k for
attribution with k gradient steps (hybrid k = EAP-IG steps of its ranking); 3 per edge-pruning step.

    python bench/bench_search.py [--n 100]
"""

from __future__ import annotations

import argparse
import time

import torch

from acdc import Graph, attribute, get_task, load_model
from acdc.evaluate import evaluate_circuits
from acdc.methods import acdc_search, edge_pruning, hybrid_search
from acdc.selection import greedy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = get_task("ioi")
    model = load_model("zoo:toy-ioi")
    graph = Graph.from_model(model)
    train = task.build(model, args.n, split="train")
    test = task.build(model, args.n, split="test")
    print(f"zoo:toy-ioi, {graph.n_edges} edges, {args.n} train / {args.n} test prompts, {args.threads} threads")
    print(f"{'method':<28}{'edges':>6}{'f(test)':>9}{'passes':>8}{'masks':>7}{'fwd-equiv':>10}{'seconds':>9}")
    rows = []
    for tau in (0.01, 0.05):
        plain, cp = acdc_search(model, graph, train, tau, fast=False, progress=False)
        fast, cf = acdc_search(model, graph, train, tau, fast=True, progress=False)
        assert torch.equal(plain.mask, fast.mask), "fast ACDC must return the sequential result"
        rows += [(f"acdc plain tau={tau}", plain, cp.passes, cp.masks, cp.forward_equivalents, cp.seconds),
                 (f"acdc fast tau={tau}", fast, cf.passes, cf.masks, cf.forward_equivalents, cf.seconds)]
    for n in (20, 35):
        for method, label in (("eap", "eap"), ("eap-ig-inputs", "eap-ig")):
            t = time.perf_counter()
            s = attribute(model, graph, train, method, progress=False)
            c = greedy(graph, s.scores, n)
            sec = time.perf_counter() - t
            k = 1 if method == "eap" else 5
            rows.append((f"{label} greedy n={n}", c, 1 + k, 0, 1 + 3 * k, sec))  # fwd + k (fwd + ~2 fwd of bwd)
        c, _, cost = edge_pruning(model, graph, train, edges=n, steps=300, progress=False)
        rows.append((f"edge-pruning n={n}", c, cost.passes, 0, cost.forward_equivalents, cost.seconds))
    for steps in (5, 2):
        for target in (0.85, 0.9):
            for refine in (False, True):
                c, cost = hybrid_search(model, graph, train, target=target, refine=refine, steps=steps,
                                        progress=False)
                label = f"hybrid k={steps} f>={target}" + (" +refine" if refine else "")
                rows.append((label, c, cost.passes, cost.masks, cost.forward_equivalents, cost.seconds))
    evals = evaluate_circuits(model, graph, test, [r[1] for r in rows])
    for (label, c, passes, masks, fe, sec), ev in zip(rows, evals, strict=True):
        print(f"{label:<28}{c.n_edges:>6}{ev['faithfulness']:>9.3f}{passes:>8}{masks:>7}{fe:>10.1f}{sec:>9.2f}")


if __name__ == "__main__":
    main()
