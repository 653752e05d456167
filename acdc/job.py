"""The jobs behind the command line, as library functions: ``acdc run`` (:func:`run_job`), ``acdc scores``
(:func:`scores_job`) and ``acdc discover`` (:func:`discover_job`). They share one preparation stage (task, model,
graph, prompts) and the method registry (acdc.methods).

``run_job`` is four stages:
1. :func:`prepare`: load the model (training a zoo model on first use), build the task's train and test prompts;
2. :func:`run_methods`: every method on the train split (acdc.methods); a ranking gives a curve of greedy circuits
   at a grid of sizes, a circuit method the circuits it found; rankings saved by ``acdc scores`` add curves;
3. sweep every curve exactly on test (and on train, to choose) and :func:`choose` one circuit per method: the
   smallest on its curve whose faithfulness on the *train* split reaches ``level`` (else its most faithful one),
   reported with its test numbers; the headline is the smallest chosen circuit reaching ``level`` on test;
4. :func:`write_run`: ``pareto.json``/``.svg``/``.png``, ``circuits/<method>.json``/``.svg``/``.png``,
   ``circuit.svg``/``.png`` (the headline), ``mib/``, ``summary.json`` (:class:`acdc.summary.RunSummary`),
   ``run.yaml`` and ``report.html``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acdc.errors import BudgetSpent, InputError
from acdc.graph import Circuit, Graph
from acdc.io import atomic_write_text
from acdc.methods import Context, Method, Settings, find_circuit, get_method, method_names
from acdc.methods.discover import check_controls
from acdc.summary import ChosenCircuit, RunSummary
from acdc.types import TaskData


def _default_methods() -> tuple[str, ...]:
    return method_names(in_job=True)


@dataclass
class JobOptions:
    """What ``acdc run`` / ``acdc pareto`` do; every field has a command-line option."""

    methods: tuple[str, ...] = field(default_factory=_default_methods)
    n: int | None = None  # prompts per split (None: the task's default)
    seed: int | None = None  # prompts, masks, bootstrap (None: the task's default)
    ablation: str | None = None  # None: the task's default
    counterfactual: str | None = None
    dataset: str | None = None  # None: the task's choice for the model
    ig_steps: int = 5
    bootstrap: int = 1000
    per_decade: int = 6
    level: float = 0.9  # faithfulness a chosen circuit must reach
    hybrid_targets: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95, 0.99)
    acdc_thresholds: tuple[float, ...] = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
    budget_s: float | None = 300.0  # seconds each search method may take (acdc, edge pruning, hybrid); None: no cap
    ep_steps: int = 300
    ep_edges: int | None = None  # edge pruning's trained size (None: 5% of the edges, at least 20)
    batch: int = 16  # circuits per masked forward in sweeps
    draw: bool = True
    report: bool = True
    mib: bool = True
    circuits: bool = True  # choose, save and draw one circuit per method (False: curves only, for `acdc pareto`)
    score_dirs: tuple[str, ...] = ()  # rankings saved by `acdc scores` to sweep as extra curves
    distributed: bool = False  # share prompts among torchrun processes (methods that can, and the sweeps)
    device_map: str | dict[str, Any] | None = None
    max_memory: str | None = None  # the process's memory budget (None: what is available at start)
    time_limit_s: float | None = None  # the whole job's wall-clock time (None: only budget_s caps each search)
    command: str = ""

    def settings(self, ablation: str, seed: int) -> Settings:
        return Settings(ablation=ablation, seed=seed, ig_steps=self.ig_steps, train_steps=self.ep_steps,
                        edges=self.ep_edges, thresholds=self.acdc_thresholds, targets=self.hybrid_targets,
                        budget_s=self.budget_s)


# ---- stage 1: prepare --------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """A task on a model: what every job starts from."""

    task: Any
    spec: str
    model: Any
    graph: Graph
    ablation: str
    seed: int
    data: dict[str, TaskData]  # split -> prompts
    timings: dict[str, Any]


def prepare(task_name: str, model_spec: str | None, *, splits: Sequence[str] = ("train", "test"), n: int | None = None,
            seed: int | None = None, counterfactual: str | None = None, dataset: str | None = None,
            ablation: str | None = None, device_map: str | dict[str, Any] | None = None) -> Prepared:
    """Load ``task_name`` (a built-in name or a YAML path), its model (``model_spec`` or the task's default), the
    graph and the prompts of ``splits``; the task's defaults fill what is not given."""
    from acdc.models import load_model
    from acdc.task import get_task

    task = get_task(task_name)
    spec = model_spec or task.default_model
    t0 = time.perf_counter()
    model = load_model(spec, device_map=device_map)
    timings: dict[str, Any] = {"model_s": round(time.perf_counter() - t0, 2)}
    graph = Graph.from_model(model)
    t0 = time.perf_counter()
    seed = task.spec.defaults.seed if seed is None else seed
    data = {split: task.build(model, n, seed=seed, split=split, counterfactual=counterfactual, dataset=dataset)
            for split in splits}
    timings["data_s"] = round(time.perf_counter() - t0, 2)
    return Prepared(task, spec, model, graph, ablation or task.spec.defaults.ablation, seed, data, timings)


# ---- stage 2: methods --------------------------------------------------------------------------------------------
@dataclass
class MethodRuns:
    """The curves to sweep, the rankings for MIB files (name -> (sense, scores)), notes and per-method seconds."""

    curves: list[Any] = field(default_factory=list)
    rankings: dict[str, tuple[str, torch.Tensor]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    plan: TimePlan | None = None  # how a time limit was shared out (None without one)


# ---- a job's time limit ------------------------------------------------------------------------------------------
SWEEP_RATIO = 1.5  # one circuit's exact evaluation, in bare forwards of the same prompts (measured 1.16-1.5x)
TRAIN_PROBES = 12  # circuits per ranking curve the train sweep's search for the level evaluates (3 rounds of 4)
CIRCUITS_PER_SEARCH = 5  # circuits a circuit method (hybrid, acdc) adds to the sweeps, at most the targets' count
WRITE_S = 20.0  # drawing, report and files, kept back from the limit
SWEEP_SHARE = 0.5  # the sweeps may take at most this share of what is left; the searches get the rest
MIN_SEARCH_S = 20.0  # a search given less is skipped with a note
GRIDS = (6, 4, 3, 2)  # sizes per decade the test sweep may fall back to, finest first


@dataclass
class TimePlan:
    """How a job's time limit is spent once the rankings are done: the test sweep's grid (sizes per decade),
    each search's budget, and the estimates they come from."""

    left_s: float  # seconds left after the rankings, the writing kept back
    forward_s: float  # one bare forward of the train prompts (measured)
    per_decade: int
    sweep_s: float  # the sweeps' estimated seconds at that grid
    search_s: float  # each search's budget
    searches: int

    def describe(self) -> str:
        return (f"{self.left_s:.0f} s left after the rankings; sweeps on {self.per_decade} sizes per decade "
                f"(~{self.sweep_s:.0f} s estimated from a bare forward of {self.forward_s:.2f} s), "
                f"{self.search_s:.0f} s for each of {self.searches} searches")


def bare_forward_seconds(prep: Prepared) -> float:
    """Seconds of one plain forward (no gradients, no unembedding) of the train prompts, timed once."""
    from acdc.arch import get_arch
    from acdc.patching import plain_forward

    arch = get_arch(prep.model)
    clean = prep.data["train"].clean.to(arch.device)
    with torch.no_grad():
        t0 = time.perf_counter()
        plain_forward(arch, clean, logits=False)
        return time.perf_counter() - t0


def plan_time(prep: Prepared, methods: Sequence[Method], opts: JobOptions, deadline: float,
              forward_s: float | None = None) -> TimePlan:
    """Share the time to ``deadline`` between the sweeps and the searches of ``methods``: the finest grid of
    :data:`GRIDS` (not finer than ``opts.per_decade``) whose estimated sweeps take at most :data:`SWEEP_SHARE` of
    what is left (else the coarsest), and the rest split evenly among the searches, each capped by
    ``opts.budget_s``. Where that leaves a search under :data:`MIN_SEARCH_S` (so the searches will be skipped), or
    there are none, the sweeps may take all the time, for the rankings' curves only. A sweep circuit is estimated
    at :data:`SWEEP_RATIO` bare forwards of its prompts."""
    from acdc.pareto import size_grid

    fwd = bare_forward_seconds(prep) if forward_s is None else forward_s
    left = max(0.0, deadline - time.perf_counter() - (WRITE_S if opts.draw or opts.report else 0.0))
    n_train = len(prep.data["train"])
    n_test = len(prep.data["test"]) if "test" in prep.data else n_train
    per_circuit_test = SWEEP_RATIO * fwd * n_test / n_train
    per_circuit_train = SWEEP_RATIO * fwd
    searches = sum(1 for m in methods if is_search(m))

    def sweep_s(p: int, with_searches: bool) -> float:
        kept = [m for m in methods if with_searches or not is_search(m)]
        curves = sum(1 for m in kept if m.kind == "ranking")
        found = CIRCUITS_PER_SEARCH * sum(1 for m in kept if m.kind != "ranking")
        test = (curves * len(size_grid(prep.graph.n_edges, p)) + found) * per_circuit_test
        train = (curves * TRAIN_PROBES + found) * per_circuit_train if opts.circuits else 0.0
        return test + train

    grids = [p for p in GRIDS if p <= opts.per_decade] or [opts.per_decade]
    p = next((g for g in grids if sweep_s(g, True) <= (SWEEP_SHARE if searches else 1.0) * left), grids[-1])
    share = (left - sweep_s(p, True)) / max(searches, 1)
    share = max(0.0, share if opts.budget_s is None else min(opts.budget_s, share))
    if searches and share < MIN_SEARCH_S:  # the searches will be skipped: their curves need no sweep, and the
        # sweeps may have all the time
        p = next((g for g in grids if sweep_s(g, False) <= left), grids[-1])
        return TimePlan(left, fwd, p, sweep_s(p, False), share, searches)
    return TimePlan(left, fwd, p, sweep_s(p, True), share, searches)


def sweep_for_level(model: Any, graph: Graph, data: TaskData, curves: Sequence[Any], level: float, *,
                    ablation: str = "patch", batch: int = 16, fanout: int = 4, progress: bool = True,
                    log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """The part of a train sweep that :func:`choose` reads, evaluating only what finding each curve's smallest
    circuit reaching ``level`` takes: a search over each curve's circuits ordered by size, ``fanout`` points of
    every curve's open interval per round, all curves' points of a round in one exact evaluation. The interval
    narrows to between the largest evaluated circuit below that does not reach ``level`` and the smallest that
    does. It assumes f grows with size along a curve (mostly so; where it does not, the circuit found reaches the
    level, but a smaller one that also does may be missed). Points not evaluated have ``f`` None, so a curve
    that never reaches the level falls back to its most faithful evaluated circuit."""
    from tqdm.auto import tqdm

    from acdc.evaluate import evaluate_masks

    bar = tqdm(desc="train sweep (search for the level)", unit="circuit", disable=not progress, leave=False)
    orders = [sorted(range(len(sizes)), key=sizes.__getitem__) for sizes in
              ([c.n_edges for c in cv.circuits] for cv in curves)]
    f: list[dict[int, float]] = [{} for _ in curves]  # curve -> {circuit index: f}
    bounds = [[-1, len(o)] for o in orders]  # positions in the size order: known short of the level / reaching it
    rounds = 0
    while True:
        probes: list[tuple[int, int]] = []  # (curve, circuit index)
        for c, (order, (lo, hi)) in enumerate(zip(orders, bounds, strict=True)):
            inside = [q for q in range(lo + 1, hi) if order[q] not in f[c]]
            if not inside or (hi == len(order) and order[-1] in f[c] and f[c][order[-1]] < level):
                continue  # settled, or even its largest circuit falls short
            picks = {inside[round(j * (len(inside) - 1) / max(fanout - 1, 1))] for j in range(fanout)}
            if hi == len(order):
                picks.add(len(order) - 1)  # the largest first: does the curve reach the level at all?
            probes += [(c, order[q]) for q in sorted(picks) if order[q] not in f[c]]
        if not probes:
            break
        keys: dict[bytes, int] = {}
        masks: list[torch.Tensor] = []
        where: list[int] = []
        for c, i in probes:
            m = curves[c].circuits[i].mask
            key = np.packbits(m.numpy()).tobytes()
            if key not in keys:
                keys[key] = len(masks)
                masks.append(m)
            where.append(keys[key])
        ev = evaluate_masks(model, graph, data, masks, ablation=ablation, batch=batch, progress=bar.update)
        full, empty = float(ev.full.mean()), float(ev.empty.mean())
        values = ((ev.metric.mean(1) - empty) / (full - empty)).tolist() if full != empty else [math.nan] * len(masks)
        for (c, i), k in zip(probes, where, strict=True):
            f[c][i] = values[k]
        for c, order in enumerate(orders):
            lo, hi = bounds[c]
            reach = [q for q in range(lo + 1, hi) if order[q] in f[c] and f[c][order[q]] >= level]
            if reach:
                hi = min(reach)
            short = [q for q in range(lo + 1, hi) if order[q] in f[c] and not f[c][order[q]] >= level]
            if short:
                lo = max(short)
            bounds[c] = [lo, hi]
        rounds += 1
    bar.close()
    n_eval = sum(len(x) for x in f)
    log(f"train sweep: {n_eval} of {sum(len(o) for o in orders)} circuits evaluated to find the level {level:g} "
        f"({rounds} rounds)")
    out_curves = []
    for c, cv in enumerate(curves):
        pts = [{"edges": circ.n_edges, "f": None if i not in f[c] or math.isnan(f[c][i]) else f[c][i],
                "label": label} for i, (circ, label) in enumerate(zip(cv.circuits, cv.labels, strict=True))]
        out_curves.append({"method": cv.method, "kind": cv.kind, "points": pts})
    return {"curves": out_curves, "evaluated": n_eval}


def check_memory(prep: Prepared, methods: Sequence[str], sweep_batch: int = 16, max_memory: str | None = None
                 ) -> str | None:
    """Refuse (one line) a job whose estimated peak at some stage exceeds the budget, before it runs; the plan's
    summary line otherwise (None where the machine does not say how much memory is available)."""
    from acdc.memory import plan_job

    plan = plan_job(prep.model, prep.graph, prep.data, list(methods), ablation=prep.ablation,
                    sweep_batch=sweep_batch, max_memory=max_memory)
    if plan is None:
        return None
    plan.check()
    return plan.describe()


def check_methods(names: Sequence[str], *, distributed: bool = False) -> list[Method]:
    """The registered methods called ``names``, or a one-line error."""
    unknown = [m for m in names if m not in method_names()]
    if unknown:
        raise InputError(f"unknown method(s) {', '.join(unknown)} in --methods; choose from "
                         f"{', '.join(method_names())} (comma-separated)")
    methods = [get_method(m) for m in names]
    serial = [m.name for m in methods if distributed and not m.distributed]
    if serial:
        raise InputError(f"--distributed shares prompts for {', '.join(method_names(distributed=True))} and the "
                         f"sweeps only; run {', '.join(serial)} without it (or drop them with --methods)")
    return methods


def is_search(m: Method) -> bool:
    """A method whose time a budget caps (exact searches, learned masks): what a job's time limit shares out."""
    return "budget_s" in m.controls


def run_methods(prep: Prepared, methods: Sequence[Method], opts: JobOptions, *, progress: bool = True,
                log: Callable[[str], None] = lambda s: None, deadline: float | None = None) -> MethodRuns:
    """Every method on the train split; each ranking becomes a curve of greedy circuits over the size grid, each
    circuit method's circuits a curve of their own.

    With a ``deadline`` (a ``time.perf_counter()`` instant: the job's time limit), the methods without a budget run
    first (the attribution rankings: a few passes each), then :func:`plan_time` shares what is left between the
    sweeps (choosing their grid) and the searches (each one's budget), and ``runs.plan`` records it."""
    from acdc.pareto import curve_from_circuits, curve_from_scores, size_grid

    graph = prep.graph
    ctx = Context(prep.model, graph, prep.data["train"], progress=progress, distributed=opts.distributed)
    settings = opts.settings(prep.ablation, prep.seed)
    runs = MethodRuns()
    order = list(methods)
    if deadline is not None:
        order = [m for m in methods if not is_search(m)] + [m for m in methods if is_search(m)]
    per_decade = opts.per_decade
    outcomes: dict[str, Any] = {}
    for m in order + [None]:
        if deadline is not None and runs.plan is None and (m is None or is_search(m)):
            runs.plan = plan_time(prep, methods, opts, deadline)
            per_decade = runs.plan.per_decade
            log(f"time limit: {runs.plan.describe()}")
            runs.notes.append(f"time limit {opts.time_limit_s:.0f} s: {runs.plan.describe()}")
        if m is None:
            break
        s = settings
        if runs.plan is not None and is_search(m):
            if runs.plan.search_s < MIN_SEARCH_S:
                runs.notes.append(f"{m.name}: skipped: the time limit left {runs.plan.search_s:.0f} s for it "
                                  f"(less than {MIN_SEARCH_S:.0f} s); raise --time-limit")
                log(f"{m.name}: skipped (time limit)")
                continue
            s = dataclasses.replace(settings, budget_s=runs.plan.search_s)
        t0 = time.perf_counter()
        outcomes[m.name] = m.run(ctx, s)
        runs.notes += outcomes[m.name].notes
        runs.seconds[m.name] = round(time.perf_counter() - t0, 2)
        log(f"{m.name}: {runs.seconds[m.name]:.1f} s")
    sizes = size_grid(graph.n_edges, per_decade)
    for m in methods:  # curves in the order the methods were given
        out = outcomes.get(m.name)
        if out is None:
            continue
        if m.kind == "ranking":
            assert out.scores is not None  # a ranking always has scores
            runs.rankings[m.name] = (m.ranking_sense, out.scores.scores)
            runs.curves.append(curve_from_scores(graph, m.name, out.scores.scores, sizes, selector=m.selector))
            fell = [c.meta["fallback"] for c in runs.curves[-1].circuits if c.meta.get("fallback")]
            if fell:
                runs.notes.append(f"{m.name}: {len(fell)} of {len(sizes)} sizes not chosen by the ILP: {fell[-1]}")
        elif out.circuits:
            runs.curves.append(curve_from_circuits(m.name, out.circuits))
    for name, sc in sweep_scores_dirs(opts.score_dirs, graph).items():
        runs.rankings[name] = ("effect", sc)
        runs.curves.append(curve_from_scores(graph, name, sc, sizes))
    return runs


def sweep_scores_dirs(dirs: Sequence[str | Path], graph: Graph) -> dict[str, torch.Tensor]:
    """Rankings saved by ``acdc scores`` (folders with scores.safetensors), keyed by their method."""
    from acdc.attribution import EdgeScores

    out: dict[str, torch.Tensor] = {}
    for d in dirs:
        s = EdgeScores.load(d, graph)
        name = s.method if s.method not in out else f"{s.method} ({Path(d).name})"
        out[name] = s.scores
    return out


# ---- stage 3: choose ---------------------------------------------------------------------------------------------
@dataclass
class Choice:
    method: str
    circuit: Circuit
    point: dict[str, Any]  # its point on the test sweep
    how: str


def choose(curves: Sequence[Any], on_train: dict[str, Any], on_test: dict[str, Any], level: float, *, task: str,
           model: str) -> tuple[list[Choice], Choice | None]:
    """One circuit per curve (the smallest reaching ``level`` on train, else the most faithful) and the headline
    (the smallest chosen one reaching ``level`` on test, else the most faithful)."""
    chosen = []
    for cv, tr, te in zip(curves, on_train["curves"], on_test["curves"], strict=True):
        ok = [i for i, p in enumerate(tr["points"]) if p["f"] is not None and p["f"] >= level]
        if ok:
            i = min(ok, key=lambda j: (tr["points"][j]["edges"], -tr["points"][j]["f"]))
            how = (f"smallest circuit on the curve with f >= {level:g} on the train split "
                   f"({tr['points'][i]['label']})")
        else:
            i = max(range(len(tr["points"])), key=lambda j: tr["points"][j]["f"] or float("-inf"))
            how = (f"no circuit reached f >= {level:g} on the train split; the most faithful one "
                   f"({tr['points'][i]['label']})")
        c, p = cv.circuits[i], te["points"][i]
        c.meta.update({"method": cv.method, "task": task, "model": model, "label": p["label"],
                       "faithfulness_test": p["f"], "faithfulness_train": tr["points"][i]["f"]})
        chosen.append(Choice(cv.method, c, p, how))
    reaching = [x for x in chosen if x.point["f"] is not None and x.point["f"] >= level]
    head = None
    if reaching:
        head = min(reaching, key=lambda x: (x.circuit.n_edges, -x.point["f"]))
    elif chosen:
        head = max(chosen, key=lambda x: x.point["f"] if x.point["f"] is not None else float("-inf"))
    return chosen, head


# ---- the main job ------------------------------------------------------------------------------------------------
def run_job(task_name: str, model_spec: str | None, out: str | Path | None, opts: JobOptions | None = None, *,
            log: Callable[[str], None] = lambda s: None, progress: bool = True) -> RunSummary | None:
    """Run the main job for ``task_name`` (a built-in name or a YAML path) and return its summary (also written to
    ``<out>/summary.json``); ``None`` on torchrun processes other than rank 0. ``log`` receives one line per
    finished stage."""
    from acdc.pareto import sweep
    from acdc.runs import run_dir

    opts = opts or JobOptions()
    if not (opts.methods or opts.score_dirs):
        raise InputError(f"no method given; choose from {', '.join(method_names())}")
    methods = check_methods(opts.methods, distributed=opts.distributed)
    if opts.time_limit_s is not None and opts.distributed:
        raise InputError("--time-limit is not available with --distributed (each process would plan on its own); "
                         "use --budget")
    if not 0 < opts.level <= 1:
        raise InputError(f"level must be in (0, 1], got {opts.level}")
    main_rank, evaluator = True, None
    if opts.distributed:
        from acdc.distributed import evaluate_distributed, init_from_env

        rank, _ = init_from_env()
        main_rank, evaluator = rank == 0, evaluate_distributed
        progress = progress and main_rank
    t_start = time.perf_counter()
    prep = prepare(task_name, model_spec, n=opts.n, seed=opts.seed, counterfactual=opts.counterfactual,
                   dataset=opts.dataset, ablation=opts.ablation, device_map=opts.device_map)
    model, graph, train, test = prep.model, prep.graph, prep.data["train"], prep.data["test"]
    timings: dict[str, Any] = {"methods": {}, **prep.timings}
    log(f"model {prep.spec}: {model.cfg.n_layers} layers x {model.cfg.n_heads} heads, {graph.n_edges} edges "
        f"({timings['model_s']:.1f} s)")
    log(f"task {prep.task.name}: {len(train)} train / {len(test)} test prompts; metric {train.description}")
    plan = check_memory(prep, [m.name for m in methods], opts.batch, opts.max_memory)
    if plan:
        log(f"memory: {plan}")
    folder = run_dir(prep.task.name, "run", out) if main_rank else Path(".")

    deadline = None if opts.time_limit_s is None else t_start + opts.time_limit_s
    runs = run_methods(prep, methods, opts, progress=progress, log=log, deadline=deadline)
    timings["methods"] = runs.seconds
    if runs.plan is not None:
        timings["time_plan"] = dataclasses.asdict(runs.plan)

    t0 = time.perf_counter()
    info = {"task": prep.task.name, "model": prep.spec}
    kw: dict[str, Any] = {"ablation": prep.ablation, "batch": opts.batch, "progress": progress, "info": info,
                          "evaluator": evaluator}
    on_train = None
    if opts.circuits and deadline is not None:  # under a time limit choose() gets only what it needs
        on_train = sweep_for_level(model, graph, train, runs.curves, opts.level, ablation=prep.ablation,
                                   batch=opts.batch, progress=progress, log=log)
    elif opts.circuits:
        on_train = sweep(model, graph, train, runs.curves, n_boot=0, **kw)
    pareto = sweep(model, graph, test, runs.curves, n_boot=opts.bootstrap, seed=prep.seed, **kw)
    if not main_rank:  # every rank took part in the sweeps; rank 0 alone chooses, draws and writes
        return None
    timings["sweep_s"] = round(time.perf_counter() - t0, 2)
    n_points = sum(len(c["points"]) for c in pareto["curves"])
    log(f"sweep: {n_points} circuits on {len(train)} train + {len(test)} test prompts ({timings['sweep_s']:.1f} s)")
    _json(folder / "pareto.json", pareto)
    if pareto.get("baseline_warning"):
        runs.notes.insert(0, f"warning: {pareto['baseline_warning']}")
        log(f"warning: {pareto['baseline_warning']}")
    chosen, head = choose(runs.curves, on_train, pareto, opts.level, task=prep.task.name, model=prep.spec) \
        if on_train is not None else ([], None)
    return write_run(folder, prep, opts, runs, pareto, chosen, head, timings, t_start, log=log)


# ---- stage 4: write ----------------------------------------------------------------------------------------------
def write_run(folder: Path, prep: Prepared, opts: JobOptions, runs: MethodRuns, pareto: dict[str, Any],
              chosen: list[Choice], head: Choice | None, timings: dict[str, Any], t_start: float, *,
              log: Callable[[str], None] = lambda s: None) -> RunSummary:
    """Every file of a run folder; returns the summary written to ``summary.json``."""
    from acdc.runs import versions, write_run_yaml

    t0 = time.perf_counter()
    task, spec, graph, train, test = prep.task, prep.spec, prep.graph, prep.data["train"], prep.data["test"]
    (folder / "circuits").mkdir(exist_ok=True)
    circuits_doc = []
    drawn_notes: list[str] = []
    for ch in chosen:
        c, p = ch.circuit, ch.point
        stem = folder / "circuits" / ch.method
        c.save(stem.with_suffix(".json"))
        entry = ChosenCircuit(ch.method, c.n_edges, len(c.nodes()), p["f"], p["f_ci"], p["kl"], p["kl_ci"], ch.how,
                              p["label"], f"circuits/{ch.method}.json", _top_edges(c))
        if opts.draw:
            from acdc.export.circuit import draw_circuit, drawing_plan

            plan = drawing_plan(c)
            log(f"drawing {ch.method}'s circuit ({c.n_edges} edges" + (f", {plan.kind} summary)" if plan.summary
                                                                        else ")"))
            if plan.summary:
                drawn_notes.append(f"{ch.method}: the picture is a {plan.note}")
            title = f"{ch.method} circuit for {task.name} on {spec}: {c.n_edges} edges, f = {p['f']:.3f} (test)"
            for path in draw_circuit(c, stem, title=title):
                entry.images[path.suffix.lstrip(".")] = "circuits/" + path.name
        circuits_doc.append(entry)
    images: dict[str, str] = {}
    if opts.draw:
        from acdc.export.plot import plot_pareto

        plot_pareto(pareto, folder / "pareto")
        images.update({"pareto_svg": "pareto.svg", "pareto_png": "pareto.png"})
        for ext in ("svg", "png") if head else ():
            assert head is not None
            src = folder / "circuits" / f"{head.method}.{ext}"
            if src.exists():
                tmp = folder / f".circuit.{ext}.tmp"
                shutil.copyfile(src, tmp)
                tmp.replace(folder / f"circuit.{ext}")
                images[f"circuit_{ext}"] = f"circuit.{ext}"
    notes = list(runs.notes) + drawn_notes
    if opts.mib:
        _mib(folder, graph, runs.rankings, task.name, spec, int(prep.model.cfg.d_model), train.metric != "kl", notes)
    timings["export_s"] = round(time.perf_counter() - t0, 2)
    timings["total_s"] = round(time.perf_counter() - t_start, 2)

    summary = RunSummary(
        task=task.name, task_description=task.description, model=spec,
        graph={"writers": graph.n_src, "readers": graph.n_dst, "edges": graph.n_edges, "n_layers": graph.n_layers,
               "n_heads": graph.n_heads},
        data={"train": _data_info(train), "test": _data_info(test)}, metric=train.description,
        ablation=prep.ablation, seed=prep.seed, bootstrap=opts.bootstrap, level=opts.level,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), versions=versions(),
        command=opts.command, timings=timings, baseline=pareto["baseline"], pareto=pareto, circuits=circuits_doc,
        headline=head.method if head else None, images=images, notes=notes, folder=str(folder))
    _json(folder / "summary.json", summary.as_dict())
    write_run_yaml(folder, {"command": "run", "task": task.name, "task_file": str(task.path) if task.path else None,
                            "model": spec, "methods": list(opts.methods), "ablation": prep.ablation, "seed": prep.seed,
                            "n": opts.n, "bootstrap": opts.bootstrap, "level": opts.level,
                            "budget_s": opts.budget_s, "time_limit_s": opts.time_limit_s,
                            "train": dict(train.info), "test": dict(test.info), "timings": timings})
    if opts.report and opts.circuits:
        from acdc.export.report import write_report

        write_report(folder)
    return summary


def _json(path: Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, default=float))


def _mib(folder: Path, graph: Graph, rankings: dict[str, tuple[str, torch.Tensor]], task: str, model: str,
         d_model: int, higher_is_better: bool, notes: list[str]) -> None:
    """Each ranking in MIB's submission layout (``mib/<method>/<task>_<model>/importances.json``). MIB's names are
    used where the task and model are MIB's (strict checks), else ours (e.g. ``ioi_toy-ioi``)."""
    from acdc.export.mib import MIB_MODELS, MIB_TASKS, export_mib

    name = re.sub(r"[^a-z0-9.-]+", "-", model.lower().removeprefix("zoo:")).strip("-")
    strict = name in MIB_MODELS and task in MIB_TASKS
    for method, (sense, scores) in rankings.items():
        # a keep probability (larger = keep) is negated into MIB's sense (larger = supports the task)
        keep = sense == "keep"
        try:
            export_mib(folder / "mib", graph, scores=-scores if keep else scores,
                       method=re.sub(r"[^A-Za-z0-9._+-]+", "-", method), task=task, model=name, d_model=d_model,
                       strict=strict, higher_is_better=higher_is_better or keep)
        except InputError as e:
            notes.append(f"MIB export of {method} skipped: {e}")


def _top_edges(c: Circuit, k: int = 10) -> list[list[Any]]:
    if c.scores is None:
        return []
    names = c.edge_names()
    vals = [float(c.scores[c.graph.edge_index(n)]) for n in names]
    order = sorted(range(len(names)), key=lambda i: -abs(vals[i]))[:k]
    return [[names[i], vals[i]] for i in order]


def _data_info(d: TaskData) -> dict[str, Any]:
    return {**{k: v for k, v in d.info.items() if isinstance(v, (str, int, float, bool)) or v is None},
            "n": len(d), "tokens": int(d.clean.shape[1])}


# ---- acdc scores -------------------------------------------------------------------------------------------------
@dataclass
class ScoresResult:
    """What :func:`scores_job` computed and wrote."""

    scores: Any  # EdgeScores
    prep: Prepared
    split: str
    folder: Path | None  # None on torchrun processes other than rank 0
    seconds: float
    batch_size: int
    processes: int = 1
    memory_note: str | None = None


def scores_job(task_name: str, model_spec: str | None, out: str | Path | None, method: str, *, split: str = "train",
               n: int | None = None, seed: int | None = None, counterfactual: str | None = None,
               dataset: str | None = None, ablation: str | None = None, steps: int = 5, level: str = "edge",
               batch_size: int = 32, max_memory: str | None = None, distributed: bool = False,
               device_map: str | dict[str, Any] | None = None, progress: bool = True) -> ScoresResult:
    """Score every edge (or node) of the task's graph with an attribution method and write ``scores.safetensors``,
    ``top_edges.json`` and ``run.yaml``. ``max_memory`` (e.g. ``4GiB``) sets the batch size from the memory
    estimate; ``distributed`` splits the prompts over the processes of a torchrun launch (rank 0 writes)."""
    from acdc.attribution import attribute
    from acdc.runs import run_dir, write_run_yaml

    m = get_method(method)
    if not m.attribution:
        raise InputError(f"{method} is not an attribution method; choose one of "
                         f"{', '.join(method_names(attribution=True))} (or use `acdc discover --method {method}`)")
    prep = prepare(task_name, model_spec, splits=(split,), n=n, seed=seed, counterfactual=counterfactual,
                   dataset=dataset, ablation=ablation, device_map=device_map)
    data, graph, model = prep.data[split], prep.graph, prep.model
    rank, world = 0, 1
    if distributed:
        from acdc.arch import get_arch
        from acdc.distributed import init_from_env

        rank, world = init_from_env(device=get_arch(model).device)
    note = None
    if max_memory is not None:
        from acdc.memory import batch_for_budget

        batch_size, note = batch_for_budget(max_memory, model, data, method, n_writers=graph.n_src,
                                            ablation=prep.ablation, processes=world)
    t0 = time.perf_counter()
    if distributed:
        from acdc.distributed import attribute_distributed, shutdown

        try:
            result = attribute_distributed(model, graph, data, method, ablation=prep.ablation, steps=steps,
                                           level=level, batch_size=batch_size, progress=progress and rank == 0)
        finally:
            shutdown()
    else:
        result = attribute(model, graph, data, method, ablation=prep.ablation, steps=steps,  # type: ignore[arg-type]
                           level=level, batch_size=batch_size, progress=progress)  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    folder = None
    if rank == 0:
        folder = run_dir(prep.task.name, method, out)
        result.save(folder)
        write_run_yaml(folder, {
            "command": "scores", "task": prep.task.name, "task_file": str(prep.task.path) if prep.task.path else None,
            "model": prep.spec, "method": result.method, "level": level, "steps": steps, "ablation": prep.ablation,
            "data": dict(data.info), "batch_size": batch_size, "seconds": round(seconds, 3),
            **({"max_memory": max_memory} if max_memory else {}),
            "graph": {"writers": graph.n_src, "readers": graph.n_dst, "edges": graph.n_edges},
            **({"processes": world} if distributed else {}),
        })
    return ScoresResult(result, prep, split, folder, seconds, batch_size, world, note)


# ---- acdc discover -----------------------------------------------------------------------------------------------
@dataclass
class DiscoverResult:
    """What :func:`discover_job` found, its test evaluation and where it was written."""

    circuit: Circuit
    outcome: Any  # acdc.methods.Outcome
    evaluation: dict[str, float]
    prep: Prepared
    folder: Path | None  # None on the ranks other than 0 of a distributed search (rank 0 writes)
    seconds: float
    warning: str | None = None  # why f is not meaningful on the test split, if it is not
    processes: int = 1


def discover_job(task_name: str, model_spec: str | None, out: str | Path | None, method: str, *,
                 threshold: float | None = None, edges: int | None = None, target: float = 0.9,
                 selector: str = "greedy", refine: bool = True, n: int | None = None, seed: int | None = None,
                 counterfactual: str | None = None, dataset: str | None = None, ablation: str | None = None,
                 steps: int | None = None, device_map: str | dict[str, Any] | None = None,
                 distributed: bool = False, budget_s: float | None = None, max_memory: str | None = None,
                 progress: bool = True) -> DiscoverResult:
    """Find a circuit on the train split with any registered method, evaluate it exactly on the test split, and
    write ``circuit.json``, the method's scores (where it has them) and ``run.yaml``. An interrupted ``acdc``
    search resumes from ``<out>/search.json``. ``distributed``: under torchrun, the processes share the prompts
    (methods marked distributed, e.g. acdc); rank 0 writes."""
    from acdc.evaluate import baseline_warning, circuit_numbers, evaluate_masks
    from acdc.runs import run_dir, write_run_yaml

    m = check_controls(method, threshold=threshold, edges=edges)
    if distributed and not m.distributed:
        raise InputError(f"{method} cannot share its prompts among processes; these can: "
                         f"{', '.join(method_names(distributed=True))}")
    prep = prepare(task_name, model_spec, n=n, seed=seed, counterfactual=counterfactual, dataset=dataset,
                   ablation=ablation, device_map=device_map)
    train, test = prep.data["train"], prep.data["test"]
    check_memory(prep, [m.name], max_memory=max_memory)
    rank, world = 0, 1
    evaluator = evaluate_masks
    if distributed:
        from acdc.arch import get_arch
        from acdc.distributed import evaluate_distributed, init_from_env

        rank, world = init_from_env(device=get_arch(prep.model).device)
        evaluator = evaluate_distributed
    folder = run_dir(prep.task.name, method, out) if rank == 0 else None
    if world > 1:  # one folder for all: the ranks resume from the same checkpoint
        import torch.distributed as tdist

        shared = [str(folder) if folder is not None else None]
        tdist.broadcast_object_list(shared, src=0)
        folder = Path(str(shared[0]))
    assert folder is not None
    options: dict[str, Any] = {}
    if m.name == "acdc":
        options["checkpoint"] = folder / "search.json"
    if m.name == "hybrid":
        options["refine"] = refine
    t0 = time.perf_counter()
    try:
        circuit, outcome = find_circuit(prep.model, prep.graph, train, method, threshold=threshold, edges=edges,
                                        target=target, selector=selector, ablation=prep.ablation, seed=prep.seed,
                                        steps=steps, progress=progress and rank == 0, distributed=distributed,
                                        budget_s=budget_s, **options)
        seconds = time.perf_counter() - t0
        evaluation = evaluator(prep.model, prep.graph, test, [circuit.mask], ablation=prep.ablation)
    except BudgetSpent as e:
        if m.name == "acdc" and (folder / "search.json").is_file():
            raise BudgetSpent(f"{e}; its state is in {folder / 'search.json'}: the same command with --out {folder} "
                              "resumes it") from None
        if m.name == "acdc":
            raise BudgetSpent(f"{e}; no reader was finished, so there is nothing to resume from: raise --budget"
                              ) from None
        raise
    finally:
        if distributed:
            from acdc.distributed import shutdown

            shutdown()
    ev = circuit_numbers(evaluation)[0]
    warning = baseline_warning(evaluation, test.metric)
    if rank != 0:
        return DiscoverResult(circuit, outcome, ev, prep, None, seconds, warning, world)
    circuit.meta.update({"task": prep.task.name, "model": prep.spec, "faithfulness_test": ev["faithfulness"]})
    circuit.save(folder / "circuit.json")
    if outcome.scores is not None:
        outcome.scores.save(folder)
    write_run_yaml(folder, {
        "command": "discover", "task": prep.task.name, "task_file": str(prep.task.path) if prep.task.path else None,
        "model": prep.spec, "method": method, "threshold": threshold, "edges_requested": edges, "selector": selector,
        "seed": prep.seed, "target_faithfulness": target if m.name == "hybrid" else None, "ablation": prep.ablation,
        "train": dict(train.info), "test": dict(test.info), "seconds": round(seconds, 3),
        "cost": outcome.cost.as_dict(), "result": {"edges": circuit.n_edges, **{k: round(v, 6) for k, v in ev.items()}},
        **({"warning": warning} if warning else {}), **({"processes": world} if distributed else {}),
    })
    return DiscoverResult(circuit, outcome, ev, prep, folder, seconds, warning, world)
