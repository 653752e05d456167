"""Per-architecture access to a loaded model's weights, for the masked forward.

The masked forward does not run the model through TransformerLens's per-head hooks: those materialise
``[batch, pos, heads, d_head, d_model]`` intermediates and made a GPT-2-small-sized model 5x slower forward and 14x
slower forward+backward here. Instead it reads the bridge's weights once (``W_Q``/``W_K``/``W_V``/``W_O`` in
TransformerLens convention, the Hugging Face norm/MLP/embedding modules the bridge wraps) and computes each head
itself. Norms and MLPs are called through ``torch.func.functional_call`` with detached parameters, so no gradient is
ever accumulated on the weights. Equality with the bridge's own hooked computation is a test (tests/test_patching.py).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from acdc.errors import UnsupportedArchitecture

# Architectures whose attention the masked forward implements (see `Arch.attention`).
SUPPORTED_ARCHITECTURES = ("GPT2LMHeadModel",)


def _frozen(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Call ``module`` with detached copies of its parameters (views, no memory copy)."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    buffers = {k: v for k, v in module.named_buffers()}
    state = {**params, **buffers}

    def call(x: torch.Tensor) -> torch.Tensor:
        return functional_call(module, state, (x,))

    return call


def architecture_of(model: Any) -> str:
    """The Hugging Face architecture name of a TransformerBridge (e.g. ``GPT2LMHeadModel``)."""
    cfg = model.cfg
    name = getattr(cfg, "architecture", None) or getattr(cfg, "original_architecture", None)
    if name is None and hasattr(model, "original_model"):
        name = type(model.original_model).__name__
    return str(name)


@dataclass(eq=False)
class Arch:
    """Detached weights and callables of one model, in the layout the masked forward uses."""

    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    W_Q: torch.Tensor  # [L, H, d_model, d_head]
    b_Q: torch.Tensor  # [L, H, d_head]
    W_K: torch.Tensor  # [L, G, d_model, d_head]
    b_K: torch.Tensor
    W_V: torch.Tensor
    b_V: torch.Tensor
    W_O: torch.Tensor  # [L, H, d_head, d_model]
    b_O: torch.Tensor  # [L, d_model]; a constant added to the residual, not attributed to any head
    W_Q_fused: torch.Tensor  # [L, d_model, 3 * H * d_head]: q|k|v of all heads, for the unmasked path
    b_Q_fused: torch.Tensor  # [L, 3 * H * d_head]
    ln1: list[Callable[[torch.Tensor], torch.Tensor]]
    ln2: list[Callable[[torch.Tensor], torch.Tensor]]
    mlp: list[Callable[[torch.Tensor], torch.Tensor]]
    ln_final: Callable[[torch.Tensor], torch.Tensor]
    unembed: Callable[[torch.Tensor], torch.Tensor]
    embed: Callable[[torch.Tensor], torch.Tensor]  # token ids [B, P] -> the `input` writer's output [B, P, d]
    attn_scale: float

    @property
    def device(self) -> torch.device:
        return self.W_Q.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_Q.dtype

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal softmax attention, head-major: q ``[H, N, P, dh]``, k/v ``[G, N, P, dh]`` -> z ``[H, N, P, dh]``."""
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(rep, dim=0)
            v = v.repeat_interleave(rep, dim=0)
        p = q.shape[-2]
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.attn_scale
        causal = torch.ones(p, p, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(causal, torch.finfo(scores.dtype).min)
        return torch.matmul(scores.softmax(-1), v)


_CACHE: weakref.WeakKeyDictionary[Any, Arch] = weakref.WeakKeyDictionary()


def get_arch(model: Any) -> Arch:
    """The :class:`Arch` of a TransformerBridge (built once per model and cached)."""
    arch = _CACHE.get(model)
    if arch is None:
        arch = _build(model)
        _CACHE[model] = arch
    return arch


def _build(model: Any) -> Arch:
    name = architecture_of(model)
    if name not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"architecture '{name}' is not supported: the masked forward needs per-head query/key/value inputs, "
            f"implemented for {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    cfg = model.cfg
    hf = model.original_model
    hcfg = hf.config
    if getattr(hcfg, "scale_attn_by_inverse_layer_idx", False) or getattr(hcfg, "add_cross_attention", False):
        raise UnsupportedArchitecture(
            f"GPT-2 variant with scale_attn_by_inverse_layer_idx/cross-attention is not supported ({cfg.model_name})"
        )
    with torch.no_grad():
        W_Q, W_K, W_V, W_O = (model.W_Q.detach(), model.W_K.detach(), model.W_V.detach(), model.W_O.detach())
        b_Q, b_K, b_V, b_O = (model.b_Q.detach(), model.b_K.detach(), model.b_V.detach(), model.b_O.detach())
        L, H, d, dh = W_Q.shape
        fused = torch.cat([w.permute(0, 2, 1, 3).reshape(L, d, -1) for w in (W_Q, W_K, W_V)], dim=-1)
        b_fused = torch.cat([b.reshape(L, -1) for b in (b_Q, b_K, b_V)], dim=-1)
    tr = hf.transformer
    wte, wpe = _frozen(tr.wte), _frozen(tr.wpe)

    def embed(tokens: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(tokens.shape[-1], device=tokens.device)
        return wte(tokens) + wpe(pos)

    scale = 1.0 / math.sqrt(dh) if getattr(hcfg, "scale_attn_weights", True) else 1.0
    return Arch(
        name=name,
        n_layers=L,
        n_heads=H,
        n_kv_heads=W_K.shape[1],
        d_model=d,
        d_head=dh,
        W_Q=W_Q.contiguous(),
        b_Q=b_Q.contiguous(),
        W_K=W_K.contiguous(),
        b_K=b_K.contiguous(),
        W_V=W_V.contiguous(),
        b_V=b_V.contiguous(),
        W_O=W_O.contiguous(),
        b_O=b_O.contiguous(),
        W_Q_fused=fused.contiguous(),
        b_Q_fused=b_fused.contiguous(),
        ln1=[_frozen(b.ln_1) for b in tr.h],
        ln2=[_frozen(b.ln_2) for b in tr.h],
        mlp=[_frozen(b.mlp) for b in tr.h],
        ln_final=_frozen(tr.ln_f),
        unembed=_frozen(hf.lm_head),
        embed=embed,
        attn_scale=scale,
    )
