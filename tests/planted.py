"""A hand-built model with a planted circuit (weights set directly), for testing that search methods find it.

2 layers x 2 heads, d_model 32, MLPs zero, attention uniform (query/key weights zero). Residual subspaces: dims 0-7
token one-hot (x SCALE), 8-15 written by a0.h0, 16-23 written by a1.h0, 24-27 written by the distractors a0.h1 and
a1.h1, dim 31 a large constant from the position embedding (it dominates the layer norms' scale, so subspaces that
nobody reads change the other readers' inputs only by ~1e-6).

Planted circuit: input -> a0.h0<v> (copies the token one-hot into 8-15), a0.h0 -> a1.h0<v> (copies 8-15 into
16-23), a1.h0 -> logits (the unembedding reads 16-23 only). The distractors read tokens but write into 24-27, which
nothing reads: their edges (and every q/k edge: attention is uniform) matter only through the layer norms' scale.
"""

from __future__ import annotations

import torch

PLANTED = ["input->a0.h0<v>", "a0.h0->a1.h0<v>", "a1.h0->logits"]
VOCAB, D, BIG, SCALE, GAIN = 8, 32, 1000.0, 1.0, 4.0


def planted_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    from acdc.models import bridge_from_hf

    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=D, vocab_size=VOCAB, n_positions=16, bos_token_id=0, eos_token_id=0,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False)
    hf = GPT2LMHeadModel(cfg).eval()
    sd = {k: torch.zeros_like(v) for k, v in hf.state_dict().items()}
    for k in sd:
        if k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            sd[k] = torch.ones_like(sd[k])
    sd["transformer.wte.weight"][:, :VOCAB] = torch.eye(VOCAB) * SCALE
    sd["transformer.wpe.weight"][:, D - 1] = BIG
    # layer norm divides by ~BIG / sqrt(D): undo it in the value weights
    g = GAIN * BIG / D**0.5
    dh = D // 2
    for layer, (src, dst) in enumerate(((0, 8), (8, 16))):
        W = sd[f"transformer.h.{layer}.attn.c_attn.weight"]  # [D, 3D]: q | k | v, heads in d_head chunks
        P = sd[f"transformer.h.{layer}.attn.c_proj.weight"]  # [D, D]: concat(z) -> residual
        for i in range(8):
            W[src + i, 2 * D + i] = g  # head 0: value = its input subspace (x GAIN)
            P[i, dst + i] = 1.0  # head 0 writes the next subspace
            W[i, 2 * D + dh + i] = g  # head 1 (distractor): value = the token one-hot
        for i in range(4):
            P[dh + i, 24 + i] = 1.0  # head 1 writes 24-27, which nothing reads
    sd["lm_head.weight"][:, 16:24] = torch.eye(VOCAB) * g
    hf.load_state_dict(sd)
    return bridge_from_hf(hf)


def planted_data(n: int = 16, p: int = 6, seed: int = 0):
    from acdc.types import TaskData

    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB, (n, p), generator=gen)
    corrupt = (clean + torch.randint(1, VOCAB, (n, p), generator=gen)) % VOCAB  # every token differs
    positions = torch.zeros(n, p, dtype=torch.bool)
    positions[:, -1] = True
    answers = clean[:, :1].expand(n, p).clone()  # the first token: it weighs most in the uniform averages
    return TaskData(clean, corrupt, positions, answers, None, "logprob")
