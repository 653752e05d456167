"""Per-architecture access to a loaded model's weights, for the masked forward.

The masked forward does not run the model through TransformerLens's per-head hooks: those materialise
``[batch, pos, heads, d_head, d_model]`` intermediates and made a GPT-2-small-sized model 5x slower forward and 14x
slower forward+backward here. Instead it reads the bridge's weights once (``W_Q``/``W_K``/``W_V``/``W_O`` in
TransformerLens convention, the Hugging Face norm/MLP/embedding modules the bridge wraps) and computes each head
itself. Two families are implemented: GPT-2 (layer norm, learned positions, GELU MLP) and Llama/Qwen2 (RMSNorm,
rotary positions applied to q and k inside :meth:`Arch.attention`, gated SiLU MLP, grouped-query attention whose
key/value heads are computed once per group and shared by its query heads). Everything is held as detached
tensors, so no gradient is ever accumulated on the weights, and read from the unwrapped Hugging Face modules (the
bridge replaces submodules with hooked wrappers whose layer norm is computed step by step for its hooks). Equality
with the bridge's own hooked computation is a test (tests/test_patching.py, tests/test_llama.py).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from acdc.errors import UnsupportedArchitecture

# Architectures whose attention the masked forward implements (see `Arch.attention`).
SUPPORTED_ARCHITECTURES = ("GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForCausalLM")
_LLAMA_LIKE = ("LlamaForCausalLM", "Qwen2ForCausalLM")


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


def _rms_norm(module: Any) -> tuple[Callable[[torch.Tensor], torch.Tensor], tuple[torch.Tensor, torch.Tensor, float]]:
    """A Llama-style RMSNorm ``w * x / sqrt(mean(x^2) + eps)`` as a callable, and its (gamma, beta = 0, eps)."""
    norm = _unwrap(module)
    w = norm.weight.detach()
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    shape = (w.shape[0],)

    def f(x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):  # Hugging Face normalises half precision in float32
            return F.rms_norm(x.float(), shape, w.float(), eps).to(x.dtype)
        return F.rms_norm(x, shape, w, eps)

    return f, (w, torch.zeros_like(w), eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


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

    W_in: torch.Tensor  # [L, d_model, d_mlp], or [L, d_model, 2 * d_mlp] (gate, then up) when gated
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
    rms: bool = False  # the norms are RMSNorm (beta = 0, no mean subtraction), not LayerNorm
    gated: bool = False  # gated MLP down(act(gate x) * up x); W_in/b_in then hold gate columns, then up columns
    rotary: Any = None  # the Hugging Face rotary embedding module (q and k are rotated by position), or None
    _rope: dict[tuple[int, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, init=False, repr=False
    )

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
        h = torch.addmm(self.b_in[layer], x.reshape(-1, self.d_model), self.W_in[layer])
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
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

    def rope(self, p: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[P, dh]`` of positions ``0..p-1``, from the model's own rotary module (so any rope scaling
        it implements is used exactly as in Hugging Face)."""
        key = (p, self.dtype)
        if key not in self._rope:
            like = torch.empty(1, p, self.d_model, dtype=self.dtype, device=self.device)
            pos = torch.arange(p, device=self.device).unsqueeze(0)
            with torch.no_grad():
                cos, sin = self.rotary(like, pos)
            self._rope[key] = (cos[0].to(self.dtype), sin[0].to(self.dtype))
        return self._rope[key]

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal softmax attention, head-major: q ``[H, N, P, dh]``, k/v ``[G, N, P, dh]`` -> z ``[H, N, P, dh]``.

        With rotary embeddings, q and k are rotated here (after the projection, per head). With grouped-query
        attention, query heads ``h`` with ``h // (H / G) = g`` attend with key/value head ``g``.
        """
        if self.rotary is not None:
            cos, sin = self.rope(q.shape[-2])
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
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
    if name in _LLAMA_LIKE:
        return _build_llama(model, name)
    return _build_gpt2(model, name)


def _build_gpt2(model: Any, name: str) -> Arch:
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


def _linear_t(module: Any, n: int, d_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A Linear's weight as ``[n, d_in, d_out]`` (n heads of d_out columns) and its bias ``[n, d_out]`` (zeros if
    it has none)."""
    lin = _unwrap(module)
    w = lin.weight.detach()  # [n * d_out, d_in]
    b = lin.bias.detach() if lin.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    return w.view(n, d_out, -1).transpose(1, 2), b.view(n, d_out)


def _build_llama(model: Any, name: str) -> Arch:
    """Llama and Qwen2: RMSNorm, rotary q/k, gated MLP, grouped-query attention, optional q/k/v(/o) biases. Read
    from the Hugging Face modules (the bridge exposes no stacked biases for bias-free projections)."""
    hf: Any = model.original_model
    base: Any = hf.model
    layers = list(base.layers)
    attn0 = _unwrap(layers[0].self_attn)
    hcfg = hf.config
    H, G = hcfg.num_attention_heads, hcfg.num_key_value_heads or hcfg.num_attention_heads
    dh = attn0.head_dim
    d = hcfg.hidden_size
    for i, block in enumerate(layers):
        a = _unwrap(block.self_attn)
        if getattr(a, "sliding_window", None) is not None:
            raise UnsupportedArchitecture(
                f"{name} layer {i} uses sliding-window attention, which the masked forward does not implement"
            )
    act_name = getattr(hcfg, "hidden_act", "silu")
    from transformers.activations import ACT2FN

    with torch.no_grad():
        Wq, bq, Wk, bk, Wv, bv, Wo, bo = [], [], [], [], [], [], [], []
        W_in, b_in, W_out, b_out = [], [], [], []
        for block in layers:
            a = _unwrap(block.self_attn)
            scale = float(getattr(a, "scaling", dh**-0.5))
            w, b = _linear_t(a.q_proj, H, dh)
            Wq.append(w * scale)
            bq.append(b * scale)
            w, b = _linear_t(a.k_proj, G, dh)
            Wk.append(w)
            bk.append(b)
            w, b = _linear_t(a.v_proj, G, dh)
            Wv.append(w)
            bv.append(b)
            o = _unwrap(a.o_proj)
            Wo.append(o.weight.detach().t().reshape(H, dh, d))
            bo.append(o.bias.detach() if o.bias is not None else torch.zeros(d, dtype=o.weight.dtype,
                                                                             device=o.weight.device))
            mlp = _unwrap(block.mlp)
            gate, bg = _linear_t(mlp.gate_proj, 1, mlp.gate_proj.out_features)
            up, bu = _linear_t(mlp.up_proj, 1, mlp.up_proj.out_features)
            W_in.append(torch.cat([gate[0], up[0]], dim=-1))
            b_in.append(torch.cat([bg[0], bu[0]]))
            down, bd = _linear_t(mlp.down_proj, 1, d)
            W_out.append(down[0])
            b_out.append(bd[0])
        W_Q, W_K, W_V = torch.stack(Wq), torch.stack(Wk), torch.stack(Wv)
        b_Q, b_K, b_V = torch.stack(bq), torch.stack(bk), torch.stack(bv)
        L = len(layers)
        fused = torch.cat([w.permute(0, 2, 1, 3).reshape(L, d, -1) for w in (W_Q, W_K, W_V)], dim=-1)
        b_fused = torch.cat([b.reshape(L, -1) for b in (b_Q, b_K, b_V)], dim=-1)
    norms1 = [_rms_norm(b.input_layernorm) for b in layers]
    norms2 = [_rms_norm(b.post_attention_layernorm) for b in layers]
    lm_head = _unwrap(hf.lm_head)
    return Arch(
        name=name,
        n_layers=L,
        n_heads=H,
        n_kv_heads=G,
        d_model=d,
        d_head=dh,
        W_Q=W_Q.contiguous(),
        b_Q=b_Q.contiguous(),
        W_K=W_K.contiguous(),
        b_K=b_K.contiguous(),
        W_V=W_V.contiguous(),
        b_V=b_V.contiguous(),
        W_O=torch.stack(Wo).contiguous(),
        b_O=torch.stack(bo).contiguous(),
        W_Q_fused=fused.contiguous(),
        b_Q_fused=b_fused.contiguous(),
        W_in=torch.stack(W_in).contiguous(),
        b_in=torch.stack(b_in).contiguous(),
        W_out=torch.stack(W_out).contiguous(),
        b_out=torch.stack(b_out).contiguous(),
        act=ACT2FN[act_name],
        ln1=[n[0] for n in norms1],
        ln1_params=[n[1] for n in norms1],
        ln2=[n[0] for n in norms2],
        ln_final=_rms_norm(base.norm)[0],
        W_E=_unwrap(base.embed_tokens).weight.detach(),
        W_pos=None,
        W_U=lm_head.weight.detach().t(),
        b_U=lm_head.bias.detach() if getattr(lm_head, "bias", None) is not None else None,
        rms=True,
        gated=True,
        rotary=_unwrap(base.rotary_emb),
    )
