"""Find the previous-token, induction and duplicate-token heads of a model from its attention patterns alone.

An independent check on a discovered induction circuit: the heads are named by what they attend to on the
induction task's own prompts, not by anything the model's author says about them.

    python3 bench/induction_heads.py [--model zoo:toy-induction] [--n 200] [--seed 0] [--circuit circuit.json]

Scores (each a mean of attention weights, pooled over every (prompt, position) pair that qualifies):

- previous-token: attention from position ``i`` to ``i - 1``, over the real positions ``1 <= i < length``
  (BOS excluded: it has no previous token; padding excluded);
- induction: over the positions the task's metric reads (``data.positions``, inside the real length), where ``j``
  is the latest earlier position holding the same token as ``i`` (the earlier copy): attention from ``i`` to
  ``j + 1``, the token that followed the earlier copy. Positions with no earlier copy, or with ``j + 1 == i``
  (where induction and previous-token attention are the same weight), are left out;
- duplicate-token: over the same positions, attention from ``i`` to the earlier copy ``j`` itself;
- bos: over the same positions, attention to position 0 (where heads that have nothing to do tend to rest).

A head plays a role when its score exceeds ``--threshold`` (0.4). With ``--circuit`` the script also lists the
circuit's edges from a previous-token head into an induction head and the input they enter by: ``<k>`` is
K-composition (the classic induction mechanism: the key at ``j + 1`` carries "my previous token was x"), ``<q>`` and
``<v>`` are Q- and V-composition.

``head_scores`` / ``scores_from_patterns`` / ``roles`` / ``composition_edges`` are the same as functions; tests import
this file by path (bench/ is a folder of scripts, not a package).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

ROLES = ("prev_token", "induction", "duplicate")
ROLE_NAMES = {"prev_token": "previous-token", "induction": "induction", "duplicate": "duplicate-token"}
THRESHOLD = 0.4
INPUTS = ("q", "k", "v")
COMPOSITION = {"q": "Q-composition", "k": "K-composition", "v": "V-composition"}


# ---- attention patterns ---------------------------------------------------------------------------------------
@torch.no_grad()
def attention_patterns(model: Any, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Attention patterns ``[n_layers, B, n_heads, P, P]`` (query position, key position) of ``tokens [B, P]``.

    Read from the bridge's ``blocks.{l}.attn.hook_pattern`` hooks; if the model does not expose them, computed from
    its plain weights (:func:`patterns_from_weights`).
    """
    n_layers = int(model.cfg.n_layers)
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]
    chunks: list[torch.Tensor] = []
    for start in range(0, tokens.shape[0], batch_size):
        batch = tokens[start : start + batch_size]
        try:
            _, cache = model.run_with_cache(batch, names_filter=lambda name: name in names)
            chunks.append(torch.stack([cache[n].detach().float().cpu() for n in names]))
        except (KeyError, AttributeError, TypeError):
            return patterns_from_weights(model, tokens)
    return torch.cat(chunks, dim=1)


@torch.no_grad()
def patterns_from_weights(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """The same patterns as :func:`attention_patterns`, computed by hand from the weights ``acdc.arch`` reads.

    A full forward pass (embeddings, ln_1, causal softmax attention, ln_2 + MLP) that keeps each layer's
    pattern; an independent route to the numbers, used to cross-check the hooks.
    """
    from acdc.arch import get_arch

    arch = get_arch(model)
    if arch.rotary is not None:
        raise SystemExit("patterns_from_weights covers GPT-2-style attention only (no rotary embeddings); use "
                         "attention_patterns (the bridge's hooks) for this model")
    tokens = tokens.to(arch.device)
    p = tokens.shape[1]
    causal = torch.ones(p, p, dtype=torch.bool, device=arch.device).triu(1)
    x = arch.embed(tokens).to(arch.dtype)  # [B, P, d]
    out: list[torch.Tensor] = []
    for layer in range(arch.n_layers):
        h = arch.ln1[layer](x)
        q = torch.einsum("bpd,hde->bhpe", h, arch.W_Q[layer]) + arch.b_Q[layer][None, :, None]
        k = torch.einsum("bpd,gde->bgpe", h, arch.W_K[layer]) + arch.b_K[layer][None, :, None]
        v = torch.einsum("bpd,gde->bgpe", h, arch.W_V[layer]) + arch.b_V[layer][None, :, None]
        if arch.n_kv_heads != arch.n_heads:
            rep = arch.n_heads // arch.n_kv_heads
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-1, -2)).masked_fill(causal, float("-inf"))  # W_Q carries the 1/sqrt(d_head)
        pattern = scores.softmax(-1)
        out.append(pattern.float().cpu())
        z = pattern @ v  # [B, H, P, dh]
        x = x + torch.einsum("bhpe,hed->bpd", z, arch.W_O[layer]) + arch.b_O[layer]
        x = x + arch.mlp(layer, arch.ln2[layer](x))
    return torch.stack(out)


# ---- scores ---------------------------------------------------------------------------------------------------
def earlier_copy(tokens: torch.Tensor) -> torch.Tensor:
    """``[B, P]``: for each position, the latest earlier position holding the same token, or -1 if none."""
    p = tokens.shape[1]
    same = tokens[:, :, None] == tokens[:, None, :]  # [B, i, j]
    earlier = torch.ones(p, p, dtype=torch.bool, device=tokens.device).tril(-1)
    idx = torch.arange(p, device=tokens.device).expand(p, p)
    return torch.where(same & earlier, idx, torch.full_like(idx, -1)).max(dim=-1).values


def scores_from_patterns(
    patterns: torch.Tensor,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    lengths: torch.Tensor | None = None,
) -> dict[str, dict[str, float]]:
    """Per-head scores from patterns ``[L, B, H, P, P]``, tokens ``[B, P]``, read positions bool ``[B, P]``.

    Returns ``{"a{L}.h{H}": {"prev_token": ., "induction": ., "duplicate": ., "bos": .}}`` (see the module
    docstring for the definitions). ``lengths [B]`` is each prompt's real length (default: all of ``P``).
    """
    n_layers, b, n_heads, p, _ = patterns.shape
    patterns = patterns.float().cpu()
    tokens, positions = tokens.cpu(), positions.cpu().bool()
    lengths = torch.full((b,), p) if lengths is None else lengths.cpu()
    pos = torch.arange(p)
    real = pos[None, :] < lengths[:, None]  # [B, P]

    # previous token: every real position but BOS
    prev_mask = real & (pos[None, :] >= 1)
    to_prev = patterns[..., pos[1:], pos[:-1]]  # [L, B, H, P - 1]: attention from i to i - 1, i >= 1
    to_prev = torch.cat([torch.zeros_like(to_prev[..., :1]), to_prev], dim=-1)

    # induction / duplicate: read positions that have an earlier copy j with j + 1 < i
    j = earlier_copy(tokens)
    rep_mask = positions & real & (j >= 0) & (j + 1 < pos[None, :])
    j0 = j.clamp(min=0)
    j1 = (j + 1).clamp(min=0, max=p - 1)

    def gather(key: torch.Tensor) -> torch.Tensor:  # attention from each i to key[b, i]: [L, B, H, P]
        idx = key[None, :, None, :, None].expand(n_layers, b, n_heads, p, 1)
        return patterns.gather(-1, idx).squeeze(-1)

    def mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # [L, H]
        w = mask[None, :, None, :].float()
        n = w.sum(dim=(1, 3))
        if bool((n == 0).any()):
            return torch.full(n.shape, float("nan"))
        return (values * w).sum(dim=(1, 3)) / n

    table = {
        "prev_token": mean(to_prev, prev_mask),
        "induction": mean(gather(j1), rep_mask),
        "duplicate": mean(gather(j0), rep_mask),
        "bos": mean(patterns[..., 0], rep_mask),
    }
    return {
        f"a{layer}.h{head}": {k: float(v[layer, head]) for k, v in table.items()}
        for layer in range(n_layers)
        for head in range(n_heads)
    }


def head_scores(model: Any, data: Any) -> dict[str, dict[str, float]]:
    """Previous-token, induction, duplicate-token (and BOS) scores of every head of ``model`` on task data ``data``
    (an ``acdc.TaskData`` of the induction task: ``clean``, ``positions``, ``lengths``)."""
    patterns = attention_patterns(model, data.clean)
    return scores_from_patterns(patterns, data.clean, data.positions, data.lengths)


def roles(scores: dict[str, dict[str, float]], threshold: float = THRESHOLD) -> dict[str, list[str]]:
    """``{"prev_token": [heads], "induction": [...], "duplicate": [...]}``: heads whose score exceeds ``threshold``."""
    return {role: [h for h, s in scores.items() if s[role] > threshold] for role in ROLES}


# ---- circuits -------------------------------------------------------------------------------------------------
def _layer_head(name: str) -> tuple[int, int]:
    layer, head = name.split(".")
    return int(layer.removeprefix("a")), int(head.removeprefix("h"))


def composition_edges(circuit: Any, prev_heads: list[str], induction_heads: list[str]) -> list[str]:
    """The edges of ``circuit`` (an ``acdc.Circuit``) from a previous-token head into an induction head's q, k or v
    input, e.g. ``["a0.h0->a1.h2<k>"]``, in the order of ``prev_heads`` x ``induction_heads`` x (q, k, v).

    Heads are named ``a{L}.h{H}``. With grouped-query attention the key/value input is the shared group's
    (``a{L}.g{G}<k>``).
    """
    present = set(circuit.edge_names())
    graph = circuit.graph
    per_group = graph.n_heads // graph.n_kv_heads
    found: list[str] = []
    for src in prev_heads:
        for dst in induction_heads:
            if _layer_head(src)[0] >= _layer_head(dst)[0]:
                continue
            layer, head = _layer_head(dst)
            for inp in INPUTS:
                reader = dst
                if inp != "q" and per_group > 1:
                    reader = f"a{layer}.g{head // per_group}"
                edge = f"{src}->{reader}<{inp}>"
                if edge in present and edge not in found:
                    found.append(edge)
    return found


# ---- command line ---------------------------------------------------------------------------------------------
def format_table(scores: dict[str, dict[str, float]]) -> str:
    lines = [f"{'head':<8}{'prev-token':>12}{'induction':>12}{'duplicate':>12}{'bos':>8}"]
    for head, s in scores.items():
        lines.append(f"{head:<8}{s['prev_token']:>12.3f}{s['induction']:>12.3f}{s['duplicate']:>12.3f}{s['bos']:>8.3f}")
    return "\n".join(lines)


def verdict(found: dict[str, list[str]], threshold: float = THRESHOLD) -> str:
    parts = [f"{ROLE_NAMES[r]}: {', '.join(found[r]) or 'none'}" for r in ROLES]
    return f"verdict (score > {threshold:g}): " + "; ".join(parts)


def describe_circuit(circuit: Any, prev_heads: list[str], induction_heads: list[str]) -> list[str]:
    """Lines saying which previous-token -> induction-head edges ``circuit`` has and through which input."""
    lines = [f"circuit: {circuit.n_edges} edges"]
    if not prev_heads or not induction_heads:
        lines.append("  no previous-token or no induction head was found, so there is no composition to look for")
        return lines
    edges = composition_edges(circuit, prev_heads, induction_heads)
    lines.append(f"  previous-token -> induction-head edges in the circuit: {len(edges)}")
    for e in edges:
        lines.append(f"    {e}  ({COMPOSITION[e[-2]]})")
    by_input = {inp: [e for e in edges if e.endswith(f"<{inp}>")] for inp in INPUTS}
    summary = ", ".join(f"{inp}: {len(v)}" for inp, v in by_input.items())
    lines.append(f"  by input: {summary}")
    if by_input["k"]:
        lines.append("  K-composition present: the circuit shows the previous-token -> induction-head mechanism")
    else:
        lines.append("  no K-composition edge: the circuit does not show the classic mechanism directly")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="zoo:toy-induction")
    ap.add_argument("--n", type=int, default=200, help="number of prompts (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="test")
    ap.add_argument("--threshold", type=float, default=THRESHOLD)
    ap.add_argument("--circuit", help="an acdc circuit JSON to look for previous-token -> induction-head edges in")
    args = ap.parse_args(argv)

    from acdc import Circuit, Graph, get_task, load_model

    model = load_model(args.model)
    data = get_task("induction").build(model, args.n, seed=args.seed, split=args.split)
    scores = head_scores(model, data)
    n_read = int((data.positions & (earlier_copy(data.clean) >= 0)).sum())
    print(f"{args.model}: {len(data)} induction prompts (seed {args.seed}, split {args.split}), "
          f"{n_read} repeated positions")
    print(format_table(scores))
    found = roles(scores, args.threshold)
    print(verdict(found, args.threshold))
    if args.circuit:
        circuit = Circuit.load(args.circuit, Graph.from_model(model))
        print("\n".join(describe_circuit(circuit, found["prev_token"], found["induction"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
