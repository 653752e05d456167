"""Gemma 3 (text): four RMSNorms per layer whose weights act as ``1 + w``, per-head RMSNorm of queries and keys before
rotation, embeddings scaled by ``sqrt(d_model)``, a gated GELU MLP, local sliding-window layers interleaved with
global ones (each kind with its own rotary base), grouped-query attention, tied unembedding, and an optional final
logit soft-cap.

Two Gemma-specific pieces change what an edge means, and both are stated in :class:`~acdc.arch.base.Arch`:

- the norm after the feed-forward block is part of the MLP writer (one writer, nothing to split);
- the norm after attention acts on the *sum* of the heads' outputs, so one head's share of what the residual stream
  receives is defined as ``(1 + w) * o_h / rms(sum_h o_h)`` with the sum over every head of the layer in the same run
  (:meth:`Arch.head_outputs`). Shares of one run add up to exactly what the model adds; a head patched from the
  counterfactual carries its share under the counterfactual's normalisation; all-ones and all-zeros masks are the
  model and the counterfactual exactly.
"""

from __future__ import annotations

from typing import Any

import torch

from acdc.arch.base import Arch, Norm, attention_fields, gated_mlp, linear_heads, unembedding, unwrap
from acdc.errors import UnsupportedArchitecture


def gemma_norm(module: Any) -> tuple[Norm, tuple[torch.Tensor, torch.Tensor, float]]:
    """A Gemma RMSNorm ``x / rms(x) * (1 + w)`` as a callable, and its (gamma = 1 + w, beta = 0, eps). Half
    precision is normalised in float32, as Hugging Face does; float32 and float64 in their own precision (so the
    norm folded into the reader projections agrees with this one to rounding)."""
    norm = unwrap(module)
    w = norm.weight.detach()
    eps = float(norm.eps)
    gamma = 1.0 + w

    def f(x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            y = x.float()
            return (y * torch.rsqrt(y.square().mean(-1, keepdim=True) + eps) * gamma.float()).to(x.dtype)
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps) * gamma

    return f, (gamma, torch.zeros_like(w), eps)


def build(model: Any, name: str) -> Arch:
    """The :class:`Arch` of a Gemma 3 text bridge (``Gemma3ForCausalLM``)."""
    hf: Any = model.original_model
    base: Any = hf.model
    layers = list(base.layers)
    hcfg = hf.config
    H, G = hcfg.num_attention_heads, hcfg.num_key_value_heads or hcfg.num_attention_heads
    d = hcfg.hidden_size
    attn0 = unwrap(layers[0].self_attn)
    dh = attn0.head_dim
    if getattr(hcfg, "use_bidirectional_attention", False):
        raise UnsupportedArchitecture(f"{name} uses bidirectional attention; acdc's masked forward is causal")
    scales = {float(unwrap(b.self_attn).scaling) for b in layers}
    if len(scales) != 1:
        raise UnsupportedArchitecture(f"{name} has different attention scales per layer, which acdc does not implement")
    from transformers.activations import ACT2FN

    with torch.no_grad():
        Wq: list[torch.Tensor] = []
        bq: list[torch.Tensor] = []
        Wk: list[torch.Tensor] = []
        bk: list[torch.Tensor] = []
        Wv: list[torch.Tensor] = []
        bv: list[torch.Tensor] = []
        Wo: list[torch.Tensor] = []
        bo: list[torch.Tensor] = []
        W_in: list[torch.Tensor] = []
        b_in: list[torch.Tensor] = []
        W_out: list[torch.Tensor] = []
        b_out: list[torch.Tensor] = []
        for block in layers:
            a = unwrap(block.self_attn)
            for lin, n, ws, bs in ((a.q_proj, H, Wq, bq), (a.k_proj, G, Wk, bk), (a.v_proj, G, Wv, bv)):
                w, b = linear_heads(lin, n, dh)
                ws.append(w)
                bs.append(b)
            o = unwrap(a.o_proj)
            if o.bias is not None and bool(o.bias.detach().ne(0).any()):
                raise UnsupportedArchitecture(
                    f"{name} has an attention output bias inside the post-attention norm, which acdc does not "
                    "implement")
            Wo.append(o.weight.detach().t().reshape(H, dh, d))
            bo.append(torch.zeros(d, dtype=o.weight.dtype, device=o.weight.device))
            for out, t in zip((W_in, b_in, W_out, b_out), gated_mlp(block.mlp, d), strict=True):
                out.append(t)
        # q is normalised per head after its projection, so the attention scale cannot be folded into W_Q
        attention = attention_fields(torch.stack(Wq), torch.stack(bq), torch.stack(Wk), torch.stack(bk),
                                     torch.stack(Wv), torch.stack(bv), torch.stack(Wo), torch.stack(bo))
    norms1 = [gemma_norm(b.input_layernorm) for b in layers]
    norms2 = [gemma_norm(b.pre_feedforward_layernorm) for b in layers]
    post_attn = [gemma_norm(b.post_attention_layernorm)[1] for b in layers]
    embed = unwrap(base.embed_tokens)
    W_U, b_U = unembedding(hf.lm_head)
    types = [unwrap(b.self_attn).layer_type for b in layers]
    return Arch(
        name=name,
        **attention,
        W_in=torch.stack(W_in).contiguous(),
        b_in=torch.stack(b_in).contiguous(),
        W_out=torch.stack(W_out).contiguous(),
        b_out=torch.stack(b_out).contiguous(),
        act=ACT2FN[getattr(hcfg, "hidden_activation", None) or "gelu_pytorch_tanh"],
        ln1=[n[0] for n in norms1],
        ln1_params=[n[1] for n in norms1],
        ln2=[n[0] for n in norms2],
        ln_final=gemma_norm(base.norm)[0],
        ln2_params=[n[1] for n in norms2],
        ln_final_params=gemma_norm(base.norm)[1],
        W_E=embed.weight.detach(),
        W_pos=None,
        W_U=W_U,
        b_U=b_U,
        rms=True,
        gated=True,
        rotary=unwrap(base.rotary_emb),
        rope_types=types if all(t is not None for t in types) else None,
        windows=[unwrap(b.self_attn).sliding_window for b in layers],
        q_norm=[gemma_norm(unwrap(b.self_attn).q_norm)[0] for b in layers],
        k_norm=[gemma_norm(unwrap(b.self_attn).k_norm)[0] for b in layers],
        q_norm_params=[gemma_norm(unwrap(b.self_attn).q_norm)[1] for b in layers],
        k_norm_params=[gemma_norm(unwrap(b.self_attn).k_norm)[1] for b in layers],
        mlp_post_params=[gemma_norm(b.post_feedforward_layernorm)[1] for b in layers],
        q_scale=scales.pop(),
        attn_post=[(p[0], p[2]) for p in post_attn],
        mlp_post=[gemma_norm(b.post_feedforward_layernorm)[0] for b in layers],
        embed_scale=float(getattr(embed, "scalar_embed_scale", 1.0)),
        final_softcap=getattr(hcfg, "final_logit_softcapping", None),
    )
