"""Exact evaluation of circuits: the one evaluator behind sweeps, ``discover``, the hybrid search and ``evaluate``.

A circuit is a binary ``[n_src, n_dst]`` mask; its exact metric is one masked forward (``batch`` circuits per pass,
see acdc.patching). The normalised faithfulness

    f(C) = (M(C) - M(empty)) / (M(full) - M(empty))

is a ratio of prompt-averaged metric values (average first, then normalise: per-prompt ratios explode where a
prompt's full-vs-empty gap is near zero), and KL(full || C) is averaged over the metric positions and prompts. Both
come with percentile bootstrap intervals: prompts are resampled with replacement, f and KL recomputed per resample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from acdc.errors import InputError
from acdc.graph import Circuit, Graph
from acdc.metrics import faithfulness, kl_divergence, task_metric
from acdc.types import TaskData


@dataclass
class Evaluation:
    """Per-prompt values of K circuits on one dataset: ``metric`` and ``kl`` are ``[K, B]``; ``full``/``empty``
    ``[B]`` are the metric of the full and the empty circuit."""

    metric: torch.Tensor
    kl: torch.Tensor
    full: torch.Tensor
    empty: torch.Tensor


def evaluate_masks(
    model: Any,
    graph: Graph,
    data: TaskData,
    masks: Sequence[torch.Tensor],
    *,
    ablation: str = "patch",
    batch: int = 16,
    max_elements: int = 2**27,
    progress: Callable[[float], None] | None = None,
    precomputed: Any = None,
) -> Evaluation:
    """Evaluate circuits given as ``[n_src, n_dst]`` masks exactly, ``batch`` masks per masked forward.

    Prompts are processed in chunks so that ``masks x prompts x positions x vocabulary`` logits stay below
    ``max_elements``; ``patch`` ablation takes each chunk's counterfactual prompts, ``mean`` the mean over all of
    them (or ``precomputed``, a mean/zero ablation cache computed elsewhere, e.g. over every process's prompts).
    ``progress(k)`` is called after every pass with the number of masks it evaluated.
    """
    from acdc.arch import get_arch
    from acdc.incremental import metric_positions
    from acdc.patching import ablation_cache, check_graph, masked_forward_unchecked, plain_forward, shared_cache

    arch = get_arch(model)
    check_graph(graph, arch)
    if batch < 1:
        raise InputError(f"batch must be at least 1, got {batch}")
    # the full circuit is the model itself (the masked forward's all-ones identity): its metric comes from the
    # plain forward every chunk needs anyway as the KL reference
    all_masks = [torch.zeros_like(graph.valid)] + [m.bool() for m in masks]
    n, p = data.clean.shape
    chunk = prompts_per_pass(model, graph, data, batch, max_elements)
    shared = shared_cache(model, graph, data.corrupt.to(arch.device), ablation, precomputed)
    values = torch.zeros(len(all_masks) + 1, n, dtype=torch.float64)
    kls = torch.zeros(len(all_masks) + 1, n, dtype=torch.float64)
    with torch.no_grad():
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            mp = metric_positions(data.rows(lo, hi))
            sub, at = mp.data, mp.index.to(arch.device)
            clean = data.clean[lo:hi].to(arch.device)
            cache = shared if shared is not None else ablation_cache(model, graph, data.corrupt[lo:hi].to(arch.device),
                                                                     "patch")
            final = plain_forward(arch, clean, logits=False)[1].base_final
            ref = arch.unembed(arch.ln_final(final.gather(1, at.unsqueeze(-1).expand(*at.shape, final.shape[-1]))))
            values[0, lo:hi] = task_metric(sub, ref.unsqueeze(0), ref)[0].double().cpu()
            for i in range(0, len(all_masks), batch):
                m = torch.stack(all_masks[i : i + batch]).to(device=arch.device, dtype=arch.dtype)
                logits = masked_forward_unchecked(arch, graph, clean, cache, m, at=at)
                values[1 + i : 1 + i + len(m), lo:hi] = task_metric(sub, logits, ref).double().cpu()
                kls[1 + i : 1 + i + len(m), lo:hi] = kl_divergence(logits, ref, sub.positions).double().cpu()
                if progress is not None:
                    progress(len(m) * (hi - lo) / n)
    return Evaluation(values[2:], kls[2:].clamp_min(0.0), values[0], values[1])


def prompts_per_pass(model: Any, graph: Graph, data: TaskData, batch: int, max_elements: int = 2**27) -> int:
    """Prompts per masked forward of :func:`evaluate_masks` with ``batch`` masks: logits are computed at the metric
    positions only (the unembedding of every position dominates a pass on a large vocabulary), and chunks of
    prompts keep the logits ``[K, B, n, V]`` under ``max_elements`` and the writer store ``[S, K, B, P, d]`` under
    four times that."""
    from acdc.arch import get_arch

    n, p = data.clean.shape
    n_at = int(data.positions.sum(1).max())
    per_prompt = batch * max(n_at * int(getattr(model.cfg, "d_vocab", 50257)),
                             graph.n_src * p * get_arch(model).d_model // 4)
    return max(1, min(n, max_elements // max(per_prompt, 1)))


def evaluate_circuits(
    model: Any, graph: Graph, data: TaskData, circuits: Sequence[Circuit], *, ablation: str = "patch", batch: int = 16,
) -> list[dict[str, float]]:
    """Exact faithfulness of each circuit on ``data``: the task metric M of the circuit, of the full and of the empty
    circuit (prompt-averaged), f and KL(full || C), as plain numbers (intervals: :func:`faithfulness_ci`)."""
    return circuit_numbers(evaluate_masks(model, graph, data, [c.mask for c in circuits], ablation=ablation,
                                          batch=batch))


def circuit_numbers(ev: Evaluation) -> list[dict[str, float]]:
    """Each circuit's prompt-averaged metric, f, KL, and the full and empty circuits' metric, as plain numbers."""
    full, empty = float(ev.full.mean()), float(ev.empty.mean())
    return [{"metric": float(v), "faithfulness": float(faithfulness(float(v), empty, full)) if full != empty
             else float("nan"), "kl": float(k), "full": full, "empty": empty}
            for v, k in zip(ev.metric.mean(1), ev.kl.mean(1), strict=True)]


def baseline_warning(ev: Evaluation, metric: str, *, z: float = 2.0) -> str | None:
    """Why f is not meaningful on this data, or None: f divides by M(full) - M(empty), so it needs that gap to have
    the expected sign (the full model above the counterfactual run; below it for ``kl``, where M is a distance) and
    to stand out of its noise: |mean gap| at least ``z`` standard errors of the per-prompt gaps."""
    gap = ev.full - ev.empty
    n = gap.numel()
    mean = float(gap.mean())
    se = float(gap.std()) / n**0.5 if n > 1 else 0.0
    expected = -1.0 if metric == "kl" else 1.0
    what = (f"M(full) - M(empty) = {mean:.4g} (standard error {se:.2g} over {n} prompts)")
    if mean * expected <= 0:
        return (f"{what} has the wrong sign: the counterfactual does not remove the behaviour, so f is not "
                "meaningful; check the task's counterfactual and the model's clean behaviour (`acdc tasks show`)")
    if abs(mean) < z * se:
        return (f"{what} is within {z:g} standard errors of 0: the model barely separates clean and counterfactual "
                "prompts, so f is noise; use more prompts or a task the model does")
    return None


# ---- bootstrap -------------------------------------------------------------------------------------------------------
def resample_weights(n: int, n_boot: int, seed: int = 0) -> torch.Tensor:
    """``[n_boot, n]`` weights: row r averages the prompts of bootstrap resample r (counts / n)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (n_boot, n), generator=g)
    w = torch.zeros(n_boot, n, dtype=torch.float64)
    w.scatter_add_(1, idx, torch.ones(n_boot, n, dtype=torch.float64))
    return w / n


def faithfulness_ci(ev: Evaluation, n_boot: int = 1000, seed: int = 0, level: float = 0.95
                    ) -> dict[str, torch.Tensor]:
    """f and KL of every circuit with percentile bootstrap intervals: ``{"f", "f_lo", "f_hi", "kl", "kl_lo",
    "kl_hi"}``, each ``[K]``. ``n_boot=0`` gives the point values only (intervals NaN)."""
    full, empty = ev.full.mean(), ev.empty.mean()
    f = (ev.metric.mean(1) - empty) / (full - empty)
    kl = ev.kl.mean(1)
    nan = torch.full_like(f, float("nan"))
    if n_boot <= 0:
        return {"f": f, "f_lo": nan, "f_hi": nan, "kl": kl, "kl_lo": nan, "kl_hi": nan}
    w = resample_weights(ev.metric.shape[1], n_boot, seed)  # [R, B]
    fr = ((ev.metric @ w.T) - (w @ ev.empty)) / ((w @ ev.full) - (w @ ev.empty))  # [K, R]
    kr = ev.kl @ w.T
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    fq = torch.nanquantile(fr, q, dim=1)
    kq = torch.quantile(kr, q, dim=1)
    return {"f": f, "f_lo": fq[0], "f_hi": fq[1], "kl": kl, "kl_lo": kq[0], "kl_hi": kq[1]}


# ---- on the incremental engine ---------------------------------------------------------------------------------------
class Faithfulness:
    """f of logits computed at the metric positions of ``data`` (the incremental engine's sub-data), normalised by
    the full and empty circuits' prompt-averaged metric: what the hybrid search compares with its target."""

    def __init__(self, data: TaskData, full_logits: torch.Tensor, empty_logits: torch.Tensor) -> None:
        self.data, self.reference = data, full_logits
        self.full = float(task_metric(data, full_logits.unsqueeze(0), full_logits).mean())
        self.empty = float(task_metric(data, empty_logits.unsqueeze(0), full_logits).mean())

    def __call__(self, logits: torch.Tensor) -> list[float]:
        """f of each of K logits ``[K, B, n, V]``."""
        vals = task_metric(self.data, logits, self.reference).mean(-1)
        return ((vals - self.empty) / (self.full - self.empty)).tolist()
