"""The zoo: small models trained offline by this project and real models converted from GGUF files, loaded like any
Hugging Face checkpoint."""

from acdc.zoo.registry import (
    ZOO,
    ZooSpec,
    ensure_gguf_model,
    ensure_zoo_model,
    is_trained,
    zoo_dir,
    zoo_model_path,
)

__all__ = ["ZOO", "ZooSpec", "ensure_gguf_model", "ensure_zoo_model", "is_trained", "zoo_dir", "zoo_model_path"]
