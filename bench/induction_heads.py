"""Find the previous-token, induction and duplicate-token heads of a model from its attention patterns alone.

An independent check on a discovered induction circuit: the heads are named by what they attend to on the
induction task's own prompts, not by anything the model's author says about them.

    python3 bench/induction_heads.py [--model zoo:toy-induction] [--n 200] [--seed 0] [--circuit circuit.json ...]
    python3 bench/induction_heads.py --model zoo:smollm2-135m-instruct --n 64 --top 8 \
        --find eap,eap-ig --sizes 200,1000 --save-dir /tmp/induction-circuits

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

Circuits held against the roles (shared with bench/ioi_heads.py): ``--find METHODS --sizes N,...`` ranks every edge
with each registered ranking method on ``--train-n`` train prompts and grows greedy circuits of those sizes from the
logits (saved as JSON under ``--save-dir``); ``--circuit`` adds saved ones. Each circuit is measured exactly on the
prompts the scores came from (f on the test split by default, with the task's ablation) and its heads are held
against the roles: a head is *used* when an edge of the circuit leaves it (after dangling-edge removal an edge into
its query implies one; an edge into a grouped-query key/value reader ``a{L}.g{G}`` feeds the whole group and is not
counted for the group's other heads), and its *weight* is the sum of |score| of those edges (their count when the
circuit carries no scores). Rankings take minutes on a real model: on SmolLM2-135M (70,651 edges, 2 CPU cores, 32
prompts) eap ~10-80 s and eap-ig ~2-5 min for IOI; ``ensemble`` adds eap-ig-activations, 245 passes, over 20 min.

``head_scores`` / ``scores_from_patterns`` / ``roles`` / ``composition_edges`` / ``head_weights`` / ``role_lines`` are
the same as functions; tests import this file by path (bench/ is a folder of scripts, not a package).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

import torch

ROLES = ("prev_token", "induction", "duplicate")
ROLE_NAMES = {"prev_token": "previous-token", "induction": "induction", "duplicate": "duplicate-token"}
THRESHOLD = 0.4
INPUTS = ("q", "k", "v")
COMPOSITION = {"q": "Q-composition", "k": "K-composition", "v": "V-composition"}
COLUMNS = {"prev_token": "prev-token", "induction": "induction", "duplicate": "duplicate", "bos": "bos"}


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


def roles(scores: dict[str, dict[str, float]], threshold: float = THRESHOLD,
          names: tuple[str, ...] = ROLES) -> dict[str, list[str]]:
    """``{"prev_token": [heads], "induction": [...], "duplicate": [...]}`` (or the scores ``names``): heads whose score
    exceeds ``threshold``."""
    return {role: [h for h, s in scores.items() if s[role] > threshold] for role in names}


def top_heads(scores: dict[str, dict[str, float]], column: str, k: int) -> list[str]:
    """The ``k`` heads with the highest ``column`` score, best first (NaN scores last)."""
    return sorted(scores, key=lambda h: math.inf if math.isnan(scores[h][column]) else -scores[h][column])[:k]


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


def head_weights(circuit: Any) -> dict[str, float]:
    """``{"a{L}.h{H}": weight}`` for the heads the circuit uses (an edge leaves them), heaviest first: the sum of
    |score| of their outgoing edges in the circuit (``circuit.scores``), or the number of those edges."""
    graph = circuit.graph
    mask = circuit.mask
    values = mask.float() if circuit.scores is None else circuit.scores.abs() * mask
    weights = {}
    for layer in range(graph.n_layers):
        for head in range(graph.n_heads):
            w = graph.head_writer(layer, head)
            if bool(mask[w].any()):
                weights[f"a{layer}.h{head}"] = float(values[w].sum())
    return dict(sorted(weights.items(), key=lambda kv: -kv[1]))


def role_lines(circuit: Any, found: dict[str, list[str]], labels: dict[str, str], top: int = 10) -> list[str]:
    """Which role heads (``found``: role -> heads) ``circuit`` uses and misses, its ``top`` heaviest heads (see
    :func:`head_weights`) with their roles, and (the last line) which of those have no role."""
    weights = head_weights(circuit)
    role_of = {h: [labels[r] for r in found if h in found[r]] for h in weights}
    lines = [f"  heads used: {len(weights)} of {circuit.graph.n_layers * circuit.graph.n_heads}"]
    for role, heads in found.items():
        used = [h for h in heads if h in weights]
        missed = [h for h in heads if h not in weights]
        lines.append(f"  {labels[role]} heads used {len(used)}/{len(heads)}: {', '.join(used) or '-'}; "
                     f"missed: {', '.join(missed) or '-'}")
    heavy = list(weights)[:top]
    lines.append(f"  top {len(heavy)} heads by |score| of their edges: "
                 + ", ".join(f"{h} {weights[h]:.3g} ({'/'.join(role_of[h]) or 'no role'})" for h in heavy))
    lines.append(f"  of these, no role: {', '.join(h for h in heavy if not role_of[h]) or '-'}")
    return lines


# ---- command line ---------------------------------------------------------------------------------------------
def format_table(scores: dict[str, dict[str, float]], columns: dict[str, str] | None = None,
                 heads: list[str] | None = None) -> str:
    """The scores ``columns`` (key -> header; default: previous-token, induction, duplicate, bos) of ``heads`` in
    their order (default: every head, in graph order)."""
    columns = columns or COLUMNS
    heads = list(scores) if heads is None else heads
    width = max(len(c) for c in columns.values()) + 2
    lines = [f"{'head':<8}" + "".join(f"{c:>{width}}" for c in columns.values())]
    for head in heads:
        lines.append(f"{head:<8}" + "".join(f"{scores[head][k]:>{width}.3f}" for k in columns))
    return "\n".join(lines)


def verdict(found: dict[str, list[str]], threshold: float = THRESHOLD, labels: dict[str, str] = ROLE_NAMES) -> str:
    parts = [f"{labels[r]}: {', '.join(heads) or 'none'}" for r, heads in found.items()]
    return f"verdict (score > {threshold:g}): " + "; ".join(parts)


def describe_circuit(circuit: Any, prev_heads: list[str], induction_heads: list[str], limit: int = 20) -> list[str]:
    """Lines saying which previous-token -> induction-head edges ``circuit`` has (the first ``limit`` listed) and
    through which input."""
    lines = [f"circuit: {circuit.n_edges} edges"]
    if not prev_heads or not induction_heads:
        lines.append("  no previous-token or no induction head was found, so there is no composition to look for")
        return lines
    edges = composition_edges(circuit, prev_heads, induction_heads)
    lines.append(f"  previous-token -> induction-head edges in the circuit: {len(edges)}")
    for e in edges[:limit]:
        lines.append(f"    {e}  ({COMPOSITION[e[-2]]})")
    if len(edges) > limit:
        lines.append(f"    ... and {len(edges) - limit} more")
    by_input = {inp: [e for e in edges if e.endswith(f"<{inp}>")] for inp in INPUTS}
    summary = ", ".join(f"{inp}: {len(v)}" for inp, v in by_input.items())
    lines.append(f"  by input: {summary}")
    if by_input["k"]:
        lines.append("  K-composition present: the circuit shows the previous-token -> induction-head mechanism")
    else:
        lines.append("  no K-composition edge: the circuit does not show the classic mechanism directly")
    return lines


def add_arguments(ap: argparse.ArgumentParser, model: str) -> None:
    """The options shared by this script and bench/ioi_heads.py: the model (default ``model``) and prompts, the role
    threshold, the table size and those of :func:`circuit_report`."""
    ap.add_argument("--model", default=model)
    ap.add_argument("--n", type=int, default=200, help="number of prompts (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", default="test")
    ap.add_argument("--threshold", type=float, default=THRESHOLD)
    ap.add_argument("--top", type=int, default=0, help="print only the top K heads of each score (0: every head)")
    ap.add_argument("--circuit", action="extend", nargs="+", default=[], help="acdc circuit JSON files to hold "
                    "against the roles")
    ap.add_argument("--find", default="", help="ranking methods (comma-separated, e.g. eap,eap-ig,ensemble) to find "
                    "greedy circuits with on the train split")
    ap.add_argument("--sizes", default="200,1000", help="circuit sizes in edges for --find (default 200,1000)")
    ap.add_argument("--train-n", type=int, default=32, help="train prompts for --find (default 32)")
    ap.add_argument("--steps", type=int, default=5, help="integrated-gradient steps for --find (default 5)")
    ap.add_argument("--ablation", default=None, help="ablation for --find and f [the task's default]")
    ap.add_argument("--save-dir", default="/tmp/acdc-head-roles", help="where --find saves its circuits")


def find_circuits(model: Any, graph: Any, data: Any, methods: list[str], sizes: list[int], *, ablation: str,
                  steps: int, save_dir: str) -> list[str]:
    """Rank every edge of ``graph`` on ``data`` with each registered ranking method, grow the greedy circuit of each
    size, save it as ``{save_dir}/{task}-{method}-{size}.json`` and return the paths. The rankings are computed
    once per job, so ``ensemble`` after ``eap`` and ``eap-ig`` only adds its third member."""
    import time
    from pathlib import Path

    from acdc.methods import get_method
    from acdc.methods.base import Context, Settings
    from acdc.selection import greedy

    ctx = Context(model, graph, data, progress=False)
    settings = Settings(ablation=ablation, ig_steps=steps)
    out = Path(save_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for method in methods:
        start = time.perf_counter()
        scores = get_method(method).run(ctx, settings).scores
        if scores is None:
            raise SystemExit(f"--find: {method} is not a ranking method")
        seconds = time.perf_counter() - start
        for size in sizes:
            circuit = greedy(graph, scores.scores, size)
            circuit.meta.update(method=method, task=data.info.get("task"), split=data.info.get("split"),
                                prompts=len(data), seed=data.info.get("seed"), ablation=ablation, steps=steps,
                                ranking_seconds=round(seconds, 1))
            paths.append(str(circuit.save(out / f"{data.info.get('task')}-{method}-{size}.json")))
        print(f"{method}: ranked {graph.n_edges} edges on {len(data)} train prompts in {seconds:.0f} s")
    return paths


def circuit_report(model: Any, task: str, test: Any, found: dict[str, list[str]], labels: dict[str, str],
                   args: argparse.Namespace, describe: Callable[[Any], list[str]] | None = None) -> list[str]:
    """Find (``--find``) and load (``--circuit``) circuits, measure each exactly on the ``test`` prompts and hold its
    heads against the roles ``found``; ``describe(circuit)`` adds task-specific lines. Ends with a markdown table."""
    from acdc import Circuit, Graph, evaluate_circuits, get_task

    graph = Graph.from_model(model)
    ablation = args.ablation or get_task(task).spec.defaults.ablation
    paths = list(args.circuit)
    if args.find:
        train = get_task(task).build(model, args.train_n, seed=args.seed, split="train")
        paths += find_circuits(model, graph, train, args.find.split(","), [int(n) for n in args.sizes.split(",")],
                               ablation=ablation, steps=args.steps, save_dir=args.save_dir)
    if not paths:
        return []
    circuits = [Circuit.load(p, graph) for p in paths]
    numbers = evaluate_circuits(model, graph, test, circuits, ablation=ablation)
    lines = [f"exact f on {len(test)} {test.info.get('split')} prompts (ablation {ablation}; "
             f"M(full) {numbers[0]['full']:.3f}, M(empty) {numbers[0]['empty']:.3f})"]
    top = args.top or 10
    rows = ["| circuit | size | edges | f (test) | heads used | " + " | ".join(f"{labels[r]} used" for r in found)
            + f" | no role among the {top} heaviest heads |", "|---" * (len(found) + 6) + "|"]
    for path, circuit, num in zip(paths, circuits, numbers, strict=True):
        lines.append(f"{path}: {circuit.n_edges} edges, f {num['faithfulness']:.3f}, KL {num['kl']:.3f}")
        lines += role_lines(circuit, found, labels, top=top)
        if describe is not None:
            lines += describe(circuit)[1:]
        weights = head_weights(circuit)
        used = [f"{sum(h in weights for h in found[r])}/{len(found[r])}" for r in found]
        lonely = [h for h in list(weights)[:top] if not any(h in found[r] for r in found)]
        name, size = circuit.meta.get("method", path), circuit.meta.get("selected", "-")
        rows.append(f"| {name} | {size} | {circuit.n_edges} | {num['faithfulness']:.3f} | "
                    f"{len(weights)}/{graph.n_layers * graph.n_heads} | " + " | ".join(used)
                    + f" | {', '.join(lonely) or '-'} |")
    return lines + [""] + rows


def print_scores(scores: dict[str, dict[str, float]], columns: dict[str, str], top: int) -> None:
    """The score table: every head, or with ``top`` the ``top`` best heads of each column, one table per column."""
    if not top:
        print(format_table(scores, columns))
        return
    for key, header in columns.items():
        print(f"top {top} by {header}:")
        print(format_table(scores, columns, top_heads(scores, key, top)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap, "zoo:toy-induction")
    args = ap.parse_args(argv)

    from acdc import get_task, load_model

    model = load_model(args.model)
    data = get_task("induction").build(model, args.n, seed=args.seed, split=args.split)
    scores = head_scores(model, data)
    n_read = int((data.positions & (earlier_copy(data.clean) >= 0)).sum())
    print(f"{args.model}: {len(data)} induction prompts (seed {args.seed}, split {args.split}), "
          f"{n_read} repeated positions")
    print_scores(scores, COLUMNS, args.top)
    found = roles(scores, args.threshold)
    print(verdict(found, args.threshold))
    print("\n".join(circuit_report(model, "induction", data, found, ROLE_NAMES, args,
                                   lambda c: describe_circuit(c, found["prev_token"], found["induction"]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
