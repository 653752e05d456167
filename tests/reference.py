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


# ---- an edge-by-edge reference with shared key/value readers (Llama, Qwen2, Gemma 3) ---------------------------
def reference_gqa(model, graph: Graph, clean, corrupt, mask: torch.Tensor) -> torch.Tensor:
    """Logits of ``clean`` with the edges outside ``mask`` patched from ``corrupt``, computed by the bridge itself.

    Writers are read at ``hook_resid_pre`` of block 0, ``attn.hook_result`` and ``hook_mlp_out``; at every reader hook
    (``attn.hook_q_input`` per query head, ``attn.hook_k_input``/``hook_v_input`` per key/value head, ``hook_mlp_in``,
    ``ln_final.hook_in``) ``(1 - m) * (a_u - ã_u)`` is subtracted edge by edge. Shares nothing with acdc.arch.

    With a norm after attention (Gemma: the bridge's ``ln1_post``), a head writer's value is its share
    ``(1 + w) * result_h / rms(sum of the layer's results)``, the sum read at ``ln1_post.hook_in`` of the same run
    and ``w``, ``eps`` from the Hugging Face module: acdc's edge definition for post-normed attention, restated.
    """
    H, G = graph.n_heads, graph.n_kv_heads
    layers = getattr(getattr(model.original_model, "model", None), "layers", None)
    post = None
    if layers is not None and hasattr(layers[0], "post_attention_layernorm") and hasattr(layers[0],
                                                                                          "pre_feedforward_layernorm"):
        post = [(1.0 + b.post_attention_layernorm.weight.detach().double(), b.post_attention_layernorm.eps)
                for b in layers]
    writers: list[tuple[str, int, int | None]] = [("blocks.0.hook_resid_pre", 0, None)]
    for layer in range(graph.n_layers):
        writers += [(f"blocks.{layer}.attn.hook_result", graph.head_writer(layer, h), h) for h in range(H)]
        writers.append((f"blocks.{layer}.hook_mlp_out", graph.mlp_writer(layer), None))

    def share(layer: int, results: torch.Tensor, total: torch.Tensor) -> list[torch.Tensor]:
        gamma, eps = post[layer]  # type: ignore[index]
        scale = gamma * torch.rsqrt(total.double().square().mean(-1, keepdim=True) + eps)
        return [(results[:, :, h].double() * scale).to(results.dtype) for h in range(H)]

    _, cache = model.run_with_cache(corrupt)
    corr = {w: (cache[n][:, :, h] if h is not None else cache[n]) for n, w, h in writers}
    if post is not None:
        for layer in range(graph.n_layers):
            shares = share(layer, cache[f"blocks.{layer}.attn.hook_result"], cache[f"blocks.{layer}.ln1_post.hook_in"])
            for h in range(H):
                corr[graph.head_writer(layer, h)] = shares[h]
    live: dict[int, torch.Tensor] = {}
    raw: dict[int, torch.Tensor] = {}

    def capture(w: int, h: int | None):
        def hook(t, hook):
            live[w] = (t[:, :, h] if h is not None else t).clone()
            return t

        return hook

    def capture_results(layer: int):
        def hook(t, hook):
            raw[layer] = t.clone()
            return t

        return hook

    def capture_total(layer: int):
        def hook(t, hook):
            for h, s in enumerate(share(layer, raw[layer], t)):
                live[graph.head_writer(layer, h)] = s
            return t

        return hook

    def patched(t: torch.Tensor, reader: int) -> torch.Tensor:
        for u in range(graph.n_src):
            if graph.valid[u, reader] and float(mask[u, reader]) != 1.0:
                t = t - (1.0 - float(mask[u, reader])) * (live[u] - corr[u])
        return t

    def single(reader: int):
        return lambda t, hook: patched(t, reader)

    def per_head(first: int, n: int):
        def hook(t, hook):
            assert t.shape[2] == n  # the bridge hands one input per query head (q) or per key/value head (k, v)
            t = t.clone()
            for i in range(n):
                t[:, :, i] = patched(t[:, :, i], first + i)
            return t

        return hook

    if post is None:
        hooks = [(n, capture(w, h)) for n, w, h in writers]
    else:
        hooks = [(n, capture(w, h)) for n, w, h in writers if h is None]
        for layer in range(graph.n_layers):
            hooks += [(f"blocks.{layer}.attn.hook_result", capture_results(layer)),
                      (f"blocks.{layer}.ln1_post.hook_in", capture_total(layer))]
    for layer in range(graph.n_layers):
        r0 = graph.attn_readers(layer).start
        hooks += [(f"blocks.{layer}.attn.hook_q_input", per_head(r0, H)),
                  (f"blocks.{layer}.attn.hook_k_input", per_head(r0 + H, G)),
                  (f"blocks.{layer}.attn.hook_v_input", per_head(r0 + H + G, G)),
                  (f"blocks.{layer}.hook_mlp_in", single(graph.mlp_reader(layer)))]
    hooks.append(("ln_final.hook_in", single(graph.logits_index)))
    return model.run_with_hooks(clean, fwd_hooks=hooks)
