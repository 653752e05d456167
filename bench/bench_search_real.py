"""Edge pruning and the hybrid on a real model: wall time, steps, and the test faithfulness of what they find.

    python bench/bench_search_real.py edge-pruning [--model zoo:smollm2-135m-instruct] [--task ioi] [--n 64]
        [--edges 1000] [--steps 300] [--batch B] [--lr R] [--warm] [--out FILE.json]
    python bench/bench_search_real.py hybrid [--target 0.8] [--budget 900] [--out FILE.json]

Edge pruning trains masks for ``--edges`` edges on the train split and every edge is ranked by its learned keep
probability; the greedy circuits of that ranking at the pareto grid's sizes between 100 and 25,000 edges are
evaluated exactly on the test split, next to EAP-IG's (the ranking today's circuits come from). The hybrid runs
one target on the train split and its circuit is evaluated on the test split. The bare model's forward of the
train prompts is timed in the same process, so every time is also given in bare forwards.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["edge-pruning", "hybrid"])
    ap.add_argument("--model", default="zoo:smollm2-135m-instruct")
    ap.add_argument("--task", default="ioi")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--edges", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=None, help="prompts per step [the schedule for the graph]")
    ap.add_argument("--lr", type=float, default=None, help="learning rate [the schedule for the graph]")
    ap.add_argument("--warm", action="store_true", help="start log alpha from the EAP-IG scores")
    ap.add_argument("--target", type=float, default=0.8)
    ap.add_argument("--budget", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from acdc.attribution import attribute
    from acdc.evaluate import evaluate_circuits
    from acdc.job import prepare
    from acdc.methods import hybrid_search
    from acdc.methods.edge_pruning import edge_pruning, warm_init
    from acdc.pareto import curve_from_scores, size_grid, sweep

    prep = prepare(args.task, args.model, n=args.n)
    model, graph, train, test = prep.model, prep.graph, prep.data["train"], prep.data["test"]
    with torch.no_grad():
        model(train.clean[:1])
        t = time.perf_counter()
        model(train.clean)
        bare = time.perf_counter() - t
    print(f"{args.model}: {graph.n_edges} edges; {len(train)} train / {len(test)} test prompts x "
          f"{train.clean.shape[1]} tokens; bare forward of the train prompts {bare:.2f} s", flush=True)
    result: dict = {"model": args.model, "task": args.task, "n": args.n, "bare_forward_s": bare, "args": vars(args)}
    t0 = time.perf_counter()
    ig = attribute(model, graph, train, "eap-ig-inputs", steps=5, ablation=prep.ablation, progress=False)
    result["eap_ig_s"] = time.perf_counter() - t0
    sizes = [s for s in size_grid(graph.n_edges, 6) if 100 <= s <= 25000]
    curves = [curve_from_scores(graph, "eap-ig", ig.scores, sizes)]
    if args.what == "edge-pruning":
        t0 = time.perf_counter()
        c, log_alpha, cost = edge_pruning(model, graph, train, edges=args.edges, steps=args.steps,
                                          batch_size=args.batch, lr=args.lr, ablation=prep.ablation,
                                          init=warm_init(graph, ig.scores) if args.warm else None,
                                          budget_s=args.budget, progress=True)
        secs = time.perf_counter() - t0
        steps = c.meta["steps"]
        result["edge_pruning"] = {"seconds": secs, "steps": steps, "per_step_s": secs / steps,
                                  "bare_forwards": secs / bare, **cost.as_dict()}
        print(f"edge pruning: {steps} steps of {c.meta['batch_size']} prompts (rate {c.meta['lr']:g}) in "
              f"{secs:.0f} s ({secs / steps:.2f} s a step, "
              f"{secs / bare:.0f} bare forwards)", flush=True)
        curves.append(curve_from_scores(graph, "edge-pruning" + ("-warm" if args.warm else ""),
                                        torch.sigmoid(log_alpha) * graph.valid, sizes))
    else:
        t0 = time.perf_counter()
        c, cost = hybrid_search(model, graph, train, target=args.target, scores=ig, ablation=prep.ablation,
                                budget_s=args.budget, progress=True)
        secs = time.perf_counter() - t0
        f = evaluate_circuits(model, graph, test, [c], ablation=prep.ablation)[0]
        result["hybrid"] = {"seconds": secs, "bare_forwards": secs / bare, "edges": c.n_edges,
                            "before_refine": cost.extra["size_before_refine"], "train_f": c.meta["train_faithfulness"],
                            "test_f": f["faithfulness"], **cost.as_dict()}
        print(f"hybrid (target {args.target}): {secs:.0f} s ({secs / bare:.0f} bare forwards); "
              f"{cost.extra['size_before_refine']} -> {c.n_edges} edges; train f {c.meta['train_faithfulness']:.3f}, "
              f"test f {f['faithfulness']:.3f}", flush=True)
    res = sweep(model, graph, test, curves, ablation=prep.ablation, n_boot=200, progress=False)
    result["curves"] = {cv["method"]: [(p["edges"], p["f"]) for p in cv["points"]] for cv in res["curves"]}
    for name, pts in result["curves"].items():
        need = {lvl: next((e for e, f in pts if f >= lvl), None) for lvl in (0.5, 0.8, 0.9)}
        print(f"{name}: edges for f >= 0.5 / 0.8 / 0.9 on test: {need[0.5]} / {need[0.8]} / {need[0.9]}; "
              + ", ".join(f"{e}: {f:.3f}" for e, f in pts), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
