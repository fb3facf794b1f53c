"""GGUF files without torch: config, tokenizer and dequantized tensors via the `gguf` package.

transformers can read GGUF too, but its reader imports torch; we only borrow its (torch-free)
tokenizer builders, feeding them metadata read here.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from costeer_jax.models.config import DecoderConfig, UnsupportedArchitectureError


@functools.lru_cache(maxsize=4)
def open_gguf(path: str):
    from gguf import GGUFReader

    return GGUFReader(path)


@functools.lru_cache(maxsize=4)
def gguf_metadata(path: str) -> dict[str, Any]:
    """Parsed once per file: config and tokenizer both read it (the vocabulary is large)."""
    return {k: f.contents() for k, f in open_gguf(path).fields.items() if not k.startswith("GGUF.")}


def gguf_config(path: str) -> DecoderConfig:
    meta = gguf_metadata(path)
    arch = meta["general.architecture"]
    if arch not in ("llama", "qwen2", "qwen3"):
        raise UnsupportedArchitectureError(
            f"{path}: GGUF architecture {arch!r} is not implemented (llama, qwen2, qwen3 are)")
    names = {t.name for t in open_gguf(path).tensors}
    if "rope_freqs.weight" in names:
        raise UnsupportedArchitectureError(
            f"{path}: GGUF with a rope_freqs tensor (Llama-3.1+ scaled RoPE) is not supported yet; "
            "load the Hugging Face safetensors directory of this model instead")
    heads = int(meta[f"{arch}.attention.head_count"])
    hidden = int(meta[f"{arch}.embedding_length"])
    vocab = meta.get(f"{arch}.vocab_size") or len(meta["tokenizer.ggml.tokens"])
    return DecoderConfig(
        arch=arch,
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(meta[f"{arch}.feed_forward_length"]),
        num_layers=int(meta[f"{arch}.block_count"]),
        num_heads=heads,
        num_kv_heads=int(meta.get(f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(meta.get(f"{arch}.attention.key_length", hidden // heads)),
        rms_norm_eps=float(meta[f"{arch}.attention.layer_norm_rms_epsilon"]),
        rope_theta=float(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        tie_word_embeddings="output.weight" not in names,
        qkv_bias=arch == "qwen2",
        qk_norm=arch == "qwen3",
        max_position_embeddings=int(meta.get(f"{arch}.context_length", 32768)),
    )


def gguf_tokenizer(path: str):
    """A transformers fast tokenizer rebuilt from the GGUF vocabulary, merges and chat template."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import gguf_tokenizer_mapping as mapping

    meta = gguf_metadata(path)
    grouped = {
        group: {name: meta[f"tokenizer.{key}"] for key, name in renames.items() if f"tokenizer.{key}" in meta}
        for group, renames in mapping.GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer_dict, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    if tokenizer_dict.get("tokenizer_type") == "llama":
        tokenizer_config.setdefault("add_bos_token", True)
    for name, key in mapping._SPECIAL_TOKENS.items():
        token_id = meta.get(f"tokenizer.ggml.{key}")
        tokenizer_config[name] = tokenizer_dict["tokens"][token_id] if token_id is not None else None
    backend, extra = mapping.convert_gguf_tokenizer(meta["general.architecture"], tokenizer_dict)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)


def gguf_tensors(path: str):
    """Yields (gguf_name, float32 array in numpy/HF [out, in] order)."""
    from gguf.quants import dequantize

    for t in open_gguf(path).tensors:
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        yield t.name, w.reshape([int(d) for d in reversed(t.shape.tolist())])
