"""A plain reference for the masked forward: TransformerLens hooks on the bridge, one mask at a time.

It shares nothing with acdc.patching or acdc.arch: writer outputs are read from the bridge's own hook points
(``hook_resid_pre`` of block 0, ``attn.hook_result``, ``hook_mlp_out``) and every reader hook (``attn.hook_q_input``
/``k``/``v``, ``hook_mlp_in``, ``ln_final.hook_in``) has, edge by edge, (1 - m) * (a_u - ã_u) subtracted from the
residual it receives, i.e. in_v = sum_u m a_u + (1 - m) ã_u.
"""

from __future__ import annotations

import torch

from acdc.graph import Graph


def _writer_hooks(graph: Graph) -> list[tuple[str, int, int | None]]:
    """(hook name, writer index, head or None)."""
    out: list[tuple[str, int, int | None]] = [("blocks.0.hook_resid_pre", 0, None)]
    for layer in range(graph.n_layers):
        for h in range(graph.n_heads):
            out.append((f"blocks.{layer}.attn.hook_result", graph.head_writer(layer, h), h))
        out.append((f"blocks.{layer}.hook_mlp_out", graph.mlp_writer(layer), None))
    return out


def _writer_values(cache_get, graph: Graph) -> dict[int, torch.Tensor]:
    vals = {}
    for name, w, h in _writer_hooks(graph):
        t = cache_get(name)
        vals[w] = t[:, :, h] if h is not None else t
    return vals


def reference_masked_forward(model, graph: Graph, clean, corrupt, mask: torch.Tensor) -> torch.Tensor:
    """Logits [B, P, V] of ``clean`` with edges outside ``mask`` [n_src, n_dst] patched from ``corrupt``."""
    assert graph.n_kv_heads == graph.n_heads, "reference covers ungrouped attention"
    _, cache = model.run_with_cache(corrupt)
    corr = _writer_values(lambda n: cache[n], graph)
    live: dict[int, torch.Tensor] = {}
    mask = mask.to(torch.float64)

    def capture(w: int, h: int | None):
        def hook(t, hook):
            live[w] = (t[:, :, h] if h is not None else t).clone()
            return t

        return hook

    def patched_input(t: torch.Tensor, reader: int) -> torch.Tensor:
        t = t.clone()
        for u in range(graph.n_src):
            if graph.valid[u, reader]:
                keep = float(mask[u, reader])
                if keep != 1.0:
                    t = t - (1.0 - keep) * (live[u] - corr[u])
        return t

    def head_readers(layer: int, kind: int):
        def hook(t, hook):
            t = t.clone()
            for h in range(graph.n_heads):
                r = graph.attn_readers(layer).start + kind * graph.n_heads + h
                t[:, :, h] = patched_input(t[:, :, h], r)
            return t

        return hook

    def single_reader(r: int):
        return lambda t, hook: patched_input(t, r)

    hooks = [(n, capture(w, h)) for n, w, h in _writer_hooks(graph)]
    for layer in range(graph.n_layers):
        for kind, name in enumerate(("q", "k", "v")):
            hooks.append((f"blocks.{layer}.attn.hook_{name}_input", head_readers(layer, kind)))
        hooks.append((f"blocks.{layer}.hook_mlp_in", single_reader(graph.mlp_reader(layer))))
    hooks.append(("ln_final.hook_in", single_reader(graph.logits_index)))
    return model.run_with_hooks(clean, fwd_hooks=hooks)
