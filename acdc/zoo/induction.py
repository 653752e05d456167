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

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

BOS_TOKEN = "<bos>"
SPECIAL_TOKENS = (BOS_TOKEN, "<pad>", "<unk>")
BOS_ID = 0
N_CONTENT_TOKENS = 64
VOCAB_LO = len(SPECIAL_TOKENS)
VOCAB_HI = VOCAB_LO + N_CONTENT_TOKENS
VOCAB_SIZE = VOCAB_HI


@dataclass(frozen=True)
class InductionBatch:
    """Induction sequences.

    tokens: ``[n, seq_len]``. repeated: ``[n, seq_len]`` bool, True at positions p inside the second occurrence
    whose next token ``tokens[:, p + 1]`` is also inside it (so it is predictable by copying). filler_len, seg_len:
    ``[n]``; the first occurrence starts at ``1 + filler_len``, the second at ``1 + filler_len + seg_len``.
    """

    tokens: torch.Tensor
    repeated: torch.Tensor
    filler_len: torch.Tensor
    seg_len: torch.Tensor

    @property
    def second_start(self) -> torch.Tensor:
        return 1 + self.filler_len + self.seg_len


def _fill(
    filler_len: torch.Tensor,
    seg_len: torch.Tensor,
    *,
    generator: torch.Generator,
    vocab_lo: int,
    vocab_hi: int,
    seq_len: int,
    bos_id: int,
) -> InductionBatch:
    n = filler_len.shape[0]
    if int((1 + filler_len + 2 * seg_len).max()) > seq_len:
        raise ValueError(f"seq_len {seq_len} is too short for filler + two segments")
    n_vocab = vocab_hi - vocab_lo
    tokens = torch.randint(vocab_lo, vocab_hi, (n, seq_len), generator=generator)
    distinct = torch.rand((n, n_vocab), generator=generator).argsort(dim=1) + vocab_lo
    pos = torch.arange(seq_len).unsqueeze(0)
    second = (1 + filler_len + seg_len).unsqueeze(1)
    end = second + seg_len.unsqueeze(1)
    width = min(seq_len - 1, n_vocab)
    head = torch.zeros_like(tokens)
    head[:, 1 : 1 + width] = distinct[:, :width]
    tokens = torch.where((pos >= 1) & (pos < second), head, tokens)
    tokens[:, 0] = bos_id
    src = torch.where((pos >= second) & (pos < end), pos - seg_len.unsqueeze(1), pos)
    tokens = tokens.gather(1, src)
    repeated = (pos >= second) & (pos < end - 1)
    return InductionBatch(tokens=tokens, repeated=repeated, filler_len=filler_len, seg_len=seg_len)


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
) -> InductionBatch:
    """``n`` random induction sequences with segment and filler lengths drawn uniformly from the given ranges."""
    f = torch.randint(filler_len[0], filler_len[1] + 1, (n,), generator=generator)
    s = torch.randint(seg_len[0], seg_len[1] + 1, (n,), generator=generator)
    return _fill(f, s, generator=generator, vocab_lo=vocab_lo, vocab_hi=vocab_hi, seq_len=seq_len, bos_id=bos_id)


def induction_counterfactual(
    batch: InductionBatch,
    *,
    generator: torch.Generator,
    vocab_lo: int = VOCAB_LO,
    vocab_hi: int = VOCAB_HI,
    bos_id: int = BOS_ID,
) -> InductionBatch:
    """Fresh random sequences with the same filler and segment lengths (both halves new)."""
    return _fill(batch.filler_len, batch.seg_len, generator=generator, vocab_lo=vocab_lo, vocab_hi=vocab_hi,
                 seq_len=batch.tokens.shape[1], bos_id=bos_id)


def head_scores(attentions: tuple[torch.Tensor, ...], batch: InductionBatch) -> tuple[torch.Tensor, torch.Tensor]:
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
def evaluate(model: Any, batch: InductionBatch) -> dict[str, Any]:
    """Next-token accuracy on the repeated positions and the head scores of a Hugging Face GPT-2 (eager)."""
    out = model(batch.tokens, output_attentions=True)
    mask = batch.repeated[:, :-1]
    acc = (out.logits[:, :-1].argmax(-1) == batch.tokens[:, 1:])[mask].float().mean().item()
    prev, ind = head_scores(out.attentions, batch)
    return {"accuracy": acc, "prev_token_scores": prev, "induction_scores": ind}


@dataclass(frozen=True)
class Recipe:
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    n_ctx: int = 64
    seq_len: int = 48
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    planted_scale: float = 4.0  # query/key gain of the constructed previous-token head
    position_scale: float = 0.05
    threads: int = 2


def _build(recipe: Recipe, seed: int) -> Any:
    from transformers import GPT2Config

    cfg = GPT2Config(
        vocab_size=VOCAB_SIZE, n_positions=recipe.n_ctx, n_embd=recipe.d_model, n_layer=recipe.n_layer,
        n_head=recipe.n_head, n_inner=4, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=BOS_ID, eos_token_id=BOS_ID, pad_token_id=1, tie_word_embeddings=False,
    )
    from acdc.zoo.registry import seeded_gpt2

    model = seeded_gpt2(cfg, seed)
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
    from tqdm.auto import tqdm

    from acdc.models import word_level_tokenizer

    recipe = recipe or Recipe()
    threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        t0 = time.perf_counter()
        model = _build(recipe, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)

        def lr_at(step: int) -> float:
            warm = min(1.0, (step + 1) / recipe.warmup)
            return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / recipe.steps)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        model.train()
        for _ in tqdm(range(recipe.steps), desc="training zoo:toy-induction", disable=not progress):
            b = induction_batch(recipe.batch_size, generator=gen, seq_len=recipe.seq_len)
            logits = model(b.tokens).logits[:, :-1]
            mask = b.repeated[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits[mask], b.tokens[:, 1:][mask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        held = induction_batch(512, generator=torch.Generator().manual_seed(seed + 10_000), seq_len=recipe.seq_len)
        ev = evaluate(model, held)
        seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    vocab = list(SPECIAL_TOKENS) + [f"t{i}" for i in range(N_CONTENT_TOKENS)]
    word_level_tokenizer(vocab, bos=BOS_TOKEN, unk="<unk>", pad="<pad>").save_pretrained(out_dir)
    meta = {
        "name": "toy-induction",
        "seed": seed,
        "recipe": asdict(recipe),
        "seconds": round(seconds, 1),
        "heldout_accuracy": round(ev["accuracy"], 4),
        "prev_token_scores": [[round(float(x), 3) for x in r] for r in ev["prev_token_scores"]],
        "induction_scores": [[round(float(x), 3) for x in r] for r in ev["induction_scores"]],
    }
    (out_dir / "zoo.json").write_text(json.dumps(meta, indent=1))
    logger.info("trained toy-induction in %.0f s: %s", seconds, meta)
    return meta
