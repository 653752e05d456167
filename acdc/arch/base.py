"""The :class:`Arch` record the masked forward computes with, and the helpers every architecture's builder shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from acdc.errors import UnsupportedArchitecture

Norm = Callable[[torch.Tensor], torch.Tensor]


def unwrap(module: Any) -> Any:
    """The Hugging Face module behind a bridge component (the bridge replaces submodules with hooked wrappers)."""
    return getattr(module, "_original_component", module)


def ln_params(module: Any) -> tuple[torch.Tensor, torch.Tensor, float]:
    """A LayerNorm's (gamma, beta, eps), with ones/zeros standing in for a missing weight/bias."""
    ln = unwrap(module)
    d = ln.normalized_shape[0]
    g = ln.weight.detach() if ln.weight is not None else torch.ones(d)
    b = ln.bias.detach() if ln.bias is not None else torch.zeros(d)
    return g, b, float(ln.eps)


def layer_norm(module: Any) -> Norm:
    """A LayerNorm module as a callable on detached weights."""
    ln = unwrap(module)
    if not isinstance(ln, nn.LayerNorm):
        raise UnsupportedArchitecture(f"expected a LayerNorm, found {type(ln).__name__}")
    w = ln.weight.detach() if ln.weight is not None else None
    b = ln.bias.detach() if ln.bias is not None else None
    shape, eps = tuple(ln.normalized_shape), ln.eps
    return lambda x: F.layer_norm(x, shape, w, b, eps)


def rms_norm(module: Any) -> tuple[Norm, tuple[torch.Tensor, torch.Tensor, float]]:
    """A Llama-style RMSNorm ``w * x / sqrt(mean(x^2) + eps)`` as a callable, and its (gamma, beta = 0, eps)."""
    norm = unwrap(module)
    w = norm.weight.detach()
    eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
    shape = (w.shape[0],)

    def f(x: torch.Tensor) -> torch.Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):  # Hugging Face normalises half precision in float32
            return F.rms_norm(x.float(), shape, w.float(), eps).to(x.dtype)
        return F.rms_norm(x, shape, w, eps)

    return f, (w, torch.zeros_like(w), eps)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotary-embedding partner of ``x``: its last dimension's halves swapped, the new first half negated."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def unembedding(module: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``W_U [d_model, V]`` and ``b_U [V]`` (None without a bias) of an ``lm_head`` Linear."""
    lm_head = unwrap(module)
    return lm_head.weight.detach().t(), lm_head.bias.detach() if getattr(lm_head, "bias", None) is not None else None


def attention_fields(
    W_Q: torch.Tensor, b_Q: torch.Tensor, W_K: torch.Tensor, b_K: torch.Tensor, W_V: torch.Tensor,
    b_V: torch.Tensor, W_O: torch.Tensor, b_O: torch.Tensor,
) -> dict[str, Any]:
    """The attention fields of an :class:`Arch` (its sizes, contiguous stacked weights and the fused q|k|v
    projection) from weights stacked over layers: ``W_Q [L, H, d_model, d_head]`` (already scaled),
    ``W_K``/``W_V [L, G, d_model, d_head]``, ``W_O [L, H, d_head, d_model]``, biases likewise without ``d_model``."""
    L, H, d, dh = W_Q.shape
    with torch.no_grad():
        fused = torch.cat([w.permute(0, 2, 1, 3).reshape(L, d, -1) for w in (W_Q, W_K, W_V)], dim=-1)
        b_fused = torch.cat([b.reshape(L, -1) for b in (b_Q, b_K, b_V)], dim=-1)
    return {
        "n_layers": L,
        "n_heads": H,
        "n_kv_heads": W_K.shape[1],
        "d_model": d,
        "d_head": dh,
        "W_Q": W_Q.contiguous(),
        "b_Q": b_Q.contiguous(),
        "W_K": W_K.contiguous(),
        "b_K": b_K.contiguous(),
        "W_V": W_V.contiguous(),
        "b_V": b_V.contiguous(),
        "W_O": W_O.contiguous(),
        "b_O": b_O.contiguous(),
        "W_Q_fused": fused.contiguous(),
        "b_Q_fused": b_fused.contiguous(),
    }


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
    ln1: list[Norm]
    ln2: list[Norm]
    ln_final: Norm
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
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(rep, dim=0)
            v = v.repeat_interleave(rep, dim=0)
        p = q.shape[-2]
        scores = torch.matmul(q, k.transpose(-1, -2))  # W_Q and b_Q carry the 1/sqrt(d_head) scale
        causal = torch.ones(p, p, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill_(causal, torch.finfo(scores.dtype).min)
        return torch.matmul(scores.softmax(-1), v)
