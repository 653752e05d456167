"""Llama and Qwen2: RMSNorm, rotary q/k, gated SiLU MLP, grouped-query attention, optional q/k/v(/o) biases (Qwen2
has q/k/v biases). Read from the Hugging Face modules: the bridge exposes no stacked biases for bias-free
projections."""

from __future__ import annotations

from typing import Any

import torch

from acdc.arch.base import Arch, attention_fields, gated_mlp, linear_heads, rms_norm, unembedding, unwrap
from acdc.errors import UnsupportedArchitecture


def build(model: Any, name: str) -> Arch:
    """The :class:`Arch` of a Llama-style bridge (Llama, Qwen2); sliding-window attention is refused."""
    hf: Any = model.original_model
    base: Any = hf.model
    layers = list(base.layers)
    attn0 = unwrap(layers[0].self_attn)
    hcfg = hf.config
    H, G = hcfg.num_attention_heads, hcfg.num_key_value_heads or hcfg.num_attention_heads
    dh = attn0.head_dim
    d = hcfg.hidden_size
    for i, block in enumerate(layers):
        a = unwrap(block.self_attn)
        if getattr(a, "sliding_window", None) is not None:
            raise UnsupportedArchitecture(
                f"{name} layer {i} uses sliding-window attention, which the masked forward does not implement"
            )
    act_name = getattr(hcfg, "hidden_act", "silu")
    from transformers.activations import ACT2FN

    with torch.no_grad():
        Wq, bq, Wk, bk, Wv, bv, Wo, bo = [], [], [], [], [], [], [], []
        W_in: list[torch.Tensor] = []
        b_in: list[torch.Tensor] = []
        W_out: list[torch.Tensor] = []
        b_out: list[torch.Tensor] = []
        for block in layers:
            a = unwrap(block.self_attn)
            scale = float(getattr(a, "scaling", dh**-0.5))
            w, b = linear_heads(a.q_proj, H, dh)
            Wq.append(w * scale)
            bq.append(b * scale)
            w, b = linear_heads(a.k_proj, G, dh)
            Wk.append(w)
            bk.append(b)
            w, b = linear_heads(a.v_proj, G, dh)
            Wv.append(w)
            bv.append(b)
            o = unwrap(a.o_proj)
            Wo.append(o.weight.detach().t().reshape(H, dh, d))
            bo.append(o.bias.detach() if o.bias is not None else torch.zeros(d, dtype=o.weight.dtype,
                                                                             device=o.weight.device))
            for out, t in zip((W_in, b_in, W_out, b_out), gated_mlp(block.mlp, d), strict=True):
                out.append(t)
        attention = attention_fields(torch.stack(Wq), torch.stack(bq), torch.stack(Wk), torch.stack(bk),
                                     torch.stack(Wv), torch.stack(bv), torch.stack(Wo), torch.stack(bo))
    norms1 = [rms_norm(b.input_layernorm) for b in layers]
    norms2 = [rms_norm(b.post_attention_layernorm) for b in layers]
    W_U, b_U = unembedding(hf.lm_head)
    return Arch(
        name=name,
        **attention,
        W_in=torch.stack(W_in).contiguous(),
        b_in=torch.stack(b_in).contiguous(),
        W_out=torch.stack(W_out).contiguous(),
        b_out=torch.stack(b_out).contiguous(),
        act=ACT2FN[act_name],
        ln1=[n[0] for n in norms1],
        ln1_params=[n[1] for n in norms1],
        ln2=[n[0] for n in norms2],
        ln_final=rms_norm(base.norm)[0],
        ln2_params=[n[1] for n in norms2],
        ln_final_params=rms_norm(base.norm)[1],
        W_E=unwrap(base.embed_tokens).weight.detach(),
        W_pos=None,
        W_U=W_U,
        b_U=b_U,
        rms=True,
        gated=True,
        rotary=unwrap(base.rotary_emb),
    )
