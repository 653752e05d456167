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
    training is needed) and the seed it is trained from."""

    name: str
    description: str
    trainer: str
    seed: int = 0

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
    """Return the directory of the zoo model `name`, training it first if it is not cached.

    Raises UnknownZooModel for a name the zoo does not have, and ZooTrainingError when training fails or
    the zoo folder cannot be written.

    `force=True` retrains even when a cached copy exists (the old copy is replaced only once the new
    one is complete). Training writes into a temporary sibling directory that is renamed into place,
    so concurrent or interrupted runs never expose a partial model; if two processes race, the last
    rename wins and both results are identical anyway because training is deterministic.
    """
    spec = _spec(name)
    path = zoo_model_path(name)
    if not force and is_trained(name):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=path.parent))
    except OSError as e:
        raise ZooTrainingError(f"cannot write zoo model {name!r} into {path.parent}: {e.strerror or e}; set "
                               f"{ZOO_DIR_ENV} to a writable folder") from e
    try:
        logger.info("training zoo model %r (seed %d) into %s", name, spec.seed, path)
        spec.train(tmp, seed=spec.seed, progress=progress)
        if not (tmp / MARKER).is_file():
            raise ZooTrainingError(f"the trainer of zoo model {name!r} finished without writing {MARKER}; "
                                   "the model was not saved")
        tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache is an ordinary, readable directory
        if path.exists():
            # Move the old copy aside first: rename cannot replace a non-empty directory.
            old = Path(tempfile.mkdtemp(prefix=f".{name}.old-", dir=path.parent))
            os.replace(path, old / name)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:
            if not is_trained(name):
                raise
            logger.info("zoo model %r was trained concurrently by another process; keeping that copy", name)
    except OSError as e:
        raise ZooTrainingError(f"could not save zoo model {name!r} in {path.parent}: {e.strerror or e}") from e
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path
