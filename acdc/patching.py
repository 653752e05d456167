"""The masked forward: one differentiable pass that evaluates K edge masks at once.

For every reader v (a head's q/k/v input, an MLP's input, the logits) and mask m:

    in_v = sum_u  m[u, v] * a_u  +  (1 - m[u, v]) * ã_u  =  base_v + sum_u m[u, v] * (a_u - ã_u)

where a_u is writer u's output in the masked run itself, ã_u its output in the counterfactual run (or its mean over
a reference set, or zero), and ``base_v`` is the ablated run's residual stream at v (the sum of the ã_u upstream of
v plus the constant biases that belong to no writer, such as attention's ``b_O``). Binary masks give exact
activation patching; the map is differentiable in ``m``, which EAP, EAP-IG and edge pruning use.

Implementation notes
- Writers upstream of any reader form a prefix of the writer list (see acdc.graph), so the reader inputs of a whole
  layer are one matmul ``masks[:, :U, readers]^T @ delta[:U]`` over a store of ``delta_u = a_u - ã_u``.
- The store is one preallocated tensor written once per writer. Autograd would refuse to backpropagate through
  slices of a tensor that is later written in place, so the mixing is a custom autograd function (`_Mix`) that
  reads the store directly and returns gradients for the masks and for each writer chunk.
- The ablated run is computed once per batch (`AblationCache`) and broadcast over the K masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from acdc.arch import Arch, get_arch
from acdc.errors import InputError, ShapeError
from acdc.graph import Graph
from acdc.types import ABLATIONS, Ablation


@dataclass(eq=False)
class AblationCache:
    """What every writer is replaced by outside the mask, and the ablated run's residual stream.

    Leading dimension B' of every tensor is the batch size (``patch``) or 1 (``mean``/``zero``, broadcast over
    the batch); the position dimension is 1 for ``zero``.
    """

    ablation: str
    writers: torch.Tensor  # [n_src, B', P', d]
    base_attn: torch.Tensor  # [n_layers, B', P', d]: residual before each attention layer
    base_mlp: torch.Tensor  # [n_layers, B', P', d]: residual before each MLP
    base_final: torch.Tensor  # [B', P', d]: residual read by the logits

    @property
    def batch(self) -> int:
        return self.writers.shape[1]

    @property
    def n_pos(self) -> int:
        return self.writers.shape[2]


# ---- input checks ---------------------------------------------------------------------------------------------------
def check_tokens(name: str, tokens: Any, arch: Arch, model: Any) -> torch.Tensor:
    """``tokens`` as a long tensor on the model's device, or a one-line :class:`ShapeError` naming ``name``."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int):
        shape = list(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise ShapeError(f"{name} must be an integer tensor of token ids [batch, pos], got {shape}")
    if tokens.numel() == 0:
        raise ShapeError(f"{name} is empty ({list(tokens.shape)}); give at least one prompt of one token")
    vocab = model.cfg.d_vocab
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab:
        bad = hi if hi >= vocab else lo
        raise ShapeError(f"{name} has token id {bad}, outside the model's vocabulary [0, {vocab})")
    n_ctx = getattr(model.cfg, "n_ctx", None)
    if n_ctx and tokens.shape[1] > n_ctx:
        raise ShapeError(f"{name} has {tokens.shape[1]} positions; the model's context is {n_ctx}")
    return tokens.to(arch.device, torch.long)


def _check_masks(masks: Any, graph: Graph, arch: Arch) -> tuple[torch.Tensor, bool]:
    if not isinstance(masks, torch.Tensor):
        raise ShapeError(f"masks must be a tensor [K, {graph.n_src}, {graph.n_dst}], got {type(masks).__name__}")
    graph.check_mask(masks)
    single = masks.dim() == 2
    m = masks.unsqueeze(0) if single else masks
    if m.shape[0] == 0:
        raise ShapeError("masks has K = 0 masks; give at least one")
    if not m.dtype.is_floating_point:
        m = m.to(arch.dtype)
    return m.to(arch.device), single


def check_graph(graph: Graph, arch: Arch) -> None:
    """Refuse a graph built for another model (one line)."""
    if (graph.n_layers, graph.n_heads, graph.n_kv_heads) != (arch.n_layers, arch.n_heads, arch.n_kv_heads):
        raise ShapeError(
            f"graph {graph.signature()} does not belong to this model "
            f"(n_layers={arch.n_layers}, n_heads={arch.n_heads}, n_kv_heads={arch.n_kv_heads}); "
            "build it with Graph.from_model(model)"
        )


# ---- the unmasked pass (records every writer) -----------------------------------------------------------------------
def run_with_writers(model: Any, tokens: torch.Tensor) -> tuple[torch.Tensor, AblationCache]:
    """Plain forward that records every writer's output and the residual stream before each reader group.

    Returns ``(logits [B, P, V], cache)``; ``cache`` (ablation ``patch``) is what a counterfactual run provides.
    """
    arch = get_arch(model)
    tokens = check_tokens("tokens", tokens, arch, model)
    with torch.no_grad():
        return plain_forward(arch, tokens)


def plain_forward(arch: Arch, tokens: torch.Tensor, *, logits: bool = True) -> tuple[torch.Tensor, AblationCache]:
    """The unchecked :func:`run_with_writers` for library callers that validated their inputs; with
    ``logits=False`` the unembedding (the largest matmul of a small-batch forward) is skipped and an empty tensor
    stands in for the logits."""
    B, P = tokens.shape
    H, G, dh, L = arch.n_heads, arch.n_kv_heads, arch.d_head, arch.n_layers
    S = 1 + L * (H + 1)
    writers = torch.empty(S, B, P, arch.d_model, dtype=arch.dtype, device=arch.device)
    base_attn = torch.empty(L, B, P, arch.d_model, dtype=arch.dtype, device=arch.device)
    base_mlp = torch.empty_like(base_attn)
    resid = arch.embed(tokens)
    writers[0] = resid
    for layer in range(L):
        base_attn[layer] = resid
        qkv = arch.ln1[layer](resid) @ arch.W_Q_fused[layer] + arch.b_Q_fused[layer]  # [B, P, (H+2G)*dh]
        q, k, v = qkv.split([H * dh, G * dh, G * dh], dim=-1)
        q, k, v = (t.view(B, P, -1, dh).permute(2, 0, 1, 3) for t in (q, k, v))  # [heads, B, P, dh]
        z = arch.attention(q, k, v, layer)
        w0 = 1 + layer * (H + 1)
        heads = arch.head_outputs(layer, torch.matmul(z.reshape(H, B * P, dh), arch.W_O[layer]).view(H, B, P, -1))
        writers[w0 : w0 + H] = heads
        resid = resid + heads.sum(0) + arch.b_O[layer]
        base_mlp[layer] = resid
        mlp = arch.mlp(layer, arch.ln2[layer](resid))
        writers[w0 + H] = mlp
        resid = resid + mlp
    out = arch.unembed(arch.ln_final(resid)) if logits else torch.empty(0)
    return out, AblationCache("patch", writers, base_attn, base_mlp, resid)


def ablation_cache(
    model: Any,
    graph: Graph,
    tokens: torch.Tensor | None = None,
    ablation: Ablation = "patch",
) -> AblationCache:
    """What writers are replaced by outside the mask.

    - ``patch``: their outputs on the counterfactual prompts ``tokens`` (same shape as the clean prompts);
    - ``mean``: their outputs averaged over the reference prompts ``tokens`` at each position;
    - ``zero``: zero (``tokens`` unused); the residual keeps only the constant biases.
    """
    arch = get_arch(model)
    check_graph(graph, arch)
    if ablation not in ABLATIONS:
        raise InputError(f"unknown ablation '{ablation}'; choose one of {', '.join(ABLATIONS)}")
    if ablation == "zero":
        d = arch.d_model
        consts = torch.cumsum(arch.b_O, 0)  # attention output biases belong to no head
        zero = torch.zeros(1, d, dtype=arch.dtype, device=arch.device)
        before = torch.cat([zero, consts[:-1]], 0)
        return AblationCache(
            "zero",
            torch.zeros(graph.n_src, 1, 1, d, dtype=arch.dtype, device=arch.device),
            before.view(-1, 1, 1, d),
            consts.view(-1, 1, 1, d),
            consts[-1].view(1, 1, d),
        )
    if tokens is None:
        raise InputError(
            f"ablation '{ablation}' needs prompts: counterfactual prompts for 'patch', reference prompts for 'mean'"
        )
    tokens = check_tokens("tokens", tokens, arch, model)
    with torch.no_grad():
        _, cache = plain_forward(arch, tokens, logits=False)  # only the writers are needed
    if ablation == "mean":
        return AblationCache(
            "mean",
            cache.writers.mean(1, keepdim=True),
            cache.base_attn.mean(1, keepdim=True),
            cache.base_mlp.mean(1, keepdim=True),
            cache.base_final.mean(0, keepdim=True),
        )
    return cache


def shared_cache(
    model: Any, graph: Graph, reference: torch.Tensor | None, ablation: str, precomputed: AblationCache | None = None,
) -> AblationCache | None:
    """The ablation cache shared by every batch of a run: ``mean`` over ``reference`` (or ``precomputed``, e.g. the
    mean over every process's prompts), ``zero``; ``None`` for ``patch``, whose cache is per batch."""
    if ablation not in ABLATIONS:
        raise InputError(f"unknown ablation '{ablation}'; choose one of {', '.join(ABLATIONS)}")
    if precomputed is not None:
        if precomputed.ablation != ablation or ablation == "patch":
            raise InputError(f"a precomputed cache is for mean or zero ablation matching the ablation; got a "
                             f"{precomputed.ablation} cache for ablation {ablation}")
        return precomputed
    if ablation == "patch":
        return None
    return ablation_cache(model, graph, reference, ablation)  # type: ignore[arg-type]


# ---- the masked pass ----------------------------------------------------------------------------------------------
class _Store:
    """Preallocated ``delta_u = a_u - ã_u`` for every writer, ``[n_src, K, B, P, d]``, written once per writer."""

    def __init__(self, n_src: int, k: int, b: int, p: int, d: int, like: torch.Tensor) -> None:
        self.buf = torch.empty(n_src, k, b, p, d, dtype=like.dtype, device=like.device)


def mix(masks: torch.Tensor, base: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``base + sum_u masks[k, u, r] * delta[u, k]`` -> ``[R, K, B, P, d]``; ``base`` broadcasts to ``[B, P, d]``."""
    K, U, R = masks.shape
    _, _, B, P, d = delta.shape
    base = base.expand(B, P, d).reshape(1, -1)
    if K == 1:
        return torch.addmm(base, masks[0].t(), delta.view(U, -1)).view(R, 1, B, P, d)
    out = torch.empty(R, K, B * P * d, dtype=delta.dtype, device=delta.device)
    for k in range(K):
        out[:, k] = torch.addmm(base, masks[k].t(), delta[:, k].reshape(U, -1))
    return out.view(R, K, B, P, d)


class _Mix(torch.autograd.Function):
    """Reader inputs ``base + masks^T @ delta[:U]`` for a block of readers, differentiable in masks and deltas.

    Forward reads ``store.buf[:U]`` (which holds exactly the values of ``chunks``, concatenated); the chunks are
    inputs only so that autograd routes their gradients back to the writers that produced them.
    """

    @staticmethod
    def forward(ctx, masks, base, store, n_up, *chunks):  # type: ignore[override]
        ctx.save_for_backward(masks)
        ctx.store, ctx.n_up = store, n_up
        ctx.sizes, ctx.chunk_shapes = [c.shape[0] for c in chunks], [c.shape for c in chunks]
        return mix(masks, base, store.buf[:n_up])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (masks,) = ctx.saved_tensors
        K, U, R = masks.shape
        delta = ctx.store.buf[: ctx.n_up]
        g = grad.reshape(R, K, -1)
        grad_masks = None
        if ctx.needs_input_grad[0]:
            grad_masks = torch.stack([delta[:, k].reshape(U, -1) @ g[:, k].t() for k in range(K)])
        grads_chunks: list[torch.Tensor | None] = [None] * len(ctx.sizes)
        if any(ctx.needs_input_grad[4:]):
            if K == 1:  # one product, no copy into a preallocated [U, K, ...] buffer
                gd = (masks[0] @ g[:, 0]).unsqueeze(1)
            else:
                gd = torch.empty(U, K, g.shape[-1], dtype=g.dtype, device=g.device)
                for k in range(K):
                    gd[:, k] = masks[k] @ g[:, k]
            parts = gd.split(ctx.sizes, dim=0)
            grads_chunks = [p.reshape(s) if need else None
                            for p, s, need in zip(parts, ctx.chunk_shapes, ctx.needs_input_grad[4:], strict=True)]
        return (grad_masks, None, None, None, *grads_chunks)


def masked_forward(
    model: Any,
    graph: Graph,
    clean: torch.Tensor,
    corrupt: torch.Tensor | AblationCache | None,
    masks: torch.Tensor,
    *,
    ablation: Ablation = "patch",
) -> torch.Tensor:
    """Logits of the model with every edge outside ``masks`` patched, for K masks in one batched pass.

    Args:
        model: a TransformerBridge from :func:`acdc.load_model`.
        graph: ``Graph.from_model(model)``.
        clean: token ids ``[B, P]`` of the run being computed.
        corrupt: counterfactual token ids ``[B, P]`` (ablation ``patch``), reference prompts (``mean``), ``None``
            (``zero``), or a precomputed :class:`AblationCache` to reuse across calls.
        masks: ``[K, n_src, n_dst]`` or ``[n_src, n_dst]`` with values in [0, 1]; entries outside
            ``graph.valid`` are ignored. Differentiable.
        ablation: how writers outside the mask are replaced when ``corrupt`` is not a cache.

    Returns:
        logits ``[K, B, P, V]`` (or ``[B, P, V]`` for a single 2-D mask).
    """
    arch = get_arch(model)
    check_graph(graph, arch)
    if getattr(model, "training", False):
        raise InputError("model is in training mode (dropout on); call model.eval() first")
    clean = check_tokens("clean", clean, arch, model)
    m, single = _check_masks(masks, graph, arch)
    if isinstance(corrupt, AblationCache):
        cache = corrupt
    else:
        if ablation == "patch" and isinstance(corrupt, torch.Tensor) and tuple(corrupt.shape) != tuple(clean.shape):
            raise ShapeError(
                f"clean {list(clean.shape)} and corrupt {list(corrupt.shape)} must have the same shape "
                "(pair every prompt with a counterfactual of equal token length)"
            )
        cache = ablation_cache(model, graph, corrupt, ablation)
    B, P = clean.shape
    if cache.batch not in (1, B) or cache.n_pos not in (1, P):
        raise ShapeError(
            f"ablation cache is for batch {cache.batch} x {cache.n_pos} positions, clean is {B} x {P}"
        )
    m = m * graph.valid.to(m.device, m.dtype)
    logits = masked_forward_unchecked(arch, graph, clean, cache, m)
    return logits[0] if single else logits


def masked_forward_unchecked(
    arch: Arch,
    graph: Graph,
    clean: torch.Tensor,
    cache: AblationCache,
    m: torch.Tensor,
    at: torch.Tensor | None = None,
) -> torch.Tensor:
    """The masked pass without input checks, for library callers that validated their inputs once (searches,
    sweeps): logits ``[K, B, P, V]`` of the K masks ``m [K, n_src, n_dst]`` (floating, on the model's device).
    ``at [B, n]``: unembed only these positions of each prompt (``[K, B, n, V]``; on a large vocabulary the
    unembedding of every position is a large share of the pass, and more of its backward)."""
    K = m.shape[0]
    B, P = clean.shape
    H, G, dh, d, L = arch.n_heads, arch.n_kv_heads, arch.d_head, arch.d_model, arch.n_layers
    N = K * B
    grad = torch.is_grad_enabled() and m.requires_grad
    abl = cache.writers.unsqueeze(1)  # [S, 1, B', P', d], broadcast over K
    store = _Store(graph.n_src, K, B, P, d, arch.W_Q)
    chunks: list[torch.Tensor] = []
    # Without gradients, readers whose mask column is all ones share one input: the run's own residual
    # base + sum of all deltas so far (kept here as a running sum); all-zero columns share the ablated residual.
    total = None if grad else torch.zeros(K, B, P, d, dtype=arch.dtype, device=arch.device)

    def write(w0: int, out: torch.Tensor) -> None:
        n = out.shape[0]
        if torch.is_grad_enabled():
            delta = out.view(n, K, B, P, d) - abl[w0 : w0 + n]
            store.buf[w0 : w0 + n] = delta.detach()
        else:
            delta = torch.sub(out.view(n, K, B, P, d), abl[w0 : w0 + n], out=store.buf[w0 : w0 + n])
        if total is not None:
            total.add_(delta.sum(0))
        chunks.append(delta)

    def inputs(blk: torch.Tensor, base: torch.Tensor, n_up: int) -> torch.Tensor:
        """All readers' inputs ``[R, N, P, d]`` of a reader block (differentiable path)."""
        return _Mix.apply(blk, base, store, n_up, *chunks).view(blk.shape[-1], N, P, d)

    write(0, arch.embed(clean).unsqueeze(0).expand(K, B, P, d).reshape(1, N, P, d))
    for layer in range(L):
        n_up = graph.n_upstream_attn(layer)
        blk = m[:, :n_up, graph.attn_readers(layer)]
        base = cache.base_attn[layer]
        if total is None:
            x = arch.ln1[layer](inputs(blk, base, n_up).view(-1, N * P, d))  # [H + 2G, N*P, d]
            qkv = torch.baddbmm(arch.b_read[layer].unsqueeze(1), x, arch.W_read[layer])
        else:
            qkv = _shared_qkv(arch, layer, blk, base, total, store.buf[:n_up])
        q, k, v = qkv.view(-1, N, P, dh).split([H, G, G])
        z = arch.attention(q, k, v, layer)
        write(graph.head_writer(layer, 0), arch.head_outputs(layer, torch.bmm(z.view(H, N * P, dh), arch.W_O[layer])))
        n_up = graph.n_upstream_mlp(layer)
        r = graph.mlp_reader(layer)
        x = _single_input(m[:, :n_up, r], cache.base_mlp[layer], total, store.buf[:n_up], inputs)
        write(graph.mlp_writer(layer), arch.mlp(layer, arch.ln2[layer](x.view(N, P, d))).unsqueeze(0))

    r = graph.logits_index
    x = _single_input(m[:, :, r], cache.base_final, total, store.buf, inputs).view(K, B, P, d)
    if at is not None:
        idx = at.to(x.device)
        x = x.gather(2, idx.view(1, *idx.shape, 1).expand(K, *idx.shape, d))
    return arch.unembed(arch.ln_final(x)).view(K, B, x.shape[2], -1)


def _single_input(col: torch.Tensor, base: torch.Tensor, total: torch.Tensor | None, delta: torch.Tensor, inputs):
    """Input ``[K, B, P, d]`` of one reader (the MLP's, the logits') whose mask column is ``col [K, U]``."""
    if total is None:
        return inputs(col.unsqueeze(-1), base, col.shape[1])
    K, U = col.shape
    out = torch.empty_like(total)
    for k in range(K):
        if bool((col[k] == 0).all()):
            out[k] = base
        elif bool((col[k] == 1).all()):
            torch.add(total[k], base, out=out[k])
        else:
            out[k] = mix(col[k].view(1, U, 1), base, delta[:, k : k + 1])[0, 0]
    return out


def _shared_qkv(
    arch: Arch, layer: int, blk: torch.Tensor, base: torch.Tensor, total: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """q/k/v of every head ``[R, N*P, d_head]`` without gradients, sharing work between readers.

    Readers whose mask column is all zeros read the ablated residual ``base``; all ones, the run's own residual
    ``base + total``. Each shared input is normalised once and projected for all its readers in one matmul; only
    readers with mixed columns get inputs of their own (with grouped-query attention a k/v reader is one shared
    key/value head: one input per group, not per query head).
    """
    K, U, R = blk.shape
    _, B, P, d = total.shape
    dh = arch.d_head
    out = torch.empty(R, K, B * P, dh, dtype=total.dtype, device=total.device)
    W, b, W_cols = arch.W_read[layer], arch.b_read[layer], arch.W_read_cols[layer]
    ln = arch.ln1[layer]
    view = out.view(R, K, B, P, dh)
    for k in range(K):
        zeros, ones = (blk[k] == 0).all(0), (blk[k] == 1).all(0)
        mixed = ~(zeros | ones)
        for sel, own in ((zeros, False), (ones, True)):
            if not bool(sel.any()):
                continue
            xs = base + total[k] if own else base  # B', P' may be 1 (mean/zero ablation): project, then broadcast
            y = ln(xs.reshape(-1, d))
            if bool(sel.all()):
                proj = (y @ W_cols).view(*xs.shape[:2], R, dh).permute(2, 0, 1, 3) + b.view(R, 1, 1, dh)
                view[:, k] = proj
            else:
                idx = sel.nonzero().flatten()
                cols = W[idx].permute(1, 0, 2).reshape(d, -1)
                proj = (y @ cols).view(*xs.shape[:2], len(idx), dh).permute(2, 0, 1, 3) + b[idx].view(-1, 1, 1, dh)
                view[idx, k] = proj.expand(len(idx), B, P, dh)
        if bool(mixed.any()):
            idx = mixed.nonzero().flatten()
            x = mix(blk[k : k + 1, :, idx], base, delta[:, k : k + 1])  # [n, 1, B, P, d]
            x = x.view(len(idx), B * P, d)
            eps = arch.ln1_params[layer][2]
            sq = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(d)
            t = torch.bmm(x, arch.W_read_folded[layer][idx])
            if arch.rms:  # RMSNorm: no mean to subtract
                t.mul_(sq.add_(eps).rsqrt_())
            else:
                # two fast reductions (torch.var_mean is several times slower on CPU); E[x^2] - mean^2 is safe
                # here because residual-stream means are small next to their spread
                mean = x.mean(dim=-1, keepdim=True)
                rstd = sq.sub_(mean * mean).clamp_min_(0).add_(eps).rsqrt_()
                t.sub_(mean * arch.c_read_folded[layer][idx].unsqueeze(1)).mul_(rstd)
            out[idx, k] = t.add_(arch.b_read_folded[layer][idx].unsqueeze(1))
    return out.view(R, K * B * P, dh)
