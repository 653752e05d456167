"""Per-architecture access to a loaded model's weights, for the masked forward.

The masked forward does not run the model through TransformerLens's per-head hooks: those materialise
``[batch, pos, heads, d_head, d_model]`` intermediates and made a GPT-2-small-sized model 5x slower forward and 14x
slower forward+backward here. Instead it reads the bridge's weights once (``W_Q``/``W_K``/``W_V``/``W_O`` in
TransformerLens convention, the Hugging Face norm/MLP/embedding modules the bridge wraps) and computes each head
itself. Everything is held as detached tensors, so no gradient is ever accumulated on the
weights, and read from the unwrapped Hugging Face modules (the bridge replaces submodules with hooked wrappers whose
layer norm is computed step by step for its hooks). Equality with the bridge's own hooked computation is a test
(tests/test_patching.py).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from acdc.errors import UnsupportedArchitecture

# Architectures whose attention the masked forward implements (see `Arch.attention`).
SUPPORTED_ARCHITECTURES = ("GPT2LMHeadModel",)


def _unwrap(module: Any) -> Any:
    """The Hugging Face module behind a bridge component (the bridge replaces submodules with hooked wrappers)."""
    return getattr(module, "_original_component", module)


def _ln_params(module: Any) -> tuple[torch.Tensor, torch.Tensor, float]:
    ln = _unwrap(module)
    d = ln.normalized_shape[0]
    g = ln.weight.detach() if ln.weight is not None else torch.ones(d)
    b = ln.bias.detach() if ln.bias is not None else torch.zeros(d)
    return g, b, float(ln.eps)


def _layer_norm(module: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    ln = _unwrap(module)
    if not isinstance(ln, nn.LayerNorm):
        raise UnsupportedArchitecture(f"expected a LayerNorm, found {type(ln).__name__}")
    w = ln.weight.detach() if ln.weight is not None else None
    b = ln.bias.detach() if ln.bias is not None else None
    shape, eps = tuple(ln.normalized_shape), ln.eps
    return lambda x: F.layer_norm(x, shape, w, b, eps)


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
    W_Q: torch.Tensor  # [L, H, d_model, d_head], pre-multiplied by the attention scale
    b_Q: torch.Tensor  # [L, H, d_head], likewise
    W_K: torch.Tensor  # [L, G, d_model, d_head]
    b_K: torch.Tensor
    W_V: torch.Tensor
    b_V: torch.Tensor
    W_O: torch.Tensor  # [L, H, d_head, d_model]
    b_O: torch.Tensor  # [L, d_model]; a constant added to the residual, not attributed to any head
    W_Q_fused: torch.Tensor  # [L, d_model, (H + 2G) * d_head]: q|k|v of all heads, for the unmasked path
    b_Q_fused: torch.Tensor  # [L, (H + 2G) * d_head]

    @property
    def W_read(self) -> torch.Tensor:
        """``[L, H + 2G, d_model, d_head]``: the projection of every q, k and v reader, in graph order."""
        return self._W_read

    @property
    def b_read(self) -> torch.Tensor:
        return self._b_read

    @property
    def W_read_cols(self) -> torch.Tensor:
        """``W_read`` as one matrix per layer, ``[L, d_model, (H + 2G) * d_head]`` (the same as W_Q_fused)."""
        return self.W_Q_fused

    W_in: torch.Tensor  # [L, d_model, d_mlp]
    b_in: torch.Tensor  # [L, d_mlp]
    W_out: torch.Tensor  # [L, d_mlp, d_model]
    b_out: torch.Tensor  # [L, d_model]
    act: Callable[[torch.Tensor], torch.Tensor]
    ln1: list[Callable[[torch.Tensor], torch.Tensor]]
    ln2: list[Callable[[torch.Tensor], torch.Tensor]]
    ln_final: Callable[[torch.Tensor], torch.Tensor]
    W_E: torch.Tensor  # [V, d_model]
    W_pos: torch.Tensor | None  # [n_ctx, d_model] (learned absolute positions) or None
    ln1_params: list[tuple[torch.Tensor, torch.Tensor, float]]  # (gamma, beta, eps) of each layer's ln_1
    W_U: torch.Tensor  # [d_model, V]
    b_U: torch.Tensor | None  # [V]

    def __post_init__(self) -> None:
        self._W_read = torch.cat([self.W_Q, self.W_K, self.W_V], dim=1).contiguous()
        self._b_read = torch.cat([self.b_Q, self.b_K, self.b_V], dim=1).contiguous()
        # ln_1 folded into the reader projections: LN(x) W + b = rstd * (x W~ - mean * c) + b~
        # with W~ = diag(gamma) W, c = 1^T W~, b~ = beta W + b. Lets mixed readers skip writing a normalised copy.
        g = torch.stack([p[0] for p in self.ln1_params])  # [L, d]
        beta = torch.stack([p[1] for p in self.ln1_params])
        self.W_read_folded = (g[:, None, :, None] * self._W_read).contiguous()  # [L, R, d, dh]
        self.c_read_folded = self.W_read_folded.sum(2)  # [L, R, dh]
        self.b_read_folded = torch.einsum("ld,lrde->lre", beta, self._W_read) + self._b_read

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, P]`` -> the ``input`` writer's output ``[B, P, d]``."""
        x = F.embedding(tokens, self.W_E)
        if self.W_pos is not None:
            x = x + self.W_pos[: tokens.shape[-1]]
        return x

    def mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The MLP of ``layer`` on normalised input ``x [..., d]``."""
        h = self.act(torch.addmm(self.b_in[layer], x.reshape(-1, self.d_model), self.W_in[layer]))
        return torch.addmm(self.b_out[layer], h, self.W_out[layer]).view(*x.shape[:-1], self.d_model)

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ self.W_U
        return out + self.b_U if self.b_U is not None else out

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
        scores = torch.matmul(q, k.transpose(-1, -2))  # W_Q and b_Q carry the 1/sqrt(d_head) scale
        causal = torch.ones(p, p, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill_(causal, torch.finfo(scores.dtype).min)
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
        L, H, d, dh = W_Q.shape
        fused = torch.cat([w.permute(0, 2, 1, 3).reshape(L, d, -1) for w in (W_Q, W_K, W_V)], dim=-1)
        b_fused = torch.cat([b.reshape(L, -1) for b in (b_Q, b_K, b_V)], dim=-1)
    from transformers.activations import ACT2FN

    tr: Any = hf.transformer
    lm_head = _unwrap(hf.lm_head)
    mlps = [_unwrap(b.mlp) for b in tr.h]
    # GPT-2's MLP uses Conv1D (weight [in, out]), read from the unwrapped modules, not the bridge's hooked copies.
    fc = [_unwrap(m.c_fc) for m in mlps]
    proj = [_unwrap(m.c_proj) for m in mlps]
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
        W_in=torch.stack([f.weight.detach() for f in fc]),
        b_in=torch.stack([f.bias.detach() for f in fc]),
        W_out=torch.stack([p.weight.detach() for p in proj]),
        b_out=torch.stack([p.bias.detach() for p in proj]),
        act=ACT2FN[hcfg.activation_function],
        ln1=[_layer_norm(b.ln_1) for b in tr.h],
        ln1_params=[_ln_params(b.ln_1) for b in tr.h],
        ln2=[_layer_norm(b.ln_2) for b in tr.h],
        ln_final=_layer_norm(tr.ln_f),
        W_E=_unwrap(tr.wte).weight.detach(),
        W_pos=_unwrap(tr.wpe).weight.detach(),
        W_U=lm_head.weight.detach().t(),
        b_U=lm_head.bias.detach() if getattr(lm_head, "bias", None) is not None else None,
    )
