"""Data parallelism over prompts with ``torch.distributed``: every process scores its own shard of the prompts and
the results are combined by collectives.

Launch one process per device with ``torchrun --nproc-per-node N``; :func:`init_from_env` reads torchrun's
environment and joins the process group (gloo for CPU tensors, nccl for CUDA ones). Then

- :func:`attribute_distributed` runs :func:`acdc.attribute` on the rank's shard and all-reduces the
  prompt-weighted scores: ``Σ_r n_r · scores_r / n``, which is the single-process prompt average;
- :func:`evaluate_distributed` runs :func:`acdc.evaluate.evaluate_masks` on the shard and all-gathers the per-prompt
  values, so every rank holds the full :class:`~acdc.evaluate.Evaluation` (bootstrap intervals need all prompts).

Shards are contiguous and, for attribution, cut at multiples of the batch size, so each rank runs exactly the
batches one process would run: only the order of the final float64 sums differs.

``mean`` ablation replaces writers by their mean over *all* counterfactual prompts: the ranks all-reduce their
shards' writer sums first (:func:`mean_cache_distributed`) and hand that cache to ``attribute``/``evaluate_masks``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from acdc.attribution import EdgeScores, attribute
from acdc.errors import InputError
from acdc.evaluate import Evaluation, evaluate_masks
from acdc.graph import Graph
from acdc.patching import AblationCache
from acdc.types import TaskData

_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# ---- process group ------------------------------------------------------------------------------------------------
def launched() -> bool:
    """True when this process was started by torchrun (or another launcher setting its variables)."""
    return all(k in os.environ for k in _ENV)


def init_from_env(device: str | torch.device | None = None, *, timeout_s: float = 600.0) -> tuple[int, int]:
    """Join the default process group from torchrun's environment and return ``(rank, world_size)``.

    The backend follows where the tensors to reduce live: ``nccl`` for a CUDA ``device`` (or, with ``device=None``,
    when CUDA is available), else ``gloo``. With nccl the process uses ``cuda:LOCAL_RANK``. Without torchrun's
    variables this is a single process: ``(0, 1)``, no group. Calling it again returns the existing group's values.
    """
    import datetime

    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if not launched():
        return 0, 1
    if device is None:
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        kind = torch.device(device).type
    backend = "nccl" if kind == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default group, ``(0, 1)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shutdown() -> None:
    """Leave the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    """Where collective tensors must live: the current CUDA device for nccl, the CPU for gloo."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ---- sharding -----------------------------------------------------------------------------------------------------
def shard_bounds(n: int, rank: int, world: int, *, align: int = 1) -> tuple[int, int]:
    """Prompt range ``[lo, hi)`` of ``rank``: the ``ceil(n / align)`` blocks of ``align`` prompts are dealt out
    contiguously, the first ranks taking one block more when they do not divide evenly (so rank 0 is never empty).
    """
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"rank {rank} is not in a world of {world} processes")
    if align < 1:
        raise InputError(f"align must be at least 1, got {align}")
    blocks = -(-n // align)
    q, r = divmod(blocks, world)
    b0 = rank * q + min(rank, r)
    b1 = b0 + q + (1 if rank < r else 0)
    return min(n, b0 * align), min(n, b1 * align)


def shard(data: TaskData, rank: int, world: int, *, align: int = 1) -> TaskData:
    """The prompts of ``rank`` out of ``world`` (see :func:`shard_bounds`); ``info["rows"]`` records the range."""
    lo, hi = shard_bounds(len(data), rank, world, align=align)
    return data.rows(lo, hi)


def mean_cache_distributed(model: Any, graph: Graph, data: TaskData) -> AblationCache:
    """The ``mean`` ablation cache over ALL prompts of ``data`` when each rank holds a shard: every rank records the
    writers of its shard's counterfactual prompts, and the sums are all-reduced (the single-process cache is the
    mean over every prompt, so shards must not average on their own)."""
    from acdc.arch import get_arch
    from acdc.patching import plain_forward

    rank, world = rank_world()
    arch = get_arch(model)
    n, p = data.corrupt.shape
    lo, hi = shard_bounds(n, rank, world)
    S, L, d = graph.n_src, arch.n_layers, arch.d_model
    sums = [torch.zeros(S, 1, p, d, dtype=torch.float64), torch.zeros(L, 1, p, d, dtype=torch.float64),
            torch.zeros(L, 1, p, d, dtype=torch.float64), torch.zeros(1, p, d, dtype=torch.float64)]
    if hi > lo:
        with torch.no_grad():
            _, c = plain_forward(arch, data.corrupt[lo:hi].to(arch.device), logits=False)
        parts = [c.writers.sum(1, keepdim=True), c.base_attn.sum(1, keepdim=True), c.base_mlp.sum(1, keepdim=True),
                 c.base_final.sum(0, keepdim=True)]
        sums = [t.double().cpu() for t in parts]
    dev = _comm_device()
    out = []
    for t in sums:
        t = t.to(dev)
        dist.all_reduce(t)
        out.append((t / n).to(device=arch.device, dtype=arch.dtype))
    return AblationCache("mean", out[0], out[1], out[2], out[3])


# ---- attribution --------------------------------------------------------------------------------------------------
def attribute_distributed(model: Any, graph: Graph, data: TaskData, method: str = "eap-ig-inputs", *,
                          ablation: str = "patch", batch_size: int = 32, progress: bool = True,
                          **kw: Any) -> EdgeScores:
    """:func:`acdc.attribute` over all ranks: each scores its shard (cut at multiples of ``batch_size``), then
    ``all_reduce(n_r · scores_r) / n`` gives every rank the prompt-averaged scores of the whole ``data``.

    ``kw`` goes to ``attribute`` (``steps``, ``level``, ``exact_batch``). Only rank 0 shows progress. Without a
    process group this is ``attribute`` itself.
    """
    rank, world = rank_world()
    if world == 1:
        return attribute(model, graph, data, method, ablation=ablation, batch_size=batch_size,  # type: ignore[arg-type]
                         progress=progress, **kw)
    n = len(data)
    lo, hi = shard_bounds(n, rank, world, align=batch_size)
    level = kw.get("level", "edge")
    pre = mean_cache_distributed(model, graph, data) if ablation == "mean" else None  # collective: every rank
    part: EdgeScores | None = None
    if hi > lo:
        part = attribute(model, graph, data.rows(lo, hi), method, ablation=ablation,  # type: ignore[arg-type]
                         batch_size=batch_size, progress=progress and rank == 0, precomputed=pre, **kw)
        local = part.scores.double() * (hi - lo)
    else:  # more ranks than batches: this rank only joins the reduction
        local = torch.zeros((graph.n_src, graph.n_dst) if level == "edge" else (graph.n_src,), dtype=torch.float64)
    buf = local.to(_comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    total = buf.cpu() / n
    name = part.method if part is not None else ("eap-ig-inputs" if method == "eap-ig" else method)
    meta = dict(part.meta) if part is not None else {}
    meta.update({"n_prompts": n, "world_size": world})
    return EdgeScores(graph, total, name, level, meta)


# ---- exact evaluation ---------------------------------------------------------------------------------------------
def evaluate_distributed(model: Any, graph: Graph, data: TaskData, masks: Sequence[torch.Tensor], *,
                         ablation: str = "patch", batch: int = 16, **kw: Any) -> Evaluation:
    """:func:`acdc.evaluate.evaluate_masks` over all ranks: each evaluates its shard of prompts, then the per-prompt
    values are all-gathered in prompt order, so every rank returns the :class:`Evaluation` of the whole ``data``
    (and rank 0 can compute bootstrap intervals). ``kw`` goes to ``evaluate_masks``."""
    rank, world = rank_world()
    if world == 1:
        return evaluate_masks(model, graph, data, masks, ablation=ablation, batch=batch, **kw)
    n, k = len(data), len(masks)
    bounds = [shard_bounds(n, r, world) for r in range(world)]
    width = max(hi - lo for lo, hi in bounds)
    lo, hi = bounds[rank]
    pre = mean_cache_distributed(model, graph, data) if ablation == "mean" else None  # collective: every rank
    # one [2K + 2, width] float64 block per rank: metric rows, kl rows, full, empty (padded to the widest shard)
    block = torch.zeros(2 * k + 2, width, dtype=torch.float64)
    if hi > lo:
        ev = evaluate_masks(model, graph, data.rows(lo, hi), masks, ablation=ablation, batch=batch,
                            precomputed=pre, **kw)
        block[:, : hi - lo] = torch.cat([ev.metric, ev.kl, ev.full[None], ev.empty[None]]).double()
    dev = _comm_device()
    parts = [torch.empty_like(block, device=dev) for _ in range(world)]
    dist.all_gather(parts, block.to(dev))
    rows = torch.cat([p.cpu()[:, : b - a] for p, (a, b) in zip(parts, bounds, strict=True)], dim=1)
    return Evaluation(rows[:k], rows[k : 2 * k], rows[2 * k], rows[2 * k + 1])
