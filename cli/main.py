"""The `acdc` command. Thin: parse options, call the library, report; errors become one line and an exit status
(2 = bad input, 1 = failure)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from acdc.errors import AcdcError


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
      acdc run induction          # the main job, offline, on the zoo's toy induction model
      acdc evaluate ioi           # full / empty circuit check
      acdc scores ioi --method eap-ig-inputs
      acdc discover ioi --method hybrid
      acdc tasks list
      acdc zoo list
      acdc explore outputs/ioi/<run-id>   # the run's circuits, live
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


# ---- zoo --------------------------------------------------------------------------------------------------------
@main.group(cls=_Group)
def zoo() -> None:
    """The offline zoo: toy models trained by this project and real models converted from packaged GGUF files.

    \b
    Examples:
      acdc zoo list
      acdc zoo train toy-induction
    """


@zoo.command("list")
def zoo_list() -> None:
    """List the zoo's models: toy models trained here and real pretrained ones converted from packaged files,
    whether each is ready, where it is cached, its size and licence.

    \b
    Example:
      acdc zoo list
    """
    from acdc.zoo import ZOO, is_trained, zoo_model_path

    for name, spec in ZOO.items():
        verb = "converts" if spec.trainer.startswith("acdc.zoo.gguf:") else "trains"
        state = "ready" if is_trained(name) else f"not ready ({verb} on first use)"
        click.echo(f"zoo:{name:<22} {spec.kind:<5} {state:<32} {zoo_model_path(name)}")
        click.echo(f"    {spec.description}")
        if spec.size:
            click.echo(f"    {spec.size}; licence {spec.licence}")


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
    from acdc.task import PairsDataset, RepeatedTokensDataset, TemplatesDataset

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
@click.option("--n", "n_prompts", default=None, type=click.IntRange(1),
              help="Pairs to build per dataset and split with --model [the task's default, as a run builds].")
def tasks_validate(file: str, model_spec: str | None, n_prompts: int | None) -> None:
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


def parse_device_map(value: str | None) -> str | dict[str, Any] | None:
    """``--device-map``: a Hugging Face directive (``auto``, ``balanced``, ...) or a JSON object module -> device."""
    import json

    from acdc.errors import InputError

    if value is None or not value.strip().startswith(("{", "[", '"')):
        return value
    try:
        placement = json.loads(value)
    except json.JSONDecodeError as e:
        raise InputError(f"--device-map is not valid JSON ({e.msg}); give auto, balanced or "
                         "'{\"transformer.h.0\": 0, ...}'") from None
    if not isinstance(placement, dict):
        raise InputError("--device-map must be a directive like auto or a JSON object of module -> device")
    return placement


# ---- options shared by the commands -------------------------------------------------------------------------------
def parse_duration(value: str | None) -> float | None:
    """Seconds from ``900``, ``900s``, ``15m``, ``1.5h``; None stays None. Anything else is a one-line error."""
    if value is None:
        return None
    text = value.strip().lower()
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(text[-1:], None)
    number = text[:-1] if scale is not None else text
    try:
        seconds = float(number) * (scale or 1.0)
    except ValueError:
        raise click.BadParameter(f"'{value}' is not a duration; write seconds (900) or 900s, 15m, 1.5h") from None
    if not seconds > 0:
        raise click.BadParameter(f"the time limit must be positive, got '{value}'")
    return seconds


def _options(*names: str, split: str = "test", n_help: str = "Number of prompts [task default].") -> Any:
    """The shared click options ``names`` (in that order), each defined once here."""
    table: dict[str, Any] = {
        "model": click.option("--model", "model_spec", default=None,
                              help="Model spec: zoo:NAME, a local HF checkpoint dir, or a hub name [the task's "
                                   "default]."),
        "n": click.option("--n", "n_prompts", default=None, type=click.IntRange(1), help=n_help),
        "seed": click.option("--seed", default=None, type=int,
                             help="Seed for the prompts, learned masks and the bootstrap [task default]."),
        "split": click.option("--split", default=split, show_default=True,
                              type=click.Choice(["train", "validation", "test"]), help="Split of the task's prompts."),
        "counterfactual": click.option("--counterfactual", default=None,
                                       help="Counterfactual rule of the task [task default]."),
        "dataset": click.option("--dataset", default=None,
                                help="Dataset of the task [the task's choice for the model]."),
        "ablation": click.option("--ablation", type=click.Choice(["patch", "mean", "zero"]), default=None,
                                 help="What an edge outside the circuit carries instead [task default]."),
        "out": click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
                            help="Output folder [outputs/<task>/<run-id>/]."),
        "device_map": click.option("--device-map", default=None, metavar="MAP",
                                   help="Hugging Face placement passed to the bridge: auto, balanced, or JSON "
                                        "{module: device} (acdc computes on one device: a map over several is "
                                        "refused)."),
        "bootstrap": click.option("--bootstrap", default=1000, show_default=True, type=click.IntRange(0),
                                  help="Bootstrap resamples for the 95% intervals (0: none)."),
        "max_memory": click.option("--max-memory", default=None, metavar="SIZE",
                                   help="Memory the process may use, e.g. 8GiB: every stage's estimated peak is "
                                        "checked against it before anything runs, and a job that would not fit is "
                                        "refused [90% of the memory available at start, plus the model]."),
    }

    def deco(f: Any) -> Any:
        for name in reversed(names):
            f = table[name](f)
        return f

    return deco


def _method_help() -> str:
    from acdc.methods import REGISTRY

    return "; ".join(f"{m.name}: {m.summary}" for m in REGISTRY.values())


# ---- methods ----------------------------------------------------------------------------------------------------
@main.command("methods")
def methods_list() -> None:
    """List the registered search methods: kind (ranking or circuits), whether `acdc run` runs it by default, and
    what it does.

    \b
    Example:
      acdc methods
    """
    from acdc.methods import REGISTRY

    for m in REGISTRY.values():
        flags = ", ".join(x for x, on in (("default in run", m.in_job), ("distributed", m.distributed),
                                          ("scores", m.attribution)) if on)
        click.echo(f"{m.name:<20} {m.kind:<9} {flags}")
        click.echo(f"    {m.summary}")


# ---- scores -----------------------------------------------------------------------------------------------------
def _attribution_methods() -> list[str]:
    from acdc.methods import method_names

    return list(method_names(attribution=True))


@main.command("scores")
@click.argument("task")
@click.option("--method", type=click.Choice(_attribution_methods()), default="eap-ig-inputs", show_default=True,
              help="Attribution method (eap-ig = eap-ig-inputs); `acdc methods` describes each.")
@click.option("--steps", default=5, show_default=True, type=click.IntRange(1),
              help="Interpolation steps of the integrated-gradient methods.")
@click.option("--level", type=click.Choice(["edge", "node"]), default="edge", show_default=True,
              help="Score edges, or whole writers (heads, MLPs).")
@_options("model", "n", "seed", "split", "counterfactual", "dataset", "ablation", split="train")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1),
              help="Prompts per pass; memory grows with it.")
@click.option("--top", "n_top", default=20, show_default=True, type=click.IntRange(1), help="Edges to print.")
@_options("device_map", "out")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Memory budget of the run (per process), e.g. 512MiB, 4GiB, 4G: sets --batch-size to the largest "
                   "batch whose estimated peak (weights, activations, logits) fits.")
@click.option("--distributed", is_flag=True,
              help="Split the prompts over the processes of a torchrun launch and reduce the scores with "
                   "torch.distributed (gloo on CPU, nccl on GPU); rank 0 writes and prints. "
                   "Put -- before 'scores' so that torchrun leaves options such as --n alone.")
def scores(task: str, method: str, steps: int, level: str, model_spec: str | None, n_prompts: int | None,
           seed: int | None, split: str, counterfactual: str | None, dataset: str | None, ablation: str | None,
           batch_size: int, n_top: int, device_map: str | None, out_dir: str | None, max_memory: str | None,
           distributed: bool) -> None:
    """Score every edge (or node) of TASK's graph by attribution patching and print the top ones.

    Writes scores.safetensors (the full score matrix), top_edges.json and run.yaml to the output folder. A score
    estimates the change of the task metric when the edge is ablated: negative means the edge supports the
    behaviour; edges are ranked by |score|.

    \b
    Examples:
      acdc scores ioi --method eap-ig-inputs
      acdc scores induction --method eap --n 128 --out outputs/induction/eap
      acdc scores ioi --method exact --level node
      acdc scores ioi --method eap --max-memory 4GiB
      torchrun --nproc-per-node 4 -m acdc.cli.main -- scores ioi --n 400 --distributed
    """
    from acdc.errors import InputError
    from acdc.job import scores_job

    ctx = click.get_current_context()
    if max_memory is not None and ctx.get_parameter_source("batch_size") == click.core.ParameterSource.COMMANDLINE:
        raise InputError("give --batch-size or --max-memory, not both")
    r = scores_job(task, model_spec, out_dir, method, split=split, n=n_prompts, seed=seed,
                   counterfactual=counterfactual, dataset=dataset, ablation=ablation, steps=steps, level=level,
                   batch_size=batch_size, max_memory=max_memory, distributed=distributed,
                   device_map=parse_device_map(device_map))
    if r.folder is None:  # a torchrun process other than rank 0
        return
    if r.memory_note:
        click.echo(r.memory_note)
    data, graph = r.prep.data[split], r.prep.graph
    click.echo(f"{r.scores.method} scores for {r.prep.task.name} on {r.prep.spec}: {len(data)} prompts ({split}), "
               f"ablation {r.prep.ablation}, {graph.n_edges if level == 'edge' else graph.n_src} {level}s, "
               f"{r.seconds:.1f} s" + (f", {r.processes} process{'es' if r.processes > 1 else ''}"
                                       if distributed else ""))
    click.echo(f"metric: {data.description}; score = change of the metric when ablated (negative = supports it)")
    for i, (name, value) in enumerate(r.scores.top(n_top), 1):
        click.echo(f"{i:>4}  {name:<28} {value:+.5f}")
    click.echo(f"wrote {r.folder}/scores.safetensors, top_edges.json, run.yaml")


# ---- discover ---------------------------------------------------------------------------------------------------
def _all_methods() -> list[str]:
    from acdc.methods import method_names

    return list(method_names())


@main.command("discover")
@click.argument("task")
@click.option("--method", type=click.Choice(_all_methods()), default="eap-ig", show_default=True,
              help="Search method; `acdc methods` describes each (rankings pick --edges edges from their scores).")
@click.option("--threshold", type=float, default=None,
              help="acdc: keep an edge when removing it raises KL by at least this [0.01]; rankings: keep edges "
                   "with |score| >= this.")
@click.option("--edges", "n_edges", type=click.IntRange(1), default=None,
              help="Circuit size in edges (edge-pruning and rankings) [5% of the edges, at least 20].")
@click.option("--target-faithfulness", "target", type=click.FloatRange(0, 1, min_open=True), default=0.9,
              show_default=True, help="hybrid: the faithfulness (train split) the circuit must reach.")
@click.option("--no-refine", is_flag=True, help="hybrid: skip the exact pruning of the selected circuit.")
@click.option("--selector", type=click.Choice(["greedy", "topn", "ilp"]), default="greedy", show_default=True,
              help="How rankings pick --edges edges from their scores (ilp: the connected circuit of exactly that "
                   "size with the largest total |score|).")
@_options("model", "n", "seed", "counterfactual", "dataset", "ablation", n_help="Prompts per split [task default].")
@click.option("--steps", default=None, type=click.IntRange(1),
              help="edge-pruning: training steps [300]; rankings and hybrid: integrated-gradient steps [5].")
@_options("device_map", "max_memory")
@click.option("--distributed", is_flag=True,
              help="Under torchrun: the processes share the prompts (acdc and the rankings); rank 0 writes and "
                   "prints. The circuit is the one a single process finds.")
@click.option("--budget", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds the search may take (acdc, edge-pruning, hybrid) [no limit]. acdc stops at a reader "
                   "and can be resumed with the same --out; edge pruning trains the steps that fit; the hybrid "
                   "keeps the best circuit found so far.")
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Output folder [outputs/<task>/<run-id>/]; an interrupted acdc search resumes from it.")
def discover(task: str, method: str, threshold: float | None, n_edges: int | None, target: float, no_refine: bool,
             selector: str, model_spec: str | None, n_prompts: int | None, seed: int | None,
             counterfactual: str | None, dataset: str | None, ablation: str | None, steps: int | None,
             device_map: str | None, max_memory: str | None, distributed: bool, budget: float | None,
             out_dir: str | None) -> None:
    """Find a circuit for TASK on the train split and report its faithfulness on the test split.

    Writes circuit.json, scores (where the method has them) and run.yaml to the output folder and prints the size,
    the faithfulness f = (M(C) - M(empty)) / (M(full) - M(empty)) and the cost.

    \b
    Examples:
      acdc discover ioi --method eap-ig --edges 20
      acdc discover ioi --method acdc --threshold 0.02 --out outputs/ioi/acdc
      acdc discover induction --method edge-pruning --edges 15 --seed 1
      acdc discover ioi --method hybrid --target-faithfulness 0.9 --steps 2
      acdc discover ioi --model zoo:smollm2-135m-instruct --method acdc --budget 3600 --out outputs/ioi/acdc
      torchrun --nproc-per-node 2 -m acdc.cli.main -- discover ioi --method acdc --distributed
    """
    from acdc.job import discover_job

    r = discover_job(task, model_spec, out_dir, method, threshold=threshold, edges=n_edges, target=target,
                     selector=selector, refine=not no_refine, n=n_prompts, seed=seed, counterfactual=counterfactual,
                     dataset=dataset, ablation=ablation, steps=steps, device_map=parse_device_map(device_map),
                     distributed=distributed, budget_s=budget, max_memory=max_memory)
    if r.folder is None:  # a rank other than 0: rank 0 reports
        return
    c, ev, graph, test = r.circuit, r.evaluation, r.prep.graph, r.prep.data["test"]
    click.echo(f"{method} circuit for {r.prep.task.name} on {r.prep.spec}: {c.n_edges} of {graph.n_edges} edges, "
               f"{len(c.nodes())} nodes")
    click.echo(f"test split ({len(test)} prompts): faithfulness {ev['faithfulness']:.3f}, metric {ev['metric']:.4f} "
               f"(full {ev['full']:.4f}, empty {ev['empty']:.4f}), KL {ev['kl']:.4f}")
    if r.warning:
        click.echo(f"warning: {r.warning}", err=True)
    click.echo(f"cost: {r.seconds:.1f} s; " + ", ".join(f"{k} {v}" for k, v in r.outcome.cost.as_dict().items()))
    if c.meta.get("final_distance") is not None:  # acdc: accepted increases add up; the total next to the threshold
        click.echo(f"threshold {c.meta['threshold']:g}: accumulated {c.meta['distance']} distance from the full model "
                   f"on the train split {c.meta['final_distance']:.4g} (search.json's distance)")
    click.echo(f"wrote {r.folder}/circuit.json, run.yaml"
               + (", scores.safetensors, top_edges.json" if r.outcome.scores is not None else ""))


# ---- run / pareto (the main job) --------------------------------------------------------------------------------
def _methods(value: str) -> tuple[str, ...]:
    from acdc.job import check_methods

    items = tuple(m.strip() for m in value.split(",") if m.strip())
    check_methods(items)
    return items


def _job_options(f: Any) -> Any:
    """Options shared by `acdc run` and `acdc pareto`."""
    from acdc.methods import method_names

    opts = [
        _options("model"),
        click.option("--methods", default=",".join(method_names(in_job=True)), show_default=True,
                     help="Comma-separated methods to run (`acdc methods` lists them all)."),
        _options("n", "seed", "ablation", "counterfactual", "dataset", "bootstrap",
                 n_help="Prompts per split (train for discovery, test for evaluation) [task default]."),
        click.option("--level", default=0.9, show_default=True, type=click.FloatRange(0, 1, min_open=True),
                     help="Faithfulness each method's chosen circuit must reach (on train)."),
        click.option("--budget", default=300.0, show_default=True, type=click.FloatRange(0),
                     help="Seconds each search method may take: ACDC runs the thresholds that fit, edge pruning the "
                          "steps that fit, the hybrid stops its bisection and refinement with the best circuit so "
                          "far; what was cut is said in a note."),
        click.option("--ep-steps", default=300, show_default=True, type=click.IntRange(1),
                     help="Edge-pruning training steps."),
        click.option("--time-limit", default=None, metavar="DURATION",
                     help="Wall-clock limit of the whole job (900, 15m, 1h): after the rankings, the time left is "
                          "shared between the sweeps (a coarser size grid if needed; on train only what choosing "
                          "a circuit needs) and the searches (each one's budget, at most --budget); the plan is "
                          "logged and kept in summary.json. Planned from a timed forward, not enforced mid-sweep."),
        _options("out", "device_map", "max_memory"),
        click.option("--distributed", is_flag=True,
                     help="Under torchrun: share the prompts of the methods that can (rankings) and of the sweeps "
                          "among the processes (torch.distributed); rank 0 writes and prints."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _run_job(task: str, kw: dict[str, Any], *, circuits: bool, score_dirs: tuple[str, ...] = ()) -> Any:
    from acdc.job import JobOptions, run_job

    methods = kw["methods"]
    opts = JobOptions(methods=_methods(methods) if methods else (), n=kw["n_prompts"], seed=kw["seed"],
                      ablation=kw["ablation"], counterfactual=kw["counterfactual"], dataset=kw["dataset"],
                      bootstrap=kw["bootstrap"], level=kw["level"], budget_s=kw["budget"],
                      time_limit_s=parse_duration(kw["time_limit"]), ep_steps=kw["ep_steps"], circuits=circuits,
                      report=circuits, score_dirs=score_dirs,
                      distributed=kw["distributed"], device_map=parse_device_map(kw["device_map"]),
                      max_memory=kw["max_memory"], command="acdc " + " ".join(sys.argv[1:]))
    quiet = kw["distributed"] and os.environ.get("RANK", "0") != "0"
    try:
        return run_job(task, kw["model_spec"], kw["out_dir"], opts,
                       log=(lambda line: None) if quiet else (lambda line: click.echo(line, err=True)))
    finally:
        if kw["distributed"]:
            from acdc.distributed import shutdown

            shutdown()


@main.command("run")
@click.argument("task")
@_job_options
def run(task: str, **kw: Any) -> None:
    """The main job: find circuits for TASK with several methods, sweep their sizes, draw them, write a report.

    On the task's default (zoo) model it builds train and test prompts, runs the methods on train (EAP, EAP-IG,
    edge pruning, hybrid, and ACDC when it fits --budget), evaluates every circuit size exactly on test with
    95% bootstrap intervals, and writes report.html, pareto.json/svg/png, circuit.svg/png (the headline circuit),
    circuits/<method>.json/svg/png, mib/ and summary.json. Prints the report's path and the summary table.

    \b
    Examples:
      acdc run induction
      acdc run ioi --methods eap,eap-ig,hybrid --n 100
      acdc run ioi --methods eap-ig,mask-ig,edge-pruning
      acdc run refusal --model zoo:toy-refusal --out outputs/refusal/mine
      acdc run path/to/my_task.yaml --bootstrap 200
      acdc run ioi --model zoo:smollm2-135m-instruct --time-limit 15m
    """
    s = _run_job(task, kw, circuits=True)
    if s is None:  # a torchrun process other than rank 0
        return
    from acdc.summary import summary_table

    click.echo(f"{s.task} on {s.model}: {s.graph['edges']} edges; f on {s.data['test']['n']} test prompts ({s.metric})")
    for line in summary_table(s):
        click.echo(line)
    if s.headline:
        click.echo(f"headline circuit: {s.headline} ({s.folder}/circuit.svg)")
    for note in s.notes:
        click.echo(f"note: {note}")
    click.echo(f"report: {s.folder}/report.html ({s.timings['total_s']:.0f} s)")


@main.command("pareto")
@click.argument("task")
@_job_options
@click.option("--scores", "score_dirs", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="Also sweep rankings saved by `acdc scores` (a run folder; repeatable).")
def pareto(task: str, score_dirs: tuple[str, ...], **kw: Any) -> None:
    """Curves of circuit size vs loss recovered for TASK, their pareto frontier and summaries (CPR, CMD, edges
    needed for f >= 0.8 / 0.9 / 0.99), evaluated exactly on the test split.

    Writes pareto.json, pareto.svg/png and mib/ to the output folder; `acdc run` does this and more.

    \b
    Examples:
      acdc pareto ioi --methods eap,eap-ig
      acdc pareto induction --methods eap-ig --scores outputs/induction/20261121-050000-exact
      torchrun --nproc-per-node 2 -m acdc.cli.main -- pareto ioi --methods eap,eap-ig --distributed
    """
    s = _run_job(task, kw, circuits=False, score_dirs=score_dirs)
    if s is None:  # a torchrun process other than rank 0
        return
    p = s.pareto
    click.echo(f"{s.task} on {s.model}: {p['n_edges_total']} edges, {p['n_prompts']} test prompts")
    click.echo(f"{'method':<22}{'CPR':>7}{'CMD':>7}   edges for f>=0.8/0.9/0.99")
    for row in p["summary"]:
        need = "/".join("-" if v is None else str(v) for v in row["edges_for"].values())
        cpr = "n/a" if row["cpr"] is None else f"{row['cpr']:.3f}"
        cmd = "n/a" if row["cmd"] is None else f"{row['cmd']:.3f}"
        click.echo(f"{row['method']:<22}{cpr:>7}{cmd:>7}   {need}")
    click.echo("frontier: " + ", ".join(f"{f['method']} {f['edges']} edges f={f['f']:.3f}" for f in p["frontier"]))
    click.echo(f"wrote {s.folder}/pareto.json, pareto.svg, pareto.png")


# ---- draw / evaluate / report ------------------------------------------------------------------------------------
@main.command("draw")
@click.argument("circuit_file", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for the images [the circuit file's folder].")
@click.option("--title", default=None, help="Title drawn above the graph [from the circuit's metadata].")
def draw(circuit_file: str, out_dir: str | None, title: str | None) -> None:
    """Draw the circuit in CIRCUIT_FILE (circuit.json from `acdc discover` or `acdc run`) as SVG and PNG.

    \b
    Examples:
      acdc draw outputs/ioi/20261121-050000-run/circuits/eap-ig.json
      acdc draw circuit.json --out figures --title "IOI circuit"
    """
    from pathlib import Path

    from acdc import Circuit
    from acdc.export.circuit import draw_circuit

    c = Circuit.load(circuit_file)
    folder = Path(out_dir) if out_dir else Path(circuit_file).parent
    folder.mkdir(parents=True, exist_ok=True)
    m = c.meta
    default = f"{m.get('method', 'circuit')}" + (f" for {m['task']}" if m.get("task") else "") + \
        (f" on {m['model']}" if m.get("model") else "") + f": {c.n_edges} edges"
    paths = draw_circuit(c, folder / Path(circuit_file).stem, title=title or default)
    click.echo("wrote " + ", ".join(str(p) for p in paths))


@main.command("evaluate")
@click.argument("task")
@click.argument("circuit_files", nargs=-1, type=click.Path(dir_okay=False))
@_options("model", "n", "seed", "split", "counterfactual", "dataset", "ablation", "bootstrap", "device_map",
          "max_memory")
def evaluate(task: str, circuit_files: tuple[str, ...], model_spec: str | None, n_prompts: int | None,
             seed: int | None, split: str, counterfactual: str | None, dataset: str | None, ablation: str | None,
             bootstrap: int, device_map: str | None, max_memory: str | None) -> None:
    """Exact faithfulness of circuits (circuit.json files) on TASK, with 95% bootstrap intervals.

    f = (M(C) - M(empty)) / (M(full) - M(empty)) on the chosen split (test by default), and KL(full || C). Without
    circuit files, it evaluates the full and the empty circuit next to the clean and counterfactual model: the check
    that patching is exact end to end (full = clean, empty = counterfactual).

    \b
    Examples:
      acdc evaluate ioi
      acdc evaluate ioi outputs/ioi/20261121-050000-run/circuits/eap-ig.json --n 400
      acdc evaluate induction a.json b.json --split validation --ablation mean
    """
    import torch

    from acdc import Circuit
    from acdc.evaluate import baseline_warning, evaluate_masks, faithfulness_ci
    from acdc.job import prepare
    from acdc.memory import plan_job
    from acdc.metrics import task_metric

    prep = prepare(task, model_spec, splits=(split,), n=n_prompts, seed=seed, counterfactual=counterfactual,
                   dataset=dataset, ablation=ablation, device_map=parse_device_map(device_map))
    model, graph, data = prep.model, prep.graph, prep.data[split]
    plan = plan_job(model, graph, prep.data, [], ablation=prep.ablation, max_memory=max_memory)
    if plan is not None:
        plan.check()
    circuits = [Circuit.load(f, graph) for f in circuit_files] or [Circuit.full(graph), Circuit.empty(graph)]
    labels = list(circuit_files) or ["full circuit", "empty circuit"]
    ev = evaluate_masks(model, graph, data, [c.mask for c in circuits], ablation=prep.ablation)
    st = faithfulness_ci(ev, n_boot=bootstrap, seed=prep.seed)
    warning = baseline_warning(ev, data.metric)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"task {prep.task.name} on {prep.spec} · {len(data)} prompts x {data.clean.shape[1]} tokens ({split} "
               f"split) · metric: {data.description} · ablation: {prep.ablation} · graph {graph.n_edges} edges")
    if not circuit_files:
        # the model's own forward, in chunks of prompts (whole-vocabulary logits of every position are large:
        # Gemma 3's 262,144 tokens x 200 prompts x 18 positions would be 3.8 GB a run)
        chunk = max(1, 2**26 // (data.clean.shape[1] * int(model.cfg.d_vocab)))
        clean_m, corrupt_m = [], []
        with torch.no_grad():
            for start in range(0, len(data), chunk):
                sub = data.rows(start, min(len(data), start + chunk))
                m_clean, m_corrupt = model(sub.clean), model(sub.corrupt)
                clean_m.append(task_metric(sub, m_clean, m_clean))
                corrupt_m.append(task_metric(sub, m_corrupt, m_clean))
        click.echo(f"{'clean model':<34}{float(torch.cat(clean_m).mean()):>10.4f}")
        click.echo(f"{'counterfactual model':<34}{float(torch.cat(corrupt_m).mean()):>10.4f}")
    click.echo(f"{'circuit':<34}{'edges':>6}{'metric':>10}{'faithfulness [95% CI]':>30}{'KL(full||C)':>13}")
    for i, (label, c) in enumerate(zip(labels, circuits, strict=True)):
        lo, hi = float(st["f_lo"][i]), float(st["f_hi"][i])
        ci = "" if lo != lo else f" [{lo:.3f}, {hi:.3f}]"
        name = label if len(label) <= 33 else "..." + label[-30:]
        click.echo(f"{name:<34}{c.n_edges:>6}{float(ev.metric[i].mean()):>10.4f}"
                   f"{float(st['f'][i]):>12.3f}{ci:<18}{float(st['kl'][i]):>13.4f}")


@main.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False))
def report(run_dir: str) -> None:
    """(Re)write RUN_DIR/report.html from the run's summary.json and images (self-contained: opens offline).

    \b
    Example:
      acdc report outputs/ioi/20261121-050000-run
    """
    from acdc.export.report import write_report

    click.echo(f"wrote {write_report(run_dir)}")


@main.command("explore")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but a loopback address lets other machines edit and save circuits.")
@click.option("--port", default=0, type=click.IntRange(0, 65535), show_default=True, help="Port (0: a free one).")
@click.option("--max-memory", default=None, metavar="SIZE",
              help="Memory budget of one evaluation, e.g. 4GiB; evaluations that need more are refused "
                   "[80% of the memory available at start].")
@click.option("--device-map", default=None, metavar="MAP", help="Hugging Face placement passed to the bridge.")
def explore(run_dir: str, host: str, port: int, max_memory: str | None, device_map: str | None) -> None:
    """Serve RUN_DIR's interactive circuit view with its model loaded: edit a circuit (edges, whole nodes) and see
    its exact f, KL and top predictions on the run's test prompts; save edits as circuits/edited/NAME.json.

    \b
    Examples:
      acdc explore outputs/ioi/20261121-050000-run
      acdc explore outputs/ioi/20261121-050000-run --port 8765 --max-memory 4GiB
    """
    from acdc.export.explore import Explorer, is_loopback, serve

    ex = Explorer.open(run_dir, max_memory=max_memory, device_map=parse_device_map(device_map))
    server = serve(ex, host, port)
    info = ex.info()
    click.echo(f"explore: {info['task']} on {info['model']}, {info['n_prompts']} test prompts; {info['memory']}")
    for note in info["notes"]:
        click.echo(f"note: {note}")
    if not is_loopback(host):
        click.echo(f"warning: listening on {host}, not a loopback address: anyone who can reach this machine can "
                   f"evaluate circuits and write files under {run_dir}/circuits/edited", err=True)
    shown = f"[{server.host}]" if ":" in server.host else server.host
    click.echo(f"serving http://{shown}:{server.port}/ (Ctrl-C stops)", err=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("stopped")
    finally:
        server.server_close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
