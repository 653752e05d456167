"""Exact evaluation of circuits that differ from a current circuit by a few edges: the fast ACDC engine.

Removing edge (u -> r) from circuit M changes only reader r's input (by ``-delta_u``), hence only r's node, and from
there only the nodes reachable through edges still in M. The engine keeps the current circuit's state (every
writer's ``delta_u = a_u - ã_u``, every head's rotated q, k and v) and, for a candidate, recomputes just those nodes,
at just the positions that can reach the metric:

- the metric reads a few positions T_b of each prompt b (the last token for IOI); causal attention means nothing
  after max(T) matters, so every tensor stops there;
- a node whose output reaches the logits only through q readers, MLPs and the logits themselves (never through a
  later head's k or v) is needed at T_b alone; the others at every position. This set only shrinks as edges are
  removed, so a node's state at positions it no longer needs may go stale without ever being read again;
- a key/value change always recomputes every position (queries at T attend to all earlier keys).

Everything is the same arithmetic as the masked forward (acdc.patching), in a different order, so distances agree to
rounding (~1e-7 relative in float32). Cost is counted in floating-point operations and reported as full-model
forward equivalents: FLOPs done / FLOPs of one plain forward of the model over the whole batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from acdc.arch import Arch
from acdc.graph import Graph
from acdc.patching import AblationCache
from acdc.types import TaskData


def forward_flops(arch: Arch, batch: int, n_pos: int) -> float:
    """Multiply-add FLOPs of one plain forward of the model over ``batch`` prompts of ``n_pos`` tokens (attention
    scores counted over the full square, as the masked forward computes them)."""
    H, G, dh, d = arch.n_heads, arch.n_kv_heads, arch.d_head, arch.d_model
    d_mlp = arch.W_out.shape[1]
    per_layer = (2 * d * (H + 2 * G) * dh + 2 * H * dh * d + 2 * d * d_mlp * (3 if arch.gated else 2)) * n_pos
    per_layer += 4 * H * n_pos * n_pos * dh
    return float(batch) * (arch.n_layers * per_layer + 2 * n_pos * d * arch.W_U.shape[1])


class _Pos:
    """A set of positions per prompt: every position ``0..P-1`` (``all``) or an index ``[B, n]``."""

    def __init__(self, index: torch.Tensor | None, n_pos: int) -> None:
        self.index = index
        self.n = n_pos if index is None else index.shape[1]

    @property
    def all(self) -> bool:
        return self.index is None

    def take(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``x [..., B', P', w]`` at these positions (``P' = 1`` broadcasts; ``B' = 1`` is expanded)."""
        if self.index is None or x.shape[-2] == 1:
            return x
        idx = self.index
        lead = x.shape[:-3]
        b = max(x.shape[-3], idx.shape[0])
        x = x.expand(*lead, b, *x.shape[-2:])
        return x.gather(-2, idx.view(*([1] * len(lead)), b, -1, 1).expand(*lead, b, idx.shape[1], x.shape[-1]))


@dataclass
class MetricPositions:
    """The positions the metric reads: ``index [B, n]`` per prompt (padded by repeating the prompt's last one),
    ``data`` the task data restricted to them (pads masked out of ``positions``), ``n_pos`` the number of positions
    that matter (nothing after the last metric position can reach the metric)."""

    index: torch.Tensor
    data: TaskData
    n_pos: int


def metric_positions(data: TaskData) -> MetricPositions:
    """Where ``data``'s metric reads, as a position index per prompt and the sub-data at those positions."""
    positions = data.positions.cpu()
    B, P = positions.shape
    counts = positions.sum(1)
    n = int(counts.max())
    order = torch.arange(P).expand(B, P)
    key = torch.where(positions, order, order + P)  # metric positions first, in order
    idx = key.sort(1).values[:, :n]
    pad = torch.arange(n).unsqueeze(0) >= counts.unsqueeze(1)
    last = idx.gather(1, (counts - 1).clamp_min(0).unsqueeze(1))
    idx = torch.where(pad, last, idx)
    return MetricPositions(idx, _subset(data, idx, ~pad), int(positions.any(0).nonzero().max()) + 1)


class Incremental:
    """The current circuit's state and exact evaluation of candidate circuits that differ from it by a few edges.

    ``propagate(masks, seeds)`` evaluates K candidate masks (each a subset of the current one whose differences are
    edges into the readers ``seeds``) and returns their logits at the metric positions ``[K, B, n, V]``;
    ``commit(j)`` makes candidate j the current circuit. ``reset(mask)`` recomputes the whole state.
    """

    def __init__(self, arch: Arch, graph: Graph, clean: torch.Tensor, cache: AblationCache, data: TaskData) -> None:
        self.arch, self.graph = arch, graph
        dev = arch.device
        mp = metric_positions(data)
        B = len(data)
        self.P = mp.n_pos
        idx = mp.index.to(dev)
        self.T = _Pos(idx, self.P)
        self.ALL = _Pos(None, self.P)
        self.sub = mp.data
        self.B = B
        self.flops = 0.0
        self.full_flops = forward_flops(arch, B, data.positions.shape[1])
        Pm = self.P

        def cut(x: torch.Tensor) -> torch.Tensor:
            return x[..., :Pm, :] if x.shape[-2] > 1 else x

        self.abl = cut(cache.writers)  # [S, B', P', d]
        self.base_attn, self.base_mlp, self.base_final = cut(cache.base_attn), cut(cache.base_mlp), cut(
            cache.base_final)
        H, G, dh, d, L = arch.n_heads, arch.n_kv_heads, arch.d_head, arch.d_model, arch.n_layers
        self.delta = torch.zeros(graph.n_src, B, Pm, d, dtype=arch.dtype, device=dev)
        self.inp = torch.zeros(graph.n_dst, B, Pm, d, dtype=arch.dtype, device=dev)  # every reader's input
        self.q = torch.zeros(L, H, B, Pm, dh, dtype=arch.dtype, device=dev)
        self.kv = torch.zeros(L, 2 * G, B, Pm, dh, dtype=arch.dtype, device=dev)  # k of each group, then v
        x0 = arch.embed(clean.to(dev)[:, :Pm])
        self.delta[0] = x0 - self.abl[0]
        # cos and sin of every position, per layer (layer types may rotate with their own base)
        self.rot = [arch.rope(Pm, layer) for layer in range(L)] if arch.rotary is not None else None
        self.post_norm = arch.attn_post is not None  # a head's output depends on every head of its layer
        self.mask = graph.valid.clone()
        self.mask_np = self.mask.numpy()
        self.need_all = [True] * graph.n_src
        self.live = [True] * graph.n_src
        self.logits: torch.Tensor | None = None
        self._pending: dict[str, Any] | None = None
        self._full = False  # the pass under way computes every reader input from scratch
        self._removed = np.zeros_like(self.mask_np)  # edges some candidate of the pass under way removes
        self._new_inputs: dict[int, tuple[torch.Tensor, _Pos]] = {}
        # a full pass computes the inputs of readers that share their possible writers in one product over the
        # writer store (the attention readers of a layer; its MLP reader; the logits), as the masked forward does
        self._group: dict[int, tuple[list[int], int]] = {}
        for layer in range(L):
            rs = graph.attn_readers(layer)
            block = list(range(rs.start, rs.stop))
            for r in block:
                self._group[r] = (block, graph.head_writer(layer, 0))
            self._group[graph.mlp_reader(layer)] = ([graph.mlp_reader(layer)], graph.mlp_writer(layer))
        self._group[graph.logits_index] = ([graph.logits_index], graph.n_src)
        self._block: dict[int, torch.Tensor] = {}

    # ---- state --------------------------------------------------------------------------------------------------
    def set_mask(self, mask: torch.Tensor) -> None:
        """Record the current circuit (a subset of the previous one, or anything after :meth:`reset`) and which
        writers are live (on a path to the logits) and needed at every position (vectorised over each layer)."""
        g = self.graph
        H, G = g.n_heads, g.n_kv_heads
        rep = H // G
        self.mask = mask.to(torch.bool).cpu().clone()
        m = self.mask_np = self.mask.numpy()
        live = np.zeros(g.n_src, dtype=bool)
        need = np.zeros(g.n_src, dtype=bool)
        r_live = np.zeros(g.n_dst, dtype=bool)  # the reader's node is live
        r_need = np.zeros(g.n_dst, dtype=bool)  # the reader's input is needed at every position
        r_live[g.logits_index] = True
        for layer in range(g.n_layers - 1, -1, -1):
            w = g.mlp_writer(layer)
            live[w], need[w] = (m[w] & r_live).any(), (m[w] & r_need).any()
            r = g.mlp_reader(layer)
            r_live[r], r_need[r] = live[w], need[w]
            ws = slice(g.head_writer(layer, 0), g.head_writer(layer, 0) + H)
            live[ws], need[ws] = (m[ws] & r_live).any(1), (m[ws] & r_need).any(1)
            if self.post_norm:  # every head's output is normalised by the layer's sum: all or none are computed
                live[ws], need[ws] = live[ws].any(), need[ws].any()
            rs = g.attn_readers(layer).start
            r_live[rs : rs + H], r_need[rs : rs + H] = live[ws], need[ws]
            grp = live[ws].reshape(G, rep).any(1)  # a key/value head is live when one of its query heads is
            for off in (H, H + G):
                r_live[rs + off : rs + off + G] = grp
                r_need[rs + off : rs + off + G] = grp  # keys and values are read at every position
        live[0] = need[0] = True
        self.live, self.need_all = live.tolist(), need.tolist()

    def reset(self, mask: torch.Tensor) -> torch.Tensor:
        """Make ``mask`` the current circuit, computing every node; returns its logits at the metric positions."""
        self.set_mask(mask)
        self.logits = None
        logits = self.propagate(self.mask.unsqueeze(0), set(range(self.graph.n_dst)), full=True)
        self.commit(0)
        return logits[0]

    def commit(self, j: int) -> None:
        """Make candidate ``j`` of the last :meth:`propagate` the current circuit."""
        p = self._pending
        assert p is not None, "commit() follows propagate()"
        for w, (val, pos) in p["writers"].items():
            _put(self.delta[w], val[min(j, val.shape[0] - 1)], pos)
        for (layer, h), (val, pos) in p["q"].items():
            _put(self.q[layer, h], val[min(j, val.shape[0] - 1)], pos)
        for r, (val, pos) in p["inputs"].items():
            _put(self.inp[r], val[min(j, val.shape[0] - 1)], pos)
        for (layer, i), val in p["kv"].items():
            self.kv[layer, i] = val[min(j, val.shape[0] - 1)]
        self.logits = p["logits"][j].clone()
        self._pending = None
        self.set_mask(p["masks"][j])

    # ---- evaluation ---------------------------------------------------------------------------------------------
    def propagate(self, masks: torch.Tensor, seeds: set[int], *, full: bool = False) -> torch.Tensor:
        """Logits ``[K, B, n, V]`` at the metric positions of K candidate circuits ``masks [K, S, R]`` (bool, each a
        subset of the current circuit differing from it only in edges into ``seeds``). ``full``: compute every
        reader input from scratch (:meth:`reset`) instead of updating the stored ones."""
        arch, g = self.arch, self.graph
        K = masks.shape[0]
        masks = masks.to(torch.bool).cpu()
        union = masks.any(0).numpy()
        self._full = full
        if full and K != 1:
            raise ValueError("a full pass computes one circuit")
        self._block = {}
        self._removed = self.mask_np & ~masks.all(0).numpy()
        self._new_inputs = {}
        hit = np.zeros(self.graph.n_dst, dtype=bool)  # readers fed by a changed writer
        coef = masks.to(arch.dtype).to(arch.device)
        H, G, L = arch.n_heads, arch.n_kv_heads, arch.n_layers
        changed: dict[int, tuple[torch.Tensor, _Pos]] = {}
        new_q: dict[tuple[int, int], tuple[torch.Tensor, _Pos]] = {}
        new_kv: dict[tuple[int, int], torch.Tensor] = {}

        def dirty(r: int) -> bool:
            return r in seeds or bool(hit[r])

        def record(w: int, value: torch.Tensor, pos: _Pos) -> None:
            changed[w] = (value, pos)
            hit[:] |= union[w]
            if full:  # the one circuit of a full pass is committed next: later readers' products read the store
                _put(self.delta[w], value[0], pos)

        def pos_of(w: int) -> _Pos:
            return self.ALL if self.need_all[w] else self.T

        for layer in range(L):
            rs = g.attn_readers(layer)
            dirty_q = [h for h in range(H) if dirty(rs.start + h)]
            rep = H // G
            live_heads = [h for h in range(H) if self.live[g.head_writer(layer, h)]]
            dirty_kv = [i for i in range(2 * G) if dirty(rs.start + H + i)
                        and any(h // rep == i % G for h in live_heads)]
            for i in dirty_kv:
                x = self._input(rs.start + H + i, self.base_attn[layer], self.ALL, coef, changed)
                y = self._project(layer, H + i, x, self.ALL)
                new_kv[(layer, i)] = y
            heads = sorted((set(dirty_q) | {h for h in range(H) for i in dirty_kv if h // rep == i % G})
                           & set(live_heads))
            if self.post_norm and heads:
                heads = live_heads  # the layer's norm changes with any head: every head's share is recomputed
            raw: list[torch.Tensor] = []
            for h in heads:
                w = g.head_writer(layer, h)
                pos = pos_of(w)
                if h in dirty_q:
                    x = self._input(rs.start + h, self.base_attn[layer], pos, coef, changed)
                    q = self._project(layer, h, x, pos)
                    new_q[(layer, h)] = (q, pos)
                else:
                    q = pos.take(self.q[layer, h]).unsqueeze(0)
                grp = h // rep
                k = new_kv.get((layer, grp), self.kv[layer, grp].unsqueeze(0))
                v = new_kv.get((layer, G + grp), self.kv[layer, G + grp].unsqueeze(0))
                raw.append(self._attend(layer, h, q, k, v, pos))
            if heads:
                # (with a post-attention norm every head of the layer is at the same positions; without one, heads
                # may be computed at different positions and their outputs are their own)
                outs = arch.head_outputs(layer, torch.stack(torch.broadcast_tensors(*raw))) if self.post_norm else raw
                for h, out in zip(heads, outs, strict=True):
                    w = g.head_writer(layer, h)
                    pos = pos_of(w)
                    record(w, out - pos.take(self.abl[w]), pos)
            r = g.mlp_reader(layer)
            w = g.mlp_writer(layer)
            if self.live[w] and dirty(r):
                pos = pos_of(w)
                x = self._input(r, self.base_mlp[layer], pos, coef, changed)
                out = arch.mlp(layer, arch.ln2[layer](x))
                self.flops += 2.0 * x[..., 0].numel() * arch.d_model * arch.W_in.shape[2]
                self.flops += 2.0 * x[..., 0].numel() * arch.W_out.shape[1] * arch.d_model
                record(w, out - pos.take(self.abl[w]), pos)
        r = g.logits_index
        if dirty(r) or self.logits is None:
            x = self._input(r, self.base_final, self.T, coef, changed)
            logits = arch.unembed(arch.ln_final(x))
            self.flops += 2.0 * x[..., 0].numel() * arch.d_model * arch.W_U.shape[1]
        else:
            logits = self.logits.unsqueeze(0).expand(K, *self.logits.shape)
        self._pending = {"writers": changed, "q": new_q, "kv": new_kv, "logits": logits, "masks": masks,
                         "inputs": self._new_inputs}
        return logits

    def _input(self, r: int, base: torch.Tensor, pos: _Pos, coef: torch.Tensor,
               changed: dict[int, tuple[torch.Tensor, _Pos]]) -> torch.Tensor:
        """Reader ``r``'s input ``[K, B, n, d]`` at ``pos`` under each candidate mask: the stored input plus the
        changes (``M_k[u, r] * new_u - M[u, r] * old_u`` over the writers that changed or lost their edge into r),
        or from scratch (``base + sum_u M_k[u, r] * delta_u``) in a full pass."""
        K = coef.shape[0]
        col = coef[:, :, r]
        shape = (K, self.B, pos.n, self.arch.d_model)

        def value(u: int) -> torch.Tensor:
            val, vpos = changed[u]
            assert vpos.all or not pos.all, "a writer needed at every position was computed at a few"
            return pos.take(val) if vpos.all and not pos.all else val

        if self._full:
            # every writer of this pass is already in the store (record); stale values of writers off every path
            # reach only readers off every path, whose inputs are never read
            if r not in self._block:
                group, n_up = self._group[r]
                B, P, d = self.B, self.P, self.arch.d_model
                m = coef[0, :n_up][:, group]
                prod = torch.addmm(base.expand(B, P, d).reshape(1, -1), m.t(), self.delta[:n_up].view(n_up, -1))
                for i, rr in enumerate(group):
                    self._block[rr] = prod[i].view(1, B, P, d)
                self.flops += 2.0 * n_up * len(group) * B * P * d
            out = pos.take(self._block.pop(r))
            n_terms = 0
        else:
            out = pos.take(self.inp[r]).expand(shape).clone()
            terms = set(np.flatnonzero(self._removed[:, r]).tolist())
            terms |= {u for u in changed if self.mask_np[u, r]}
            for u in sorted(terms):
                old = pos.take(self.delta[u])
                new = value(u) if u in changed else old
                out += col[:, u].view(K, 1, 1, 1) * new - old
            n_terms = 2 * len(terms)
        self.flops += 2.0 * n_terms * out.numel()
        self._new_inputs[r] = (out, pos)
        return out

    def _project(self, layer: int, i: int, x: torch.Tensor, pos: _Pos) -> torch.Tensor:
        """Reader ``i`` (q of a head, k or v of a group) of ``layer``: normalise, project, and for q and k the
        per-head norm and rotation (:meth:`Arch.finish_q`)."""
        arch = self.arch
        y = arch.ln1[layer](x) @ arch.W_read[layer, i] + arch.b_read[layer, i]
        self.flops += 2.0 * x[..., 0].numel() * arch.d_model * arch.d_head
        if i >= arch.n_heads + arch.n_kv_heads:  # a value
            return y
        cos = sin = None
        if self.rot is not None:
            cos, sin = self.rot[layer]
            if pos.index is not None:
                cos, sin = cos[pos.index], sin[pos.index]
        return arch.finish_q(layer, y, cos, sin) if i < arch.n_heads else arch.finish_k(layer, y, cos, sin)

    def _attend(self, layer: int, h: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                pos: _Pos) -> torch.Tensor:
        """Head ``h``'s own output ``z W_O`` ``[K, B, n, d]`` for queries at ``pos`` over every key up to the last
        position (before :meth:`Arch.head_outputs`)."""
        arch = self.arch
        scores = q @ k.transpose(-1, -2)  # [K, B, n, P]
        q_pos = torch.arange(self.P, device=q.device) if pos.index is None else pos.index  # [P] or [B, n]
        scores = scores.masked_fill(arch.hidden(layer, q_pos, self.P), torch.finfo(scores.dtype).min)
        z = scores.softmax(-1) @ v
        self.flops += 4.0 * z[..., 0].numel() * self.P * arch.d_head  # scores and weighted values
        self.flops += 2.0 * z[..., 0].numel() * arch.d_head * arch.d_model
        return z @ arch.W_O[layer, h]


def _put(dst: torch.Tensor, val: torch.Tensor, pos: _Pos) -> None:
    """Write ``val [B, n, w]`` into ``dst [B, P, w]`` at ``pos``."""
    idx = pos.index
    if idx is None:
        dst.copy_(val.expand_as(dst))
    else:
        dst.scatter_(1, idx.unsqueeze(-1).expand(*idx.shape, dst.shape[-1]), val.expand(idx.shape[0], *val.shape[-2:]))


def _subset(data: TaskData, idx: torch.Tensor, real: torch.Tensor) -> TaskData:
    """``data`` restricted to the positions ``idx [B, n]`` (entries where ``real`` is False are padding)."""

    def cols(x: torch.Tensor) -> torch.Tensor:
        i = idx.to(x.device)
        if x.dim() == 3:
            return x.gather(1, i.unsqueeze(-1).expand(*i.shape, x.shape[-1]))
        return x.gather(1, i)

    positions = data.positions.gather(1, idx.to(data.positions.device)) & real.to(data.positions.device)
    return replace(data, clean=cols(data.clean), corrupt=cols(data.corrupt), positions=positions,
                   answers=cols(data.answers), wrong=None if data.wrong is None else cols(data.wrong))
