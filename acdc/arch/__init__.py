"""Per-architecture access to a loaded model's weights, for the masked forward.

The masked forward does not run the model through TransformerLens's per-head hooks: those materialise
``[batch, pos, heads, d_head, d_model]`` intermediates and made a GPT-2-small-sized model 5x slower forward and 14x
slower forward+backward here. Instead it reads the bridge's weights once (``W_Q``/``W_K``/``W_V``/``W_O`` in
TransformerLens convention, the Hugging Face norm/MLP/embedding modules the bridge wraps) and computes each head
itself. Three families are implemented: GPT-2 (layer norm, learned positions, GELU MLP), Gemma 3 (acdc/arch/gemma3.py:
post-normed attention and MLP, per-head q/k norms, sliding windows) and Llama/Qwen2 (RMSNorm,
rotary positions applied to q and k inside :meth:`Arch.attention`, gated SiLU MLP, grouped-query attention whose
key/value heads are computed once per group and shared by its query heads). Everything is held as detached
tensors, so no gradient is ever accumulated on the weights, and read from the unwrapped Hugging Face modules (the
bridge replaces submodules with hooked wrappers whose layer norm is computed step by step for its hooks); the
copies are rebuilt when the model's weights change (see :mod:`acdc.arch.cache`). Equality with the bridge's own
hooked computation is a test (tests/test_patching.py, tests/test_llama.py).
"""

from acdc.arch.base import Arch, rotate_half
from acdc.arch.cache import get_arch
from acdc.arch.registry import SUPPORTED_ARCHITECTURES, architecture_of

__all__ = ["SUPPORTED_ARCHITECTURES", "Arch", "architecture_of", "get_arch", "rotate_half"]
