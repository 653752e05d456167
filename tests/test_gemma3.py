"""Gemma 3 (four norms per layer used as 1 + w, per-head q/k norms, sqrt(d_model)-scaled embeddings, gated GELU MLP,
sliding-window layers with their own rotary base next to global ones, grouped-query attention): the masked forward
against Hugging Face and against the hook reference under acdc's edge definition for post-normed attention (a head's
share of the normalised sum, in its own run); EAP against autograd; the fast ACDC engine against the plain search."""

from __future__ import annotations

import pytest
import torch

from acdc import Graph, ablation_cache, masked_forward
from acdc.attribution import attribute
from acdc.metrics import task_metric
from acdc.types import TaskData
from tests.reference import reference_gqa

# 3 layers: sliding (window 3), global, sliding; prompts of 9 tokens, so the window hides most keys
SHAPE = dict(n_layer=3, n_head=4, n_kv_head=2, d_model=32, d_head=8, d_mlp=64, vocab=64, window=3)
REF_TOL = 1e-5  # Hugging Face normalises in float32 even in a float64 model


def _build(dtype: torch.dtype, seed: int = 1, **over):
    from acdc.models import bridge_from_hf, random_gemma3_hf

    hf = random_gemma3_hf(seed=seed, init_std=0.2, norm_std=0.3, **{**SHAPE, **over})
    return bridge_from_hf(hf, name="tiny-gemma3", dtype=dtype)


@pytest.fixture(scope="module")
def model32():
    return _build(torch.float32)


@pytest.fixture(scope="module")
def model64():
    return _build(torch.float64)


def _tokens(b: int, p: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, SHAPE["vocab"], (b, p), generator=g), torch.randint(0, SHAPE["vocab"], (b, p), generator=g)


def test_the_tiny_model_is_gemma_shaped(model32):
    from acdc.arch import get_arch

    arch = get_arch(model32)
    assert arch.windows == [3, None, 3]
    assert arch.rope_types == ["sliding_attention", "full_attention", "sliding_attention"]
    assert arch.q_norm is not None and arch.attn_post is not None and arch.mlp_post is not None
    assert arch.embed_scale == pytest.approx(32**0.5)
    hf = model32.original_model
    norms = [p for n, p in hf.named_parameters() if "norm" in n]
    assert min(float(p.abs().max()) for p in norms) > 0.1  # the norm weights (used as 1 + w) are not the default 0
    graph = Graph.from_model(model32)
    assert (graph.n_layers, graph.n_heads, graph.n_kv_heads) == (3, 4, 2)


def test_identities_match_hugging_face(model32):
    graph = Graph.from_model(model32)
    hf = model32.original_model
    clean, corrupt = _tokens(4, 12, seed=3)
    ones = torch.ones(graph.n_src, graph.n_dst)
    with torch.no_grad():
        want_clean, want_corrupt = hf(clean).logits, hf(corrupt).logits
        both = masked_forward(model32, graph, clean, corrupt, torch.stack([ones, torch.zeros_like(ones)]))
    scale = want_clean.abs().max()
    assert (both[0] - want_clean).abs().max() <= 1e-4 * scale
    assert (both[1] - want_corrupt).abs().max() <= 1e-4 * scale
    assert (want_clean - want_corrupt).abs().max() > 0.1 * scale  # not vacuous


def test_sliding_window_and_layer_types_matter():
    """The same weights with every layer global give other logits (the window hides keys), and the masked forward
    follows the model either way; the sliding layers rotate with their own base."""
    from acdc.arch import get_arch

    local = _build(torch.float32, seed=2)
    wide = _build(torch.float32, seed=2, window=64)
    clean, _ = _tokens(2, 10, seed=4)
    with torch.no_grad():
        for model in (local, wide):
            graph = Graph.from_model(model)
            got = masked_forward(model, graph, clean, None, torch.ones(graph.n_src, graph.n_dst), ablation="zero")
            want = model.original_model(clean).logits
            assert (got - want).abs().max() <= 1e-4 * want.abs().max()
        assert (local.original_model(clean).logits - wide.original_model(clean).logits).abs().max() > 1e-3
    arch = get_arch(local)
    assert not torch.allclose(arch.rope(10, 0)[0], arch.rope(10, 1)[0])


@pytest.mark.parametrize("kind", ["binary", "fractional"])
def test_matches_hook_reference(model64, kind):
    graph = Graph.from_model(model64)
    clean, corrupt = _tokens(3, 9, seed=5)
    masks = torch.rand(3, graph.n_src, graph.n_dst, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    if kind == "binary":
        masks = (masks > 0.5).double()
    with torch.no_grad():
        got = masked_forward(model64, graph, clean, corrupt, masks)
        for k in range(masks.shape[0]):
            want = reference_gqa(model64, graph, clean, corrupt, masks[k])
            assert (got[k] - want).abs().max() <= REF_TOL, f"mask {k}"
            assert (got[k] - model64(clean)).abs().max() > 1e-3


def test_one_head_edge_is_its_share_under_its_own_run(model64):
    """Cutting one head -> reader edge patches that head's share only: the reader receives the counterfactual's
    share of that head (normalised by the counterfactual layer's sum) in place of the clean one."""
    graph = Graph.from_model(model64)
    clean, corrupt = _tokens(2, 8, seed=9)
    for name in ("a0.h1->a1.g0<k>", "a1.h2->logits", "a0.h3->m2"):
        mask = torch.ones(graph.n_src, graph.n_dst, dtype=torch.float64)
        mask[graph.edge_index(name)] = 0
        with torch.no_grad():
            got = masked_forward(model64, graph, clean, corrupt, mask)
            want = reference_gqa(model64, graph, clean, corrupt, mask)
            assert (got - want).abs().max() <= REF_TOL, name
            assert (got - model64(clean)).abs().max() > 1e-4, name


def test_shared_reader_path_matches_gradient_path(model64):
    graph = Graph.from_model(model64)
    clean, corrupt = _tokens(3, 7, seed=29)
    gen = torch.Generator().manual_seed(3)
    kind = torch.randint(0, 3, (4, 1, graph.n_dst), generator=gen)
    rand = (torch.rand(4, graph.n_src, graph.n_dst, generator=gen) > 0.5).double()
    masks = torch.where(kind == 0, 0.0, torch.where(kind == 1, 1.0, rand))
    for ablation, cf in (("patch", corrupt), ("mean", corrupt), ("zero", None)):
        cache = ablation_cache(model64, graph, cf, ablation)
        with torch.no_grad():
            fast = masked_forward(model64, graph, clean, cache, masks)
        slow = masked_forward(model64, graph, clean, cache, masks.clone().requires_grad_(True)).detach()
        assert (fast - slow).abs().max() <= 1e-10, ablation


def _data(seed: int = 0) -> TaskData:
    gen = torch.Generator().manual_seed(seed)
    B, P, V = 6, 9, SHAPE["vocab"]
    clean = torch.randint(0, V, (B, P), generator=gen)
    corrupt = torch.randint(0, V, (B, P), generator=gen)
    pos = torch.zeros(B, P, dtype=torch.bool)
    pos[:, -1] = True
    pos[::2, 4] = True
    return TaskData(clean, corrupt, pos, torch.randint(0, V, (B, P), generator=gen),
                    torch.randint(0, V, (B, P), generator=gen), "logit_diff")


@pytest.mark.parametrize("ablation", ["patch", "mean", "zero"])
def test_eap_is_minus_mask_gradient(model64, ablation):
    """The fast EAP path (per-reader gradients through the folded pre-attention norm; head shares differentiated
    through the post-attention norm) equals -dM/dm at m = 1 by autograd through the masked forward."""
    graph = Graph.from_model(model64)
    data = _data()
    s = attribute(model64, graph, data, "eap", ablation=ablation, batch_size=4, progress=False)
    cache = ablation_cache(model64, graph, data.corrupt if ablation != "zero" else None, ablation)
    m = graph.valid.double().requires_grad_(True)
    value = 0.0
    for lo in range(0, len(data), 4):
        sub = data.rows(lo, min(len(data), lo + 4))
        c = cache if ablation != "patch" else ablation_cache(model64, graph, sub.corrupt, "patch")
        part = task_metric(sub, masked_forward(model64, graph, sub.clean, c, m)).mean()
        value = value + part * (len(sub) / len(data))
    (grad,) = torch.autograd.grad(value, m)  # type: ignore[arg-type]
    ref = -grad * graph.valid
    assert ref.abs().max() > 1e-3
    assert (s.scores - ref).abs().max() <= 1e-9 * ref.abs().max()


def test_fast_acdc_equals_sequential(model64):
    """The incremental engine (a head change re-normalises every head of its layer; sliding windows at the metric
    positions), with and without speculation, keeps the same edges as one full masked forward per edge."""
    from acdc.methods import acdc_search

    graph = Graph.from_model(model64)
    data = _data(2)
    for ablation in ("patch", "mean"):
        plain, _ = acdc_search(model64, graph, data, 0.05, ablation=ablation, fast=False, progress=False)
        for spec in (1, 4):
            fast, _ = acdc_search(model64, graph, data, 0.05, ablation=ablation, fast=True, speculate=spec,
                                  progress=False)
            assert torch.equal(plain.mask, fast.mask), (ablation, spec)
        assert 0 < fast.n_edges < graph.n_edges


def test_other_gradient_methods_run(model64):
    graph = Graph.from_model(model64)
    data = _data(1)
    eap = attribute(model64, graph, data, "eap", progress=False)
    one = attribute(model64, graph, data, "eap-ig-inputs", steps=1, progress=False)
    assert torch.allclose(one.scores, eap.scores, atol=1e-12)
    for method in ("eap-ig-activations", "clean-corrupted", "mask-ig"):
        s = attribute(model64, graph, data, method, steps=2, progress=False)
        assert torch.isfinite(s.scores).all() and s.scores.abs().max() > 0
