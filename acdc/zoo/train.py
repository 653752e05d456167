"""What the zoo's trainers share: the recipe fields every toy model has, a seeded GPT-2, the one training loop
(AdamW, linear warm-up then cosine decay), logits at each prompt's last token, and saving a trained model with its
completion marker written last and atomically.

Each trainer (induction.py, ioi.py, refusal.py) keeps what is its own: the data, the model's special wiring, the
loss of one step and the evaluation it records in ``zoo.json``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from acdc.errors import ZooTrainingError
from acdc.io import atomic_write_text
from acdc.zoo.registry import MARKER

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainRecipe:
    """The fields every zoo recipe has: the GPT-2's shape, the optimisation schedule and the CPU threads (results are
    bit-identical for the same seed and thread count; another thread count gives slightly different weights)."""

    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    n_ctx: int = 32
    steps: int = 1000
    lr: float = 2e-3
    warmup: int = 100
    """Steps of linear warm-up before the cosine decay (to 10% of ``lr`` at the last step)."""
    weight_decay: float = 0.0
    threads: int = 2


def seeded_gpt2(cfg: Any, seed: int) -> Any:
    """``GPT2LMHeadModel(cfg)`` initialised from ``seed`` without touching the global RNG, with eager attention (the
    zoo trainers read attention patterns)."""
    from transformers import GPT2LMHeadModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model: Any = GPT2LMHeadModel(cfg)
    model.set_attn_implementation("eager")
    return model


def new_gpt2(
    recipe: TrainRecipe, seed: int, *, vocab_size: int, d_mlp: int, bos_id: int, pad_id: int, tie_embeddings: bool,
    activation: str = "gelu_new",
) -> Any:
    """A freshly initialised GPT-2 of ``recipe``'s shape without dropout (:func:`seeded_gpt2`)."""
    from transformers import GPT2Config

    cfg = GPT2Config(
        vocab_size=vocab_size, n_positions=recipe.n_ctx, n_embd=recipe.d_model, n_layer=recipe.n_layer,
        n_head=recipe.n_head, n_inner=d_mlp, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=bos_id, eos_token_id=bos_id, pad_token_id=pad_id, tie_word_embeddings=tie_embeddings,
        activation_function=activation,
    )
    return seeded_gpt2(cfg, seed)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads (the thread count is part of what makes training reproducible)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def warmup_cosine(step: int, *, warmup: int, steps: int) -> float:
    """The learning-rate factor at ``step``: linear warm-up over ``warmup`` steps times a cosine from 1 to 0.1."""
    warm = min(1.0, (step + 1) / warmup)
    return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))


def fit(model: Any, recipe: TrainRecipe, step_loss: Callable[[], torch.Tensor], *, name: str, progress: bool) -> None:
    """Train ``model`` for ``recipe.steps`` steps of AdamW on the loss ``step_loss()`` returns (it draws its own
    batch), with the :func:`warmup_cosine` schedule; parameters with ``requires_grad`` off stay fixed. Leaves the
    model in eval mode.

    Raises:
        ZooTrainingError: the loss is not finite (the recipe diverged).
    """
    from tqdm.auto import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: warmup_cosine(step, warmup=recipe.warmup, steps=recipe.steps)
    )
    model.train()
    for step in tqdm(range(recipe.steps), desc=f"training zoo:{name}", disable=not progress):
        loss = step_loss()
        value = loss.detach()
        if not bool(torch.isfinite(value)):
            raise ZooTrainingError(f"training zoo:{name} diverged: the loss is {value.item()} at step {step} of "
                                   f"{recipe.steps}; lower the recipe's lr (now {recipe.lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()


def last_logits(model: Any, ids: torch.Tensor, last: torch.Tensor, **kw: Any) -> tuple[torch.Tensor, Any]:
    """Logits ``[n, vocab]`` at each prompt's last real token ``last`` ``[n]``, and the model's whole output.

    Right padding is invisible to the last real token under causal attention; the attention mask passed here
    (positions after ``last`` masked) changes nothing there and only silences Hugging Face's padding warning. Works
    on a Hugging Face model and on a TransformerLens bridge (whose output is the logits tensor).
    """
    mask = (torch.arange(ids.shape[1]).unsqueeze(0) <= last.unsqueeze(1)).long()
    out = model(ids, attention_mask=mask, **kw)
    logits = out.logits if hasattr(out, "logits") else out
    return logits[torch.arange(ids.shape[0]), last], out


def save_model(out_dir: Path, model: Any, tokenizer: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """Save ``model`` and ``tokenizer`` as a Hugging Face checkpoint in ``out_dir``, then ``meta`` as
    ``zoo.json`` (:data:`MARKER`), last and atomically: a folder with a marker always holds a whole model.
    Returns ``meta``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    atomic_write_text(out_dir / MARKER, json.dumps(meta, indent=1))
    logger.info("trained %s in %.0f s: %s", meta.get("name"), meta.get("seconds", 0.0), meta)
    return meta
