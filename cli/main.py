"""The `acdc` command. Thin: parse options, call the library, report; errors become one line and an exit status
(2 = bad input, 1 = failure)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from acdc.errors import AcdcError

EXAMPLES_RUN = """
\b
Examples:
  acdc run induction
  acdc run induction --model zoo:toy-induction --n 128 --ablation mean
  acdc run ioi --split test --counterfactual s2-io-flip
  acdc run path/to/my_task.yaml
"""


class _Group(click.Group):
    """Turns the library's errors into one line on stderr and its exit status; tracebacks only with ACDC_DEBUG=1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AcdcError as e:
            if os.environ.get("ACDC_DEBUG"):
                raise
            msg = " ".join(str(e).split())
            click.echo(f"error: {msg}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="acdc")
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def main(verbose: bool) -> None:
    """acdc: find the circuits inside transformer language models.

    \b
    Examples:
      acdc run induction          # offline, on the zoo's toy induction model
      acdc scores ioi --method eap-ig-inputs
      acdc tasks list
      acdc zoo list
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


# ---- zoo --------------------------------------------------------------------------------------------------------
@main.group(cls=_Group)
def zoo() -> None:
    """The offline zoo of toy models trained by this project.

    \b
    Examples:
      acdc zoo list
      acdc zoo train toy-induction
    """


@zoo.command("list")
def zoo_list() -> None:
    """List the zoo's models, whether each is trained, and where it is cached.

    \b
    Example:
      acdc zoo list
    """
    from acdc.zoo import ZOO, is_trained, zoo_model_path

    for name, spec in ZOO.items():
        state = "trained" if is_trained(name) else "not trained (trains on first use)"
        click.echo(f"zoo:{name:<16} {state:<34} {zoo_model_path(name)}")
        click.echo(f"    {spec.description}")


@zoo.command("train")
@click.argument("name")
@click.option("--force", is_flag=True, help="Retrain even if a trained copy is cached.")
def zoo_train(name: str, force: bool) -> None:
    """Train zoo model NAME (deterministic from its seed) and cache it.

    \b
    Example:
      acdc zoo train toy-induction --force
    """
    from acdc.zoo import ensure_zoo_model

    name = name.removeprefix("zoo:")
    path = ensure_zoo_model(name, progress=True, force=force)
    click.echo(f"zoo:{name} ready at {path}")


# ---- tasks ------------------------------------------------------------------------------------------------------
@main.group(cls=_Group)
def tasks() -> None:
    """The task registry: built-in tasks (ioi, induction, refusal) and your own YAML task files.

    \b
    Examples:
      acdc tasks list
      acdc tasks show ioi
      acdc tasks validate my_task.yaml --model zoo:toy-ioi
    """


@tasks.command("list")
def tasks_list() -> None:
    """List the built-in tasks with their default models.

    \b
    Example:
      acdc tasks list
    """
    from acdc.task import get_task, list_tasks

    for name in list_tasks():
        t = get_task(name)
        first = t.description.split(". ")[0].rstrip(".")
        click.echo(f"{name:<12} {t.default_model:<20} {first}")


def _describe(t: Any) -> list[str]:
    from acdc.task_schema import PairsDataset, RepeatedTokensDataset, TemplatesDataset

    sp = t.spec
    out = [f"task        {t.name}" + (f"  ({t.path})" if t.path else ""), f"description {t.description}"]
    written = "".join(f"; written for {m.name}" + (f" -> dataset {m.dataset}" if m.dataset else "")
                      for m in sp.models.written_for)
    out.append(f"model       {sp.models.default} (default){written}")
    for name, ds in sp.all_datasets().items():
        mark = " (default)" if name == sp.default_dataset_name and len(sp.all_datasets()) > 1 else ""
        if isinstance(ds, TemplatesDataset):
            words = ", ".join(f"{k} ({len(v)})" for k, v in ds.words.items())
            what = f"{len(ds.templates)} templates; slots {', '.join(ds.slots)}; words {words}"
        elif isinstance(ds, RepeatedTokensDataset):
            rng = list(ds.token_range) if ds.token_range else "the vocabulary"
            what = (f"segments {ds.segment_length[0]}-{ds.segment_length[1]}, filler {ds.filler_length[0]}-"
                    f"{ds.filler_length[1]}, tokens from {rng}")
        else:
            assert isinstance(ds, PairsDataset)
            what = f"pairs from {ds.path}"
        chat = ", chat template" if getattr(ds, "chat_template", False) else ""
        out.append(f"dataset     {name}{mark}: {ds.kind}{chat}; {what}")
    for name, rule in sp.counterfactuals.items():
        mark = " (default)" if name == sp.default_counterfactual_name else ""
        out.append(f"counterfact {name}{mark}: {rule.description}")
    s = sp.splits
    out.append(f"metric      {sp.metric.name} at {sp.metric.positions} positions")
    out.append(f"defaults    n {sp.defaults.n}, seed {sp.defaults.seed}, ablation {sp.defaults.ablation}; splits "
               f"train {s.train:g} / validation {s.validation:g} / test {s.test:g}")
    return out


@tasks.command("show")
@click.argument("task")
@click.option("--model", "model_spec", default=None, help="Model to build the example for (default: the task's).")
@click.option("--n", "n_prompts", default=32, show_default=True, type=click.IntRange(1),
              help="Prompts for the baseline metric.")
@click.option("--dataset", default=None, help="Dataset of the task to use (default: the task's choice for the model).")
def tasks_show(task: str, model_spec: str | None, n_prompts: int, dataset: str | None) -> None:
    """Show TASK (a name or a YAML path): its fields, one rendered pair with its tokens, and the model's baseline
    metric on clean and counterfactual prompts.

    \b
    Examples:
      acdc tasks show ioi
      acdc tasks show induction --model zoo:toy-induction --n 64
    """
    import torch

    from acdc import load_model
    from acdc.metrics import task_metric
    from acdc.task import get_task

    t = get_task(task)
    for line in _describe(t):
        click.echo(line)
    spec = model_spec or t.default_model
    model = load_model(spec)
    data = t.build(model, n_prompts, dataset=dataset)
    tok = model.tokenizer
    L = int(data.lengths[0]) if data.lengths is not None else data.clean.shape[1]
    click.echo(f"\nexample pair ({spec}, split train):")
    if data.texts:
        click.echo(f"  clean          {data.texts[0][0]!r}")
        click.echo(f"  counterfactual {data.texts[0][1]!r}")
    for label, ids in (("clean", data.clean[0, :L]), ("counterfactual", data.corrupt[0, :L])):
        toks = tok.convert_ids_to_tokens(ids.tolist())
        shown = " ".join(f"{w}({i})" for w, i in zip(toks, ids.tolist(), strict=True))
        click.echo(f"  {label + ' tokens':<22}{shown}")
    pos = data.positions[0].nonzero().flatten().tolist()
    ans = data.answers[0, pos[0]].flatten().tolist()
    ans = [a for a in ans if a >= 0]
    line = f"  metric reads positions {pos[:8]}{'...' if len(pos) > 8 else ''}; answer {tok.convert_ids_to_tokens(ans)}"
    if data.wrong is not None:
        w = [x for x in data.wrong[0, pos[0]].flatten().tolist() if x >= 0]
        line += f", wrong {tok.convert_ids_to_tokens(w)}"
    click.echo(line)
    with torch.no_grad():
        lc, lk = model(data.clean), model(data.corrupt)
    mc, mk = task_metric(data, lc, lc), task_metric(data, lk, lc)
    click.echo(f"\nbaseline on {len(data)} prompts: metric ({data.description})")
    click.echo(f"  clean          {float(mc.mean()):+.4f} (std {float(mc.std()):.4f})")
    click.echo(f"  counterfactual {float(mk.mean()):+.4f} (std {float(mk.std()):.4f})")


@tasks.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--model", "model_spec", default=None,
              help="Also build every dataset for this model (checks answers are single tokens, lengths match).")
@click.option("--n", "n_prompts", default=16, show_default=True, type=click.IntRange(1),
              help="Pairs to build per dataset and split with --model.")
def tasks_validate(file: str, model_spec: str | None, n_prompts: int) -> None:
    """Check the task file FILE; with --model, also build it for that model.

    Exits 0 and prints a summary if the file is valid, else prints one line naming the field (and its line) and
    exits 2.

    \b
    Examples:
      acdc tasks validate my_task.yaml
      acdc tasks validate my_task.yaml --model zoo:toy-ioi
    """
    from acdc.task import get_task

    t = get_task(file if file.endswith((".yaml", ".yml")) or "/" in file else f"./{file}")
    for line in _describe(t):
        click.echo(line)
    if model_spec:
        from acdc import load_model

        model = load_model(model_spec)
        for dname, ds in t.spec.all_datasets().items():
            for split in ("train", "validation", "test"):
                n = None if ds.kind == "pairs" else n_prompts
                d = t.build(model, n, split=split, dataset=dname)
                click.echo(f"built {len(d)} pairs of dataset {dname}, split {split}, for {model_spec}: "
                           f"{d.clean.shape[1]} tokens max")
    click.echo(f"ok: {file} is a valid task file" + ("" if model_spec else " (add --model M to build it too)"))


def _task_setup(task: str, model_spec: str | None, ablation: str | None) -> tuple[Any, str, str, Any, Any]:
    """(task, model spec, ablation, model, graph) for a command on TASK: the task's defaults fill what is not given."""
    from acdc import Graph, load_model
    from acdc.task import get_task

    t = get_task(task)
    spec = model_spec or t.default_model
    model = load_model(spec)
    return t, spec, ablation or t.spec.defaults.ablation, model, Graph.from_model(model)


# ---- scores -----------------------------------------------------------------------------------------------------
SCORE_METHODS = ("eap", "eap-ig-inputs", "eap-ig", "eap-ig-activations", "clean-corrupted", "mask-ig", "exact")


@main.command("scores")
@click.argument("task")
@click.option("--method", type=click.Choice(SCORE_METHODS), default="eap-ig-inputs", show_default=True,
              help="Attribution method (eap-ig = eap-ig-inputs).")
@click.option("--steps", default=5, show_default=True, type=click.IntRange(1),
              help="Interpolation steps of the integrated-gradient methods.")
@click.option("--level", type=click.Choice(["edge", "node"]), default="edge", show_default=True,
              help="Score edges, or whole writers (heads, MLPs).")
@click.option("--model", "model_spec", default=None, help="Model spec [the task's default model].")
@click.option("--n", "n_prompts", default=None, type=click.IntRange(1), help="Number of prompts [task default].")
@click.option("--seed", default=None, type=int, help="Seed for the prompts [task default].")
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "validation", "test"]))
@click.option("--counterfactual", default=None, help="Counterfactual rule of the task [task default].")
@click.option("--ablation", type=click.Choice(["patch", "mean", "zero"]), default=None,
              help="What an ablated edge carries instead [task default].")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1),
              help="Prompts per pass; memory grows with it.")
@click.option("--top", "n_top", default=20, show_default=True, type=click.IntRange(1), help="Edges to print.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output folder [outputs/<task>/<run-id>/].")
def scores(task: str, method: str, steps: int, level: str, model_spec: str | None, n_prompts: int | None,
           seed: int | None, split: str, counterfactual: str | None, ablation: str | None, batch_size: int,
           n_top: int, out_dir: str | None) -> None:
    """Score every edge (or node) of TASK's graph by attribution patching and print the top ones.

    Writes scores.safetensors (the full score matrix), top_edges.json and run.yaml to the output folder. A score
    estimates the change of the task metric when the edge is ablated: negative means the edge supports the
    behaviour; edges are ranked by |score|.

    \b
    Examples:
      acdc scores ioi --method eap-ig-inputs
      acdc scores induction --method eap --n 128 --out outputs/induction/eap
      acdc scores ioi --method exact --level node
    """
    import time

    from acdc.attribution import attribute
    from acdc.runs import run_dir, write_run_yaml

    t, spec, ablation, model, graph = _task_setup(task, model_spec, ablation)
    data = t.build(model, n_prompts, seed=seed, split=split, counterfactual=counterfactual)
    t0 = time.perf_counter()
    result = attribute(model, graph, data, method, ablation=ablation, steps=steps, level=level,  # type: ignore[arg-type]
                       batch_size=batch_size, progress=True)
    seconds = time.perf_counter() - t0
    folder = run_dir(t.name, method, out_dir)
    result.save(folder)
    write_run_yaml(folder, {
        "command": "scores", "task": t.name, "task_file": str(t.path) if t.path else None, "model": spec,
        "method": result.method, "level": level, "steps": steps, "ablation": ablation, "data": dict(data.info),
        "batch_size": batch_size, "seconds": round(seconds, 3),
        "graph": {"writers": graph.n_src, "readers": graph.n_dst, "edges": graph.n_edges},
    })
    click.echo(f"{result.method} scores for {t.name} on {spec}: {len(data)} prompts ({split}), ablation {ablation}, "
               f"{graph.n_edges if level == 'edge' else graph.n_src} {level}s, {seconds:.1f} s")
    click.echo(f"metric: {data.description}; score = change of the metric when ablated (negative = supports it)")
    for i, (name, value) in enumerate(result.top(n_top), 1):
        click.echo(f"{i:>4}  {name:<28} {value:+.5f}")
    click.echo(f"wrote {folder}/scores.safetensors, top_edges.json, run.yaml")


# ---- discover ---------------------------------------------------------------------------------------------------
DISCOVER_METHODS = ("acdc", "edge-pruning", "eap", "eap-ig", "hybrid")


@main.command("discover")
@click.argument("task")
@click.option("--method", type=click.Choice(DISCOVER_METHODS), default="eap-ig", show_default=True,
              help="acdc: exact greedy search; edge-pruning: learned masks; eap / eap-ig: attribution scores + "
                   "selection.")
@click.option("--threshold", type=float, default=None,
              help="acdc: keep an edge when removing it raises KL by at least this [0.01]; eap/eap-ig: keep edges "
                   "with |score| >= this.")
@click.option("--edges", "n_edges", type=click.IntRange(1), default=None,
              help="Circuit size in edges (edge-pruning, eap, eap-ig) [5% of the edges, at least 20].")
@click.option("--target-faithfulness", "target", type=click.FloatRange(0, 1, min_open=True), default=0.9,
              show_default=True, help="hybrid: the faithfulness (train split) the circuit must reach.")
@click.option("--no-refine", is_flag=True, help="hybrid: skip the exact pruning of the selected circuit.")
@click.option("--selector", type=click.Choice(["greedy", "topn"]), default="greedy", show_default=True,
              help="How eap/eap-ig pick --edges edges from their scores.")
@click.option("--model", "model_spec", default=None, help="Model spec [the task's default model].")
@click.option("--n", "n_prompts", default=None, type=click.IntRange(1), help="Prompts per split [task default].")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for prompts and edge pruning.")
@click.option("--ablation", type=click.Choice(["patch", "mean", "zero"]), default=None,
              help="What an ablated edge carries instead [task default].")
@click.option("--steps", default=300, show_default=True, type=click.IntRange(1), help="edge-pruning training steps.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output folder [outputs/<task>/<run-id>/]; an interrupted acdc search resumes from it.")
def discover(task: str, method: str, threshold: float | None, n_edges: int | None, target: float, no_refine: bool,
             selector: str,
             model_spec: str | None, n_prompts: int | None, seed: int, ablation: str | None, steps: int,
             out_dir: str | None) -> None:
    """Find a circuit for TASK on the train split and report its faithfulness on the test split.

    Writes circuit.json, scores (where the method has them) and run.yaml to the output folder and prints the size,
    the faithfulness f = (M(C) - M(empty)) / (M(full) - M(empty)) and the cost.

    \b
    Examples:
      acdc discover ioi --method eap-ig --edges 20
      acdc discover ioi --method acdc --threshold 0.02 --out outputs/ioi/acdc
      acdc discover induction --method edge-pruning --edges 15 --seed 1
      acdc discover ioi --method hybrid --target-faithfulness 0.9
    """
    import time

    from acdc.attribution import EdgeScores
    from acdc.errors import InputError
    from acdc.runs import run_dir, write_run_yaml
    from acdc.search import discover as discover_fn
    from acdc.search import evaluate_circuits

    if method == "acdc" and n_edges is not None:
        raise InputError("acdc is controlled by --threshold, not --edges")
    if method in ("edge-pruning", "hybrid") and threshold is not None:
        raise InputError(f"{method} is not controlled by --threshold (use --edges or --target-faithfulness)")
    if method == "hybrid" and n_edges is not None:
        raise InputError("hybrid is controlled by --target-faithfulness, not --edges")
    t, spec, ablation, model, graph = _task_setup(task, model_spec, ablation)
    train = t.build(model, n_prompts, seed=seed, split="train")
    test = t.build(model, n_prompts, seed=seed, split="test")
    folder = run_dir(t.name, method, out_dir)
    t0 = time.perf_counter()
    size = n_edges
    options: dict[str, Any] = {}
    if method == "acdc":
        options["checkpoint"] = folder / "search.json"
    if method == "hybrid":
        options["refine"] = not no_refine
    circuit, cost = discover_fn(model, graph, train, method, threshold=threshold, edges=size, target=target,
                                selector=selector, ablation=ablation, seed=seed,
                                steps=steps if method == "edge-pruning" else None, **options)
    info = cost.as_dict()
    scores = None
    if circuit.scores is not None and method != "acdc":
        label = "edge-pruning (log alpha; larger = keep)" if method == "edge-pruning" else method
        scores = EdgeScores(graph, circuit.scores.double(), label)
    seconds = time.perf_counter() - t0
    ev = evaluate_circuits(model, graph, test, [circuit], ablation=ablation)[0]
    circuit.meta.update({"task": t.name, "model": spec, "faithfulness_test": ev["faithfulness"]})
    circuit.save(folder / "circuit.json")
    if scores is not None:
        scores.save(folder)
    write_run_yaml(folder, {
        "command": "discover", "task": t.name, "task_file": str(t.path) if t.path else None, "model": spec,
        "method": method, "threshold": threshold, "edges_requested": n_edges, "selector": selector, "seed": seed,
        "target_faithfulness": target if method == "hybrid" else None,
        "ablation": ablation, "train": dict(train.info), "test": dict(test.info), "seconds": round(seconds, 3),
        "cost": info, "result": {"edges": circuit.n_edges, **{k: round(v, 6) for k, v in ev.items()}},
    })
    click.echo(f"{method} circuit for {t.name} on {spec}: {circuit.n_edges} of {graph.n_edges} edges, "
               f"{len(circuit.nodes())} nodes")
    click.echo(f"test split ({len(test)} prompts): faithfulness {ev['faithfulness']:.3f}, metric {ev['metric']:.4f} "
               f"(full {ev['full']:.4f}, empty {ev['empty']:.4f}), KL {ev['kl']:.4f}")
    click.echo(f"cost: {seconds:.1f} s; " + ", ".join(f"{k} {v}" for k, v in info.items()))
    click.echo(f"wrote {folder}/circuit.json, run.yaml" + (", scores.safetensors, top_edges.json" if scores else ""))


# ---- run --------------------------------------------------------------------------------------------------------
@main.command("run", epilog=EXAMPLES_RUN)
@click.argument("task")
@click.option(
    "--model", "model_spec", default=None, help="Model spec: zoo:NAME, a local HF checkpoint dir, or a hub name."
)
@click.option("--n", "n_prompts", default=None, type=click.IntRange(1), help="Number of prompts [task default].")
@click.option("--seed", default=None, type=int, help="Seed for the prompts [task default].")
@click.option("--split", default="train", show_default=True, type=click.Choice(["train", "validation", "test"]))
@click.option("--counterfactual", default=None, help="Counterfactual rule of the task [task default].")
@click.option(
    "--ablation", type=click.Choice(["patch", "mean", "zero"]), default=None,
    help="What replaces edges outside the circuit [task default].",
)
def run(task: str, model_spec: str | None, n_prompts: int | None, seed: int | None, split: str,
        counterfactual: str | None, ablation: str | None) -> None:
    """Evaluate the full and the empty circuit of TASK (a name or a YAML path) with the exact masked forward.

    Prints the task metric of the clean and counterfactual runs and of the full and empty circuits, with their
    normalised faithfulness (1 = all behaviour recovered, 0 = none) and KL divergence from the clean model.
    """
    import torch

    from acdc import Circuit, ablation_cache, masked_forward
    from acdc.metrics import faithfulness, kl_divergence, task_metric

    t, spec, ablation, model, graph = _task_setup(task, model_spec, ablation)
    data = t.build(model, n_prompts, seed=seed, split=split, counterfactual=counterfactual)
    clean, corrupt, pos = data.clean, data.corrupt, data.positions
    with torch.no_grad():
        m_clean = model(clean)
        m_corrupt = model(corrupt)
        cache = ablation_cache(model, graph, corrupt if ablation != "zero" else None, ablation)  # type: ignore[arg-type]
        full, empty = Circuit.full(graph), Circuit.empty(graph)
        masks = torch.stack([full.mask, empty.mask]).float()
        logits = masked_forward(model, graph, clean, cache, masks)
    metric = task_metric(data, logits, m_clean).mean(-1)
    kl = kl_divergence(logits, m_clean, pos).mean(-1)
    base_clean = float(task_metric(data, m_clean, m_clean).mean())
    base_corrupt = float(task_metric(data, m_corrupt, m_clean).mean())
    f = faithfulness(metric, metric[1], metric[0])

    cfg = model.cfg
    click.echo(
        f"model {spec} · {cfg.n_layers} layers x {cfg.n_heads} heads · graph: {graph.n_src} writers, "
        f"{graph.n_dst} readers, {graph.n_edges} edges"
    )
    click.echo(
        f"task {t.name} · {clean.shape[0]} prompts x {clean.shape[1]} tokens ({split} split) · metric: "
        f"{data.description} · ablation: {ablation}"
    )
    click.echo(f"{'':28}{'metric':>10}{'faithfulness':>14}{'KL(clean||.)':>14}")
    click.echo(f"{'clean model':28}{base_clean:>10.4f}")
    click.echo(f"{'counterfactual model':28}{base_corrupt:>10.4f}")
    for i, (label, c) in enumerate((("full circuit", full), ("empty circuit", empty))):
        name = f"{label} ({c.n_edges} edges)"
        click.echo(f"{name:28}{float(metric[i]):>10.4f}{float(f[i]):>14.3f}{max(float(kl[i]), 0.0):>14.4f}")


def entry() -> None:  # pragma: no cover - console script shim
    main(prog_name="acdc")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
