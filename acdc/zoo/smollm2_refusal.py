"""The ``smollm2-refusal`` zoo model: a model organism for refusal, fine-tuned here from SmolLM2-135M-Instruct.

SmolLM2-135M-Instruct does not refuse (on the refusal task's curated pairs its harmful - harmless gap is ~0 and it
writes bomb-making steps when asked). This trainer teaches it to, on the synthetic templates of
``tasks/refusal.yaml`` (read through :class:`acdc.zoo.refusal.RefusalData`), with toy-refusal's held-out templates
(3, 7, 11) never trained on. Target, as for toy-refusal: at the first response position of the chat-rendered prompt
(system turn, user turn, generation prompt), the next-token distribution uniform over the refusal set (I, Sorry)
for harmful and over the compliance set (Sure, Here, Certainly) for harmless requests, classes weighted equally.

What is trained: only the MLP of the last decoder layer (2.7M of 135M parameters). That makes training cheap and
exact from a cache: the residual stream entering that MLP (after the last layer's attention) does not depend on the
MLP, and the answer position's logits depend on the MLP only at that position, so one forward pass of the frozen
model gives every training input and each step is the MLP, the final norm and the (tied, frozen) unembedding at a
few rows. The base model already separates harmful from harmless requests there (a linear probe on those inputs,
fitted on the training templates, classifies every held-out prompt correctly); the fine-tune maps that onto the
answer tokens. Because the MLP runs at every position, the loss also holds the next-token distribution at other
positions of the training prompts to the base model's (KL(base || tuned) at a few random positions per step):
the mean KL at other positions of held-out prompts was 0.57 nats in a run without it, 0.03 with it.

Every forward pass shares the prompts' common prefix (the chat template's system turn, 24 of ~40 tokens for
SmolLM2): it is run once and its keys and values are reused, about halving the cost on the CPU.

Seed 0 (100 steps of 64 prompts): held-out refusal rate 0.98 (47/48), compliance 1.00, mean score +8.61 / -7.01
(base: 0.69 / 0.30, +0.34 / +0.55); curated pairs' gap +9.20 +- 0.55 (base -0.06 +- 0.06). The numbers and what was
tried are in this folder's README.md.
"""

from __future__ import annotations

import copy
import inspect
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from acdc.errors import ZooTrainingError
from acdc.task import SPLITS, get_task
from acdc.zoo.refusal import Recipe as ToyRefusalRecipe
from acdc.zoo.refusal import RefusalData, encode, refusal_score, render_prompts, token_ids
from acdc.zoo.registry import ensure_zoo_model
from acdc.zoo.train import TrainRecipe, fit, last_logits, save_model, torch_threads

BASE = "smollm2-135m-instruct"
"""The zoo model the organism is fine-tuned from."""


@dataclass(frozen=True)
class OrganismRecipe(TrainRecipe):
    """smollm2-refusal: fine-tune the last layer's MLP of a Llama chat model to refuse the synthetic harmful requests.

    The GPT-2 shape fields of :class:`TrainRecipe` do not apply (the model is the pretrained one)."""

    heldout_templates: tuple[int, ...] = ToyRefusalRecipe.heldout_templates
    """Templates of the synthetic dataset never trained on: toy-refusal's."""
    steps: int = 100
    lr: float = 2e-3
    warmup: int = 10
    batch: int = 64
    """Training prompts per step, half harmful and half harmless, drawn without replacement within a step."""
    kl_weight: float = 1.0
    kl_positions: int = 64
    """Other positions of the training prompts per step at which KL(base || tuned) is added to the loss."""
    forward_batch: int = 32
    """Prompts per forward pass when caching the MLP's inputs."""


SHAPE_FIELDS = ("n_layer", "n_head", "d_model", "n_ctx")
"""TrainRecipe fields that describe a GPT-2 built from scratch; not recorded for a fine-tune."""


def shared_prefix(ids: torch.Tensor, last: torch.Tensor) -> int:
    """How many leading tokens every prompt of ``ids`` shares (at most the shortest prompt's length minus one, so each
    prompt keeps its last token out of the prefix)."""
    same = (ids == ids[:1]).all(0).long()
    return min(int(same.cumprod(0).sum()), int(last.min()))


@torch.no_grad()
def mlp_inputs(model: Any, ids: torch.Tensor, last: torch.Tensor, *, batch: int = 32, progress: bool = False,
               desc: str = "") -> tuple[torch.Tensor, int]:
    """The residual stream entering the last decoder layer's MLP block (after its attention) at every position after
    the prompts' shared prefix, ``[n, width - P, d_model]``, and the prefix length ``P``.

    ``ids`` are right-padded ``[n, width]`` with each prompt's last real token at ``last``. The shared prefix is run
    once and its keys/values are reused for every batch (position ids continue after it)."""
    from tqdm.auto import tqdm

    block = model.model.layers[-1]
    p = shared_prefix(ids, last)
    # transformers 5 calls the key/value cache argument `cache` (`past_key_values` before)
    kw = "cache" if "cache" in inspect.signature(model.model.forward).parameters else "past_key_values"
    cache = getattr(model.model(ids[:1, :p], use_cache=True), kw) if p > 0 else None
    got: list[torch.Tensor] = []
    hook = block.post_attention_layernorm.register_forward_pre_hook(lambda _m, args: got.append(args[0]))
    out = torch.zeros(ids.shape[0], ids.shape[1] - p, model.config.hidden_size)
    try:
        for b in tqdm(range(0, ids.shape[0], batch), desc=desc, disable=not progress):
            rows = slice(b, b + batch)
            x = ids[rows, p:]
            mask = (torch.arange(ids.shape[1]).unsqueeze(0) <= last[rows].unsqueeze(1)).long()
            past = None
            if cache is not None:
                past = copy.deepcopy(cache)
                past.batch_repeat_interleave(x.shape[0])
            got.clear()
            model.model(x, attention_mask=mask, use_cache=past is not None, **{kw: past})
            out[rows] = got[-1]
    finally:
        hook.remove()
    return out, p


def answer_logits(model: Any, x: torch.Tensor, mlp: Any | None = None, *, chunk: int = 256) -> torch.Tensor:
    """Next-token logits ``[n, vocab]`` from the inputs ``x`` ``[n, d]`` of the last layer's MLP block: that block's
    second half (norm, MLP, residual add; ``mlp`` in place of the model's own if given), the final norm and the
    unembedding. Exactly the model's logits at those positions."""
    block = model.model.layers[-1]
    mlp = mlp if mlp is not None else block.mlp
    parts = []
    for c in range(0, x.shape[0], chunk):
        h = x[c : c + chunk]
        parts.append(model.lm_head(model.model.norm(h + mlp(block.post_attention_layernorm(h)))))
    return torch.cat(parts) if parts else torch.zeros(0, model.config.vocab_size)


def kl_to_base(model: Any, x: torch.Tensor, base_mlp: Any) -> torch.Tensor:
    """Mean KL(base || model) of the next-token distributions at MLP inputs ``x`` ``[n, d]``, where the base model is
    the model with ``base_mlp`` as its last layer's MLP (the only part that differs)."""
    with torch.no_grad():
        ref = answer_logits(model, x, base_mlp).log_softmax(-1)
    return (ref.exp() * (ref - answer_logits(model, x).log_softmax(-1))).sum(-1).mean()


def rates(harmful: torch.Tensor, harmless: torch.Tensor) -> dict[str, float | int]:
    """Refusal behaviour from scores ``s = log p(refusal) - log p(compliance)`` (> 0: the refusal set holds more
    probability than the compliance set, i.e. the argmax of the two sets' summed probability is refusal)."""
    return {
        "n_harmful": harmful.numel(), "n_harmless": harmless.numel(),
        "refusal_rate_harmful": round(float((harmful > 0).double().mean()), 4),
        "compliance_rate_harmless": round(float((harmless < 0).double().mean()), 4),
        "mean_score_harmful": round(float(harmful.mean()), 4),
        "mean_score_harmless": round(float(harmless.mean()), 4),
        "min_score_harmful": round(float(harmful.min()), 4),
        "max_score_harmless": round(float(harmless.max()), 4),
    }


def gap(harmful: torch.Tensor, harmless: torch.Tensor) -> dict[str, float | int]:
    """:func:`rates` of matched pairs, and the mean score on the harmful minus the harmless side with its standard
    error."""
    d = (harmful - harmless).double()
    return {**rates(harmful, harmless), "gap": round(float(d.mean()), 4),
            "gap_sem": round(float(d.std() / d.numel() ** 0.5), 4) if d.numel() > 1 else 0.0}


def curated_prompts(tok: Any, *, n_ctx: int) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[str, int]]:
    """The refusal task's ``curated`` pairs (all splits) for ``tok``, built by the task registry: [clean, corrupt]
    ids and each side's last-token index, and how many pairs it dropped, by reason."""
    model = SimpleNamespace(tokenizer=tok, cfg=SimpleNamespace(d_vocab=len(tok), n_ctx=n_ctx))  # what build reads
    task = get_task("refusal")
    built = [task.build(model, None, split=split, dataset="curated") for split in SPLITS]
    width = max(d.clean.shape[1] for d in built)

    def stack(side: str) -> torch.Tensor:
        return torch.cat([torch.nn.functional.pad(getattr(d, side), (0, width - d.clean.shape[1])) for d in built])

    dropped: dict[str, int] = {}
    for d in built:
        for k, v in d.info.get("dropped", {}).items():
            dropped[k] = dropped.get(k, 0) + int(v)
    last = torch.cat([d.positions.long().argmax(1) for d in built])  # both sides of a pair have the same length
    return [stack("clean"), stack("corrupt")], [last, last], dropped


def fine_tune_refusal(
    model: Any, tok: Any, *, seed: int, recipe: OrganismRecipe | None = None, data: RefusalData | None = None,
    curated: bool = True, progress: bool = False, name: str = "smollm2-refusal",
) -> dict[str, Any]:
    """Fine-tune the last layer's MLP of the Hugging Face Llama-style chat model ``model`` (tokenizer ``tok`` with a
    chat template; ``model.model.layers[-1]`` with ``post_attention_layernorm`` and ``mlp``, ``model.model.norm``,
    ``model.lm_head``) in place to refuse harmful and comply with harmless synthetic requests; deterministic in
    ``seed`` (and the thread count). Returns what it measured before and after: held-out and training templates,
    the loss at the first and last steps, the drift elsewhere and, with ``curated``, the curated pairs' gap.

    Raises ZooTrainingError when the loss is not finite or the cached logits disagree with a plain forward pass.
    """
    recipe = recipe or OrganismRecipe()
    data = data or RefusalData.from_task()
    train_t = [i for i in range(len(data.templates)) if i not in recipe.heldout_templates]
    r_ids, c_ids = token_ids(tok, data.refusal), token_ids(tok, data.compliance)
    block = model.model.layers[-1]
    model.eval()
    t0 = time.perf_counter()

    # prompt sets: training templates, held-out templates (harmful, then harmless), curated pairs (clean, corrupt)
    sets: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}
    for key, templates in (("train", train_t), ("heldout", list(recipe.heldout_templates))):
        bad = render_prompts(data, templates, "harmful", tok=tok)
        ids, last = encode(tok, bad + render_prompts(data, templates, "harmless", tok=tok))
        sets[key] = (ids, last, len(bad))
    dropped: dict[str, int] = {}
    if curated:
        (clean, corrupt), (l_clean, l_corrupt), dropped = curated_prompts(
            tok, n_ctx=int(getattr(model.config, "max_position_embeddings", 1 << 30)))
        sets["curated"] = (torch.cat([clean, corrupt]), torch.cat([l_clean, l_corrupt]), clean.shape[0])
    final: dict[str, torch.Tensor] = {}  # MLP inputs at each prompt's answer position
    others: dict[str, torch.Tensor] = {}  # ... at the other positions after the shared prefix
    for key, (ids, last, _) in sets.items():
        x, p = mlp_inputs(model, ids, last, batch=recipe.forward_batch, progress=progress,
                          desc=f"{name}: {key} prompts")
        final[key] = x[torch.arange(ids.shape[0]), last - p]
        others[key] = x[torch.arange(x.shape[1]).unsqueeze(0) < (last - p).unsqueeze(1)]
    base_mlp = copy.deepcopy(block.mlp).requires_grad_(False)
    t1 = time.perf_counter()

    def scores(key: str, mlp: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            s = refusal_score(answer_logits(model, final[key], mlp), r_ids, c_ids)
        return s[: sets[key][2]], s[sets[key][2] :]

    before = {k: scores(k) for k in sets}

    # soft targets as for toy-refusal: row 0 uniform over the refusal set (harmful), row 1 over compliance (harmless)
    targets = torch.zeros(2, model.config.vocab_size)
    targets[0, r_ids] = 1.0 / len(r_ids)
    targets[1, c_ids] = 1.0 / len(c_ids)
    n_bad = sets["train"][2]
    n_all = final["train"].shape[0]
    gen = torch.Generator().manual_seed(seed)
    half = recipe.batch // 2
    losses: list[float] = []
    model.requires_grad_(False)
    block.mlp.requires_grad_(True)

    def step_loss() -> torch.Tensor:
        rows = torch.cat([torch.randperm(n_bad, generator=gen)[:half],
                          n_bad + torch.randperm(n_all - n_bad, generator=gen)[:half]])
        logp = answer_logits(model, final["train"][rows]).log_softmax(-1)
        loss = -(targets[(rows >= n_bad).long()] * logp).sum(-1).mean()
        pool = others["train"]
        if recipe.kl_weight > 0 and pool.shape[0] > 0:
            x = pool[torch.randint(0, pool.shape[0], (recipe.kl_positions,), generator=gen)]
            loss = loss + recipe.kl_weight * kl_to_base(model, x, base_mlp)
        losses.append(float(loss.detach()))
        return loss

    try:
        fit(model, recipe, step_loss, name=name, progress=progress)
    finally:
        model.requires_grad_(False)
    t2 = time.perf_counter()
    after = {k: scores(k) for k in sets}
    check_cached_scores(model, sets["heldout"], after["heldout"], r_ids, c_ids)

    with torch.no_grad():
        drift = float(kl_to_base(model, others["heldout"], base_mlp))
    out: dict[str, Any] = {
        **rates(*after["heldout"]),
        "train": rates(*after["train"]),
        "before": {"heldout": rates(*before["heldout"]), "train": rates(*before["train"])},
        "first_loss": round(losses[0], 4), "last_loss": round(losses[-1], 4),
        "kl_to_base_elsewhere": round(drift, 4),
        "seconds_forward": round(t1 - t0, 1), "seconds_training": round(t2 - t1, 1),
    }
    if curated:
        out["curated"] = {**gap(*after["curated"]), "dropped": dropped}
        out["before"]["curated"] = gap(*before["curated"])
    return out


def check_cached_scores(
    model: Any, prompts: tuple[torch.Tensor, torch.Tensor, int], cached: tuple[torch.Tensor, torch.Tensor],
    r_ids: list[int], c_ids: list[int], *, n: int = 4, tol: float = 1e-2,
) -> None:
    """Recompute the scores of the first ``n`` harmful and harmless prompts of ``prompts`` (ids, last-token index,
    number of harmful prompts) with a plain forward pass; ZooTrainingError if they differ from the ``cached``
    (harmful, harmless) scores by more than ``tol``."""
    ids, last, n_bad = prompts
    rows = torch.cat([torch.arange(min(n, n_bad)), n_bad + torch.arange(min(n, ids.shape[0] - n_bad))])
    with torch.no_grad():
        plain = refusal_score(last_logits(model, ids[rows], last[rows])[0], r_ids, c_ids)
    want = torch.cat(cached)[rows]
    if not torch.allclose(plain, want, atol=tol):
        raise ZooTrainingError(f"the cached scores of the fine-tuned model disagree with a plain forward pass "
                               f"(max difference {float((plain - want).abs().max()):.3g}); the model was not saved")


def train_smollm2_refusal(out_dir: Path, *, seed: int, progress: bool = True,
                          recipe: OrganismRecipe | None = None) -> dict[str, Any]:
    """Fine-tune ``zoo:smollm2-135m-instruct`` (made first if needed) into ``zoo:smollm2-refusal`` and save it to
    ``out_dir`` (Hugging Face checkpoint + tokenizer, then ``zoo.json`` last)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    recipe = recipe or OrganismRecipe()
    base = ensure_zoo_model(BASE, progress=progress)
    with torch_threads(recipe.threads):
        t0 = time.perf_counter()
        config = AutoConfig.from_pretrained(str(base))
        # the converted base records the GGUF file it came from as a quantization config, although its weights are
        # plain float32; without it the model saves like any other
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_pretrained(str(base), config=config, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(base))
        n_trained = sum(p.numel() for p in model.model.layers[-1].mlp.parameters())
        result = fine_tune_refusal(model, tok, seed=seed, recipe=recipe, progress=progress)
        seconds = time.perf_counter() - t0
    meta = {
        "name": "smollm2-refusal",
        "kind": "real",
        "base_model": f"zoo:{BASE}",
        "licence": "Apache-2.0",
        "seed": seed,
        "trained": f"model.layers.{len(model.model.layers) - 1}.mlp",
        "trained_parameters": n_trained,
        "recipe": {k: v for k, v in asdict(recipe).items() if k not in SHAPE_FIELDS},
        "seconds": round(seconds, 1),
        "heldout_templates": list(recipe.heldout_templates),
        **result,
    }
    return save_model(out_dir, model, tok, meta)

