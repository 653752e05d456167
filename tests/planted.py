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

from typing import Any

import torch

PLANTED = ["input->a0.h0<v>", "a0.h0->a1.h0<v>", "a1.h0->logits"]
VOCAB, D, BIG, SCALE, GAIN = 8, 32, 1000.0, 1.0, 4.0


def _blank_gpt2(d: int) -> tuple[Any, dict[str, torch.Tensor]]:
    """A 2-layer, 2-head GPT-2 of width ``d`` over ``VOCAB`` tokens and its state dict with every weight zero except
    the layer norms' gains (one)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=2, n_head=2, n_embd=d, vocab_size=VOCAB, n_positions=16, bos_token_id=0, eos_token_id=0,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=False)
    hf = GPT2LMHeadModel(cfg).eval()
    sd = {k: torch.zeros_like(v) for k, v in hf.state_dict().items()}
    for k in sd:
        if k.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            sd[k] = torch.ones_like(sd[k])
    return hf, sd


def planted_model():
    from acdc.models import bridge_from_hf

    hf, sd = _blank_gpt2(D)
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


# ---- induction: a previous-token head composing with an induction head through its keys -------------------------
INDUCTION = ["input->a0.h0<v>", "a0.h0->a1.h0<k>", "input->a1.h0<q>", "input->a1.h0<v>", "a1.h0->logits"]
"""The planted induction circuit under patching. The previous-token head's q/k edges are not in it: they read only
positions, which a counterfactual prompt shares with the clean one, so patching them changes nothing."""

TOK, POS, PREV, OUT, DIST, N_POS = 0, 8, 20, 28, 36, 12
D_IND = 48


def planted_induction_model():
    """2 layers x 2 heads, d_model 48, MLPs zero. Residual subspaces: 0-7 token one-hot, 8-19 position one-hot,
    20-27 the previous token (written by a0.h0), 28-35 the predicted token (a1.h0), 36-43 the distractors' output
    (a0.h1, a1.h1: uniform attention copying tokens; nothing reads it), 46/47 +-BIG (zero mean, so the layer norms'
    mean is the content's, the same at every position; their scale is ~BIG * sqrt(2/D), undone in the weights).

    a0.h0 (previous-token head): query = position i, key = position j + 1, so position i attends to i - 1; value =
    token; writes the previous token. a1.h0 (induction head): query = the current token, key = the previous token
    (K-composition with a0.h0), so the last position attends to the position after the earlier copy of its token;
    value = token; writes the prediction, which the unembedding reads."""
    from acdc.models import bridge_from_hf

    D, dh, V = D_IND, D_IND // 2, VOCAB
    hf, sd = _blank_gpt2(D)
    sd["transformer.wte.weight"][:, TOK : TOK + V] = torch.eye(V)
    sd["transformer.wpe.weight"][:N_POS, POS : POS + N_POS] = torch.eye(N_POS)
    sd["transformer.wpe.weight"][:, D - 2] = BIG
    sd["transformer.wpe.weight"][:, D - 1] = -BIG
    sigma = BIG * (2 / D) ** 0.5  # the layer norms' scale
    A = (30.0 * dh**0.5) ** 0.5 * sigma  # q.k / sqrt(dh) = 30 at a match: attention is nearly one-hot
    q0, k0, v0 = 0, D, 2 * D  # column blocks of c_attn; head 1 adds dh
    W0 = sd["transformer.h.0.attn.c_attn.weight"]
    W1 = sd["transformer.h.1.attn.c_attn.weight"]
    P0 = sd["transformer.h.0.attn.c_proj.weight"]
    P1 = sd["transformer.h.1.attn.c_proj.weight"]
    for i in range(1, N_POS):
        W0[POS + i, q0 + i] = A  # a0.h0 query: position i
        W0[POS + i - 1, k0 + i] = A  # a0.h0 key: position j, matched by query j + 1
    for t in range(V):
        W0[TOK + t, v0 + t] = sigma  # a0.h0 value: the token
        P0[t, PREV + t] = 1.0  # ... written as the previous token
        W1[TOK + t, q0 + t] = A  # a1.h0 query: the current token
        W1[PREV + t, k0 + t] = A  # a1.h0 key: the previous token (K-composition)
        W1[TOK + t, v0 + t] = sigma  # a1.h0 value: the token
        P1[t, OUT + t] = 1.0  # ... written as the prediction
        for W, Pm in ((W0, P0), (W1, P1)):  # distractors: uniform attention, copy tokens into an unread subspace
            W[TOK + t, v0 + dh + t] = sigma
            Pm[dh + t, DIST + t] = 1.0
    sd["lm_head.weight"][:, OUT : OUT + V] = torch.eye(V) * 10.0 * sigma
    hf.load_state_dict(sd)
    return bridge_from_hf(hf)


def planted_induction_data(n: int = 16, half: int = 5, seed: int = 0):
    """Sequences of ``half`` distinct tokens repeated once; the answer at the last position is the token that
    followed its earlier copy (the first token). Counterfactuals change every token."""
    from acdc.types import TaskData

    gen = torch.Generator().manual_seed(seed)
    first = torch.stack([torch.randperm(VOCAB, generator=gen)[:half] for _ in range(n)])
    clean = torch.cat([first, first], 1)
    p = clean.shape[1]
    corrupt = (clean + torch.randint(1, VOCAB, (n, p), generator=gen)) % VOCAB
    positions = torch.zeros(n, p, dtype=torch.bool)
    positions[:, -1] = True
    answers = clean[:, :1].expand(n, p).clone()
    return TaskData(clean, corrupt, positions, answers, None, "logprob")
