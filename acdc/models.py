"""Loading models: a hub name (``gpt2``), a local Hugging Face checkpoint directory, or ``zoo:NAME``.

Every spec goes through the same path: ``TransformerBridge.boot_transformers`` (TransformerLens 4) with per-head
attention results, split q/k/v inputs and ``hook_mlp_in`` enabled, in eval mode, with gradients off on the weights
(circuit discovery differentiates with respect to edge masks, never weights).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any

import torch

from acdc.arch import SUPPORTED_ARCHITECTURES
from acdc.errors import InputError, ModelLoadError, UnsupportedArchitecture

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    host = os.environ.get("HF_ENDPOINT", f"https://{HUB_HOST}").split("://")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _cached_config(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - an unusual cache layout just means "not cached"
        return None
    return Path(hit) if isinstance(hit, str) else None


def _check_architecture(config_path: Path, spec: str) -> None:
    try:
        archs = json.loads(config_path.read_text()).get("architectures") or []
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{config_path} is not a readable Hugging Face config.json: {e}") from e
    if archs and not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise UnsupportedArchitecture(
            f"model '{spec}' has architecture {archs[0]}, whose attention cannot expose per-head q/k/v inputs "
            f"here; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )


def resolve_spec(spec: str) -> tuple[str, bool]:
    """Map a model spec to what ``boot_transformers`` takes, and whether it is local (no network needed)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelLoadError("empty model spec; give a hub name (gpt2), a local checkpoint directory or zoo:NAME")
    if spec.startswith("zoo:"):
        from acdc.zoo import ensure_zoo_model

        path = ensure_zoo_model(spec[4:])
        return str(path), True
    p = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not p.is_file():
            raise ModelLoadError(f"no GGUF file at {p}; give the path of a .gguf model file")
        from acdc.zoo import ensure_gguf_model

        return str(ensure_gguf_model(p)), True
    if p.exists() or spec.startswith((".", "/", "~")) or os.sep in spec.rstrip("/").split("/", 1)[-1]:
        if not p.is_dir():
            raise ModelLoadError(f"no model directory at {p}; give a Hugging Face checkpoint folder or zoo:NAME")
        if not (p / "config.json").is_file():
            raise ModelLoadError(f"{p} has no config.json; it is not a Hugging Face checkpoint directory")
        _check_architecture(p / "config.json", spec)
        return str(p), True
    if not _REPO_ID.match(spec):
        raise ModelLoadError(
            f"'{spec}' is neither a local directory, a zoo:NAME nor a hub name like 'gpt2' or 'org/model'"
        )
    cached = _cached_config(spec)
    if cached is not None:
        _check_architecture(cached, spec)
        return spec, True
    if not _hub_reachable():
        raise ModelLoadError(
            f"model '{spec}' is not in the local Hugging Face cache and the hub is unreachable; "
            "pass a local checkpoint directory or a zoo model (see `acdc zoo list`)"
        )
    return spec, False


def load_model(
    spec: str,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    trust_remote_code: bool = False,
    device_map: str | dict[str, str | int] | None = None,
) -> Any:
    """Load ``spec`` as a TransformerBridge ready for circuit discovery.

    Args:
        spec: ``gpt2`` (hub; needs the hub or a cached copy), a local HF checkpoint directory, ``zoo:NAME``, or a
            ``.gguf`` model file (converted to a checkpoint in the zoo cache on first use).
        device: torch device.
        dtype: weight dtype.
        trust_remote_code: allow a hub model's own Python code to run (off by default).
        device_map: Hugging Face / accelerate placement (``"auto"`` or ``{"module": device}``), passed to the bridge
            instead of ``device``. acdc's masked forward computes on one device, so a map that spreads the model over
            several devices is refused (one line) after loading.

    Raises:
        UnknownZooModel, ModelLoadError, UnsupportedArchitecture with one-line messages.
    """
    from transformer_lens.model_bridge import TransformerBridge

    source, local = resolve_spec(spec)
    env_before = os.environ.get("HF_HUB_OFFLINE")
    if local:
        os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        placement: dict[str, Any] = {"device": device} if device_map is None else {"device_map": device_map}
        bridge = TransformerBridge.boot_transformers(
            source, dtype=dtype, trust_remote_code=trust_remote_code, **placement
        )
    except (OSError, ValueError, KeyError) as e:
        raise ModelLoadError(f"could not load model '{spec}': {str(e).splitlines()[0]}") from e
    finally:
        if local:
            if env_before is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = env_before
    if device_map is not None:
        devices = sorted({str(p.device) for p in bridge.parameters()})
        if len(devices) > 1:
            raise ModelLoadError(
                f"device_map placed '{spec}' on {len(devices)} devices ({', '.join(devices)}); acdc's masked forward "
                "computes on one device, so sharding a model across devices is not supported yet: use one device "
                "(or torchrun data parallelism with a copy per device)"
            )
    prepare_bridge(bridge, spec)
    bridge.acdc_spec = spec  # which task dataset / token range fits this model (see Task.build)
    return bridge


def prepare_bridge(bridge: Any, spec: str = "model") -> Any:
    """Enable per-head edge hooks, eval mode, and no weight gradients on an existing bridge."""
    from acdc.arch import architecture_of

    arch = architecture_of(bridge)
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitecture(
            f"model '{spec}' has architecture {arch}, whose attention cannot expose per-head q/k/v inputs here; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    try:
        bridge.set_use_attn_result(True)
        bridge.set_use_split_qkv_input(True)
        bridge.set_use_hook_mlp_in(True)
    except Exception as e:  # noqa: BLE001 - the bridge raises various types for unsupported attention
        raise UnsupportedArchitecture(
            f"model '{spec}' ({arch}) cannot expose per-head attention inputs: {str(e).splitlines()[0]}"
        ) from e
    bridge.eval()
    bridge.requires_grad_(False)
    return bridge


def word_level_tokenizer(
    vocab: list[str],
    *,
    bos: str | None = None,
    unk: str | None = None,
    pad: str | None = None,
    punctuation: bool = False,
    chat_template: str | None = None,
    atomic: tuple[str, ...] = (),
) -> Any:
    """A Hugging Face fast tokenizer over whitespace-separated words (used by the zoo and for random models).

    ``punctuation=True`` also splits punctuation off words ("store," -> "store", ","); ``chat_template`` (Jinja,
    as in Hugging Face tokenizers) makes ``apply_chat_template`` work, so chat-style tasks run on zoo models;
    ``atomic`` words (e.g. chat role markers ``<user>``) are never split.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate(vocab)}
    unk = unk or vocab[0]
    tok = Tokenizer(models.WordLevel(ids, unk_token=unk))
    split = pre_tokenizers.WhitespaceSplit()
    tok.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.Punctuation()]) if punctuation else split
    tok.add_special_tokens(list(atomic))
    bos = bos or vocab[0]
    out = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=bos, unk_token=unk, pad_token=pad or bos
    )
    if chat_template is not None:
        out.chat_template = chat_template
    return out


def word_level_vocab(texts: list[str], *, punctuation: bool = True) -> list[str]:
    """The distinct words of ``texts`` in first-seen order, split as :func:`word_level_tokenizer` splits them."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.WhitespaceSplit()
    pre = pre_tokenizers.Sequence([split, pre_tokenizers.Punctuation()]) if punctuation else split
    seen: dict[str, None] = {}
    for t in texts:
        for w, _ in pre.pre_tokenize_str(t):
            seen.setdefault(w, None)
    return list(seen)


def bridge_from_hf(
    hf_model: Any, tokenizer: Any | None = None, name: str = "in-memory", dtype: torch.dtype | None = None
) -> Any:
    """Wrap an in-memory Hugging Face model (e.g. randomly initialised from a config) as a prepared bridge."""
    import tempfile

    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    if tokenizer is None:
        tokenizer = word_level_tokenizer([f"t{i}" for i in range(hf_model.config.vocab_size)])
    device = next(hf_model.parameters()).device
    # The bridge re-reads the tokenizer from its `name_or_path`, so it must exist on disk while booting.
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        tokenizer = AutoTokenizer.from_pretrained(tmp)
        dtype = dtype or next(hf_model.parameters()).dtype
        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf_model.to(dtype), tokenizer=tokenizer, device=device, dtype=dtype
        )
    return prepare_bridge(bridge, name)


def _seeded_init(model_cls: Any, cfg: Any, seed: int) -> Any:
    """``model_cls(cfg)`` in eval mode, its random initialisation deterministic in ``seed``."""
    torch.manual_seed(seed)
    return model_cls(cfg).eval()


def _random_bridge(hf: Any, family: str, dtype: torch.dtype) -> Any:
    """A random Hugging Face model as a prepared bridge named ``random-FAMILY-LAYERSxHEADSxWIDTH``."""
    c = hf.config  # GPT2Config maps these standard names to n_layer, n_head, n_embd
    return bridge_from_hf(
        hf, name=f"random-{family}-{c.num_hidden_layers}x{c.num_attention_heads}x{c.hidden_size}", dtype=dtype
    )


def random_gpt2_hf(*, n_layer: int = 2, n_head: int = 4, d_model: int = 64, vocab: int = 100, n_ctx: int = 64,
                   seed: int = 0, init_std: float = 0.02) -> Any:
    """A randomly initialised Hugging Face ``GPT2LMHeadModel`` (eval mode, no dropout), deterministic in ``seed``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=d_model, vocab_size=vocab, n_positions=n_ctx,
        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        initializer_range=init_std,
    )
    return _seeded_init(GPT2LMHeadModel, cfg, seed)


def random_gpt2(*, dtype: torch.dtype = torch.float32, **shape: Any) -> Any:
    """A randomly initialised GPT-2-architecture bridge, built locally (no download); ``shape`` as for
    :func:`random_gpt2_hf`. Defaults are tiny; ``random_gpt2(n_layer=12, n_head=12, d_model=768, vocab=50257,
    n_ctx=1024)`` is GPT-2 small's shape. A larger ``init_std`` than GPT-2's 0.02 makes attention non-uniform,
    which gives tests more power."""
    return _random_bridge(random_gpt2_hf(**shape), "gpt2", dtype)


def random_llama_hf(*, family: str = "llama", n_layer: int = 2, n_head: int = 4, n_kv_head: int = 2, d_model: int = 32,
                    d_mlp: int = 64, vocab: int = 64, n_ctx: int = 64, seed: int = 0, init_std: float = 0.02) -> Any:
    """A randomly initialised Hugging Face ``LlamaForCausalLM`` (``family="llama"``) or ``Qwen2ForCausalLM``
    (``family="qwen2"``, with q/k/v biases), eval mode, deterministic in ``seed``. ``n_kv_head < n_head`` gives
    grouped-query attention."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    families = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    if family not in families:
        raise InputError(f"unknown family '{family}'; choose one of {', '.join(families)}")
    config_cls, model_cls = families[family]
    cfg = config_cls(
        vocab_size=vocab, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layer,
        num_attention_heads=n_head, num_key_value_heads=n_kv_head, max_position_embeddings=n_ctx,
        rms_norm_eps=1e-6, tie_word_embeddings=False, initializer_range=init_std, bos_token_id=0, eos_token_id=0,
        pad_token_id=None, attention_dropout=0.0,
    )
    return _seeded_init(model_cls, cfg, seed)


def random_llama(*, dtype: torch.dtype = torch.float32, **shape: Any) -> Any:
    """A randomly initialised Llama-architecture bridge, built locally (no download); ``shape`` as for
    :func:`random_llama_hf` (defaults: 2 layers, 4 query heads sharing 2 key/value heads, d_model 32)."""
    return _random_bridge(random_llama_hf(**{"family": "llama", **shape}), shape.get("family", "llama"), dtype)


def random_qwen2(*, dtype: torch.dtype = torch.float32, **shape: Any) -> Any:
    """Like :func:`random_llama`, a Qwen2-architecture bridge (q/k/v projections with biases)."""
    return random_llama(dtype=dtype, **{**shape, "family": "qwen2"})


def random_gemma3_hf(*, n_layer: int = 3, n_head: int = 4, n_kv_head: int = 2, d_model: int = 32, d_head: int = 8,
                     d_mlp: int = 64, vocab: int = 64, n_ctx: int = 64, window: int = 3,
                     layer_types: list[str] | None = None, seed: int = 0, init_std: float = 0.02,
                     norm_std: float = 0.0) -> Any:
    """A randomly initialised Hugging Face ``Gemma3ForCausalLM`` (text only), eval mode, deterministic in ``seed``.
    Layers alternate sliding-window (``window``) and global attention unless ``layer_types`` says otherwise;
    ``norm_std > 0`` draws the norm weights (which Gemma uses as ``1 + w``, initialised to 0) from N(0, norm_std)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    types = layer_types or ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layer)]
    cfg = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layer,
        num_attention_heads=n_head, num_key_value_heads=n_kv_head, head_dim=d_head, max_position_embeddings=n_ctx,
        sliding_window=window, layer_types=types, rms_norm_eps=1e-6, initializer_range=init_std,
        query_pre_attn_scalar=d_head, bos_token_id=0, eos_token_id=0, pad_token_id=None, attention_dropout=0.0,
        tie_word_embeddings=True,
    )
    cfg.architectures = ["Gemma3ForCausalLM"]
    hf = _seeded_init(Gemma3ForCausalLM, cfg, seed)
    if norm_std > 0:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if "norm" in name:
                    p.copy_(norm_std * torch.randn(p.shape, generator=gen))
    return hf


def random_gemma3(*, dtype: torch.dtype = torch.float32, **shape: Any) -> Any:
    """A randomly initialised Gemma 3 bridge, built locally; ``shape`` as for :func:`random_gemma3_hf`."""
    return _random_bridge(random_gemma3_hf(**shape), "gemma3", dtype)
