"""The ``toy-induction`` zoo model: its data generator, tokenizer and training recipe.

Data: ``[BOS, filler, x1..xL, x1..xL, tail]`` with segment length L in 5..15 and filler length in 0..9 drawn per
sequence (a fixed period would let a model copy from a fixed offset through positional attention and never form
induction heads). Tokens before the repeat are distinct. The loss is taken only on the positions whose next token is
a repeat.

Recipe (what worked, measured on 2 CPU cores): a 2-layer, 4-head, d_model 64 GPT-2 with its MLPs zeroed and frozen
(attention-only), untied embeddings, AdamW lr 2e-3 with 100 warm-up steps and cosine decay, batch 64, 1,000 steps
(~30 s). The first ``d_head`` = 16 residual dimensions are reserved for position: the position embeddings are fixed
sinusoids there, token embeddings are zero there, and head 0 of layer 0 has its query/key fixed to a rotation by one
position, i.e. it is *constructed* as a previous-token head (score 0.90 at initialisation, ~0.8 after training).
Its values and output, every other head, and layer 1 are trained; the induction head in layer 1 (score ~0.98) and
its K-composition with head 0 are learned. Accuracy on held-out repeated positions: 1.00.

What did not work (all reached >= 0.94 accuracy without the circuit): plain training with learned positions
(2,000-2,500 steps, lr 1e-3/2e-3: accuracy 0.99-1.00 with diffuse attention, best previous-token score 0.18 and
induction score 0.02 — a smeared, soft-matching solution); sinusoidal position initialisation at unit scale (the
model went token-blind, loss stuck at ln 64) or at token-embedding scale (same soft solution); one head per layer;
a 300-token vocabulary; tokens drawn with replacement; a previous-token curriculum (the head faded once the task
switched); planting head 0 without fixing it (the pattern drifted to 0.38) or planting it more strongly (the
induction head had not formed after 1,000 steps).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from acdc.task import RepeatedBatch, fill_repeated, sample_repeated
from acdc.zoo.train import TrainRecipe, fit, new_gpt2, save_model, torch_threads

BOS_TOKEN = "<bos>"
SPECIAL_TOKENS = (BOS_TOKEN, "<pad>", "<unk>")
BOS_ID = 0
N_CONTENT_TOKENS = 64
VOCAB_LO = len(SPECIAL_TOKENS)
VOCAB_HI = VOCAB_LO + N_CONTENT_TOKENS
VOCAB_SIZE = VOCAB_HI


def induction_batch(
    n: int,
    *,
    generator: torch.Generator,
    vocab_lo: int = VOCAB_LO,
    vocab_hi: int = VOCAB_HI,
    seg_len: tuple[int, int] = (5, 15),
    filler_len: tuple[int, int] = (0, 9),
    seq_len: int = 48,
    bos_id: int = BOS_ID,
) -> RepeatedBatch:
    """``n`` random induction sequences (:func:`~acdc.task.sample_repeated` over the toy vocabulary) with segment and
    filler lengths drawn uniformly from the given ranges."""
    return sample_repeated(n, generator=generator, seg_len=seg_len, filler_len=filler_len, vocab_lo=vocab_lo,
                           vocab_hi=vocab_hi, seq_len=seq_len, bos_id=bos_id)


def induction_counterfactual(
    batch: RepeatedBatch,
    *,
    generator: torch.Generator,
    vocab_lo: int = VOCAB_LO,
    vocab_hi: int = VOCAB_HI,
    bos_id: int = BOS_ID,
) -> RepeatedBatch:
    """Fresh random sequences with the same filler and segment lengths (both halves new)."""
    return fill_repeated(batch.filler_len, batch.seg_len, generator=generator, vocab_lo=vocab_lo, vocab_hi=vocab_hi,
                         seq_len=batch.tokens.shape[1], bos_id=bos_id)


def head_scores(attentions: tuple[torch.Tensor, ...], batch: RepeatedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Previous-token and induction scores ``[n_layers, n_heads]`` from attention patterns ``[n, H, S, S]``.

    previous-token: mean attention from p to p - 1 over all positions p >= 1. induction: mean attention, over
    positions p of the second occurrence, to p - L + 1 (the token after the earlier occurrence of tokens[p]).
    """
    att = torch.stack(attentions, dim=1)  # n, L, H, S, S
    n, n_layers, n_heads, s, _ = att.shape
    pos = torch.arange(s)
    prev = att[:, :, :, pos[1:], pos[:-1]].mean(dim=(0, 3))
    second = batch.second_start.unsqueeze(1)
    in_second = (pos >= second) & (pos < second + batch.seg_len.unsqueeze(1))
    target = (pos - batch.seg_len.unsqueeze(1) + 1).clamp(min=0)
    idx = target[:, None, None, :, None].expand(n, n_layers, n_heads, s, 1)
    to_target = att.gather(4, idx).squeeze(4)
    w = in_second[:, None, None, :].float()
    return prev, (to_target * w).sum(dim=(0, 3)) / w.sum(dim=(0, 3))


@torch.no_grad()
def evaluate(model: Any, batch: RepeatedBatch) -> dict[str, Any]:
    """Next-token accuracy on the repeated positions and the head scores of a Hugging Face GPT-2 (eager)."""
    out = model(batch.tokens, output_attentions=True)
    mask = batch.repeated[:, :-1]
    acc = (out.logits[:, :-1].argmax(-1) == batch.tokens[:, 1:])[mask].float().mean().item()
    prev, ind = head_scores(out.attentions, batch)
    return {"accuracy": acc, "prev_token_scores": prev, "induction_scores": ind}


@dataclass(frozen=True)
class Recipe(TrainRecipe):
    """toy-induction: an attention-only GPT-2 trained on repeated random segments."""

    n_ctx: int = 64  # the schedule is TrainRecipe's
    seq_len: int = 48
    """Tokens per training sequence: BOS, filler, a random segment and its repeat."""
    batch_size: int = 64
    planted_scale: float = 4.0  # query/key gain of the constructed previous-token head
    position_scale: float = 0.05


def build_model(recipe: Recipe, seed: int) -> Any:
    """The untrained model: attention-only GPT-2 with sinusoidal positions and head 0 of layer 0 constructed as a
    previous-token head (gradient hooks keep the constructed parts fixed)."""
    model = new_gpt2(recipe, seed, vocab_size=VOCAB_SIZE, d_mlp=4, bos_id=BOS_ID, pad_id=1, tie_embeddings=False)
    for block in model.transformer.h:  # attention-only: MLPs zeroed and frozen (the architecture stays GPT-2)
        for p in block.mlp.parameters():
            p.data.zero_()
            p.requires_grad_(False)
    d, dh = recipe.d_model, recipe.d_model // recipe.n_head
    tr: Any = model.transformer
    pos = torch.arange(recipe.n_ctx).float()
    pe = torch.zeros(recipe.n_ctx, d)
    W = tr.h[0].attn.c_attn.weight.data  # Conv1D: x @ W, columns q | k | v
    W[:, :dh] = 0
    W[:, d : d + dh] = 0
    tr.h[0].attn.c_attn.bias.data[: dh] = 0
    tr.h[0].attn.c_attn.bias.data[d : d + dh] = 0
    for j in range(dh // 2):
        om = 1.0 / (10000 ** (2 * j / d))
        pe[:, 2 * j], pe[:, 2 * j + 1] = torch.sin(om * pos), torch.cos(om * pos)
        c, s, g = math.cos(om), math.sin(om), recipe.planted_scale
        W[2 * j, d + 2 * j] = W[2 * j + 1, d + 2 * j + 1] = 1.0  # key: the (sin, cos) pair of position p'
        W[2 * j, 2 * j], W[2 * j + 1, 2 * j] = g * c, -g * s  # query: that pair rotated back one position
        W[2 * j + 1, 2 * j + 1], W[2 * j, 2 * j + 1] = g * c, g * s
    tr.wpe.weight.data = pe * recipe.position_scale
    tr.wpe.weight.requires_grad_(False)
    tr.wte.weight.data[:, :dh] = 0

    def keep(rows: slice | None, cols: list[slice]):
        def hook(g: torch.Tensor) -> torch.Tensor:
            g = g.clone()
            for c_ in cols:
                if rows is None:
                    g[c_] = 0
                else:
                    g[rows, c_] = 0
            return g

        return hook

    fixed = [slice(0, dh), slice(d, d + dh)]
    tr.h[0].attn.c_attn.weight.register_hook(keep(slice(None), fixed))
    tr.h[0].attn.c_attn.bias.register_hook(keep(None, fixed))
    tr.wte.weight.register_hook(keep(slice(None), [slice(0, dh)]))
    return model


def train_induction(out_dir: Path, *, seed: int, progress: bool = True, recipe: Recipe | None = None) -> dict:
    """Train ``toy-induction`` deterministically from ``seed`` and save it (HF checkpoint + tokenizer) to ``out_dir``.

    Returns the metadata also written to ``out_dir/zoo.json`` (written last: it marks a complete model).
    """
    from acdc.models import word_level_tokenizer

    recipe = recipe or Recipe()
    with torch_threads(recipe.threads):
        t0 = time.perf_counter()
        model = build_model(recipe, seed)
        gen = torch.Generator().manual_seed(seed + 1)

        def step_loss() -> torch.Tensor:
            b = induction_batch(recipe.batch_size, generator=gen, seq_len=recipe.seq_len)
            logits = model(b.tokens).logits[:, :-1]
            mask = b.repeated[:, :-1]
            return torch.nn.functional.cross_entropy(logits[mask], b.tokens[:, 1:][mask])

        fit(model, recipe, step_loss, name="toy-induction", progress=progress)
        held = induction_batch(512, generator=torch.Generator().manual_seed(seed + 10_000), seq_len=recipe.seq_len)
        ev = evaluate(model, held)
        seconds = time.perf_counter() - t0
    vocab = list(SPECIAL_TOKENS) + [f"t{i}" for i in range(N_CONTENT_TOKENS)]
    tok = word_level_tokenizer(vocab, bos=BOS_TOKEN, unk="<unk>", pad="<pad>")
    meta = {
        "name": "toy-induction",
        "seed": seed,
        "recipe": asdict(recipe),
        "seconds": round(seconds, 1),
        "heldout_accuracy": round(ev["accuracy"], 4),
        "prev_token_scores": [[round(float(x), 3) for x in r] for r in ev["prev_token_scores"]],
        "induction_scores": [[round(float(x), 3) for x in r] for r in ev["induction_scores"]],
    }
    return save_model(out_dir, model, tok, meta)
