"""The schema of task files (YAML): what each field means, and the cross-reference checks that pydantic's structural
validation cannot do.

A task file declares what to explain: the prompts (a dataset), how each prompt's counterfactual is made, the answer
tokens, the metric and the positions it reads, and defaults. See tasks/*.yaml for the built-in tasks and the
README's "write your own task" for a walk-through. Validation happens in two steps: the structure (pydantic, unknown
fields rejected) and then the cross-references (:func:`cross_reference_errors`: a slot naming a word list that exists,
a default naming a dataset or counterfactual that exists, a rule that fits its dataset's kind...). Turning YAML text
into a :class:`TaskSpec` with line-numbered errors is :mod:`acdc.task.parse`. Checks that need a tokenizer
(single-token answers, equal clean/counterfactual lengths) run when the task is built for a model, with the same
messages.
"""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from acdc.errors import InputError
from acdc.types import MetricName

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
SLOT_RE = re.compile(r"\{([^{}]*)\}")
IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
REF_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:#([1-9][0-9]*))?$")

Loc = tuple[str | int, ...]


class TaskFileError(InputError):
    """A task file (or a data file it names) is malformed; the message names the file, line and field."""


# ---- schema -----------------------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ModelEntry(_Strict):
    """A real model the task was written for, and what to use with it."""

    name: str = Field(min_length=1)
    dataset: str | None = None
    """Which of ``datasets`` to build for this model (default: ``default_dataset``)."""
    token_range: tuple[int, int] | None = None
    """For repeated_tokens datasets: the token id range [lo, hi) to sample from for this model."""
    n: int | None = Field(default=None, ge=1)
    """Prompts per split for this model when none is asked (default: ``defaults.n``): a real model's forward costs
    seconds on a CPU, so its default can be smaller than a toy model's."""


class Models(_Strict):
    default: str = Field(min_length=1)
    """The model commands use when none is given; a zoo model, so the task runs offline."""
    written_for: list[ModelEntry] = Field(default_factory=list)


class TemplatesDataset(_Strict):
    """Prompts rendered from templates with named slots ``{SLOT}`` filled from word lists."""

    kind: Literal["templates"]
    templates: list[str] = Field(min_length=1)
    slots: dict[str, str] = Field(min_length=1)
    """slot name -> the word list (a key of ``words``) its values are drawn from."""
    words: dict[str, list[str]] = Field(min_length=1)
    chat_template: bool = False
    """Render each prompt as a user message in the model's chat template (generation prompt appended)."""
    prepend_bos: bool | None = None
    """Prepend the tokenizer's BOS token. Default: not for prompts rendered in the chat template (it writes its own
    start), and for plain prompts only when the BOS token is a real beginning-of-sequence token, not a chat-template
    marker such as SmolLM2's ``<|im_start|>`` (:func:`acdc.task.prompts.prepends_bos`)."""
    on_length_mismatch: Literal["error", "drop"] = "error"
    """When no counterfactual of a drawn prompt has its token length for this model's tokenizer (a word that is
    3 tokens with no 3-token replacement): ``error`` stops with the example, ``drop`` draws another prompt and
    counts it in ``TaskData.info["dropped"]``."""


class RepeatedTokensDataset(_Strict):
    """``[BOS, filler, x1..xn, x1..xn, tail]`` with random tokens (induction)."""

    kind: Literal["repeated_tokens"]
    segment_length: tuple[int, int]
    """[min, max] length n of the repeated segment, drawn per prompt."""
    filler_length: tuple[int, int] = (0, 0)
    """[min, max] number of random tokens between BOS and the first occurrence, drawn per prompt."""
    length: int | None = None
    """Total tokens per prompt (default: just long enough for the longest filler and segment)."""
    token_range: tuple[int, int] | None = None
    """Token ids are drawn from [lo, hi); null: every non-special token of the tokenizer."""
    prepend_bos: bool | None = None
    """Start each sequence with the tokenizer's BOS token. Default: when it is a real beginning-of-sequence token, not
    a chat-template marker (the rule of plain text prompts); otherwise position 0 is one more random token."""


class PairsDataset(_Strict):
    """Explicit prompt pairs from a JSONL file: one object per line with ``clean`` and ``counterfactual`` strings,
    optionally ``answer`` / ``wrong`` words (overriding the task's; when every dataset of the task is a pairs dataset
    whose lines carry them, the task needs no ``answer`` / ``wrong`` of its own), and any other fields (ignored)."""

    kind: Literal["pairs"]
    path: str = Field(min_length=1)
    """The JSONL file, relative to the task file."""
    chat_template: bool = False
    prepend_bos: bool | None = None
    on_length_mismatch: Literal["error", "drop"] = "error"
    """What to do with a pair whose two sides tokenize to different lengths for the model at hand."""
    on_multi_token_answer: Literal["error", "drop"] = "error"
    """What to do with a pair whose own ``answer`` / ``wrong`` word is not a single known token of the model's
    tokenizer (e.g. `` bioweapon`` is 3 tokens for SmolLM2): stop with an error naming the line, or drop the pair
    (counted in ``TaskData.info["dropped"]`` and logged)."""


Dataset = Annotated[TemplatesDataset | RepeatedTokensDataset | PairsDataset, Field(discriminator="kind")]


class Counterfactual(_Strict):
    """How a prompt's counterfactual is made.

    templates datasets: ``resample`` slot references (``S`` = every mention of slot S, ``S#2`` = its second mention)
    get fresh values (from the slot's own list, or from the list a mapping names), different from every value in the
    clean prompt and of the same token length where the list allows; ``copy`` sets a reference to the clean value of
    another slot. repeated_tokens datasets: ``sequence`` is ``fresh`` (both occurrences new) or ``second_half``.
    pairs datasets take the counterfactual from their file.
    """

    description: str = ""
    resample: list[str] | dict[str, str] | None = None
    copy_: dict[str, str] | None = Field(default=None, alias="copy")
    sequence: Literal["fresh", "second_half"] | None = None


class AnswerSpec(_Strict):
    """The answer (or wrong answer) token(s) the metric reads: exactly one of ``slot`` (the value of a template slot),
    ``tokens`` (a fixed set of words; a set's log-probability is the log of its summed probabilities) or
    ``next_token: true`` (the next token of the sequence, for repeated_tokens). A task whose datasets are all
    ``pairs`` may give none of them (or leave the field out): each line then carries its own word, tokenized after
    ``prefix``."""

    slot: str | None = None
    tokens: list[str] | None = Field(default=None, min_length=1)
    next_token: bool = False
    prefix: str | None = None
    """Text put before each word when it is tokenized (default: a space for slots, nothing for tokens)."""

    @property
    def word_prefix(self) -> str:
        if self.prefix is not None:
            return self.prefix
        return " " if self.slot is not None else ""

    @property
    def from_lines(self) -> bool:
        """No slot, tokens or next_token: the answer comes from each line of a pairs dataset."""
        return self.slot is None and self.tokens is None and not self.next_token


METRICS_WITH_WRONG = ("logit_diff", "prob_diff")
"""The metrics that compare the answer with a wrong answer."""


class MetricSpec(_Strict):
    name: MetricName
    positions: Literal["last", "repeated"] = "last"
    """``last``: each prompt's last token; ``repeated``: the predictable positions of a repeated_tokens prompt."""


class Defaults(_Strict):
    n: int = Field(default=200, ge=1)
    seed: int = 0
    ablation: Literal["patch", "mean", "zero"] = "patch"


class Splits(_Strict):
    """Fractions of the prompt space in each split; a prompt's split is decided by a hash of its text, so splits never
    share a prompt, whatever the seed."""

    train: float = Field(default=0.6, gt=0, lt=1)
    validation: float = Field(default=0.2, gt=0, lt=1)
    test: float = Field(default=0.2, gt=0, lt=1)

    def split_of(self, task: str, key: bytes) -> str:
        """The split of the prompt whose text (or token ids) is ``key``, in task ``task``: a hash of both, so the
        assignment is the same for every seed and machine."""
        h = hashlib.blake2b(task.encode() + b"\0" + key, digest_size=8).digest()
        u = int.from_bytes(h, "big") / 2.0**64
        if u < self.train:
            return "train"
        return "validation" if u < self.train + self.validation else "test"


class TaskSpec(_Strict):
    name: str
    description: str = Field(min_length=1)
    models: Models
    dataset: Dataset | None = None
    datasets: dict[str, Dataset] | None = None
    default_dataset: str | None = None
    counterfactuals: dict[str, Counterfactual] = Field(default_factory=dict)
    default_counterfactual: str | None = None
    answer: AnswerSpec = Field(default_factory=AnswerSpec)
    """Left out (or only a ``prefix``): every line of the task's pairs datasets carries its own ``answer``."""
    wrong: AnswerSpec | None = None
    """Left out where the metric needs one: every line of the task's pairs datasets carries its own ``wrong``."""
    metric: MetricSpec
    defaults: Defaults = Field(default_factory=Defaults)
    splits: Splits = Field(default_factory=Splits)

    def all_datasets(self) -> dict[str, Any]:
        """Every dataset by name (a single ``dataset`` is called ``default``)."""
        if self.datasets is not None:
            return dict(self.datasets)
        return {"default": self.dataset}

    @property
    def default_dataset_name(self) -> str:
        return self.default_dataset or next(iter(self.all_datasets()))

    @property
    def default_counterfactual_name(self) -> str | None:
        if self.default_counterfactual:
            return self.default_counterfactual
        return next(iter(self.counterfactuals), None)


SPLITS = ("train", "validation", "test")


def dataset_loc(spec: TaskSpec, name: str) -> Loc:
    return ("datasets", name) if spec.datasets is not None else ("dataset",)


def template_parts(template: str) -> list[str | tuple[str, int]]:
    """A template split into literal text and ``(slot, occurrence)`` pieces (occurrences count from 1)."""
    parts: list[str | tuple[str, int]] = []
    seen: dict[str, int] = {}
    pos = 0
    for m in SLOT_RE.finditer(template):
        parts.append(template[pos : m.start()])
        slot = m.group(1)
        seen[slot] = seen.get(slot, 0) + 1
        parts.append((slot, seen[slot]))
        pos = m.end()
    parts.append(template[pos:])
    return parts


# ---- cross-reference checks -------------------------------------------------------------------------------------
def cross_reference_errors(spec: TaskSpec) -> list[tuple[Loc, str]]:
    """Every problem pydantic cannot see, as ``(field location, message)`` pairs, in document order."""
    errs: list[tuple[Loc, str]] = []
    if not NAME_RE.match(spec.name):
        errs.append((("name",), f"'{spec.name}' is not a valid task name (lower-case letters, digits, '-', '_', '.')"))
    if (spec.dataset is None) == (spec.datasets is None):
        errs.append(((), "give exactly one of 'dataset' (one dataset) or 'datasets' (several, by name)"))
        return errs
    if spec.datasets is not None and not spec.datasets:
        errs.append((("datasets",), "needs at least one dataset"))
        return errs
    datasets = spec.all_datasets()
    if spec.default_dataset is not None and spec.default_dataset not in datasets:
        errs.append((("default_dataset",), f"'{spec.default_dataset}' is not one of the datasets: "
                     f"{', '.join(datasets)}"))
    for i, m in enumerate(spec.models.written_for):
        if m.dataset is not None and m.dataset not in datasets:
            errs.append((("models", "written_for", i, "dataset"), f"'{m.dataset}' is not one of the datasets: "
                         f"{', '.join(datasets)}"))
    kinds = {ds.kind for ds in datasets.values()}

    for dname, ds in datasets.items():
        loc = dataset_loc(spec, dname)
        if isinstance(ds, TemplatesDataset):
            for slot, lst in ds.slots.items():
                if not IDENT_RE.match(slot):
                    errs.append(((*loc, "slots", slot), f"slot name '{slot}' must be an identifier (letters, digits, "
                                 "_)"))
                if lst not in ds.words:
                    errs.append(((*loc, "slots", slot), f"word list '{lst}' is not defined under words "
                                 f"(defined: {', '.join(ds.words)})"))
            for lst, words in ds.words.items():
                if not words:
                    errs.append(((*loc, "words", lst), "word list is empty"))
                for j, w in enumerate(words):
                    if not w.strip():
                        errs.append(((*loc, "words", lst, j), "empty word"))
            for t, template in enumerate(ds.templates):
                for part in template_parts(template):
                    if isinstance(part, tuple) and part[0] not in ds.slots:
                        errs.append(((*loc, "templates", t), f"template uses slot {{{part[0]}}}, which is not "
                                     f"declared under slots (declared: {', '.join(ds.slots)})"))
                if template.count("{") != template.count("}"):
                    errs.append(((*loc, "templates", t), "unbalanced braces in template"))
        elif isinstance(ds, RepeatedTokensDataset):
            for field in ("segment_length", "filler_length"):
                lo, hi = getattr(ds, field)
                low = 1 if field == "segment_length" else 0
                if lo < low or hi < lo:
                    errs.append(((*loc, field), f"must be [min, max] with {low} <= min <= max, got [{lo}, {hi}]"))
            need = 1 + ds.filler_length[1] + 2 * ds.segment_length[1]
            if ds.length is not None and ds.length < need:
                errs.append(((*loc, "length"), f"{ds.length} is too short: the longest prompt needs {need} tokens "
                             "(BOS + filler + two segments)"))
            if ds.token_range is not None and not 0 <= ds.token_range[0] < ds.token_range[1]:
                errs.append(((*loc, "token_range"), f"must be [lo, hi) with 0 <= lo < hi, got {list(ds.token_range)}"))
        for i, m in enumerate(spec.models.written_for):
            if m.token_range is not None and kinds != {"repeated_tokens"}:
                errs.append((("models", "written_for", i, "token_range"), "token_range only applies to "
                             "repeated_tokens datasets"))

    # counterfactual rules against every dataset they may be applied to
    if spec.default_counterfactual is not None and spec.default_counterfactual not in spec.counterfactuals:
        errs.append((("default_counterfactual",), f"'{spec.default_counterfactual}' is not one of the "
                     f"counterfactuals: {', '.join(spec.counterfactuals) or '(none defined)'}"))
    if kinds - {"pairs"} and not spec.counterfactuals:
        errs.append((("counterfactuals",), "templates and repeated_tokens datasets need at least one counterfactual "
                     "rule"))
    for cname, rule in spec.counterfactuals.items():
        cloc: Loc = ("counterfactuals", cname)
        template_rule = rule.resample is not None or rule.copy_ is not None
        if template_rule and rule.sequence is not None:
            errs.append((cloc, "give either resample/copy (templates) or sequence (repeated_tokens), not both"))
            continue
        if not template_rule and rule.sequence is None:
            errs.append((cloc, "give resample and/or copy (templates datasets) or sequence (repeated_tokens)"))
            continue
        for dname, ds in datasets.items():
            if isinstance(ds, PairsDataset):
                continue
            if template_rule and not isinstance(ds, TemplatesDataset):
                errs.append((cloc, f"resample/copy apply to templates datasets; dataset '{dname}' is {ds.kind}"))
                continue
            if rule.sequence is not None and not isinstance(ds, RepeatedTokensDataset):
                errs.append((cloc, f"sequence applies to repeated_tokens datasets; dataset '{dname}' is {ds.kind}"))
                continue
            if isinstance(ds, TemplatesDataset):
                errs += _check_refs(rule, ds, cloc)
    # answers and metric
    only_pairs = kinds == {"pairs"}
    for key in ("answer", "wrong"):
        ans: AnswerSpec | None = getattr(spec, key)
        if ans is None:
            continue
        given = [ans.slot is not None, ans.tokens is not None, ans.next_token]
        if sum(given) > 1 or (sum(given) == 0 and not only_pairs):
            errs.append(((key,), "give exactly one of slot, tokens or next_token: true (only a task whose datasets "
                         "are all pairs, with answers on their lines, may give none)"))
            continue
        for dname, ds in datasets.items():
            if ans.slot is not None and isinstance(ds, TemplatesDataset) and ans.slot not in ds.slots:
                errs.append(((key, "slot"), f"'{ans.slot}' is not a slot of dataset '{dname}' "
                             f"(slots: {', '.join(ds.slots)})"))
            if ans.slot is not None and not isinstance(ds, (TemplatesDataset, PairsDataset)):
                errs.append(((key, "slot"), f"slot answers need a templates dataset; '{dname}' is {ds.kind}"))
            if ans.next_token and not isinstance(ds, RepeatedTokensDataset):
                errs.append(((key, "next_token"), f"next_token answers need a repeated_tokens dataset; '{dname}' is "
                             f"{ds.kind}"))
    needs_wrong = spec.metric.name in METRICS_WITH_WRONG
    if needs_wrong and spec.wrong is None and not only_pairs:
        errs.append((("wrong",), f"metric {spec.metric.name} compares the answer with a wrong answer; declare 'wrong'"))
    if not needs_wrong and spec.wrong is not None:
        errs.append((("wrong",), f"metric {spec.metric.name} reads no wrong answer; remove 'wrong' or use logit_diff"))
    if spec.metric.positions == "repeated" and kinds != {"repeated_tokens"}:
        errs.append((("metric", "positions"), "positions 'repeated' need repeated_tokens datasets"))
    if abs(spec.splits.train + spec.splits.validation + spec.splits.test - 1.0) > 1e-6:
        errs.append((("splits",), "train + validation + test must add up to 1"))
    return errs


def _check_refs(rule: Counterfactual, ds: TemplatesDataset, cloc: Loc) -> list[tuple[Loc, str]]:
    errs: list[tuple[Loc, str]] = []
    counts = [{} for _ in ds.templates]  # type: list[dict[str, int]]
    for t, template in enumerate(ds.templates):
        for part in template_parts(template):
            if isinstance(part, tuple):
                counts[t][part[0]] = max(counts[t].get(part[0], 0), part[1])

    def check(ref: str, loc: Loc) -> None:
        m = REF_RE.match(ref)
        if m is None:
            errs.append((loc, f"'{ref}' is not a slot reference (SLOT or SLOT#k for its k-th mention)"))
            return
        slot, k = m.group(1), m.group(2)
        if slot not in ds.slots:
            errs.append((loc, f"'{slot}' is not a slot (slots: {', '.join(ds.slots)})"))
            return
        for t, c in enumerate(counts):
            if k is not None and c.get(slot, 0) < int(k):
                errs.append((loc, f"'{ref}': templates[{t}] mentions {slot} {c.get(slot, 0)} time(s)"))
                return

    if isinstance(rule.resample, dict):
        for ref, lst in rule.resample.items():
            check(ref, (*cloc, "resample", ref))
            if lst not in ds.words:
                errs.append(((*cloc, "resample", ref), f"word list '{lst}' is not defined under words"))
    elif rule.resample is not None:
        for i, ref in enumerate(rule.resample):
            check(ref, (*cloc, "resample", i))
    for ref, src in (rule.copy_ or {}).items():
        check(ref, (*cloc, "copy", ref))
        if src not in ds.slots:
            errs.append(((*cloc, "copy", ref), f"'{src}' is not a slot to copy from (slots: {', '.join(ds.slots)})"))
    return errs
