"""The text side of building a task: a model's tokenizer with a dataset's BOS/chat conventions and its checks, the
prompt pairs the text builders (templates, pairs) produce, and their assembly into right-padded
:class:`~acdc.types.TaskData`.

BOS rule (:func:`prepends_bos`): a plain prompt starts with the tokenizer's BOS token only when that token is a real
beginning-of-sequence token, not a chat-template marker such as SmolLM2's ``<|im_start|>``; a prompt rendered in the
chat template gets what the template writes; a dataset's explicit ``prepend_bos: true/false`` always wins."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from acdc.errors import InputError
from acdc.task.schema import AnswerSpec, PairsDataset, TemplatesDataset
from acdc.types import MetricName, TaskData

if TYPE_CHECKING:
    from acdc.task.registry import Task


def model_tokenizer(model: Any) -> Any:
    """The model's tokenizer; tasks are built from text and need one."""
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise InputError("the model has no tokenizer; tasks are built from text and need one")
    return tok


def chat_template_text(tok: Any) -> str:
    """The source of the tokenizer's chat template(s) ("" when it has none)."""
    template = getattr(tok, "chat_template", None)
    if isinstance(template, dict):  # named templates ("default", "tool_use", ...)
        return "\n".join(str(t) for t in template.values())
    return template if isinstance(template, str) else ""


def bos_is_chat_marker(tok: Any) -> bool:
    """Whether the tokenizer's BOS token is a chat-template marker rather than a beginning-of-sequence token: its
    text appears literally in the chat template (SmolLM2's BOS is ChatML's ``<|im_start|>``), or the template renders
    it as the start of a turn (directly before the role ``user``). A template that writes ``{{ bos_token }}`` once at
    the start (Llama, Gemma, the zoo's chat models) keeps its BOS a real one."""
    bos = getattr(tok, "bos_token", None)
    template = chat_template_text(tok)
    if not isinstance(bos, str) or not bos or not template:
        return False
    if bos in template:
        return True
    try:
        rendered = str(tok.apply_chat_template([{"role": "user", "content": "hello"}], tokenize=False))
    except Exception:  # noqa: BLE001 - a template that cannot render one user turn tells us nothing more
        return False
    return re.search(re.escape(bos) + r"\s*user\b", rendered) is not None


def prepends_bos(tok: Any, prepend_bos: bool | None, *, chat: bool) -> bool:
    """Whether a prompt gets the tokenizer's BOS token prepended. An explicit ``prepend_bos`` of the dataset decides;
    otherwise a prompt rendered in the chat template gets none (the template writes its own start), and a plain
    prompt gets it only when it is a real beginning-of-sequence token, not a chat marker (:func:`bos_is_chat_marker`:
    a chat model reading a stray ``<|im_start|>`` before plain text does measurably worse)."""
    if prepend_bos is not None:
        return prepend_bos
    if chat or getattr(tok, "bos_token_id", None) is None:
        return False
    return not bos_is_chat_marker(tok)


def model_n_ctx(model: Any) -> int:
    """The model's context length (unbounded if its config does not say)."""
    return int(getattr(model.cfg, "n_ctx", 0) or 1 << 30)


@dataclass
class PromptTokenizer:
    """The tokenizer side of a model: encoding with the dataset's BOS/chat conventions, and checks."""

    tok: Any
    d_vocab: int
    n_ctx: int
    chat: bool
    bos: bool

    @classmethod
    def for_dataset(cls, model: Any, ds: TemplatesDataset | PairsDataset) -> PromptTokenizer:
        """The model's tokenizer with the dataset's chat-template and BOS conventions."""
        tok = model_tokenizer(model)
        bos = prepends_bos(tok, ds.prepend_bos, chat=ds.chat_template)
        return cls(tok, int(model.cfg.d_vocab), model_n_ctx(model), ds.chat_template, bos)

    def render(self, text: str) -> str:
        """``text`` as the model sees it: plain, or one user turn of its chat template with the generation prompt."""
        if not self.chat:
            return text
        if not getattr(self.tok, "chat_template", None):
            raise InputError("this task renders prompts with the model's chat template, but the model's tokenizer has "
                             "none; use a chat model (or a zoo chat model such as zoo:toy-refusal)")
        out = self.tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                           add_generation_prompt=True)
        return str(out)

    def encode(self, text: str) -> list[int]:
        """Token ids of the rendered ``text``, with BOS prepended when the dataset asks for it."""
        ids = list(self.tok(self.render(text), add_special_tokens=False)["input_ids"])
        bos = self.tok.bos_token_id
        if self.bos and bos is not None and (not ids or ids[0] != bos):
            ids = [int(bos), *ids]
        return ids

    def word_ids(self, word: str) -> list[int]:
        return list(self.tok(word, add_special_tokens=False)["input_ids"])

    def single(self, word: str, where: str) -> int:
        """The one token id of ``word``; InputError naming ``where`` if it is several tokens or unknown."""
        ids = self.word_ids(word)
        unk = self.tok.unk_token_id
        if len(ids) != 1:
            pieces = " + ".join(repr(t) for t in self.tok.convert_ids_to_tokens(ids))
            raise InputError(f"{where}: {word.strip()!r} is not a single token for this model's tokenizer "
                             f"({word!r} -> {pieces or 'nothing'}); answers must be single tokens")
        if unk is not None and ids[0] == unk and word.strip() != self.tok.unk_token:
            raise InputError(f"{where}: {word.strip()!r} is not in this model's vocabulary (it becomes "
                             f"{self.tok.unk_token}); answers must be known single tokens")
        if ids[0] >= self.d_vocab:
            raise InputError(f"{where}: {word.strip()!r} has token id {ids[0]} outside the model's vocabulary")
        return ids[0]

    @property
    def pad_id(self) -> int:
        for t in (self.tok.pad_token_id, self.tok.eos_token_id, self.tok.bos_token_id):
            if t is not None:
                return int(t)
        return 0


def fixed_answer_ids(task: Task, tk: PromptTokenizer, which: str) -> list[int] | None:
    """The token ids of the task's fixed ``answer`` / ``wrong`` words (``tokens:``), or None when they come from a slot
    or the sequence."""
    ans: AnswerSpec | None = getattr(task.spec, which)
    if ans is None or ans.tokens is None:
        return None
    return [tk.single(ans.word_prefix + w, task.where((which, "tokens", i))) for i, w in enumerate(ans.tokens)]


@dataclass
class PromptPair:
    """One clean prompt and its counterfactual as token ids, the answer (and wrong answer) ids, and the two texts."""

    clean: list[int]
    corrupt: list[int]
    answer: list[int]
    wrong: list[int] | None
    text: tuple[str, str]


def assemble(
    model: Any, pairs: list[PromptPair], *, metric: MetricName, description: str, info: dict[str, Any]
) -> TaskData:
    """Right-padded TaskData of ``pairs``; the metric reads each prompt's last real token."""
    tok = model_tokenizer(model)
    pad = PromptTokenizer(tok, 0, 0, False, False).pad_id
    n = len(pairs)
    width = max(len(p.clean) for p in pairs)
    clean = torch.full((n, width), pad, dtype=torch.long)
    corrupt = torch.full((n, width), pad, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.bool)
    a_width = max(len(p.answer) for p in pairs)
    answers = torch.full((n, width, a_width), -1, dtype=torch.long)
    wrong = None
    if pairs[0].wrong is not None:
        w_width = max(len(p.wrong or []) for p in pairs)
        wrong = torch.full((n, width, w_width), -1, dtype=torch.long)
    lengths = torch.tensor([len(p.clean) for p in pairs])
    for i, p in enumerate(pairs):
        L = len(p.clean)
        clean[i, :L] = torch.tensor(p.clean)
        corrupt[i, :L] = torch.tensor(p.corrupt)
        positions[i, L - 1] = True
        answers[i, :, : len(p.answer)] = torch.tensor(p.answer)
        if wrong is not None and p.wrong is not None:
            wrong[i, :, : len(p.wrong)] = torch.tensor(p.wrong)
    ans_t = answers[..., 0] if a_width == 1 else answers
    wrong_t = None if wrong is None else (wrong[..., 0] if wrong.shape[-1] == 1 else wrong)
    return TaskData(
        clean=clean, corrupt=corrupt, positions=positions, answers=ans_t, wrong=wrong_t,
        metric=metric, description=description,
        lengths=lengths, texts=[p.text for p in pairs], info=info,
    )
