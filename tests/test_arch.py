"""The architecture registry and the weight cache: ``get_arch`` follows in-place weight edits and ``model.to(dtype)``
(the masked forward with every edge present still equals the model's own forward), returns the same object while
nothing changed, and refuses unregistered architectures in one line."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from acdc import Graph, masked_forward
from acdc.arch import SUPPORTED_ARCHITECTURES, get_arch, registry
from acdc.errors import UnsupportedArchitecture
from acdc.models import random_gpt2, random_llama, random_qwen2

TOL = 1e-5

# Models built here, not the session fixtures: these tests edit weights and change dtypes.
MAKERS = {
    "gpt2": lambda: random_gpt2(n_layer=2, n_head=3, d_model=24, vocab=40, n_ctx=16, seed=5, init_std=0.15),
    "llama": lambda: random_llama(seed=6, init_std=0.15),
    "qwen2": lambda: random_qwen2(seed=7, init_std=0.15),
}
# One parameter per family that the Arch copies (rather than views): an MLP input and a query projection.
EDITED = {"gpt2": {"mlp": "c_fc", "attn": "attn.qkv"}, "llama": {"mlp": "up_proj", "attn": "q_proj"}}


def _setup(model) -> tuple[Graph, torch.Tensor, torch.Tensor]:
    graph = Graph.from_model(model)
    tokens = torch.randint(0, model.cfg.d_vocab, (3, 7), generator=torch.Generator().manual_seed(0))
    return graph, tokens, torch.ones(graph.n_src, graph.n_dst)


def _param(model, part: str) -> nn.Parameter:
    return next(p for n, p in model.named_parameters() if part in n and n.endswith("weight"))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("which", ["mlp", "attn"])
def test_in_place_weight_edit_is_seen(family, which):
    model = MAKERS[family]()
    graph, tokens, ones = _setup(model)
    with torch.no_grad():
        before = masked_forward(model, graph, tokens, tokens, ones)
        assert (before - model(tokens)).abs().max() <= TOL
        first = get_arch(model)
        W = _param(model, EDITED[family][which])
        W.add_(0.5 * torch.randn(W.shape, generator=torch.Generator().manual_seed(1)))
        want = model(tokens)
        assert (want - before).abs().max() > 1e-2  # the edit matters to the model
        got = masked_forward(model, graph, tokens, tokens, ones)
    assert (got - want).abs().max() <= TOL
    assert get_arch(model) is not first  # rebuilt, not patched


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_dtype_change_is_seen(family):
    model = MAKERS[family]()
    graph, tokens, ones = _setup(model)
    with torch.no_grad():
        masked_forward(model, graph, tokens, tokens, ones)
        assert get_arch(model).dtype == torch.float32
        model.to(torch.float64)
        arch = get_arch(model)
        assert arch.dtype == torch.float64 and arch.W_in.dtype == arch.W_U.dtype == torch.float64
        got = masked_forward(model, graph, tokens, tokens, ones.double())
        want = model(tokens)
    assert got.dtype == want.dtype == torch.float64
    assert (got - want).abs().max() <= TOL


def test_same_arch_while_nothing_changes():
    model = MAKERS["llama"]()
    graph, tokens, ones = _setup(model)
    arch = get_arch(model)
    m = ones.clone().requires_grad_(True)
    masked_forward(model, graph, tokens, tokens, m).logsumexp(-1).sum().backward()  # a gradient w.r.t. the mask
    with torch.no_grad():
        model(tokens)
        masked_forward(model, graph, tokens, tokens, ones)
    assert get_arch(model) is arch
    assert get_arch(model) is get_arch(model)


class _Unregistered(nn.Module):
    cfg = SimpleNamespace(architecture="MambaForCausalLM")


def test_registry_is_the_one_list_and_refuses_others_in_one_line():
    assert SUPPORTED_ARCHITECTURES == tuple(registry.BUILDERS) == tuple(registry.FAMILIES)
    assert {"GPT2LMHeadModel", "LlamaForCausalLM", "Qwen2ForCausalLM"} <= set(SUPPORTED_ARCHITECTURES)
    assert all(callable(b) for b in registry.BUILDERS.values())
    with pytest.raises(UnsupportedArchitecture) as e:
        get_arch(_Unregistered())
    msg = str(e.value)
    assert "\n" not in msg and "MambaForCausalLM" in msg
    assert all(name in msg for name in SUPPORTED_ARCHITECTURES)
