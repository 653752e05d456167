"""Attribution patching: a score for every edge (or node) from a few forward/backward passes.

Every score is in metric units and estimates the change of the task metric M when the edge is ablated,
``M(without u->v) - M(full)``; negative means the edge supports the metric. Scores are averaged over prompts.

- ``eap`` (Syed et al. 2023): ``(ã_u - a_u) · ∂M/∂in_v`` with the gradient on the clean run; this equals
  ``-∂M/∂m_uv`` at ``m = 1`` (tested against autograd through the masked forward).
- EAP-IG along the inputs (Hanna et al. 2024): the gradient averaged over ``steps`` runs whose input embeddings are
  ``ẽ + α (e - ẽ)``, times the same ``ã_u - a_u``. Three rules place the α points (:func:`ig_alphas`), one method
  each; ``eap-ig`` is the right rule (:data:`DEFAULT_IG`: measured on the zoo's IOI and induction tasks over five
  prompt seeds, no rule's frontier was better on every seed):

  - ``eap-ig-inputs``: the right-endpoint rule, ``α = j / k`` for ``j = 1..k``: the clean run is included, the
    counterfactual excluded, so one step is exactly ``eap``;
  - ``eap-ig-left``: the left-endpoint rule, ``α = j / k`` for ``j = 0..k-1``, the convention of the EAP-IG library
    and of MIB (the counterfactual run included, the clean one not);
  - ``eap-ig-midpoint``: the midpoint rule, ``α = (j - 1/2) / k``: neither end point is sampled (the right rule
    over-weights the clean run, where gradients can saturate, the left rule the counterfactual one).

  The left and midpoint rules cost one forward more than the right one (the clean activations ``a``).
- ``eap-ig-activations``: for each writer group (the input, one layer's heads, one layer's MLP) in turn, the
  group's outputs are set to ``ã + α (a - ã)`` (same α grid) and the gradient on every reader downstream is
  averaged; scores of edges leaving that group use it. ``steps x (2L + 1)`` passes.
- ``clean-corrupted``: the average of the gradients on the clean and on the counterfactual run (patch ablation).
- ``relp``: relevance patching (Jafari et al. 2025): EAP with the gradient replaced by Layer-wise Relevance
  Propagation's coefficients, i.e. the gradient of a modified backward pass whose forward values are the model's:
  every norm's scale held constant (LN-rule), the MLP activation passing ``f(x)/x`` (Identity-rule), a gated MLP's
  product splitting its gradient in half (Half-rule); attention is differentiated as it is (the published default
  leaves the optional AH-rule, which would give every query and key edge a score of 0, off). Same cost as EAP; it
  equals ``-∂M/∂m`` at ``m = 1`` through the masked forward of :meth:`~acdc.arch.base.Arch.relevance_view`
  (tested). Its authors report it tracks activation patching much better than EAP where the nonlinearities bite
  (MLP outputs of deep models).
- ``mask-ig``: integrated gradients along the mask path, ``-mean_j ∂M/∂m`` at ``m = (j / steps) · 1`` — the
  masked forward differentiated directly (not the EAP-IG of the literature; named for what it is).
- ``exact``: one masked forward per edge (batched, K masks per pass): ``M(without the edge) - M(full)``.

Node level (``level="node"``) scores whole writers: for the gradient methods the first-order effect of ablating a
writer is the sum of its outgoing edges' scores (``∂M/∂a_u = Σ_v ∂M/∂in_v``), so node scores are exactly row sums;
``exact`` ablates all of a writer's outgoing edges at once (not a sum of edge effects).

How it is fast: one plain forward with autograd (no per-head inputs are formed), one backward, then per layer the
gradient on each head's q/k/v input is recovered from the gradient on its q/k/v vectors by the head's projection and
the layer norm's backward, ``g_v = LN'(x)^T (W_v g_qkv)``, and all edges into a layer's readers are scored by one
matmul ``(ã - a)[:U] @ g^T`` over the prompt/position/feature axes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch.nn import functional as F

from acdc.arch import Arch, get_arch
from acdc.errors import InputError
from acdc.graph import Graph
from acdc.incremental import metric_positions
from acdc.io import atomic_write_bytes, atomic_write_text
from acdc.metrics import task_metric
from acdc.patching import (
    AblationCache,
    ablation_cache,
    check_graph,
    check_tokens,
    masked_forward,
    plain_forward,
    shared_cache,
)
from acdc.types import ABLATIONS, Ablation, TaskData

Method = Literal["eap", "eap-ig-inputs", "eap-ig", "eap-ig-left", "eap-ig-midpoint", "eap-ig-activations",
                 "clean-corrupted", "relp", "mask-ig", "exact"]
METHODS: tuple[str, ...] = get_args(Method)
Level = Literal["edge", "node"]
IGRule = Literal["left", "right", "midpoint"]
IG_RULES: tuple[str, ...] = get_args(IGRule)
INPUT_IG_RULES: dict[str, IGRule] = {"eap-ig-inputs": "right", "eap-ig-left": "left", "eap-ig-midpoint": "midpoint"}
"""The integration rule of each EAP-IG-along-the-inputs method."""
DEFAULT_IG = "eap-ig-inputs"
"""What ``eap-ig`` means: the right-endpoint rule (one step = EAP). On zoo:toy-ioi and zoo:toy-induction over five
prompt seeds the three rules' frontiers differed by less than the seeds did (README, Attribution patching), so the
default stayed."""


def canonical(method: str) -> str:
    """The method an alias stands for (``eap-ig`` -> :data:`DEFAULT_IG`); other names unchanged."""
    return DEFAULT_IG if method == "eap-ig" else method


def ig_alphas(rule: str, steps: int) -> list[float]:
    """The interpolation points α of an integration rule with ``steps`` points on ``[0, 1]`` (0 = counterfactual,
    1 = clean): ``left`` ``j/k`` for ``j = 0..k-1``, ``right`` ``j/k`` for ``j = 1..k``, ``midpoint``
    ``(j - 1/2)/k`` for ``j = 1..k``."""
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    if rule == "left":
        return [j / steps for j in range(steps)]
    if rule == "right":
        return [j / steps for j in range(1, steps + 1)]
    if rule == "midpoint":
        return [(j - 0.5) / steps for j in range(1, steps + 1)]
    raise InputError(f"unknown integration rule '{rule}'; choose one of {', '.join(IG_RULES)}")


@dataclass(eq=False)
class EdgeScores:
    """Scores of every edge ``[n_src, n_dst]`` (or every writer ``[n_src]`` at node level), in metric units.

    A score estimates ``M(ablated) - M(full)``: negative means the edge (node) supports the metric. Entries for
    invalid edges are 0.
    """

    graph: Graph
    scores: torch.Tensor
    method: str
    level: Level = "edge"
    meta: dict[str, Any] = field(default_factory=dict)

    def ranked(self, *, absolute: bool = True) -> list[tuple[str, float]]:
        """(name, score) of every edge (node), most important first: by |score|, or by -score (most supportive
        first) with ``absolute=False``."""
        s = self.scores.double()
        if self.level == "edge":
            flat = s[self.graph.valid]
            names = self.graph.edge_names()
        else:
            flat = s
            names = list(self.graph.src_names)
        key = flat.abs() if absolute else -flat
        order = torch.argsort(key, descending=True, stable=True)
        return [(names[i], float(flat[i])) for i in order.tolist()]

    def top(self, k: int = 20, *, absolute: bool = True) -> list[tuple[str, float]]:
        return self.ranked(absolute=absolute)[:k]

    def save(self, folder: str | Path, *, top: int = 100) -> list[Path]:
        """Write ``scores.safetensors`` (the full score matrix) and ``top_edges.json`` (the ``top`` most important
        edges or nodes, with the metadata) into ``folder``, atomically."""
        from safetensors.torch import save

        folder = Path(folder)
        tensors = {"scores": self.scores.float().contiguous(), "valid": self.graph.valid.contiguous()}
        meta = {"method": self.method, "level": self.level, "graph": json.dumps(self.graph.signature())}
        a = atomic_write_bytes(folder / "scores.safetensors", save(tensors, metadata=meta))
        kind = "edges" if self.level == "edge" else "nodes"
        doc = {"format": "acdc-scores/1", "method": self.method, "level": self.level, "meta": self.meta,
               "graph": self.graph.signature(), "sign": "score = M(ablated) - M(full); negative supports the metric",
               f"top_{kind}": [{"name": n, "score": s} for n, s in self.top(top)]}
        b = atomic_write_text(folder / "top_edges.json", json.dumps(doc, indent=1))
        return [a, b]

    @classmethod
    def load(cls, folder: str | Path, graph: Graph) -> EdgeScores:
        """Scores written by :meth:`save`, for ``graph`` (checked against the file)."""
        from safetensors import safe_open

        p = Path(folder) / "scores.safetensors"
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                scores = f.get_tensor("scores")
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read scores from {p}: {e}") from None
        if json.loads(meta.get("graph", "{}")) != graph.signature():
            raise InputError(f"{p} holds scores for graph {meta.get('graph')}, not {graph.signature()}")
        level: Level = "node" if scores.dim() == 1 else "edge"
        return cls(graph, scores.double(), meta.get("method", "?"), level, {})

    def edge_vector(self) -> torch.Tensor:
        """Scores of the valid edges in ``graph.edge_names()`` order."""
        if self.level != "edge":
            raise InputError("node-level scores have no edge vector")
        return self.scores[self.graph.valid]


# ---- the gradient pass ----------------------------------------------------------------------------------------------
def _grad_scores(
    arch: Arch,
    graph: Graph,
    x0: torch.Tensor,
    metric: Callable[[torch.Tensor], torch.Tensor],
    abl: torch.Tensor,
    delta: torch.Tensor | None = None,
    override: tuple[int, torch.Tensor] | None = None,
    keep: list[torch.Tensor] | None = None,
    at: torch.Tensor | None = None,
) -> torch.Tensor:
    """``Σ_{b,p} δ_u · ∂M/∂in_v`` for every edge, from one forward (from input embeddings ``x0 [B, P, d]``) and one
    backward. With ``at [B, n]``, only those positions of each prompt are unembedded and ``metric`` takes logits
    ``[B, n, V]`` (the metric reads nothing else, so the scores are the same, and the unembedding of a large
    vocabulary at every position, with its backward, is saved).

    ``δ = delta`` if given (``[S, B, P, d]``), else ``abl - a`` with ``a`` the writer outputs of this very pass (EAP).
    ``override = (group, values)`` replaces the outputs of writer group ``group`` (0 = input, 1 + 2l = heads of layer
    l, 2 + 2l = MLP l) by ``values`` (eap-ig-activations). ``keep``, if given, receives this pass's writer outputs
    ``[S, B, P, d]`` (only when ``delta`` is None).
    """
    B, P, d = x0.shape
    H, G, dh, L = arch.n_heads, arch.n_kv_heads, arch.d_head, arch.n_layers
    S = graph.n_src
    own = delta is None
    store = torch.empty(S, B, P, d, dtype=arch.dtype, device=arch.device) if own else None
    saved: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    mlp_ins: list[torch.Tensor] = []

    def out(group: int, w0: int, value: torch.Tensor) -> torch.Tensor:
        if override is not None and override[0] == group:
            # the group's outputs take the given values; gradients still flow to what computed them (unused)
            value = value + (override[1].to(value.dtype) - value).detach()
        if store is not None:
            store[w0 : w0 + value.shape[0]] = value.detach()
        return value

    with torch.enable_grad():
        x = x0.detach().requires_grad_(True)
        resid = out(0, 0, x.unsqueeze(0))[0]
        for layer in range(L):
            gamma, beta, eps = arch.ln1_params[layer]
            with torch.no_grad():
                r = resid.detach()
                if arch.rms:
                    rstd = torch.rsqrt(r.square().mean(-1, keepdim=True) + eps)
                    xhat = r * rstd
                else:
                    mu = r.mean(-1, keepdim=True)
                    rstd = torch.rsqrt(r.var(-1, keepdim=True, unbiased=False) + eps)
                    xhat = (r - mu) * rstd
            normed = arch.ln1[layer](resid) if arch.rms or arch.relevance else F.layer_norm(resid, (d,), gamma, beta,
                                                                                             eps)
            qkv = normed @ arch.W_Q_fused[layer] + arch.b_Q_fused[layer]
            qkv.retain_grad()
            saved.append((qkv, xhat, rstd))
            q, k, v = qkv.split([H * dh, G * dh, G * dh], dim=-1)
            q, k, v = (t.reshape(B, P, -1, dh).permute(2, 0, 1, 3) for t in (q, k, v))
            z = arch.attention(q, k, v, layer)
            w0 = graph.head_writer(layer, 0)
            heads = out(1 + 2 * layer, w0, arch.head_outputs(
                layer, torch.bmm(z.reshape(H, B * P, dh), arch.W_O[layer]).view(H, B, P, d)))
            resid = resid + heads.sum(0) + arch.b_O[layer]
            m_in = resid.view_as(resid)
            m_in.retain_grad()
            mlp_ins.append(m_in)
            mlp = out(2 + 2 * layer, graph.mlp_writer(layer), arch.mlp(layer, arch.ln2[layer](m_in)).unsqueeze(0))
            resid = resid + mlp[0]
        f_in = resid.view_as(resid)
        f_in.retain_grad()
        f_at = f_in if at is None else f_in.gather(1, at.unsqueeze(-1).expand(*at.shape, d))
        logits = arch.unembed(arch.ln_final(f_at))
        value = metric(logits)
        value.backward()

    with torch.no_grad():
        dlt = abl - store if store is not None else delta  # [S, B, P, d] (abl may broadcast)
        assert dlt is not None
        dlt = dlt.expand(S, B, P, d).reshape(S, B * P, d)
        flat = dlt.view(S, -1)
        dsum = dlt.sum(-1)  # [S, BP]: each delta's sum over features, for the layer norm's mean term
        scores = torch.zeros(S, graph.n_dst, dtype=torch.float64, device=arch.device)
        for layer in range(L):
            qkv, xhat, rstd = saved[layer]
            assert qkv.grad is not None
            R = qkv.shape[-1] // dh
            # gradient on q/k/v -> on each reader's input: g_in = rstd (gx - mean(gx) - xhat mean(gx xhat)) with
            # gx = g W^T (W: the reader's projection with gamma folded in). The two means need no [R, BP, d] work:
            # mean(gx) = g . colsum(W) / d and mean(gx xhat) = g . (xhat W) / d, where xhat W = qkv - b_folded.
            # RMSNorm subtracts no mean, so its backward lacks the mean(gx) term. With grouped-query attention a
            # k/v reader is one shared head, and qkv.grad already sums the gradients of the group's query heads.
            # The relevance view's LN-rule holds rstd constant: the xhat term (rstd's own derivative) is dropped.
            gs = qkv.grad.reshape(B * P, R, dh).transpose(0, 1) * rstd.reshape(1, B * P, 1)  # [R, BP, dh]
            pre = (qkv.detach().reshape(B * P, R, dh).transpose(0, 1) - arch.b_read_folded[layer].unsqueeze(1))
            b = (gs * pre).sum(-1) / d  # [R, BP]
            gx = torch.bmm(gs, arch.W_read_folded[layer].transpose(1, 2))  # [R, BP, d]
            U = graph.n_upstream_attn(layer)
            sc = flat[:U] @ gx.reshape(R, -1).t()
            if not arch.rms:
                a = torch.einsum("rbh,rh->rb", gs, arch.c_read_folded[layer]) / d  # [R, BP]
                sc -= dsum[:U] @ a.t()
            if not arch.relevance:
                dx = torch.einsum("ubd,bd->ub", dlt[:U], xhat.reshape(B * P, d))  # [U, BP]
                sc -= dx @ b.t()
            scores[:U, graph.attn_readers(layer)] = sc.double()
            U = graph.n_upstream_mlp(layer)
            gm = mlp_ins[layer].grad
            assert gm is not None
            scores[:U, graph.mlp_reader(layer)] = (flat[:U] @ gm.reshape(-1)).double()
        assert f_in.grad is not None
        scores[:, graph.logits_index] = (flat @ f_in.grad.reshape(-1)).double()
    if keep is not None and store is not None:
        keep.append(store)
    return scores


# ---- public API ---------------------------------------------------------------------------------------------------
def attribute(
    model: Any,
    graph: Graph,
    data: TaskData,
    method: str = "eap-ig",
    *,
    ablation: Ablation = "patch",
    steps: int = 5,
    level: Level = "edge",
    batch_size: int = 32,
    exact_batch: int = 32,
    progress: bool = True,
    precomputed: AblationCache | None = None,
) -> EdgeScores:
    """Score every edge (``level="edge"``) or writer (``level="node"``) of ``graph`` on the task ``data``.

    Args:
        model: a model from :func:`acdc.load_model`.
        graph: ``Graph.from_model(model)``.
        data: prompts from ``Task.build``; the metric is ``data.metric`` (prompt-averaged).
        method: one of ``eap``, ``eap-ig-inputs`` (= ``eap-ig``), ``eap-ig-left``, ``eap-ig-midpoint``,
            ``eap-ig-activations``, ``clean-corrupted``, ``relp``, ``mask-ig``, ``exact``.
        ablation: ``patch`` (the counterfactual prompts), ``mean`` (writer means over the counterfactual prompts) or
            ``zero``. ``clean-corrupted`` needs ``patch``.
        steps: interpolation steps of the integrated-gradient methods.
        batch_size: prompts per pass (memory grows linearly with it).
        exact_batch: masks per masked forward for ``exact``.
        progress: show a progress bar.
        precomputed: a ``mean`` (or ``zero``) ablation cache computed elsewhere, used instead of the mean over
            ``data.corrupt`` (e.g. the mean over every process's prompts, :mod:`acdc.distributed`).

    Returns:
        :class:`EdgeScores` in metric units, averaged over prompts.
    """
    from tqdm.auto import tqdm

    if method not in METHODS:
        raise InputError(f"unknown attribution method '{method}'; choose one of {', '.join(METHODS)}")
    method = canonical(method)
    if ablation not in ABLATIONS:
        raise InputError(f"unknown ablation '{ablation}'; choose one of {', '.join(ABLATIONS)}")
    if level not in ("edge", "node"):
        raise InputError(f"unknown level '{level}'; use edge or node")
    if steps < 1:
        raise InputError(f"steps must be at least 1, got {steps}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    if method == "clean-corrupted" and ablation != "patch":
        raise InputError("clean-corrupted takes gradients on the counterfactual run, so it needs ablation 'patch'")
    if method in ("eap", "relp") and data.metric == "kl":
        raise InputError(f"the kl metric has zero gradient at the clean run, so {method} scores would all be 0; use a "
                         "task metric (logit_diff, prob_diff, logprob) or eap-ig-inputs")
    arch = get_arch(model)
    check_graph(graph, arch)
    clean = check_tokens("clean", data.clean, arch, model)
    corrupt = check_tokens("corrupt", data.corrupt, arch, model)
    if clean.shape != corrupt.shape:
        raise InputError(f"clean {list(clean.shape)} and counterfactual {list(corrupt.shape)} prompts differ in shape")
    n = clean.shape[0]
    mean_cache = shared_cache(model, graph, corrupt, ablation, precomputed)

    batches = [(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]
    per_batch, fwd_eq = attribution_cost(method, steps, graph, level=level, exact_batch=exact_batch)
    total = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float64) if level == "edge" or method != "exact" \
        else torch.zeros(graph.n_src, dtype=torch.float64)
    bar = tqdm(total=len(batches) * per_batch, desc=f"{method} scores", unit="pass", disable=not progress,
               leave=False)
    for lo, hi in batches:
        sub = data.rows(lo, hi)
        cache = mean_cache if mean_cache is not None else ablation_cache(model, graph, sub.corrupt, "patch")
        ref_logits = None
        if data.metric == "kl":  # the reference distribution of KL: the clean run
            with torch.no_grad():
                ref_logits = plain_forward(arch, sub.clean.to(arch.device))[0]

        def metric(logits: torch.Tensor, sub: TaskData = sub, ref: torch.Tensor | None = ref_logits) -> torch.Tensor:
            return task_metric(sub, logits, ref).mean()

        if method == "exact":
            part = _exact(model, graph, sub, cache, metric, level, exact_batch, bar)
        elif method == "mask-ig":
            part = _mask_ig(model, graph, sub, cache, metric, steps, bar)
        else:
            # the gradient passes unembed the metric positions only
            mp = metric_positions(sub)
            at = mp.index.to(arch.device)
            ref_at = None if ref_logits is None else ref_logits.gather(
                1, at.unsqueeze(-1).expand(*at.shape, ref_logits.shape[-1]))

            def metric_at(logits: torch.Tensor, sub: TaskData = mp.data, ref: torch.Tensor | None = ref_at
                          ) -> torch.Tensor:
                return task_metric(sub, logits, ref).mean()

            part = _gradient_method(arch, graph, method, sub, cache, metric_at, steps, bar, at)
        total += part.cpu() * ((hi - lo) / n)
    bar.close()
    if level == "node" and method != "exact":
        total = (total * graph.valid.double()).sum(1)
    meta = {"method": method, "ablation": ablation, "steps": steps if method in ("mask-ig", "eap-ig-activations",
            *INPUT_IG_RULES) else None, "n_prompts": n, "metric": data.metric, "level": level,
            "batch_size": batch_size, "passes": per_batch * len(batches),
            "forward_equivalents": fwd_eq + (ablation != "zero") + (data.metric == "kl")}
    if method in INPUT_IG_RULES:
        meta["rule"] = INPUT_IG_RULES[method]
    return EdgeScores(graph, total * (graph.valid.double() if total.dim() == 2 else 1.0), method, level, meta)


def attribution_cost(method: str, steps: int, graph: Graph, *, level: Level = "edge", exact_batch: int = 32
                     ) -> tuple[int, float]:
    """(passes per batch of prompts, forward equivalents over the whole data) of an attribution method, not counting
    the counterfactual run (one forward, except for zero ablation) or kl's clean reference (one forward). A pass
    with a backward counts 3 forward equivalents; ``exact`` evaluates one mask per edge (node) plus the full one."""
    method = canonical(method)
    if method == "exact":
        n_masks = (graph.n_edges if level == "edge" else graph.n_src) + 1
        return math.ceil(n_masks / exact_batch), float(n_masks)
    per = {"eap": 1, "relp": 1, "eap-ig-inputs": steps, "clean-corrupted": 2, "mask-ig": steps,
           "eap-ig-midpoint": steps, "eap-ig-left": steps,
           "eap-ig-activations": 1 + (steps - 1) * (2 * graph.n_layers + 1)}
    if method not in per:
        raise InputError(f"unknown attribution method '{method}'; choose one of {', '.join(METHODS)}")
    if method in ("eap-ig-midpoint", "eap-ig-left"):  # plus one forward (no backward) for the clean activations
        return per[method] + 1, 3.0 * per[method] + 1.0
    return per[method], 3.0 * per[method]


def _gradient_method(
    arch: Arch, graph: Graph, method: str, sub: TaskData, cache: AblationCache,
    metric: Callable[[torch.Tensor], torch.Tensor], steps: int, bar: Any, at: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scores of a gradient method on one batch; ``metric`` reads logits at ``at`` (see :func:`_grad_scores`)."""
    abl = cache.writers  # [S, B', P', d]
    clean = sub.clean.to(arch.device)
    e = arch.embed(clean)  # clean input embeddings [B, P, d]
    if method == "relp":  # EAP's single pass through the model with LRP's propagation rules
        s = _grad_scores(arch.relevance_view(), graph, e, metric, abl, at=at)
        bar.update(1)
        return s
    if method in ("eap-ig-left", "eap-ig-midpoint"):  # the clean run is not sampled: its activations from a forward
        with torch.no_grad():
            _, run = plain_forward(arch, clean, logits=False)
        bar.update(1)
        delta_m = abl - run.writers
        base_m = abl[0].expand_as(e)
        total = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float64, device=arch.device)
        for a in ig_alphas(INPUT_IG_RULES[method], steps):
            total = total + _grad_scores(arch, graph, base_m + a * (e - base_m), metric, abl, delta_m, at=at)
            bar.update(1)
        return total / steps
    keep: list[torch.Tensor] = []
    # the clean run itself (alpha = 1) first: it also records the clean writer outputs a, hence delta = ã - a
    s = _grad_scores(arch, graph, e, metric, abl, keep=keep, at=at)
    bar.update(1)
    if method == "eap":
        return s
    delta = abl - keep.pop()
    if method == "clean-corrupted":
        s += _grad_scores(arch, graph, abl[0].expand_as(e), metric, abl, delta, at=at)
        bar.update(1)
        return s / 2
    alphas = ig_alphas("right", steps)[:-1]  # alpha = 1 is done
    if method == "eap-ig-inputs":
        base = abl[0].expand_as(e)
        for a in alphas:
            s += _grad_scores(arch, graph, base + a * (e - base), metric, abl, delta, at=at)
            bar.update(1)
        return s / steps
    clean_writers = abl - delta
    # eap-ig-activations: one writer group at a time
    out = torch.zeros_like(s)
    H = arch.n_heads
    groups = [(0, slice(0, 1))]
    for layer in range(arch.n_layers):
        w0 = graph.head_writer(layer, 0)
        groups += [(1 + 2 * layer, slice(w0, w0 + H)), (2 + 2 * layer, slice(w0 + H, w0 + H + 1))]
    for gid, rows in groups:
        clean_g = clean_writers[rows]
        abl_g = abl[rows]
        acc = s[rows].clone()  # alpha = 1 (the clean run) is shared by every group
        for a in alphas:
            vals = abl_g + a * (clean_g - abl_g)
            acc += _grad_scores(arch, graph, e, metric, abl, delta, override=(gid, vals), at=at)[rows]
            bar.update(1)
        out[rows] = acc / steps
    return out


def _mask_ig(
    model: Any, graph: Graph, sub: TaskData, cache: AblationCache, metric: Callable[[torch.Tensor], torch.Tensor],
    steps: int, bar: Any,
) -> torch.Tensor:
    arch = get_arch(model)
    valid = graph.valid.to(arch.device, arch.dtype)
    s = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float64, device=arch.device)
    for j in range(1, steps + 1):
        m = (valid * (j / steps)).requires_grad_(True)
        with torch.enable_grad():
            value = metric(masked_forward(model, graph, sub.clean, cache, m))
            (g,) = torch.autograd.grad(value, m)
        s -= g.double()
        bar.update(1)
    return s / steps


def _exact(
    model: Any, graph: Graph, sub: TaskData, cache: AblationCache, metric: Callable[[torch.Tensor], torch.Tensor],
    level: Level, k: int, bar: Any,
) -> torch.Tensor:
    arch = get_arch(model)
    valid = graph.valid.to(arch.device, arch.dtype)
    if level == "edge":
        src, dst = graph.valid.nonzero(as_tuple=True)
        n = len(src)
    else:
        n = graph.n_src
    values = torch.empty(n + 1, dtype=torch.float64)
    per_prompt = _per_prompt(metric)
    with torch.no_grad():
        for lo in range(0, n + 1, k):
            hi = min(n + 1, lo + k)
            masks = valid.unsqueeze(0).repeat(hi - lo, 1, 1)
            for j, i in enumerate(range(lo, hi)):
                if i == n:
                    continue  # the full circuit
                if level == "edge":
                    masks[j, src[i], dst[i]] = 0
                else:
                    masks[j, i, :] = 0
            logits = masked_forward(model, graph, sub.clean, cache, masks)
            values[lo:hi] = per_prompt(logits).double().cpu()
            bar.update(1)
    effects = values[:n] - values[n]
    if level == "node":
        return effects
    out = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float64)
    out[src.cpu(), dst.cpu()] = effects
    return out


def _per_prompt(metric: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The prompt-averaged metric of each of K logits ``[K, B, P, V]`` -> ``[K]``."""
    return lambda logits: torch.stack([metric(x) for x in logits])
