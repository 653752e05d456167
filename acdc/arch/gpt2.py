"""GPT-2: layer norm, learned absolute positions, GELU MLP (Conv1D weights stored ``[in, out]``)."""

from __future__ import annotations

import math
from typing import Any

import torch

from acdc.arch.base import Arch, attention_fields, layer_norm, ln_params, unembedding, unwrap
from acdc.errors import UnsupportedArchitecture


def build(model: Any, name: str) -> Arch:
    """The :class:`Arch` of a GPT-2 bridge: attention from the bridge's stacked ``W_Q``..``b_O``, everything else
    from the unwrapped Hugging Face modules."""
    cfg = model.cfg
    hf: Any = model.original_model
    hcfg = hf.config
    if getattr(hcfg, "scale_attn_by_inverse_layer_idx", False) or getattr(hcfg, "add_cross_attention", False):
        raise UnsupportedArchitecture(
            f"GPT-2 variant with scale_attn_by_inverse_layer_idx/cross-attention is not supported ({cfg.model_name})"
        )
    with torch.no_grad():
        scale = 1.0 / math.sqrt(model.cfg.d_head) if getattr(hcfg, "scale_attn_weights", True) else 1.0
        W_Q, W_K, W_V, W_O = (model.W_Q.detach() * scale, model.W_K.detach(), model.W_V.detach(), model.W_O.detach())
        b_Q, b_K, b_V, b_O = (model.b_Q.detach() * scale, model.b_K.detach(), model.b_V.detach(), model.b_O.detach())
    from transformers.activations import ACT2FN

    tr: Any = hf.transformer
    mlps = [unwrap(b.mlp) for b in tr.h]
    # GPT-2's MLP uses Conv1D (weight [in, out]), read from the unwrapped modules, not the bridge's hooked copies.
    fc = [unwrap(m.c_fc) for m in mlps]
    proj = [unwrap(m.c_proj) for m in mlps]
    W_U, b_U = unembedding(hf.lm_head)
    return Arch(
        name=name,
        **attention_fields(W_Q, b_Q, W_K, b_K, W_V, b_V, W_O, b_O),
        W_in=torch.stack([f.weight.detach() for f in fc]),
        b_in=torch.stack([f.bias.detach() for f in fc]),
        W_out=torch.stack([p.weight.detach() for p in proj]),
        b_out=torch.stack([p.bias.detach() for p in proj]),
        act=ACT2FN[hcfg.activation_function],
        ln1=[layer_norm(b.ln_1) for b in tr.h],
        ln1_params=[ln_params(b.ln_1) for b in tr.h],
        ln2=[layer_norm(b.ln_2) for b in tr.h],
        ln_final=layer_norm(tr.ln_f),
        ln2_params=[ln_params(b.ln_2) for b in tr.h],
        ln_final_params=ln_params(tr.ln_f),
        W_E=unwrap(tr.wte).weight.detach(),
        W_pos=unwrap(tr.wpe).weight.detach(),
        W_U=W_U,
        b_U=b_U,
    )
