"""The task registry: ``get_task(name_or_path)`` and ``Task.build(model, ...)`` -> :class:`~acdc.types.TaskData`.

Built-in tasks are the YAML files shipped in ``tasks/`` (installed as the package data ``acdc.tasks``); any other
path to a YAML file works the same way. Building renders the prompts and their counterfactuals for one model's
tokenizer, checks what needs a tokenizer (single-token answers, equal clean/counterfactual lengths), and returns
token ids. Prompts of different lengths are right-padded and the metric reads each prompt's own last token: with
causal attention, padding after a position never changes it.

Splits: every prompt belongs to exactly one of train/validation/test, decided by a hash of the task name and the
prompt's text (or token ids), so a circuit found on one split is evaluated on prompts it has never seen, and the
assignment is the same for every seed and machine. Building draws prompts from the seeded generator and keeps those
whose hash falls in the requested split.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from acdc.errors import InputError
from acdc.task.identity import written_for_entries
from acdc.task.pairs import build_pairs
from acdc.task.parse import LineMap, fmt_loc, load_task_file, parse_task_text
from acdc.task.prompts import PromptPair, assemble
from acdc.task.repeated import build_repeated
from acdc.task.schema import (
    SPLITS,
    AnswerSpec,
    Counterfactual,
    Loc,
    PairsDataset,
    TaskSpec,
    TemplatesDataset,
    dataset_loc,
)
from acdc.task.templates import build_templates
from acdc.types import TaskData


def builtin_dir() -> Path:
    """The directory of the built-in task files."""
    return Path(str(importlib.resources.files("acdc.tasks")))


def list_tasks() -> list[str]:
    """Names of the built-in tasks."""
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def get_task(name_or_path: str | Path) -> Task:
    """A built-in task by name (``ioi``, ``induction``, ``refusal``) or a task file by path.

    Raises:
        InputError: unknown name; TaskFileError: the file is malformed (message names field and line).
    """
    s = str(name_or_path)
    p = Path(s).expanduser()
    builtin = builtin_dir() / f"{s}.yaml"
    if p.is_file() or (not builtin.is_file() and (p.suffix in (".yaml", ".yml") or "/" in s)):
        if not p.is_file():
            raise InputError(f"no task file at {p}; give a built-in task ({', '.join(list_tasks())}) or a YAML path")
        spec, lines = load_task_file(p)
        return Task(spec, lines, path=p.resolve())
    if not builtin.is_file():
        raise InputError(f"unknown task '{s}'; built-in tasks: {', '.join(list_tasks())} (or give a path to a YAML "
                         "task file)")
    spec, lines = load_task_file(builtin)
    return Task(spec, lines, path=builtin, builtin=True)


def task_from_text(text: str, base_dir: str | Path = ".") -> Task:
    """A task from YAML text (relative data paths resolve against ``base_dir``)."""
    spec, lines = parse_task_text(text)
    return Task(spec, lines, path=Path(base_dir).resolve() / "<text>")


# ---- the task ---------------------------------------------------------------------------------------------------
@dataclass
class Task:
    """A validated task definition. ``build`` turns it into token ids for one model."""

    spec: TaskSpec
    lines: LineMap = field(repr=False)
    path: Path | None = None
    builtin: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def description(self) -> str:
        return self.spec.description

    @property
    def default_model(self) -> str:
        return self.spec.models.default

    def where(self, loc: Loc) -> str:
        """``file:line: field`` for messages about a field of this task file."""
        line = self.lines.line(loc)
        name = self.path.name if self.path is not None else "<task>"
        return f"{name}:{line}: {fmt_loc(loc)}" if line else f"{name}: {fmt_loc(loc)}"

    def dataset_name_for(self, model_spec: str | None) -> str:
        """The dataset to build for the model loaded from ``model_spec``: the first ``written_for`` entry naming that
        model (any spelling of it, see :mod:`acdc.task.identity`) with a dataset, else ``default_dataset``."""
        for m in written_for_entries(self.spec.models, model_spec):
            if m.dataset:
                return m.dataset
        return self.spec.default_dataset_name

    def default_n(self, model_spec: str | None) -> int:
        """Prompts per split when none is asked: the first ``written_for`` entry naming the model with an ``n``,
        else ``defaults.n``."""
        for m in written_for_entries(self.spec.models, model_spec):
            if m.n is not None:
                return m.n
        return self.spec.defaults.n

    def build(
        self,
        model: Any,
        n: int | None = None,
        *,
        seed: int | None = None,
        split: str = "train",
        counterfactual: str | None = None,
        dataset: str | None = None,
    ) -> TaskData:
        """Render ``n`` prompt pairs of ``split`` for ``model``'s tokenizer, deterministically from ``seed``.

        Args:
            model: a loaded model (its ``tokenizer`` and ``cfg`` are used).
            n: number of pairs (default: the ``n`` of the task's ``written_for`` entry for this model, else the task's
                ``defaults.n``; for a file of pairs, at most what the split holds).
            seed: generator seed (default: the task's ``defaults.seed``).
            split: ``train``, ``validation`` or ``test``.
            counterfactual: a rule name from ``counterfactuals`` (default: ``default_counterfactual``).
            dataset: a dataset name (default: the one the task declares for this model, else ``default_dataset``).
        """
        if split not in SPLITS:
            raise InputError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        spec = self.spec
        datasets = spec.all_datasets()
        model_spec = getattr(model, "acdc_spec", None)
        dname = dataset or self.dataset_name_for(model_spec)
        if dname not in datasets:
            raise InputError(f"task {self.name} has no dataset '{dname}'; datasets: {', '.join(datasets)}")
        ds = datasets[dname]
        seed = spec.defaults.seed if seed is None else int(seed)
        explicit_n = n is not None
        n = self.default_n(model_spec) if n is None else int(n)
        if n < 1:
            raise InputError(f"need at least one prompt, got n={n}")
        rule: Counterfactual | None = None
        cname: str | None = None
        if isinstance(ds, PairsDataset):
            if counterfactual is not None:
                raise InputError(f"dataset '{dname}' of task {self.name} takes its counterfactuals from its file; "
                                 "drop the counterfactual option")
        else:
            cname = counterfactual or spec.default_counterfactual_name
            if cname not in spec.counterfactuals:
                raise InputError(f"task {self.name} has no counterfactual '{cname}'; counterfactuals: "
                                 f"{', '.join(spec.counterfactuals)}")
            rule = spec.counterfactuals[cname]
        gen = np.random.default_rng([seed, SPLITS.index(split)])
        loc = dataset_loc(spec, dname)
        pairs: list[PromptPair]
        extra: dict[str, Any] = {}
        if isinstance(ds, TemplatesDataset):
            assert rule is not None  # every templates dataset has a counterfactual rule (checked by the schema)
            pairs, n_dropped = build_templates(self, model, ds, rule, n, split, gen, loc)
            if n_dropped:
                extra["dropped"] = {"length_mismatch": n_dropped}
        elif isinstance(ds, PairsDataset):
            pairs, dropped = build_pairs(self, model, ds, n, explicit_n, split, gen, loc)
            extra["dropped"] = dropped
        else:
            assert rule is not None and rule.sequence is not None
            return build_repeated(self, model, ds, rule.sequence, n, split, seed, model_spec, cname or "", dname)
        return assemble(model, pairs, metric=spec.metric.name, description=self.metric_description(),
                        info={"task": self.name, "n": len(pairs), "split": split, "seed": seed, "dataset": dname,
                              "counterfactual": cname, **extra})

    def metric_description(self) -> str:
        """The metric in words, e.g. ``logit(IO) - logit(S) at the last position``."""
        m = self.spec.metric
        a, w = self.spec.answer, self.spec.wrong

        def show(x: AnswerSpec | None, own: str) -> str:
            if x is None or x.from_lines:
                return own  # each line of a pairs dataset carries its own
            if x.slot is not None:
                return x.slot
            if x.tokens is not None:
                return "{" + ", ".join(x.tokens) + "}"
            return "next token"

        where = "the last position" if m.positions == "last" else "the repeated positions"
        ans, wrong = show(a, "answer"), show(w, "wrong")
        if m.name == "logit_diff":
            if (a is not None and a.tokens and len(a.tokens) > 1) or (w is not None and w.tokens and len(w.tokens) > 1):
                return f"log p({ans}) - log p({wrong}) at {where}"  # a set's logit is its logsumexp
            return f"logit({ans}) - logit({wrong}) at {where}"
        if m.name == "prob_diff":
            return f"p({ans}) - p({wrong}) at {where}"
        if m.name == "logprob":
            return f"log p({ans}) at {where}"
        return f"KL from the clean model at {where}"
