"""Memory planning: the peak memory of an attribution run, and the largest batch that fits a budget.

The estimate is a sum of terms, each a tensor family the run holds at its peak, times a coefficient calibrated by
measuring peak RSS on CPU (``bench/bench_memory.py``; 28 configurations of 1-12 layers, d_model 64-768, 2-128
prompts of 18-1024 tokens, vocabularies of 67-50,257: EAP within 30% of the measured run memory, 15% on the
three configurations the bench prints). With ``B`` prompts per pass of ``P`` tokens, ``S`` writers, ``R = H + 2G``
q/k/v readers per layer and ``X = B·P·d_model`` elements:

- weights: the model's parameters, plus acdc's reader-layout copies of the attention weights (``Arch``: scaled,
  fused, per-reader and layer-norm-folded projections, ``8·L·d·R·d_head``) and a fixed 12 MiB of module and
  tokenizer objects (plus 300 bytes per vocabulary entry);
- writers: the writer-output stores ``[S, B, P, d]`` — the counterfactual run's outputs, this run's outputs and
  their difference ``ã - a`` — ``3·S·X``; one fewer with ``mean``/``zero`` ablation (their cache has batch 1), one
  more for the methods that keep the deltas across passes (EAP-IG, clean-corrupted), two for eap-ig-activations;
- activations: what autograd saves per layer (residual-sized: ``15·L·X``; MLP hidden: ``4·L·B·P·d_mlp``) and the
  per-layer transients of the scoring pass (``[R, B·P, d]`` reader gradients: ``3.2·R·X``);
- attention patterns ``1.45·L·H·B·P²``;
- logits ``[B, P, V]`` and their gradients: ``2.7·B·P·V`` (one more copy for metrics through a softmax);
- a fixed 8 MiB (autograd's first-use buffers).

The coefficients absorb the CPU allocator's slack, so they read as "copies alive at the peak" only roughly. mask-ig
(autograd through the masked forward) adds ``1.6·L·R·X`` and ``exact`` runs ``exact_batch`` masks per pass without
gradients; those two were calibrated on one configuration each. Not counted: the Python/torch runtime itself (about
0.5 GiB of RSS on CPU, the CUDA context on a GPU).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from acdc.errors import InputError

MiB = 2**20
GiB = 2**30

# ---- calibrated coefficients (see the module docstring and bench/bench_memory.py) ----------------------------------
ARCH_COPIES = 8.0  # acdc's attention-weight copies, per element of the q/k/v projections
MODEL_FIXED = 12 * MiB  # module objects, config, tokenizer of a loaded model
PER_VOCAB_ENTRY = 300  # tokenizer bytes per vocabulary entry
WRITER_COPIES = 3.0  # [S, B, P, d] stores alive at the peak (cache, this run's outputs, deltas)
RESID_PER_LAYER = 15.0  # residual-sized tensors autograd keeps per layer
MLP_PER_LAYER = 4.0  # MLP-hidden-sized tensors per layer
READER_TRANSIENT = 3.2  # [R, B*P, d] per-layer transients of the scoring pass
ATTENTION = 1.45  # [H, B, P, P] attention patterns per layer
LOGITS = 2.7  # [B, P, V] logits and their gradients
LOGITS_SOFTMAX = 1.0  # one more [B, P, V] for metrics through a (log-)softmax
RUN_FIXED = 8 * MiB
MASK_IG_READERS = 1.6  # mask-ig: reader inputs kept for autograd through the masked forward, per [R, B, P, d]
EXTRA_WRITER_COPIES = {"eap": 0.0, "eap-ig-inputs": 1.0, "eap-ig": 1.0, "clean-corrupted": 1.0,
                       "eap-ig-activations": 2.0, "mask-ig": 0.0, "exact": 0.0}

_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": MiB, "mib": MiB, "mb": 10**6, "g": GiB,
          "gib": GiB, "gb": 10**9, "t": 2**40, "tib": 2**40, "tb": 10**12}


# ---- sizes ---------------------------------------------------------------------------------------------------------
def parse_size(text: str) -> int:
    """Bytes of a size such as ``512MiB``, ``4GiB``, ``4G`` (binary: K, M, G, T with or without ``iB``), ``2GB``
    (decimal) or a plain number of bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise InputError(f"cannot read the memory size '{text}'; write e.g. 512MiB, 4GiB or 4G")
    return int(float(m.group(1)) * _UNITS[unit])


def format_size(n: float) -> str:
    """``3.1 GiB``, ``512 MiB``, ``900 KiB``: one decimal below 10 units."""
    for unit, size in (("TiB", 2**40), ("GiB", GiB), ("MiB", MiB), ("KiB", 2**10)):
        if abs(n) >= size:
            v = n / size
            return f"{v:.1f} {unit}" if v < 10 else f"{v:.0f} {unit}"
    return f"{int(n)} B"


# ---- model shapes ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShape:
    """The dimensions the estimate needs; ``param_bytes`` is None when only a config is known (then it is computed
    for a GPT-2-style model with tied embeddings)."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    param_bytes: int | None = None

    @property
    def n_writers(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_readers_per_layer(self) -> int:
        """q, k and v readers of one layer: ``H + 2G``."""
        return self.n_heads + 2 * self.n_kv_heads

    def params(self) -> int:
        """Parameter count of a GPT-2-style model of this shape (tied unembedding)."""
        L, d, dm = self.n_layers, self.d_model, self.d_mlp
        qkv = d * self.n_readers_per_layer * self.d_head + self.n_readers_per_layer * self.d_head
        per_layer = qkv + self.n_heads * self.d_head * d + d + 2 * d * dm + dm + d + 4 * d
        return self.d_vocab * d + self.n_ctx * d + L * per_layer + 2 * d


def model_shape(model_or_cfg: Any) -> ModelShape:
    """The :class:`ModelShape` of a loaded model (its ``cfg``, and the bytes of its parameters), a TransformerLens
    config, a :class:`ModelShape`, or a dict with ``n_layers, n_heads, d_model, d_vocab`` (and optionally
    ``d_head, d_mlp, n_ctx, n_key_value_heads``)."""
    if isinstance(model_or_cfg, ModelShape):
        return model_or_cfg
    param_bytes = None
    cfg = model_or_cfg
    if hasattr(model_or_cfg, "cfg") and hasattr(model_or_cfg, "parameters"):
        cfg = model_or_cfg.cfg
        inner = getattr(model_or_cfg, "original_model", model_or_cfg)
        seen: set[int] = set()
        param_bytes = 0
        for p in inner.parameters():
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                param_bytes += p.numel() * p.element_size()

    def get(name: str, default: Any = None) -> Any:
        v = cfg.get(name, default) if isinstance(cfg, dict) else getattr(cfg, name, default)
        return default if v is None else v

    try:
        L, H, d, V = (int(get(k)) for k in ("n_layers", "n_heads", "d_model", "d_vocab"))
    except TypeError:
        raise InputError("a model shape needs n_layers, n_heads, d_model and d_vocab") from None
    dh = int(get("d_head", d // H))
    return ModelShape(n_layers=L, n_heads=H, n_kv_heads=int(get("n_key_value_heads", H)), d_model=d, d_head=dh,
                      d_mlp=int(get("d_mlp", 4 * d)), d_vocab=V, n_ctx=int(get("n_ctx", 1024)),
                      param_bytes=param_bytes)


def _itemsize(model_or_cfg: Any, dtype: torch.dtype | None) -> int:
    if dtype is None:
        cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
        dtype = cfg.get("dtype") if isinstance(cfg, dict) else getattr(cfg, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""), None)
    return torch.empty(0, dtype=dtype if isinstance(dtype, torch.dtype) else torch.float32).element_size()


# ---- the estimate ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of an attribution run, by term (bytes)."""

    weights: int
    writers: int
    activations: int
    attention: int
    logits: int
    fixed: int

    @property
    def run(self) -> int:
        """What the run adds to a process that holds the model."""
        return self.writers + self.activations + self.attention + self.logits + self.fixed

    @property
    def total(self) -> int:
        return self.weights + self.run

    def describe(self) -> str:
        parts = ", ".join(f"{k} {format_size(getattr(self, k))}"
                          for k in ("weights", "writers", "activations", "attention", "logits"))
        return f"{format_size(self.total)} ({parts})"


def estimate(
    model_or_cfg: Any,
    *,
    method: str = "eap",
    batch: int,
    seq_len: int,
    n_writers: int | None = None,
    dtype: torch.dtype | None = None,
    ablation: str = "patch",
    metric: str = "logit_diff",
    exact_batch: int = 32,
) -> MemoryEstimate:
    """The terms of :func:`estimate_peak_bytes`."""
    if method not in EXTRA_WRITER_COPIES:
        raise InputError(f"no memory model for method '{method}'; choose one of {', '.join(EXTRA_WRITER_COPIES)}")
    if batch < 1 or seq_len < 1:
        raise InputError(f"batch and seq_len must be at least 1, got {batch} and {seq_len}")
    s = model_shape(model_or_cfg)
    it = _itemsize(model_or_cfg, dtype)
    S = n_writers if n_writers is not None else s.n_writers
    L, H, R, d, P, V = s.n_layers, s.n_heads, s.n_readers_per_layer, s.d_model, seq_len, s.d_vocab
    params = s.param_bytes if s.param_bytes is not None else s.params() * it
    weights = params + ARCH_COPIES * L * d * R * s.d_head * it + MODEL_FIXED + PER_VOCAB_ENTRY * V
    # exact evaluates exact_batch masks per pass, without gradients: a forward of exact_batch x batch prompts
    # whose writer store has one slot per mask; its activations are transients of a single layer
    k = exact_batch if method == "exact" else 1
    X = batch * P * d * it
    copies = WRITER_COPIES + EXTRA_WRITER_COPIES[method] - (1.0 if ablation in ("mean", "zero") else 0.0)
    if method == "exact":
        writers = float((k + 2) * S * X)
        activations = k * (RESID_PER_LAYER * X + MLP_PER_LAYER * batch * P * s.d_mlp * it + READER_TRANSIENT * R * X)
        attention = ATTENTION * k * H * batch * P * P * it
    else:
        writers = copies * S * X
        activations = (RESID_PER_LAYER * L * X + MLP_PER_LAYER * L * batch * P * s.d_mlp * it
                       + READER_TRANSIENT * R * X + (MASK_IG_READERS * L * R * X if method == "mask-ig" else 0.0))
        attention = ATTENTION * L * H * batch * P * P * it
    soft = LOGITS_SOFTMAX if metric in ("logprob", "prob_diff", "kl") else 0.0
    logits = (LOGITS + soft) * k * batch * P * V * it
    return MemoryEstimate(int(weights), int(writers), int(activations), int(attention), int(logits), RUN_FIXED)


def estimate_peak_bytes(
    model_or_cfg: Any,
    *,
    method: str = "eap",
    batch: int,
    seq_len: int,
    n_writers: int | None = None,
    dtype: torch.dtype | None = None,
    ablation: str = "patch",
    metric: str = "logit_diff",
    exact_batch: int = 32,
) -> int:
    """Estimated peak memory (bytes) of ``acdc.attribute`` with ``batch`` prompts per pass of ``seq_len`` tokens:
    the weights (with acdc's copies), the writer stores ``[n_writers, B, P, d_model]``, saved activations and
    gradients, attention patterns and logits ``[B, P, vocab]``; see the module docstring for each term.

    ``model_or_cfg``: a loaded model, its ``cfg``, a :class:`ModelShape` or a dict (see :func:`model_shape`).
    ``dtype`` defaults to the model's (float32 when unknown).
    """
    return estimate(model_or_cfg, method=method, batch=batch, seq_len=seq_len, n_writers=n_writers, dtype=dtype,
                    ablation=ablation, metric=metric, exact_batch=exact_batch).total


def pick_batch_size(
    budget_bytes: int,
    model_or_cfg: Any,
    *,
    seq_len: int,
    method: str = "eap",
    max_batch: int | None = None,
    budget_name: str = "the memory budget",
    **kw: Any,
) -> int:
    """The largest batch (prompts per pass, at most ``max_batch``) whose estimated peak fits ``budget_bytes``.

    Raises :class:`InputError` with a one-line message when one prompt does not fit. ``kw`` goes to
    :func:`estimate_peak_bytes` (``dtype``, ``ablation``, ``metric``, ``n_writers``, ``exact_batch``).
    """
    def peak(b: int) -> int:
        return estimate_peak_bytes(model_or_cfg, method=method, batch=b, seq_len=seq_len, **kw)

    one = peak(1)
    if one > budget_bytes:
        raise InputError(f"{method} needs {format_size(one)} for one prompt of {seq_len} tokens; {budget_name} is "
                         f"{format_size(budget_bytes)}; use a shorter task or a smaller model")
    hi = max_batch if max_batch is not None else 1 << 20
    lo = 1
    if peak(hi) <= budget_bytes:
        return hi
    while hi - lo > 1:  # peak is increasing in the batch: peak(lo) fits, peak(hi) does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if peak(mid) <= budget_bytes else (lo, mid)
    return lo



def batch_for_budget(
    budget: str | int,
    model: Any,
    data: Any,
    method: str,
    *,
    n_writers: int | None = None,
    ablation: str = "patch",
    processes: int = 1,
    budget_name: str = "--max-memory",
) -> tuple[int, str]:
    """``(batch, note)``: the largest batch for the prompts ``data`` (TaskData) whose estimated peak fits
    ``budget`` (bytes or a size such as ``4GiB``), capped at one process's share of the prompts, and a one-line
    note saying what was chosen and why."""
    budget_bytes = parse_size(budget) if isinstance(budget, str) else int(budget)
    seq_len = int(data.clean.shape[1])
    cap = max(1, -(-len(data) // processes))
    kw: dict[str, Any] = {"n_writers": n_writers, "ablation": ablation, "metric": data.metric}
    batch = pick_batch_size(budget_bytes, model, seq_len=seq_len, method=method, max_batch=cap,
                            budget_name=budget_name, **kw)
    est = estimate(model, method=method, batch=batch, seq_len=seq_len, **kw)
    why = "all prompts" if batch == cap else f"the largest that fits {budget_name} {format_size(budget_bytes)}"
    return batch, f"batch size {batch} ({why}): estimated peak {est.describe()}"
