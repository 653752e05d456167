"""Relevance patching (RelP): each propagation rule keeps the forward value and changes the gradient as its
definition says; the fast RelP pass equals -dM/dm at m = 1 through the masked forward of the relevance view, on
every architecture family (LayerNorm, RMSNorm with a gated MLP, Gemma's four norms); and it is not EAP."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from acdc import Graph, ablation_cache
from acdc.arch import get_arch
from acdc.arch.base import half_rule, identity_rule, relevance_norm
from acdc.attribution import attribute
from acdc.errors import InputError
from acdc.metrics import task_metric
from acdc.patching import masked_forward_unchecked
from acdc.types import TaskData


def test_identity_rule_passes_f_of_x_over_x():
    x = torch.tensor([-2.0, -0.3, 0.0, 1e-9, 0.7, 3.0], dtype=torch.float64, requires_grad=True)
    for fn in (F.silu, F.gelu, torch.tanh):
        y = identity_rule(fn)(x)
        assert torch.equal(y, fn(x))  # the value is the activation's, bit for bit
        (g,) = torch.autograd.grad(y.sum(), x)
        want = fn(x.detach()) / x.detach().abs().clamp_min(1e-6) * torch.where(x.detach() >= 0, 1.0, -1.0)
        assert torch.allclose(g, want, rtol=1e-12, atol=0)
        (plain,) = torch.autograd.grad(fn(x).sum(), x)
        assert not torch.allclose(g, plain)  # not the ordinary derivative


def test_half_rule_halves_both_factors():
    a = torch.randn(5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)
    y = half_rule(a * b)
    assert torch.equal(y, a * b)
    ga, gb = torch.autograd.grad(y.sum(), (a, b))
    assert torch.allclose(ga, b / 2) and torch.allclose(gb, a / 2)


@pytest.mark.parametrize("rms", [False, True])
def test_ln_rule_holds_the_scale_constant(rms):
    d = 6
    gen = torch.Generator().manual_seed(0)
    gamma = 1 + 0.3 * torch.randn(d, generator=gen, dtype=torch.float64)
    beta = torch.zeros(d, dtype=torch.float64) if rms else 0.2 * torch.randn(d, generator=gen, dtype=torch.float64)
    x = torch.randn(d, generator=gen, dtype=torch.float64) + 0.5
    f = relevance_norm((gamma, beta, 1e-5), rms)
    plain = F.rms_norm(x, (d,), gamma, 1e-5) if rms else F.layer_norm(x, (d,), gamma, beta, 1e-5)
    assert torch.allclose(f(x), plain, rtol=1e-13, atol=1e-13)
    jac = torch.autograd.functional.jacobian(f, x)
    c = x if rms else x - x.mean()
    rstd = torch.rsqrt(c.square().mean() + 1e-5)
    centre = torch.eye(d, dtype=torch.float64) - (0.0 if rms else 1.0 / d)
    assert torch.allclose(jac, gamma[:, None] * rstd * centre, rtol=1e-12, atol=1e-14)


# ---- the fast pass against autograd through the relevance view's masked forward --------------------------------
def _llama(family):
    from tests.test_llama import _build

    return _build(family, torch.float64)


def _gemma():
    from tests.test_gemma3 import _build

    return _build(torch.float64)


def _gpt2():
    from acdc.models import random_gpt2

    model = random_gpt2(n_layer=2, n_head=3, d_model=24, vocab=40, n_ctx=16, seed=2, dtype=torch.float64,
                        init_std=0.15)
    # non-trivial layer-norm weights, so that gamma and beta enter the rules
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.original_model.named_parameters():
            if ".ln_" in name:
                p.add_(0.2 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


MODELS = {"gpt2": _gpt2, "llama": lambda: _llama("llama"), "qwen2": lambda: _llama("qwen2"), "gemma3": _gemma}


def _data(vocab: int, B: int = 5, P: int = 9) -> TaskData:
    gen = torch.Generator().manual_seed(4)
    clean = torch.randint(0, vocab, (B, P), generator=gen)
    corrupt = torch.randint(0, vocab, (B, P), generator=gen)
    pos = torch.zeros(B, P, dtype=torch.bool)
    pos[:, -1] = True
    pos[::2, 4] = True
    return TaskData(clean, corrupt, pos, torch.randint(0, vocab, (B, P), generator=gen),
                    torch.randint(0, vocab, (B, P), generator=gen), "logit_diff")


@pytest.mark.parametrize("family", list(MODELS))
def test_relp_is_minus_mask_gradient_of_the_relevance_view(family):
    model = MODELS[family]()
    arch = get_arch(model)
    graph = Graph.from_model(model)
    data = _data(arch.W_E.shape[0])
    cache = ablation_cache(model, graph, data.corrupt, "patch")
    view = arch.relevance_view()
    assert view is arch.relevance_view() and view.relevance and not arch.relevance

    full = graph.valid.double().unsqueeze(0)
    with torch.no_grad():  # forward values are the model's
        a = masked_forward_unchecked(arch, graph, data.clean, cache, full)
        b = masked_forward_unchecked(view, graph, data.clean, cache, full)
    assert (a - b).abs().max() <= 1e-10 * a.abs().max()

    relp = attribute(model, graph, data, "relp", progress=False)
    eap = attribute(model, graph, data, "eap", progress=False)
    m = full.clone().requires_grad_(True)
    value = task_metric(data, masked_forward_unchecked(view, graph, data.clean, cache, m)[0]).mean()
    (grad,) = torch.autograd.grad(value, m)
    ref = -grad[0] * graph.valid
    assert ref.abs().max() > 1e-3
    assert (relp.scores - ref).abs().max() <= 1e-9 * ref.abs().max()
    # and it is not EAP: the rules change the scores of many edges
    assert (relp.scores - eap.scores).abs().max() > 1e-2 * eap.scores.abs().max()
    assert relp.meta["passes"] == eap.meta["passes"] and relp.meta["forward_equivalents"] == eap.meta[
        "forward_equivalents"]


def test_relp_refuses_kl_and_is_a_registered_ranking(tiny64):
    from acdc.methods import registry

    graph = Graph.from_model(tiny64)
    d = _data(40)
    kl = TaskData(d.clean, d.corrupt, d.positions, d.answers, d.wrong, "kl")
    with pytest.raises(InputError, match="relp scores would all be 0"):
        attribute(tiny64, graph, kl, "relp", progress=False)
    assert registry.get_method("relp").kind == "ranking"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_view_mlp_backward_is_the_rules(family):
    """The relevance view's MLP passes back ``W_in [c ⊙ W_out r]`` with ``c = f(h)/h`` (Identity-rule) and, for a gated
    MLP, each of the gate and up factors half of the product's gradient (Half-rule)."""
    model = MODELS[family]()
    arch = get_arch(model)
    view = arch.relevance_view()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, arch.d_model, generator=gen, dtype=torch.float64, requires_grad=True)
    r = torch.randn(3, arch.d_model, generator=gen, dtype=torch.float64)
    y = view.mlp(1, x)
    assert torch.allclose(y, arch.mlp(1, x), rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad((y * r).sum(), x)
    with torch.no_grad():
        h = x @ arch.W_in[1] + arch.b_in[1]
        back = r @ arch.W_out[1].t()  # gradient on the MLP's hidden activation
        if arch.gated:
            gate, up = h.chunk(2, dim=-1)
            c = arch.act(gate) / gate
            dh = torch.cat([0.5 * back * up * c, 0.5 * back * arch.act(gate)], dim=-1)
        else:
            dh = back * arch.act(h) / h
        want = dh @ arch.W_in[1].t()
    assert torch.allclose(g, want, rtol=1e-9, atol=1e-12)
