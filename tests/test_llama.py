"""Llama- and Qwen2-style models (RMSNorm, rotary q/k, gated SiLU MLP, grouped-query attention): the masked forward
against the Hugging Face model and against an edge-by-edge reference on the bridge's own hooks, where a key/value
reader is one shared key/value head; EAP against autograd through the masked forward; graph sizes; refusals."""

from __future__ import annotations

import json

import pytest
import torch

from acdc import Graph, ablation_cache, masked_forward
from acdc.attribution import attribute
from acdc.errors import UnsupportedArchitecture
from acdc.metrics import answer_logprob, task_metric
from acdc.types import TaskData
from tests.reference import reference_gqa

FAMILIES = ["llama", "qwen2"]
SHAPE = dict(n_layer=2, n_head=4, n_kv_head=2, d_model=32, d_mlp=64, vocab=64, n_ctx=64)
# Hugging Face's RMSNorm normalises in float32 even in a float64 model (acdc keeps float64), so comparisons with the
# bridge's own computation agree to ~1e-6, not 1e-12; single-edge effects in these models are > 1e-3.
REF_TOL = 1e-5


def _build(family: str, dtype: torch.dtype, seed: int = 1):
    """A tiny random model with non-trivial norm weights and (Qwen2) q/k/v biases, which Hugging Face initialises
    to ones and zeros, so that folding them into the projections is tested."""
    from acdc.models import bridge_from_hf, random_llama_hf

    hf = random_llama_hf(family=family, seed=seed, init_std=0.2, **SHAPE)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return bridge_from_hf(hf, name=f"tiny-{family}", dtype=dtype)


@pytest.fixture(scope="module", params=FAMILIES)
def model32(request):
    return _build(request.param, torch.float32)


@pytest.fixture(scope="module", params=FAMILIES)
def model64(request):
    return _build(request.param, torch.float64)


def _tokens(b: int, p: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, SHAPE["vocab"], (b, p), generator=g), torch.randint(0, SHAPE["vocab"], (b, p), generator=g)


# ---- graph ----------------------------------------------------------------------------------------------------------
def test_graph_has_shared_kv_readers(model32):
    g = Graph.from_model(model32)
    L, H, G = 2, 4, 2
    assert (g.n_layers, g.n_heads, g.n_kv_heads) == (L, H, G)
    assert g.n_src == 1 + L * (H + 1)
    assert g.n_dst == L * (H + 2 * G + 1) + 1  # 19, against 27 with one k/v reader per query head
    # layer 0: 8 attention readers x 1 writer + MLP x 5; layer 1: 8 x 6 + 11... counted by rule:
    want = sum((H + 2 * G) * (1 + layer * (H + 1)) + (1 + layer * (H + 1) + H) for layer in range(L)) + g.n_src
    assert g.n_edges == want == 82
    assert Graph.from_config(L, H).n_edges == 110  # ungrouped copies would add 28 edges
    assert "a1.g0<k>" in g.dst_names and "a1.h0<k>" not in g.dst_names
    # the shared key/value head of group 1 feeds query heads 2 and 3 of its layer
    for kind in ("k", "v"):
        fed = g.feeds[g.dst_index[f"a1.g1<{kind}>"]].nonzero().flatten().tolist()
        assert [g.src_names[i] for i in fed] == ["a1.h2", "a1.h3"]


# ---- identities and the reference -------------------------------------------------------------------------------
def test_identities_match_hugging_face(model32):
    graph = Graph.from_model(model32)
    hf = model32.original_model
    clean, corrupt = _tokens(4, 12, seed=3)
    ones = torch.ones(graph.n_src, graph.n_dst)
    with torch.no_grad():
        want_clean, want_corrupt = hf(clean).logits, hf(corrupt).logits
        both = masked_forward(model32, graph, clean, corrupt, torch.stack([ones, torch.zeros_like(ones)]))
        assert (model32(clean) - want_clean).abs().max() <= 1e-5
    assert (both[0] - want_clean).abs().max() <= 1e-5
    assert (both[1] - want_corrupt).abs().max() <= 1e-5
    assert (want_clean - want_corrupt).abs().max() > 0.5  # not vacuous


def test_rotary_positions_matter(model32):
    """Without position embeddings a token's logits would not depend on where it sits; with rope they do."""
    graph = Graph.from_model(model32)
    tok = torch.tensor([[5, 9, 5, 9, 5, 9]])
    ones = torch.ones(graph.n_src, graph.n_dst)
    with torch.no_grad():
        out = masked_forward(model32, graph, tok, tok, ones)
    assert (out[0, 2] - out[0, 4]).abs().max() > 1e-3


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


def test_shared_kv_edge_is_one_reader(model64):
    """Cutting ``a0.h1 -> a1.g0<k>`` changes the keys that query heads 0 and 1 of layer 1 both read, as in the
    reference where the bridge's key input of kv head 0 is patched once."""
    graph = Graph.from_model(model64)
    clean, corrupt = _tokens(2, 8, seed=9)
    mask = torch.ones(graph.n_src, graph.n_dst, dtype=torch.float64)
    mask[graph.edge_index("a0.h1->a1.g0<k>")] = 0
    with torch.no_grad():
        got = masked_forward(model64, graph, clean, corrupt, mask)
        want = reference_gqa(model64, graph, clean, corrupt, mask)
        assert (got - want).abs().max() <= REF_TOL
        assert (got - model64(clean)).abs().max() > 1e-3


def _structured_masks(graph: Graph, k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    kind = torch.randint(0, 3, (k, 1, graph.n_dst), generator=gen)
    rand = (torch.rand(k, graph.n_src, graph.n_dst, generator=gen) > 0.5).double()
    return torch.where(kind == 0, 0.0, torch.where(kind == 1, 1.0, rand))


def test_shared_reader_path_matches_gradient_path(model64):
    """Without gradients, readers with all-0/all-1 columns share one normalised input (and mixed readers use the
    RMSNorm folded into the projections); with or without, the result is the same and equals the reference."""
    graph = Graph.from_model(model64)
    clean, corrupt = _tokens(3, 7, seed=29)
    masks = _structured_masks(graph, 4, seed=3)
    for ablation, cf in (("patch", corrupt), ("mean", corrupt), ("zero", None)):
        cache = ablation_cache(model64, graph, cf, ablation)
        with torch.no_grad():
            fast = masked_forward(model64, graph, clean, cache, masks)
        slow = masked_forward(model64, graph, clean, cache, masks.clone().requires_grad_(True)).detach()
        assert (fast - slow).abs().max() <= 1e-10, ablation
    with torch.no_grad():
        got = masked_forward(model64, graph, clean, corrupt, masks)
        for k in range(masks.shape[0]):
            assert (got[k] - reference_gqa(model64, graph, clean, corrupt, masks[k])).abs().max() <= REF_TOL


def test_zero_ablation_ignores_the_prompt(model64):
    graph = Graph.from_model(model64)
    a, b = _tokens(2, 6, seed=31)
    zeros = torch.zeros(graph.n_src, graph.n_dst, dtype=torch.float64)
    with torch.no_grad():
        za = masked_forward(model64, graph, a, None, zeros, ablation="zero")
        zb = masked_forward(model64, graph, b, None, zeros, ablation="zero")
    assert (za - zb).abs().max() <= 1e-12


# ---- gradients ------------------------------------------------------------------------------------------------------
def test_mask_gradient_matches_finite_differences(model64):
    graph = Graph.from_model(model64)
    clean, corrupt = _tokens(3, 8, seed=13)
    positions = torch.zeros(3, 8, dtype=torch.bool)
    positions[:, -3:] = True
    answers = torch.randint(0, SHAPE["vocab"], (3, 8), generator=torch.Generator().manual_seed(1))
    cache = ablation_cache(model64, graph, corrupt)

    def metric(m: torch.Tensor) -> torch.Tensor:
        return answer_logprob(masked_forward(model64, graph, clean, cache, m), positions, answers).mean()

    point = torch.rand(graph.n_src, graph.n_dst, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    m = point.clone().requires_grad_(True)
    metric(m).backward()
    assert m.grad is not None
    eps = 1e-6
    with torch.no_grad():
        edges = graph.valid.nonzero()
        for s, d in edges[torch.randperm(len(edges), generator=torch.Generator().manual_seed(0))[:30]].tolist():
            up, down = point.clone(), point.clone()
            up[s, d] += eps
            down[s, d] -= eps
            fd = (metric(up) - metric(down)) / (2 * eps)
            assert abs(float(fd) - float(m.grad[s, d])) <= 1e-8 + 1e-6 * abs(float(fd)), (s, d)
    assert m.grad[graph.valid].abs().max() > 1e-3


def _data(seed: int = 0) -> TaskData:
    gen = torch.Generator().manual_seed(seed)
    B, P, V = 6, 8, SHAPE["vocab"]
    clean = torch.randint(0, V, (B, P), generator=gen)
    corrupt = torch.randint(0, V, (B, P), generator=gen)
    pos = torch.zeros(B, P, dtype=torch.bool)
    pos[:, -1] = True
    pos[::2, 3] = True
    return TaskData(clean, corrupt, pos, torch.randint(0, V, (B, P), generator=gen),
                    torch.randint(0, V, (B, P), generator=gen), "logit_diff")


@pytest.mark.parametrize("ablation", ["patch", "mean", "zero"])
def test_eap_is_minus_mask_gradient(model64, ablation):
    """The fast EAP (one forward + one backward, per-reader gradients recovered through RMSNorm's backward, one
    gradient per shared key/value head) equals -dM/dm at m = 1 by autograd through the masked forward."""
    graph = Graph.from_model(model64)
    data = _data()
    s = attribute(model64, graph, data, "eap", ablation=ablation, batch_size=4, progress=False)
    cache = ablation_cache(model64, graph, data.corrupt if ablation != "zero" else None, ablation)
    m = graph.valid.double().requires_grad_(True)
    # the same prompt batches as attribute (4 + 2), weighted by their share of the prompts
    value = sum(task_metric(sub, masked_forward(model64, graph, sub.clean, c, m)).mean() * (len(sub) / len(data))
                for sub, c in _batches(model64, graph, data, cache, ablation, 4))
    (grad,) = torch.autograd.grad(value, m)
    ref = -grad * graph.valid
    assert ref.abs().max() > 1e-3
    assert (s.scores - ref).abs().max() <= 1e-10 * ref.abs().max()
    kv = [graph.dst_index[n] for n in graph.dst_names if ".g" in n]
    assert ref[:, kv].abs().max() > 1e-3  # the shared key/value readers get real scores


def _batches(model, graph, data, cache, ablation, size):
    for lo in range(0, len(data), size):
        sub = data.rows(lo, min(len(data), lo + size))
        yield sub, cache if ablation != "patch" else ablation_cache(model, graph, sub.corrupt, "patch")


def test_other_gradient_methods_run(model64):
    """EAP-IG's one-step rule is EAP; exact scores are single-edge masked forwards (shared k/v readers included);
    the other gradient methods run on these architectures."""
    graph = Graph.from_model(model64)
    data = _data(1)
    eap = attribute(model64, graph, data, "eap", progress=False)
    one = attribute(model64, graph, data, "eap-ig-inputs", steps=1, progress=False)
    assert torch.allclose(one.scores, eap.scores, atol=1e-12)
    ex = attribute(model64, graph, data, "exact", exact_batch=16, progress=False)
    cache = ablation_cache(model64, graph, data.corrupt)
    full = task_metric(data, masked_forward(model64, graph, data.clean, cache, graph.valid.double())).mean()
    for name in ("input->a0.g1<v>", "a0.h2->a1.g0<k>", "m1->logits"):
        m = graph.valid.double().clone()
        m[graph.edge_index(name)] = 0
        want = task_metric(data, masked_forward(model64, graph, data.clean, cache, m)).mean() - full
        assert abs(float(ex.scores[graph.edge_index(name)]) - float(want)) < 1e-12
    for method in ("eap-ig-activations", "clean-corrupted", "mask-ig"):
        s = attribute(model64, graph, data, method, steps=2, progress=False)
        assert torch.isfinite(s.scores).all() and s.scores.abs().max() > 0


def test_fast_acdc_equals_sequential(model64):
    """The searches run on these architectures too: ACDC's incremental engine (rotary queries at the metric
    positions, shared key/value readers), with and without speculation, gives the same edges as one full masked
    forward per edge."""
    from acdc.methods import acdc_search

    graph = Graph.from_model(model64)
    data = _data(2)
    for ablation in ("patch", "mean"):
        plain, _ = acdc_search(model64, graph, data, 0.05, ablation=ablation, fast=False, progress=False)
        for spec in (1, 4):  # incremental evaluation alone, and with speculation
            fast, _ = acdc_search(model64, graph, data, 0.05, ablation=ablation, fast=True, speculate=spec,
                                  progress=False)
            assert torch.equal(plain.mask, fast.mask), (ablation, spec)
        assert 0 < fast.n_edges < graph.n_edges


def test_load_model_from_a_local_checkpoint(tmp_path):
    """A Llama checkpoint directory loads through the same path as GPT-2 and its masked forward is the model."""
    from acdc import load_model
    from acdc.models import random_llama_hf, word_level_tokenizer

    hf = random_llama_hf(family="llama", seed=3, init_std=0.2, **SHAPE)
    hf.save_pretrained(tmp_path)
    word_level_tokenizer([f"t{i}" for i in range(SHAPE["vocab"])]).save_pretrained(tmp_path)
    model = load_model(str(tmp_path))
    graph = Graph.from_model(model)
    assert graph.n_kv_heads == 2
    clean, _ = _tokens(2, 6, seed=37)
    with torch.no_grad():
        got = masked_forward(model, graph, clean, None, torch.ones(graph.n_src, graph.n_dst), ablation="zero")
        assert (got - hf(clean).logits).abs().max() <= 1e-5


# ---- refusals -------------------------------------------------------------------------------------------------------
def test_unsupported_architecture_is_one_line(tmp_path):
    from acdc import load_model

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    with pytest.raises(UnsupportedArchitecture) as e:
        load_model(str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "BertForMaskedLM" in msg and "LlamaForCausalLM" in msg


def test_sliding_window_is_refused():
    from acdc.arch import get_arch
    from acdc.models import bridge_from_hf, random_llama_hf

    hf = random_llama_hf(family="qwen2", **SHAPE)
    hf.config.use_sliding_window = True
    hf.config.sliding_window = 4
    for layer in hf.model.layers:
        layer.self_attn.sliding_window = 4
    model = bridge_from_hf(hf, name="sliding")
    with pytest.raises(UnsupportedArchitecture, match="sliding-window attention"):
        get_arch(model)
