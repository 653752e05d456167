"""The :class:`Arch` record the masked forward computes with, and the helpers every architecture's builder shares."""

from __future__ import annotations

import dataclasses
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


NormParams = tuple[torch.Tensor, torch.Tensor, float]


# ---- the propagation rules of relevance patching (RelP) -------------------------------------------------------------
# Each rule keeps the forward value exactly and changes only what the backward pass propagates (Layer-wise Relevance
# Propagation written as a modified gradient): gradient x input through the modified graph is LRP's relevance.
def relevance_norm(params: NormParams, rms: bool) -> Norm:
    """The LN-rule: a LayerNorm / RMSNorm whose normalising scale ``1 / std`` (``1 / rms``) is treated as a constant.
    Same value as the norm; the gradient is ``gamma * rstd`` (RMSNorm) or ``gamma * rstd * (I - 1 1^T / d)``
    (LayerNorm: the centring is linear and stays)."""
    gamma, beta, eps = params

    def f(x: torch.Tensor) -> torch.Tensor:
        y = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        if not rms:
            y = y - y.mean(-1, keepdim=True)
        rstd = torch.rsqrt(y.square().mean(-1, keepdim=True) + eps).detach()
        return (y * rstd * gamma.to(y.dtype) + beta.to(y.dtype)).to(x.dtype)

    return f


def identity_rule(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The Identity-rule for an elementwise nonlinearity ``f``: value ``f(x)``, gradient ``f(x) / x`` (the
    activation passes relevance on in proportion to its output, as if it were the linear map ``x -> (f(x)/x) x``).
    Near ``x = 0`` the divisor is kept at least 1e-6 in magnitude."""

    def g(x: torch.Tensor) -> torch.Tensor:
        y = fn(x).detach()
        z = x.detach()
        tiny = torch.tensor(1e-6, dtype=z.dtype, device=z.device)
        safe = torch.where(z >= 0, torch.maximum(z, tiny), torch.minimum(z, -tiny))
        return y + (x - z) * (y / safe)

    return g


def half_rule(product: torch.Tensor) -> torch.Tensor:
    """The Half-rule for a product of two activations (a gated MLP's ``act(gate) * up``): same value, each factor
    receives half of the gradient (relevance is split evenly between the two factors)."""
    half = product / 2
    return half + half.detach()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The rotary-embedding partner of ``x``: its last dimension's halves swapped, the new first half negated."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def linear_heads(module: Any, n: int, d_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A Linear's weight as ``[n, d_in, d_out]`` (n heads of d_out columns) and its bias ``[n, d_out]`` (zeros if
    it has none)."""
    lin = unwrap(module)
    w = lin.weight.detach()  # [n * d_out, d_in]
    b = lin.bias.detach() if lin.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    return w.view(n, d_out, -1).transpose(1, 2), b.view(n, d_out)


def gated_mlp(module: Any, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A gated MLP (``gate_proj``, ``up_proj``, ``down_proj``) as ``(W_in [d, 2 d_mlp] (gate columns, then up),
    b_in, W_out [d_mlp, d], b_out)``, zeros standing in for missing biases."""
    mlp = unwrap(module)
    gate, bg = linear_heads(mlp.gate_proj, 1, mlp.gate_proj.out_features)
    up, bu = linear_heads(mlp.up_proj, 1, mlp.up_proj.out_features)
    down, bd = linear_heads(mlp.down_proj, 1, d)
    return torch.cat([gate[0], up[0]], dim=-1), torch.cat([bg[0], bu[0]]), down[0], bd[0]


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
    # ---- post-normed families (Gemma 2/3); the defaults are the plain pre-norm transformer -------------------------
    rope_types: list[str] | None = None  # per layer: the rotary module's layer type (its own base per type)
    windows: list[int | None] | None = None  # per layer: sliding-window length (keys with q - k < w), or None
    q_norm: list[Norm] | None = None  # per layer: RMSNorm of each head's query over d_head, before rotation
    k_norm: list[Norm] | None = None
    q_scale: float = 1.0  # the attention scale, applied after q_norm (without q_norm it is folded into W_Q)
    attn_post: list[tuple[torch.Tensor, float]] | None = None  # per layer: (gamma, eps) of the norm after attention
    mlp_post: list[Norm] | None = None  # per layer: the norm after the MLP (part of the MLP writer)
    embed_scale: float = 1.0  # the token embedding is multiplied by this (Gemma: sqrt(d_model))
    final_softcap: float | None = None  # logits -> c * tanh(logits / c)
    # ---- the norms' parameters (gamma, beta, eps), for the relevance view; None where the family has no such norm
    ln2_params: list[NormParams] | None = None
    ln_final_params: NormParams | None = None
    q_norm_params: list[NormParams] | None = None
    k_norm_params: list[NormParams] | None = None
    mlp_post_params: list[NormParams] | None = None
    relevance: bool = False  # this is the relevance view (:meth:`relevance_view`): LRP's rules in the backward
    _relevance_view: Arch | None = field(default=None, init=False, repr=False)
    _rope: dict[tuple[int, torch.dtype, str | None], tuple[torch.Tensor, torch.Tensor]] = field(
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

    def relevance_view(self) -> Arch:
        """The same model with relevance patching's propagation rules (RelP; Jafari et al. 2025) in its backward
        pass: every norm by the LN-rule (:func:`relevance_norm`), the MLP's activation (and a final logit soft-cap)
        by the Identity-rule (:func:`identity_rule`), a gated MLP's product by the Half-rule (:func:`half_rule`),
        and a post-attention norm's scale held constant. Forward values are the model's (to float rounding); only
        gradients change. Built once per Arch."""
        if self.relevance:
            return self
        if self._relevance_view is None:
            if self.ln2_params is None or self.ln_final_params is None:
                raise UnsupportedArchitecture(f"{self.name}: the relevance rules need the norms' parameters, which "
                                              "this architecture's builder does not record")

            def norms(ps: list[NormParams] | None) -> list[Norm] | None:
                return None if ps is None else [relevance_norm(p, self.rms) for p in ps]

            for kind, fn, ps in (("q_norm", self.q_norm, self.q_norm_params),
                                 ("k_norm", self.k_norm, self.k_norm_params),
                                 ("mlp_post", self.mlp_post, self.mlp_post_params)):
                if fn is not None and ps is None:
                    raise UnsupportedArchitecture(f"{self.name}: the relevance rules need the {kind} parameters")
            self._relevance_view = dataclasses.replace(
                self, ln1=[relevance_norm(p, self.rms) for p in self.ln1_params],
                ln2=[relevance_norm(p, self.rms) for p in self.ln2_params],
                ln_final=relevance_norm(self.ln_final_params, self.rms), q_norm=norms(self.q_norm_params),
                k_norm=norms(self.k_norm_params), mlp_post=norms(self.mlp_post_params),
                act=identity_rule(self.act), relevance=True)
        return self._relevance_view

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, P]`` -> the ``input`` writer's output ``[B, P, d]``."""
        x = F.embedding(tokens, self.W_E)
        if self.embed_scale != 1.0:
            x = x * torch.tensor(self.embed_scale, dtype=self.W_E.dtype)
        if self.W_pos is not None:
            x = x + self.W_pos[: tokens.shape[-1]]
        return x

    def mlp(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """The MLP of ``layer`` on normalised input ``x [..., d]``."""
        h = torch.addmm(self.b_in[layer], x.reshape(-1, self.d_model), self.W_in[layer])
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
            if self.relevance:
                h = half_rule(h)
        else:
            h = self.act(h)
        out = torch.addmm(self.b_out[layer], h, self.W_out[layer]).view(*x.shape[:-1], self.d_model)
        return self.mlp_post[layer](out) if self.mlp_post is not None else out

    def head_outputs(self, layer: int, heads: torch.Tensor) -> torch.Tensor:
        """The head writers' outputs ``[H, ..., d]`` from the heads' own ``z W_O`` (same shape).

        Without a norm after attention they are the same tensor. With one (Gemma), the residual stream receives
        ``gamma * sum_h o_h / rms(sum_h o_h)``: each head's output is its share ``gamma * o_h / rms(sum_h o_h)``,
        normalised by the sum of every head of the layer in the same run. So all heads of a run sum exactly to what
        the model adds, and a head patched from the counterfactual carries its share under the counterfactual's
        normalisation (see the README, "post-normed attention").
        """
        if self.attn_post is None:
            return heads
        gamma, eps = self.attn_post[layer]
        total = heads.sum(0)
        if total.dtype in (torch.float16, torch.bfloat16):
            rstd = torch.rsqrt(total.float().square().mean(-1, keepdim=True) + eps).to(total.dtype)
        else:
            rstd = torch.rsqrt(total.square().mean(-1, keepdim=True) + eps)
        if self.relevance:  # the LN-rule: the norm's scale is a constant
            rstd = rstd.detach()
        return heads * (rstd * gamma)

    def unembed(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ self.W_U
        out = out + self.b_U if self.b_U is not None else out
        if self.final_softcap is not None:
            c = self.final_softcap

            def cap(t: torch.Tensor) -> torch.Tensor:
                return torch.tanh(t / c) * c

            out = identity_rule(cap)(out) if self.relevance else cap(out)
        return out

    @property
    def device(self) -> torch.device:
        return self.W_Q.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_Q.dtype

    def rope(self, p: int, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``[P, dh]`` of positions ``0..p-1`` for ``layer``, from the model's own rotary module (so any
        rope scaling it implements, and a base per layer type, is used exactly as in Hugging Face)."""
        kind = self.rope_types[layer] if self.rope_types is not None else None
        key = (p, self.dtype, kind)
        if key not in self._rope:
            like = torch.empty(1, p, self.d_model, dtype=self.dtype, device=self.device)
            pos = torch.arange(p, device=self.device).unsqueeze(0)
            with torch.no_grad():
                cos, sin = self.rotary(like, pos) if kind is None else self.rotary(like, pos, kind)
            self._rope[key] = (cos[0].to(self.dtype), sin[0].to(self.dtype))
        return self._rope[key]

    def finish_q(self, layer: int, q: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None
                 ) -> torch.Tensor:
        """A query after its projection: per-head norm and scale (Gemma), then rotation by ``cos``/``sin``
        (broadcast over ``q [..., P, dh]``; None without rotary embeddings)."""
        if self.q_norm is not None:
            q = self.q_norm[layer](q) * self.q_scale
        return q * cos + rotate_half(q) * sin if cos is not None and sin is not None else q

    def finish_k(self, layer: int, k: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None
                 ) -> torch.Tensor:
        """A key after its projection: per-head norm (Gemma), then rotation."""
        if self.k_norm is not None:
            k = self.k_norm[layer](k)
        return k * cos + rotate_half(k) * sin if cos is not None and sin is not None else k

    def hidden(self, layer: int, q_pos: torch.Tensor, p: int) -> torch.Tensor:
        """Which keys ``0..p-1`` the queries at positions ``q_pos`` (any shape) may not see: later ones, and with a
        sliding window of length w those with ``q - k >= w``. Bool ``[*q_pos.shape, p]``."""
        keys = torch.arange(p, device=q_pos.device)
        gap = q_pos.unsqueeze(-1) - keys
        out = gap < 0
        w = self.windows[layer] if self.windows is not None else None
        return out | (gap >= w) if w is not None else out

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int = 0) -> torch.Tensor:
        """Causal softmax attention of ``layer``, head-major: q ``[H, N, P, dh]``, k/v ``[G, N, P, dh]`` (as
        projected) -> z ``[H, N, P, dh]``.

        q and k are finished here (:meth:`finish_q`, :meth:`finish_k`: per-head norms, rotation). With grouped-query
        attention, query heads ``h`` with ``h // (H / G) = g`` attend with key/value head ``g``.
        """
        p = q.shape[-2]
        cos, sin = self.rope(p, layer) if self.rotary is not None else (None, None)
        q = self.finish_q(layer, q, cos, sin)
        k = self.finish_k(layer, k, cos, sin)
        if self.n_kv_heads != self.n_heads:
            rep = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(rep, dim=0)
            v = v.repeat_interleave(rep, dim=0)
        scores = torch.matmul(q, k.transpose(-1, -2))  # W_Q and b_Q (or q_scale) carry the attention scale
        hidden = self.hidden(layer, torch.arange(p, device=q.device), p)
        scores = scores.masked_fill_(hidden, torch.finfo(scores.dtype).min)
        return torch.matmul(scores.softmax(-1), v)
