"""Circuit quality on the zoo's tasks: every method's curve, the pareto frontier with and without the methods added
for issue 15, CPR/CMD and the edges needed for f >= 0.8 / 0.9 / 0.99, each with a 95% bootstrap interval over the
test prompts; and at fixed edge budgets the best f of each frontier with a paired bootstrap interval of their
difference.

Everything comes from acdc's own code: the methods run through the registry (acdc.job.run_methods), the curves are
swept by acdc.pareto.sweep (the one evaluator, acdc.evaluate), and the intervals resample the very per-prompt values
that sweep evaluated (acdc.evaluate.resample_weights, as faithfulness_ci does). f is capped at 1 where a frontier is
compared (min(f, 1): a circuit cannot recover more than all of the behaviour).

    python bench/bench_quality.py [--tasks ioi,induction] [--model SPEC] [--train 64] [--test 200]
        [--bootstrap 1000] [--methods M1,M2,...] [--old M1,M2,...] [--selectors ilp] [--per-decade 6]
        [--seeds 0,1,2] [--budgets 10,15,20,30,40,60] [--out DIR]

With several ``--seeds`` every task is run once per prompt seed (train and test prompts drawn anew) and a last table
gives each method's CPR and edges for f >= 0.8 / 0.9 per seed, with their mean: differences between methods smaller
than the spread over seeds are not differences.

A method name with ``+SELECTOR`` (e.g. ``eap-ig-left+ilp``) sweeps that ranking with another selector
(acdc.selection.ordered_circuits); ``--selectors ilp`` adds such a curve for every ranking.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acdc.evaluate import Evaluation, evaluate_masks, resample_weights
from acdc.job import JobOptions, check_methods, prepare, run_methods
from acdc.methods import get_method
from acdc.pareto import MIB_FRACTIONS, RECOVERY_LEVELS, curve_from_scores, mib_sizes, size_grid, sweep

OLD = ("eap", "eap-ig", "eap-ig-midpoint", "eap-ig-activations", "clean-corrupted", "mask-ig", "exact", "edge-pruning",
       "hybrid", "acdc", "ensemble")
NEW = ("eap-ig-left", "eap-ig-ilp", "eap-ig-stable", "ensemble-max", "ensemble-min", "edge-pruning-warm")
BUDGETS = (10, 15, 20, 30, 40, 60)


def _mask_index(curves: list[Any]) -> list[list[int]]:
    """The index of each curve point's mask among the masks sweep evaluates (identical circuits once, in first-seen
    order: the order acdc.pareto.sweep uses)."""
    seen: dict[bytes, int] = {}
    out = []
    for cv in curves:
        idx = []
        for c in cv.circuits:
            key = np.packbits(c.mask.numpy()).tobytes()
            idx.append(seen.setdefault(key, len(seen)))
        out.append(idx)
    return out


def _quantiles(x: np.ndarray) -> list[float]:
    return [float(v) for v in np.nanquantile(x, [0.025, 0.975])]


def bench_task(task: str, methods: tuple[str, ...], old: tuple[str, ...], selectors: tuple[str, ...], *,
               n_train: int, n_test: int, n_boot: int, budget_s: float, seed: int | None, per_decade: int = 6,
               model: str | None = None, budget_edges: tuple[int, ...] = BUDGETS) -> dict[str, Any]:
    prep = prepare(task, model, splits=("train",), n=n_train, seed=seed)
    if prep.ablation != "patch":  # clean-corrupted takes gradients on the counterfactual run: patch ablation only
        methods = tuple(m for m in methods if m.split("+")[0] != "clean-corrupted")
    plain = tuple(dict.fromkeys(m.split("+")[0] for m in methods))
    prep.data["test"] = prep.task.build(prep.model, n_test, seed=prep.seed, split="test")
    graph, test = prep.graph, prep.data["test"]
    opts = JobOptions(methods=plain, budget_s=budget_s, per_decade=per_decade)
    t0 = time.perf_counter()
    runs = run_methods(prep, check_methods(plain), opts, progress=False,
                       log=lambda s: print(f"  {task}: {s}", flush=True))
    sizes = size_grid(graph.n_edges, opts.per_decade)
    curves = [cv for cv in runs.curves if cv.method in methods]
    wanted = [m for m in methods if "+" in m] + [f"{name}+{sel}" for name in runs.rankings for sel in selectors
                                                 if get_method(name).selector != sel]
    for m in dict.fromkeys(wanted):
        name, sel = m.split("+", 1)
        if name not in runs.rankings:
            raise SystemExit(f"{m}: {name} is not a ranking of this run")
        _, sc = runs.rankings[name]  # keep-sense scores are positive: |score| ranks them as the job does
        curves.append(curve_from_scores(graph, m, sc, sizes, selector=sel))
    methods_s = round(time.perf_counter() - t0, 1)
    captured: list[Evaluation] = []

    def evaluator(*a: Any, **kw: Any) -> Evaluation:
        captured.append(evaluate_masks(*a, **kw))
        return captured[-1]

    doc = sweep(prep.model, graph, test, curves, ablation=prep.ablation, n_boot=n_boot, seed=prep.seed,
                progress=False, evaluator=evaluator)
    ev = captured[0]
    w = resample_weights(ev.metric.shape[1], max(n_boot, 1), prep.seed)
    fr = (((ev.metric @ w.T) - (w @ ev.empty)) / ((w @ ev.full) - (w @ ev.empty))).numpy()  # [K, R]
    f0 = ((ev.metric.mean(1) - ev.empty.mean()) / (ev.full.mean() - ev.empty.mean())).numpy()  # [K]
    where = _mask_index(curves)
    rows = []
    for cv, idx, summ in zip(doc["curves"], where, doc["summary"], strict=True):
        edges = np.array([p["edges"] for p in cv["points"]])
        row: dict[str, Any] = {"method": cv["method"], "cpr": summ["cpr"], "cmd": summ["cmd"],
                               "edges_for": summ["edges_for"]}
        if cv["kind"] == "scores":
            by_req = {p["requested"]: k for p, k in zip(cv["points"], idx, strict=True)}
            ks = [by_req[s] for s in mib_sizes(graph.n_edges)]
            fx = np.asarray(MIB_FRACTIONS)
            ys = fr[ks]  # [10, R]
            dx = np.diff(fx)[:, None]
            row["cpr_ci"] = _quantiles((dx * (ys[1:] + ys[:-1]) / 2).sum(0))
            dev = np.abs(1 - ys)
            row["cmd_ci"] = _quantiles((dx * (dev[1:] + dev[:-1]) / 2).sum(0))
        cis = {}
        for lv in RECOVERY_LEVELS:
            reach = np.where(fr[idx] >= lv, edges[:, None], np.inf).min(0)  # [R]
            lo, hi = np.quantile(reach, [0.025, 0.975], method="nearest")
            cis[f"{lv:g}"] = [None if math.isinf(lo) else int(lo), None if math.isinf(hi) else int(hi)]
        row["edges_for_ci"] = cis
        rows.append(row)

    def best(names: set[str], budget: int) -> tuple[int, str, int] | None:
        """(mask index, method, edges) of the most faithful point (f capped at 1, fewest edges on ties) of the
        curves of ``names`` within ``budget`` edges."""
        cand = [(min(float(f0[k]), 1.0), -p["edges"], k, cv["method"], p["edges"])
                for cv, idx in zip(doc["curves"], where, strict=True) if cv["method"] in names
                for p, k in zip(cv["points"], idx, strict=True) if p["edges"] <= budget]
        if not cand:
            return None
        top = max(cand)
        return top[2], top[3], top[4]

    all_names = {cv["method"] for cv in doc["curves"]}
    old_names = {m for m in all_names if m in old}
    capped = np.minimum(fr, 1.0)
    budgets = []
    for b in budget_edges:
        a, o = best(all_names, b), best(old_names, b)
        if a is None or o is None:
            continue
        budgets.append({"budget": b,
                        "all": {"method": a[1], "edges": a[2], "f": min(float(f0[a[0]]), 1.0),
                                "f_ci": _quantiles(capped[a[0]])},
                        "old": {"method": o[1], "edges": o[2], "f": min(float(f0[o[0]]), 1.0),
                                "f_ci": _quantiles(capped[o[0]])},
                        "difference": float(min(f0[a[0]], 1.0) - min(f0[o[0]], 1.0)),
                        "difference_ci": _quantiles(capped[a[0]] - capped[o[0]])})
    return {"task": task, "model": prep.spec, "seed": prep.seed, "n_train": n_train, "n_test": n_test,
            "bootstrap": n_boot,
            "edges_total": graph.n_edges, "old_methods": sorted(old_names), "methods_s": methods_s,
            "seconds": runs.seconds, "notes": runs.notes, "rows": rows, "budgets": budgets,
            "frontier": doc["frontier"], "pareto": doc}


def _ci(ci: list[Any] | None, fmt: str = "{:.3f}") -> str:
    if not ci or ci[0] is None and ci[1] is None:
        return ""
    return "[" + ", ".join("-" if v is None else fmt.format(v) for v in ci) + "]"


def print_task(r: dict[str, Any]) -> None:
    print(f"\n### {r['task']} on {r['model']} (prompt seed {r['seed']}): {r['edges_total']} edges, {r['n_train']} "
          f"train / {r['n_test']} test prompts, {r['bootstrap']} bootstrap resamples")
    print("\n| method | CPR [95% CI] | CMD [95% CI] | edges for f>=0.8 | f>=0.9 | f>=0.99 |")
    print("|---|---|---|---|---|---|")
    for row in r["rows"]:
        cpr = "n/a" if row["cpr"] is None else f"{row['cpr']:.3f} {_ci(row.get('cpr_ci'))}"
        cmd = "n/a" if row["cmd"] is None else f"{row['cmd']:.3f} {_ci(row.get('cmd_ci'))}"
        need = [f"{'-' if row['edges_for'][k] is None else row['edges_for'][k]} {_ci(row['edges_for_ci'][k], '{}')}"
                for k in ("0.8", "0.9", "0.99")]
        print(f"| {row['method']} | {cpr} | {cmd} | " + " | ".join(need) + " |")
    print("\n| budget (edges) | frontier, all methods: f [95% CI] (method, edges) | without the new methods | "
          "difference [paired 95% CI] |")
    print("|---|---|---|---|")
    for b in r["budgets"]:
        a, o = b["all"], b["old"]
        print(f"| {b['budget']} | {a['f']:.3f} {_ci(a['f_ci'])} ({a['method']}, {a['edges']}) | {o['f']:.3f} "
              f"{_ci(o['f_ci'])} ({o['method']}, {o['edges']}) | {b['difference']:+.3f} {_ci(b['difference_ci'])} |")
    for note in r["notes"]:
        print(f"note: {note}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="ioi,induction")
    ap.add_argument("--methods", default=",".join(OLD + NEW))
    ap.add_argument("--old", default=",".join(OLD), help="the methods of the frontier without the new ones")
    ap.add_argument("--selectors", default="", help="extra selectors swept for every ranking, e.g. ilp")
    ap.add_argument("--train", type=int, default=64)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--budget", type=float, default=300.0, help="seconds per search method")
    ap.add_argument("--seed", type=int, default=None, help="one prompt seed (default: the task's)")
    ap.add_argument("--seeds", default="", help="several prompt seeds, e.g. 0,1,2,3,4 (overrides --seed)")
    ap.add_argument("--model", default=None, help="model spec (default: the task's)")
    ap.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="edge budgets of the frontier table")
    ap.add_argument("--per-decade", type=int, default=6, help="sizes per factor of ten on the curves' log grid")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="folder for <task>.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    split = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())  # noqa: E731
    seeds: list[int | None] = [int(x) for x in split(args.seeds)] or [args.seed]
    budgets = tuple(int(x) for x in split(args.budgets))
    for task in split(args.tasks):
        results = []
        for seed in seeds:
            r = bench_task(task, split(args.methods), split(args.old), split(args.selectors), n_train=args.train,
                           n_test=args.test, n_boot=args.bootstrap, budget_s=args.budget, seed=seed,
                           per_decade=args.per_decade, model=args.model, budget_edges=budgets)
            print_task(r)
            results.append(r)
            if args.out:
                Path(args.out).mkdir(parents=True, exist_ok=True)
                name = f"{task}.json" if len(seeds) == 1 else f"{task}-seed{r['seed']}.json"
                (Path(args.out) / name).write_text(json.dumps(r, indent=1, default=float))
        if len(results) > 1:
            print_seeds(results)


def print_seeds(results: list[dict[str, Any]]) -> None:
    """Each method's CPR and edges for f >= 0.8 / 0.9 on every seed, and their means."""
    seeds = [r["seed"] for r in results]
    print(f"\n### {results[0]['task']} on {results[0]['model']} over prompt seeds {', '.join(map(str, seeds))}")
    print("\n| method | CPR per seed | mean CPR | edges for f>=0.8 per seed | f>=0.9 per seed |")
    print("|---|---|---|---|---|")
    methods = list(dict.fromkeys(row["method"] for r in results for row in r["rows"]))
    for m in methods:
        rows = [next((row for row in r["rows"] if row["method"] == m), None) for r in results]
        cprs = [None if row is None else row["cpr"] for row in rows]
        known = [c for c in cprs if c is not None]
        mean = f"{sum(known) / len(known):.3f}" if known else "n/a"
        need = {lv: ["-" if row is None or row["edges_for"][lv] is None else str(row["edges_for"][lv]) for row in rows]
                for lv in ("0.8", "0.9")}
        print(f"| {m} | {' / '.join('n/a' if c is None else f'{c:.3f}' for c in cprs)} | {mean} | "
              f"{' / '.join(need['0.8'])} | {' / '.join(need['0.9'])} |")


if __name__ == "__main__":
    main()
