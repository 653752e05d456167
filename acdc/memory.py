"""Memory planning: the peak memory of an attribution run (or of the fast ACDC search), and the largest batch that
fits a budget.

The estimate is a sum of terms, each a family of tensors the run holds at its peak, times a coefficient calibrated
against peak RSS measured on CPU (``bench/bench_memory.py``). With ``B`` prompts per pass of ``P`` tokens, ``S``
writers, ``L`` layers, ``H`` heads, ``R = H + 2G`` q/k/v readers per layer and ``X = B·P·d_model`` elements:

- weights: the model's parameters, acdc's reader-layout copies of the attention weights (``Arch``: scaled, fused,
  per-reader and layer-norm-folded projections; ``8·L·d·R·d_head``), 12 MiB of module objects and 300 bytes per
  vocabulary entry (the tokenizer);
- writers: the writer-output stores ``[S, B, P, d]`` alive together in the scoring pass — the counterfactual run's
  outputs, this run's outputs and their difference ``ã - a``: ``3·S·X``; 0.75 fewer with ``mean``/``zero``
  ablation (their cache has batch 1); EAP-IG's first pass is EAP's and its later passes hold less, while
  clean-corrupted and eap-ig-activations keep 0.5 and 1 more (the latter holds the clean outputs too);
- activations: what autograd saves per layer (residual-sized ``15·L·X``, MLP-hidden-sized ``4·L·B·P·d_mlp``) and the
  per-layer transients of the scoring pass (``[R, B·P, d]`` reader-input gradients: ``3.2·R·X``); mask-ig, which
  differentiates the masked forward, adds ``1.6·L·R·X``;
- attention patterns: ``1.45·L·H·B·P²``;
- logits ``[B, P, V]`` and their gradients: ``2.7·B·P·V`` (one more for ``kl``, whose reference is the clean logits);
- a fixed 8 MiB (autograd's first-use buffers);
- ``exact`` (``K = exact_batch`` masks per pass, no gradients): ``2.6·K·S·X`` for the writer stores with their
  transients, ``2.9·K·B·P·V`` for the logits;
- ``acdc`` (the fast search, ``B`` = every prompt): the engine's writer deltas and reader inputs
  ``(S + L·(R + 1) + 1)·X``, twice (a pass that reaches every node holds its new values beside them), the
  counterfactual cache ``(S + 2L + 1)·X`` (batch 1 for mean/zero), the rotated q/k/v, ``6·X`` of per-candidate
  transients and the logits at one metric position per prompt;
- ``mean`` ablation first averages the writers over *all* prompts in one plain forward; with ``n_prompts`` given,
  that pass (``(S + 2L + H + 4)·n·P·d`` stores and transients, MLP, patterns, logits) counts when it is larger.

The coefficients absorb the CPU allocator's slack, so they read as "copies alive at the peak" only roughly. On 47
measured runs (1-12 layers, d_model 8-768, 1-256 prompts of 4-1024 tokens, vocabularies of 16-50,257, every
method) the run memory was within 25% of the estimate in all but one (+31%). Not counted: the Python/torch runtime
itself (about 0.5 GiB of RSS on CPU; the CUDA context on a GPU).
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
KL_REFERENCE = 1.0  # the kl metric keeps the clean run's logits as its reference
CACHE_BATCH_1 = 0.75  # mean/zero caches have batch 1: this much less than a [S, B, P, d] copy (measured)
RUN_FIXED = 8 * MiB
MASK_IG_READERS = 1.6  # mask-ig: reader inputs kept for autograd through the masked forward, per [R, B, P, d]
EXACT_WRITERS = 2.6  # exact: [S, K, B, P, d] writer stores of K masks, with the per-layer transients
EXACT_LOGITS = 2.9  # exact: [K, B, P, V] logits of consecutive passes
# the first pass of every gradient method is EAP's; EAP-IG's later passes hold no more, the other two slightly more
EXTRA_WRITER_COPIES = {"eap": 0.0, "relp": 0.0, "eap-ig-inputs": 0.0, "eap-ig": 0.0, "clean-corrupted": 0.5,
                       "eap-ig-activations": 1.0, "mask-ig": 0.0, "exact": 0.0, "acdc": 0.0}
ACDC_STATE = 2.0  # acdc (the fast search's engine): [S + L·(R + 1) + 1, B, P, d] deltas and reader inputs, twice:
# the first pass (and a candidate that reaches every node) holds its new values beside the state until they are kept
ACDC_CACHE = 1.0  # ... the counterfactual run's writers and residuals [S + 2L + 1, B, P, d] (patch ablation)
ACDC_TRANSIENT = 6.0  # ... per-candidate transients, in residual-sized tensors

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
    mean_pass: int = 0  # mean ablation: the plain forward over all prompts that computes the writers' means

    @property
    def batch_peak(self) -> int:
        """The peak of one batch's pass, over the weights."""
        return self.writers + self.activations + self.attention + self.logits

    @property
    def run(self) -> int:
        """What the run adds to a process that holds the model."""
        return max(self.batch_peak, self.mean_pass) + self.fixed

    @property
    def total(self) -> int:
        return self.weights + self.run

    def describe(self) -> str:
        parts = ", ".join(f"{k} {format_size(getattr(self, k))}"
                          for k in ("weights", "writers", "activations", "attention", "logits"))
        if self.mean_pass > self.batch_peak:
            parts += f"; the mean-ablation pass over all prompts {format_size(self.mean_pass)} is the peak"
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
    n_prompts: int | None = None,
    logit_positions: int | None = None,
) -> MemoryEstimate:
    """Estimated peak memory of ``acdc.attribute`` (or of the fast ACDC search, ``method="acdc"``) with ``batch``
    prompts per pass of ``seq_len`` tokens, by term: the weights (with acdc's copies), the writer stores
    ``[n_writers, B, P, d_model]``, saved activations and gradients, attention patterns and logits ``[B, P,
    vocab]``; see the module docstring for each term.

    ``model_or_cfg``: a loaded model, its ``cfg``, a :class:`ModelShape` or a dict (see :func:`model_shape`).
    ``dtype`` defaults to the model's (float32 when unknown). ``n_prompts`` (all prompts of the run) matters for
    ``mean`` ablation, whose writer means come from one pass over every prompt. ``logit_positions``: positions per
    prompt whose logits are computed (the gradient methods and exact evaluation unembed the metric positions only;
    default: every position, as the calibration runs did).
    """
    if method not in EXTRA_WRITER_COPIES:
        raise InputError(f"no memory model for method '{method}'; choose one of {', '.join(EXTRA_WRITER_COPIES)}")
    if batch < 1 or seq_len < 1:
        raise InputError(f"batch and seq_len must be at least 1, got {batch} and {seq_len}")
    s = model_shape(model_or_cfg)
    it = _itemsize(model_or_cfg, dtype)
    S = n_writers if n_writers is not None else s.n_writers
    L, H, R, d, dm, P, V = s.n_layers, s.n_heads, s.n_readers_per_layer, s.d_model, s.d_mlp, seq_len, s.d_vocab
    params = s.param_bytes if s.param_bytes is not None else s.params() * it
    weights = params + ARCH_COPIES * L * d * R * s.d_head * it + MODEL_FIXED + PER_VOCAB_ENTRY * V
    X = batch * P * d * it  # one residual-stream-sized tensor of the batch
    logit = batch * (P if logit_positions is None else min(P, logit_positions)) * V * it
    if method == "acdc":  # the fast search (acdc.incremental): the whole batch at once, no gradients
        n_in = L * (R + 1) + 1
        cache = (S + 2 * L + 1) * X * (ACDC_CACHE if ablation == "patch" else 1 / batch)
        writers = ACDC_STATE * (S + n_in) * X + cache + L * R * batch * P * s.d_head * it  # + rotated q, k, v
        activations = ACDC_TRANSIENT * X + 2.0 * batch * P * dm * it
        attention = 2.0 * batch * P * P * it
        logits = (LOGITS + KL_REFERENCE) * batch * V * it  # one metric position per prompt
    elif method == "exact":  # exact_batch masks per masked forward, no gradients
        k = exact_batch
        writers = EXACT_WRITERS * k * S * X
        activations = 0.0
        attention = ATTENTION * k * H * batch * P * P * it
        logits = EXACT_LOGITS * k * logit
    else:
        copies = WRITER_COPIES + EXTRA_WRITER_COPIES[method] - (CACHE_BATCH_1 if ablation in ("mean", "zero") else 0)
        writers = copies * S * X
        activations = RESID_PER_LAYER * L * X + MLP_PER_LAYER * L * batch * P * dm * it + READER_TRANSIENT * R * X
        if method == "mask-ig":
            activations += MASK_IG_READERS * L * R * X
        attention = ATTENTION * L * H * batch * P * P * it
        logits = (LOGITS + (KL_REFERENCE if metric == "kl" else 0.0)) * logit
    mean_pass = 0.0
    if ablation == "mean" and n_prompts is not None:
        # the writers' means come from one plain forward over all prompts (before any batch; freed after)
        n = n_prompts * P * it
        mean_pass = (S + 2 * L + 1 + H + 3) * n * d + 4 * n * dm + 2 * H * n * P + n * V
    return MemoryEstimate(int(weights), int(writers), int(activations), int(attention), int(logits), RUN_FIXED,
                          int(mean_pass))


def estimate_peak_bytes(model_or_cfg: Any, **kw: Any) -> int:
    """Estimated peak memory (bytes): :func:`estimate`'s total, with the same arguments."""
    return estimate(model_or_cfg, **kw).total


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

    Raises :class:`InputError` with a one-line message when one prompt does not fit (or, with ``mean`` ablation,
    when the pass over all ``n_prompts`` that computes the means does not). ``kw`` goes to
    :func:`estimate_peak_bytes` (``dtype``, ``ablation``, ``metric``, ``n_writers``, ``exact_batch``, ``n_prompts``).
    """
    def est(b: int) -> MemoryEstimate:
        return estimate(model_or_cfg, method=method, batch=b, seq_len=seq_len, **kw)

    one = est(1)
    if one.total > budget_bytes:
        budget = f"{budget_name} is {format_size(budget_bytes)}"
        if one.mean_pass > one.batch_peak:
            raise InputError(f"mean ablation averages the writers over all {kw.get('n_prompts')} prompts in one pass, "
                             f"which needs {format_size(one.weights + one.fixed + one.mean_pass)}; {budget}; use "
                             "fewer prompts or patch/zero ablation")
        raise InputError(f"{method} needs {format_size(one.total)} for one prompt of {seq_len} tokens; {budget}; "
                         "use a shorter task or a smaller model")
    hi = max_batch if max_batch is not None else 1 << 20
    lo = 1
    if est(hi).total <= budget_bytes:
        return hi
    while hi - lo > 1:  # the peak does not decrease with the batch: est(lo) fits, est(hi) does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if est(mid).total <= budget_bytes else (lo, mid)
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
    kw: dict[str, Any] = {"n_writers": n_writers, "ablation": ablation, "metric": data.metric,
                          "n_prompts": len(data)}
    batch = pick_batch_size(budget_bytes, model, seq_len=seq_len, method=method, max_batch=cap,
                            budget_name=budget_name, **kw)
    est = estimate(model, method=method, batch=batch, seq_len=seq_len, **kw)
    why = "all prompts" if batch == cap else f"the largest that fits {budget_name} {format_size(budget_bytes)}"
    return batch, f"batch size {batch} ({why}): estimated peak {est.describe()}"


# ---- whole jobs: every stage's peak, checked before anything runs ------------------------------------------------
# the memory model each registered method's peak follows (methods outside this table are planned as mask-ig, the
# largest gradient method: differentiating the masked forward)
METHOD_MODELS: dict[str, tuple[str, ...]] = {
    "eap": ("eap",), "relp": ("eap",), "eap-ig": ("eap-ig-inputs",), "eap-ig-inputs": ("eap-ig-inputs",),
    "eap-ig-midpoint": ("eap-ig-inputs",), "eap-ig-activations": ("eap-ig-activations",),
    "clean-corrupted": ("clean-corrupted",), "mask-ig": ("mask-ig",), "exact": ("exact",),
    "eap-ig-left": ("eap-ig-inputs",), "eap-ig-ilp": ("eap-ig-inputs",), "eap-ig-stable": ("eap-ig-inputs",),
    "ensemble": ("eap", "eap-ig-inputs", "eap-ig-activations"),
    "ensemble-max": ("eap", "eap-ig-inputs", "eap-ig-activations"),
    "ensemble-min": ("eap", "eap-ig-inputs", "eap-ig-activations"),
    "edge-pruning": ("mask-ig",),  # one mask through the masked forward with gradients, a batch of prompts per step
    "edge-pruning-warm": ("eap-ig-inputs", "mask-ig"),
    # ranking, then bisection by exact evaluation and per-edge refinement, whose memory adds up (measured on SmolLM2:
    # 15.3 GiB peak RSS, more than either alone)
    "hybrid": ("eap-ig-inputs", "sweep+acdc"),
    "acdc": ("acdc",),
}


RUNTIME = 512 * MiB  # the Python/torch runtime of a process, which the estimates above do not count


@dataclass
class JobPlan:
    """The estimated peak of each stage of a job (name -> estimate) and the memory it may use."""

    stages: dict[str, MemoryEstimate]
    budget: int
    budget_name: str

    @property
    def peak(self) -> tuple[str, MemoryEstimate]:
        name = max(self.stages, key=lambda k: self.stages[k].total)
        return name, self.stages[name]

    def describe(self) -> str:
        name, est = self.peak
        return (f"estimated peak {format_size(est.total + RUNTIME)} ({name}; model and acdc's weight copies "
                f"{format_size(est.weights)}, runtime {format_size(RUNTIME)}) of {self.budget_name} "
                f"{format_size(self.budget)}")

    def check(self) -> None:
        """One-line :class:`InputError` when a stage's estimated peak exceeds the budget."""
        over = {k: e for k, e in self.stages.items() if e.total + RUNTIME > self.budget}
        if not over:
            return
        worst = max(over, key=lambda k: over[k].total)
        raise InputError(
            f"this job would not fit in memory: {worst} needs about {format_size(over[worst].total + RUNTIME)} "
            f"({over[worst].describe()}, plus the runtime), {self.budget_name} is {format_size(self.budget)}"
            + (f"; also over: {', '.join(k for k in over if k != worst)}" if len(over) > 1 else "")
            + "; use fewer prompts (--n), drop the method (--methods), or give --max-memory if the estimate is too "
              "cautious for this machine")


def available_memory() -> int:
    """Bytes the kernel says are available now (``MemAvailable``); 0 where it does not say (no planning then)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def plan_job(
    model: Any, graph: Any, data: dict[str, Any], methods: list[str] | tuple[str, ...], *,
    ablation: str = "patch", sweep_batch: int = 16, attr_batch: int = 32, max_memory: str | int | None = None,
    evaluate: bool = True,
) -> JobPlan | None:
    """Plan a job's memory before it runs: each method's peak on the train prompts (``data["train"]``), and the
    exact evaluation of ``sweep_batch`` circuits per pass on each split (as :func:`acdc.evaluate.evaluate_masks`
    chunks the prompts). The budget is ``max_memory`` (the whole process) or, without it, what the kernel says is
    available now plus what the process holds (the loaded model); ``None`` where neither is known."""
    import resource

    if max_memory is not None:
        budget = parse_size(max_memory) if isinstance(max_memory, str) else int(max_memory)
        name = "--max-memory"
    else:
        avail = available_memory()
        if not avail:
            return None
        held = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the model is loaded: count it back in
        budget, name = int(0.9 * avail) + held, "the memory available"
    stages: dict[str, MemoryEstimate] = {}

    def n_at(d: Any) -> int:
        return int(d.positions.sum(1).max())

    def sweep_stage(d: Any) -> MemoryEstimate:
        from acdc.evaluate import prompts_per_pass

        n, p = d.clean.shape
        chunk = prompts_per_pass(model, graph, d, sweep_batch)
        return estimate(model, method="exact", batch=chunk, seq_len=int(p), exact_batch=sweep_batch,
                        n_writers=graph.n_src, ablation=ablation, metric=d.metric, n_prompts=int(n),
                        logit_positions=n_at(d))

    def engine(d: Any) -> MemoryEstimate:
        n, p = d.clean.shape
        return estimate(model, method="acdc", batch=int(n), seq_len=int(p), n_writers=graph.n_src,
                        ablation=ablation, metric=d.metric, n_prompts=int(n))

    train = data.get("train")
    for m in methods:
        for part in METHOD_MODELS.get(m, ("mask-ig",)):
            if train is None:
                continue
            n, p = train.clean.shape
            if part == "sweep+acdc":
                a, b = sweep_stage(train), engine(train)
                est = MemoryEstimate(a.weights, a.writers + b.writers, a.activations + b.activations,
                                     a.attention + b.attention, a.logits + b.logits, a.fixed)
            elif part == "acdc":
                est = engine(train)
            else:
                est = estimate(model, method=part, batch=min(attr_batch, int(n)), seq_len=int(p),
                               n_writers=graph.n_src, ablation=ablation, metric=train.metric, n_prompts=int(n),
                               logit_positions=n_at(train))
            key = m if part == METHOD_MODELS.get(m, ("mask-ig",))[0] and len(METHOD_MODELS.get(m, ())) <= 1 \
                else f"{m} ({part})"
            stages[key] = est
    if evaluate:
        for split, d in data.items():
            stages[f"exact evaluation ({split})"] = sweep_stage(d)
    return JobPlan(stages, budget, name)
