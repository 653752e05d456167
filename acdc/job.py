"""The main job behind ``acdc run TASK``: discover circuits with several methods, sweep their sizes, draw, report.

Steps (each timed):
1. load the model (training a zoo model on first use) and build the task's train and test prompts;
2. run the methods on the train split: ``eap`` and ``eap-ig`` give score rankings; ``edge-pruning`` learns masks at
   one size whose ``log alpha`` ranks every edge; ``hybrid`` finds one circuit per target faithfulness from the
   EAP-IG ranking; ``acdc`` finds one circuit per threshold (only when its estimated time fits ``acdc_budget_s``);
3. sweep: every ranking at the grid of sizes (log grid + MIB's) and every found circuit, evaluated exactly on the
   test split with bootstrap intervals (:func:`acdc.pareto.sweep`), giving the frontier and the summaries;
4. choose one circuit per method: the smallest on its curve whose faithfulness on the *train* split reaches
   ``level`` (else its most faithful one), reported with its test numbers; the headline circuit is the smallest
   chosen one reaching ``level`` on test;
5. write ``pareto.json``/``.svg``/``.png``, ``circuits/<method>.json``/``.svg``/``.png``, ``circuit.svg``/``.png``
   (the headline), ``mib/`` (the rankings in MIB's layout), ``summary.json``, ``run.yaml`` and ``report.html``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from acdc.errors import InputError
from acdc.graph import Circuit, Graph
from acdc.io import atomic_write_text

JOB_METHODS: tuple[str, ...] = ("eap", "eap-ig", "edge-pruning", "hybrid", "acdc")
RUN_FORMAT = "acdc-run/1"


@dataclass
class JobOptions:
    """What ``acdc run`` does; every field has a command-line option."""

    methods: tuple[str, ...] = JOB_METHODS
    n: int | None = None  # prompts per split (None: the task's default)
    seed: int = 0
    ablation: str | None = None  # None: the task's default
    counterfactual: str | None = None
    ig_steps: int = 5
    bootstrap: int = 1000
    per_decade: int = 6
    level: float = 0.9  # faithfulness a chosen circuit must reach
    hybrid_targets: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.99)
    acdc_thresholds: tuple[float, ...] = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
    acdc_budget_s: float = 300.0
    ep_steps: int = 300
    ep_edges: int | None = None  # edge pruning's trained size (None: 5% of the edges, at least 20)
    batch: int = 16  # circuits per masked forward in sweeps
    draw: bool = True
    report: bool = True
    mib: bool = True
    circuits: bool = True  # choose, save and draw one circuit per method (False: curves only, for `acdc pareto`)
    score_dirs: tuple[str, ...] = ()  # rankings saved by `acdc scores` to sweep as extra curves
    distributed: bool = False  # share prompts among torchrun processes (eap / eap-ig and the sweeps)
    command: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _json(path: Path, obj: Any) -> Path:
    import json

    return atomic_write_text(path, json.dumps(obj, indent=1, default=float))


def run_job(task_name: str, model_spec: str | None, out: str | Path | None, opts: JobOptions | None = None, *,
            log: Callable[[str], None] = lambda s: None, progress: bool = True) -> dict[str, Any]:
    """Run the main job for ``task_name`` (a built-in name or a YAML path) and return the summary document (also
    written to ``<out>/summary.json``). ``log`` receives one line per finished step."""
    from acdc.attribution import attribute
    from acdc.models import load_model
    from acdc.pareto import curve_from_circuits, curve_from_scores, size_grid, sweep
    from acdc.runs import run_dir, versions, write_run_yaml
    from acdc.search import acdc_search, edge_pruning, hybrid_search
    from acdc.task import get_task

    opts = opts or JobOptions()
    unknown = [m for m in opts.methods if m not in JOB_METHODS]
    if unknown or not (opts.methods or opts.score_dirs):
        raise InputError(f"unknown method(s) {', '.join(unknown) or '(none given)'}; choose from "
                         f"{', '.join(JOB_METHODS)}")
    if not 0 < opts.level <= 1:
        raise InputError(f"level must be in (0, 1], got {opts.level}")
    main_rank = True
    evaluator = None
    if opts.distributed:
        from acdc.distributed import evaluate_distributed, init_from_env

        serial = [m for m in opts.methods if m not in ("eap", "eap-ig")]
        if serial:
            raise InputError(f"--distributed shares prompts for eap, eap-ig and the sweeps only; run "
                             f"{', '.join(serial)} without it (or drop them with --methods)")
        rank, _ = init_from_env()
        main_rank = rank == 0
        evaluator = evaluate_distributed
        progress = progress and main_rank
    t_start = time.perf_counter()
    timings: dict[str, Any] = {"methods": {}}
    notes: list[str] = []

    task = get_task(task_name)
    spec = model_spec or task.default_model
    t0 = time.perf_counter()
    model = load_model(spec)
    timings["model_s"] = round(time.perf_counter() - t0, 2)
    graph = Graph.from_model(model)
    ablation = opts.ablation or task.spec.defaults.ablation
    log(f"model {spec}: {model.cfg.n_layers} layers x {model.cfg.n_heads} heads, {graph.n_edges} edges "
        f"({timings['model_s']:.1f} s)")

    t0 = time.perf_counter()
    train = task.build(model, opts.n, seed=opts.seed, split="train", counterfactual=opts.counterfactual)
    test = task.build(model, opts.n, seed=opts.seed, split="test", counterfactual=opts.counterfactual)
    timings["data_s"] = round(time.perf_counter() - t0, 2)
    log(f"task {task.name}: {len(train)} train / {len(test)} test prompts; metric {train.description}")
    folder = run_dir(task.name, "run", out) if main_rank else Path(".")

    # ---- methods ----------------------------------------------------------------------------------------------
    sizes = size_grid(graph.n_edges, opts.per_decade)
    curves = []
    rankings: dict[str, torch.Tensor] = {}
    ig_scores = None
    for method in opts.methods:
        t0 = time.perf_counter()
        if method in ("eap", "eap-ig"):
            name = "eap" if method == "eap" else "eap-ig-inputs"
            if opts.distributed:
                from acdc.distributed import attribute_distributed

                s = attribute_distributed(model, graph, train, name, ablation=ablation, steps=opts.ig_steps,
                                          progress=progress)
            else:
                s = attribute(model, graph, train, name, ablation=ablation, steps=opts.ig_steps,  # type: ignore[arg-type]
                              progress=progress)
            if method == "eap-ig":
                ig_scores = s
            rankings[method] = s.scores
            curves.append(curve_from_scores(graph, method, s.scores, sizes))
        elif method == "edge-pruning":
            n_ep = opts.ep_edges or min(graph.n_edges, max(20, round(0.05 * graph.n_edges)))
            _, log_alpha, _ = edge_pruning(model, graph, train, edges=n_ep, ablation=ablation, steps=opts.ep_steps,
                                           seed=opts.seed, progress=progress)
            keep = torch.sigmoid(log_alpha.double()) * graph.valid  # monotone in log alpha, positive: |.| ranks right
            rankings[method] = keep
            curves.append(curve_from_scores(graph, method, keep, sizes))
            notes.append(f"edge-pruning: masks trained for {n_ep} edges ({opts.ep_steps} steps); the curve ranks "
                         "every edge by its learned keep probability sigmoid(log alpha)")
        elif method == "hybrid":
            if ig_scores is None:
                ig_scores = attribute(model, graph, train, "eap-ig-inputs", ablation=ablation,  # type: ignore[arg-type]
                                      steps=opts.ig_steps, progress=progress)
            cs = []
            for tgt in opts.hybrid_targets:
                c, _ = hybrid_search(model, graph, train, target=tgt, ablation=ablation, scores=ig_scores,
                                     progress=False)
                c.meta["label"] = f"target={tgt:g}"
                cs.append(c)
            curves.append(curve_from_circuits(method, cs))
        elif method == "acdc":
            thresholds = _acdc_plan(model, graph, train, ablation, opts, notes)
            cs = []
            for tau in thresholds:
                c, _ = acdc_search(model, graph, train, tau, ablation=ablation, progress=progress)
                c.meta["label"] = f"tau={tau:g}"
                cs.append(c)
            if cs:
                curves.append(curve_from_circuits(method, cs))
        timings["methods"][method] = round(time.perf_counter() - t0, 2)
        log(f"{method}: {timings['methods'][method]:.1f} s")

    for name, sc in sweep_scores_dirs(opts.score_dirs, graph).items():
        rankings[name] = sc
        curves.append(curve_from_scores(graph, name, sc, sizes))

    # ---- sweeps: choose on train, report on test ---------------------------------------------------------------
    t0 = time.perf_counter()
    info = {"task": task.name, "model": spec}
    on_train = None
    if opts.circuits:  # choosing circuits needs their train-split faithfulness
        on_train = sweep(model, graph, train, curves, ablation=ablation, batch=opts.batch, n_boot=0,
                         progress=progress, info=info, evaluator=evaluator)
    pareto = sweep(model, graph, test, curves, ablation=ablation, batch=opts.batch, n_boot=opts.bootstrap,
                   seed=opts.seed, progress=progress, info=info, evaluator=evaluator)
    if not main_rank:  # every rank took part in the sweeps; rank 0 alone chooses, draws and writes
        return {}
    timings["sweep_s"] = round(time.perf_counter() - t0, 2)
    n_points = sum(len(c["points"]) for c in pareto["curves"])
    log(f"sweep: {n_points} circuits on {len(train)} train + {len(test)} test prompts ({timings['sweep_s']:.1f} s)")
    _json(folder / "pareto.json", pareto)

    chosen = []
    for cv, tr, te in zip(curves, on_train["curves"] if on_train else [], pareto["curves"], strict=False):
        ok = [i for i, p in enumerate(tr["points"]) if p["f"] is not None and p["f"] >= opts.level]
        if ok:
            i = min(ok, key=lambda j: (tr["points"][j]["edges"], -tr["points"][j]["f"]))
            how = (f"smallest circuit on the curve with f >= {opts.level:g} on the train split "
                   f"({tr['points'][i]['label']})")
        else:
            i = max(range(len(tr["points"])), key=lambda j: tr["points"][j]["f"] or float("-inf"))
            how = (f"no circuit reached f >= {opts.level:g} on the train split; the most faithful one "
                   f"({tr['points'][i]['label']})")
        c, p = cv.circuits[i], te["points"][i]
        c.meta.update({"method": cv.method, "task": task.name, "model": spec, "label": p["label"],
                       "faithfulness_test": p["f"], "faithfulness_train": tr["points"][i]["f"]})
        chosen.append((cv.method, c, p, how))
    reaching = [x for x in chosen if x[2]["f"] is not None and x[2]["f"] >= opts.level]
    head = None
    if reaching:
        head = min(reaching, key=lambda x: (x[1].n_edges, -x[2]["f"]))
    elif chosen:
        head = max(chosen, key=lambda x: x[2]["f"] if x[2]["f"] is not None else float("-inf"))

    # ---- files -------------------------------------------------------------------------------------------------
    t0 = time.perf_counter()
    (folder / "circuits").mkdir(exist_ok=True)
    circuits_doc = []
    for method, c, p, how in chosen:
        stem = folder / "circuits" / method
        c.save(stem.with_suffix(".json"))
        entry: dict[str, Any] = {
            "method": method, "edges": c.n_edges, "nodes": len(c.nodes()), "f": p["f"], "f_ci": p["f_ci"],
            "kl": p["kl"], "kl_ci": p["kl_ci"], "how": how, "label": p["label"],
            "json": f"circuits/{method}.json", "top_edges": _top_edges(c),
        }
        if opts.draw:
            _draw(c, stem, f"{method} circuit for {task.name} on {spec}: {c.n_edges} edges, f = {p['f']:.3f} (test)",
                  entry, "circuits/")
        circuits_doc.append(entry)
    images: dict[str, str] = {}
    if opts.draw:
        from acdc.export.plot import plot_pareto

        plot_pareto(pareto, folder / "pareto")
        images.update({"pareto_svg": "pareto.svg", "pareto_png": "pareto.png"})
        for ext in ("svg", "png") if head else ():
            assert head is not None
            src = folder / "circuits" / f"{head[0]}.{ext}"
            if src.exists():
                tmp = folder / f".circuit.{ext}.tmp"
                shutil.copyfile(src, tmp)
                tmp.replace(folder / f"circuit.{ext}")
                images[f"circuit_{ext}"] = f"circuit.{ext}"
    if opts.mib:
        _mib(folder, graph, rankings, task.name, spec, int(model.cfg.d_model), train.metric != "kl", notes)
    timings["export_s"] = round(time.perf_counter() - t0, 2)
    timings["total_s"] = round(time.perf_counter() - t_start, 2)

    summary: dict[str, Any] = {
        "format": RUN_FORMAT, "task": task.name, "task_description": task.description, "model": spec,
        "graph": {"writers": graph.n_src, "readers": graph.n_dst, "edges": graph.n_edges,
                  "n_layers": graph.n_layers, "n_heads": graph.n_heads},
        "data": {"train": _data_info(train), "test": _data_info(test)},
        "metric": train.description, "ablation": ablation, "seed": opts.seed, "bootstrap": opts.bootstrap,
        "level": opts.level, "created": _now(), "versions": versions(), "command": opts.command,
        "timings": timings, "baseline": pareto["baseline"], "pareto": pareto, "circuits": circuits_doc,
        "headline": head[0] if head else None, "images": images, "notes": notes,
    }
    _json(folder / "summary.json", summary)
    write_run_yaml(folder, {"command": "run", "task": task.name, "task_file": str(task.path) if task.path else None,
                            "model": spec, "methods": list(opts.methods), "ablation": ablation, "seed": opts.seed,
                            "n": opts.n, "bootstrap": opts.bootstrap, "level": opts.level,
                            "train": dict(train.info), "test": dict(test.info), "timings": timings})
    if opts.report and opts.circuits:
        from acdc.export.report import write_report

        write_report(folder)
    summary["folder"] = str(folder)
    return summary


def _acdc_plan(model: Any, graph: Graph, data: Any, ablation: str, opts: JobOptions, notes: list[str]
               ) -> list[float]:
    """The ACDC thresholds that fit the time budget: one search evaluates about one candidate per edge; a
    candidate's cost is measured on the full circuit (an upper bound: the circuit only gets sparser)."""
    from acdc.arch import get_arch
    from acdc.incremental import Incremental
    from acdc.patching import ablation_cache

    arch = get_arch(model)
    cache = ablation_cache(model, graph, data.corrupt if ablation != "zero" else None, ablation)  # type: ignore[arg-type]
    edges = graph.valid.nonzero().tolist()
    sample = edges[:: max(1, len(edges) // 12)][:12]
    with torch.no_grad():
        engine = Incremental(arch, graph, data.clean.to(arch.device), cache, data)
        engine.reset(graph.valid)
        t0 = time.perf_counter()
        for u, r in sample:
            trial = graph.valid.clone()
            trial[u, r] = False
            engine.propagate(trial.unsqueeze(0), {r})
        per = (time.perf_counter() - t0) / len(sample)
    per_search = per * graph.n_edges
    fit = int(opts.acdc_budget_s // max(per_search, 1e-9))
    thresholds = list(opts.acdc_thresholds)
    if fit < len(thresholds):
        if fit == 0:
            notes.append(f"acdc skipped: one search needs about {per_search:.0f} s ({graph.n_edges} edges x "
                         f"{per * 1e3:.0f} ms per candidate), over the budget of {opts.acdc_budget_s:.0f} s "
                         "(raise it with --acdc-budget)")
            return []
        step = len(thresholds) / fit
        thresholds = [thresholds[int(i * step)] for i in range(fit)]
        notes.append(f"acdc: {fit} of {len(opts.acdc_thresholds)} thresholds fit the budget of "
                     f"{opts.acdc_budget_s:.0f} s (~{per_search:.0f} s per search)")
    return thresholds


def _draw(c: Circuit, stem: Path, title: str, entry: dict[str, Any], prefix: str) -> None:
    from acdc.export.circuit import draw_circuit

    for path in draw_circuit(c, stem, title=title):
        entry[path.suffix.lstrip(".")] = prefix + path.name


def _mib(folder: Path, graph: Graph, rankings: dict[str, torch.Tensor], task: str, model: str, d_model: int,
         higher_is_better: bool, notes: list[str]) -> None:
    """Each ranking in MIB's submission layout (``mib/<method>/<task>_<model>/importances.json``). MIB's names are
    used where the task and model are MIB's (strict checks), else ours (e.g. ``ioi_toy-ioi``)."""
    import re

    from acdc.export.mib import MIB_MODELS, MIB_TASKS, export_mib

    name = re.sub(r"[^a-z0-9.-]+", "-", model.lower().removeprefix("zoo:")).strip("-")
    strict = name in MIB_MODELS and task in MIB_TASKS
    for method, scores in rankings.items():
        # edge-pruning's ranking is a keep probability (larger = keep); MIB's scores: larger = supports the task
        ours = -scores if method == "edge-pruning" else scores
        try:
            export_mib(folder / "mib", graph, scores=ours, method=re.sub(r"[^A-Za-z0-9._+-]+", "-", method),
                       task=task, model=name, d_model=d_model, strict=strict,
                       higher_is_better=higher_is_better or method == "edge-pruning")
        except InputError as e:
            notes.append(f"MIB export of {method} skipped: {e}")


def _top_edges(c: Circuit, k: int = 10) -> list[list[Any]]:
    if c.scores is None:
        return []
    names = c.edge_names()
    vals = [float(c.scores[c.graph.edge_index(n)]) for n in names]
    order = sorted(range(len(names)), key=lambda i: -abs(vals[i]))[:k]
    return [[names[i], vals[i]] for i in order]


def _data_info(d: Any) -> dict[str, Any]:
    return {**{k: v for k, v in d.info.items() if isinstance(v, (str, int, float, bool)) or v is None},
            "n": len(d), "tokens": int(d.clean.shape[1])}


def _now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def summary_table(summary: dict[str, Any]) -> list[str]:
    """The per-method table ``acdc run`` prints: chosen circuit, its test f with interval, CPR, CMD, edges needed."""
    by = {s["method"]: s for s in summary["pareto"]["summary"]}
    lines = [f"{'method':<14}{'edges':>6}  {'f (test) [95% CI]':<24}{'CPR':>7}{'CMD':>7}   edges for f>=0.8/0.9/0.99"
             f"{'time':>9}"]
    for c in summary["circuits"]:
        s = by.get(c["method"], {})
        ci = f"[{c['f_ci'][0]:.3f}, {c['f_ci'][1]:.3f}]" if c.get("f_ci") else ""
        need = "/".join("-" if v is None else str(v) for v in s.get("edges_for", {}).values())
        cpr = "n/a" if s.get("cpr") is None else f"{s['cpr']:.3f}"
        cmd = "n/a" if s.get("cmd") is None else f"{s['cmd']:.3f}"
        t = summary["timings"]["methods"].get(c["method"], 0.0)
        lines.append(f"{c['method']:<14}{c['edges']:>6}  {c['f']:.3f} {ci:<18}{cpr:>7}{cmd:>7}   {need:<24}{t:>8.1f}s")
    return lines


def sweep_scores_dirs(dirs: Sequence[str | Path], graph: Graph) -> dict[str, torch.Tensor]:
    """Rankings saved by ``acdc scores`` (folders with scores.safetensors), keyed by their method."""
    from acdc.attribution import EdgeScores

    out: dict[str, torch.Tensor] = {}
    for d in dirs:
        s = EdgeScores.load(d, graph)
        name = s.method if s.method not in out else f"{s.method} ({Path(d).name})"
        out[name] = s.scores
    return out
