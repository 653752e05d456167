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


# ---- run --------------------------------------------------------------------------------------------------------
TASKS_AVAILABLE = ("induction",)


@main.command("run", epilog=EXAMPLES_RUN)
@click.argument("task")
@click.option(
    "--model", "model_spec", default=None, help="Model spec: zoo:NAME, a local HF checkpoint dir, or a hub name."
)
@click.option("--n", "n_prompts", default=64, show_default=True, type=click.IntRange(1), help="Number of prompts.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for the prompts.")
@click.option(
    "--ablation", type=click.Choice(["patch", "mean", "zero"]), default="patch", show_default=True,
    help="What replaces edges outside the circuit.",
)
def run(task: str, model_spec: str | None, n_prompts: int, seed: int, ablation: str) -> None:
    """Evaluate the full and the empty circuit of TASK on its default model, with the exact masked forward.

    Prints the task metric of the clean and counterfactual runs and of the full and empty circuits, with their
    normalised faithfulness (1 = all behaviour recovered, 0 = none) and KL divergence from the clean model.
    """
    import torch

    from acdc import Circuit, Graph, ablation_cache, load_model, masked_forward
    from acdc.errors import InputError
    from acdc.metrics import answer_logprob, faithfulness, kl_divergence

    if task not in TASKS_AVAILABLE:
        raise InputError(f"unknown task '{task}'; available: {', '.join(TASKS_AVAILABLE)}")
    from acdc.tasks import build_induction

    spec = model_spec or "zoo:toy-induction"
    model = load_model(spec)
    graph = Graph.from_model(model)
    data = build_induction(model, n_prompts, seed=seed)
    clean, corrupt = data.clean, data.corrupt
    pos, ans = data.positions, data.answers
    with torch.no_grad():
        m_clean = model(clean)
        m_corrupt = model(corrupt)
        cache = ablation_cache(model, graph, corrupt if ablation != "zero" else None, ablation)  # type: ignore[arg-type]
        full, empty = Circuit.full(graph), Circuit.empty(graph)
        masks = torch.stack([full.mask, empty.mask]).float()
        logits = masked_forward(model, graph, clean, cache, masks)
    metric = answer_logprob(logits, pos, ans).mean(-1)
    kl = kl_divergence(logits, m_clean, pos).mean(-1)
    base_clean = float(answer_logprob(m_clean, pos, ans).mean())
    base_corrupt = float(answer_logprob(m_corrupt, pos, ans).mean())
    f = faithfulness(metric, metric[1], metric[0])

    cfg = model.cfg
    click.echo(
        f"model {spec} · {cfg.n_layers} layers x {cfg.n_heads} heads · graph: {graph.n_src} writers, "
        f"{graph.n_dst} readers, {graph.n_edges} edges"
    )
    click.echo(
        f"task {task} · {clean.shape[0]} prompts x {clean.shape[1]} tokens · metric: {data.description} · "
        f"ablation: {ablation}"
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
