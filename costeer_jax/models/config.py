"""Decoder configuration shared by Llama-3.x, Qwen2/Qwen2.5 and Qwen3 checkpoints."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")


class UnsupportedArchitectureError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Everything the forward pass needs; frozen (hashable) so it can be a static jit argument."""

    arch: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    qkv_bias: bool  # Qwen2/Qwen2.5
    qk_norm: bool  # Qwen3
    # Llama-3 RoPE scaling as a sorted tuple of (key, value) pairs (None = plain RoPE).
    rope_scaling: tuple | None = None
    max_position_embeddings: int = 32768

    @property
    def group_size(self) -> int:
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf(cls, hf: Mapping[str, Any] | Any) -> "DecoderConfig":
        """Builds from a transformers config object or a config.json dict."""
        get = (lambda k, d=None: hf.get(k, d)) if isinstance(hf, Mapping) else (lambda k, d=None: getattr(hf, k, d))
        model_type = get("model_type")
        if model_type not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedArchitectureError(
                f"unsupported architecture model_type={model_type!r}; costeer-jax implements "
                f"{', '.join(SUPPORTED_ARCHITECTURES)} (Llama-3.x, Qwen2/Qwen2.5, Qwen3). "
                "Pick a checkpoint of one of these families.")
        if model_type != "qwen2" and get("attention_bias", False):
            raise UnsupportedArchitectureError(
                f"{model_type} checkpoint with attention_bias=True (o_proj bias) is not implemented")
        num_heads = get("num_attention_heads")
        head_dim = get("head_dim") or get("hidden_size") // num_heads
        rope_scaling = get("rope_scaling") or None
        rope_params = get("rope_parameters") or None  # transformers v5 keeps theta and scaling here
        rope_theta = get("rope_theta")
        if isinstance(rope_params, Mapping):
            rope_theta = rope_params.get("rope_theta", rope_theta)
            if rope_params.get("rope_type", "default") != "default":
                rope_scaling = rope_params
        if rope_scaling is not None:
            rope_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
            if rope_type in (None, "default"):
                rope_scaling = None
            elif rope_type != "llama3":
                raise UnsupportedArchitectureError(
                    f"unsupported rope_scaling type {rope_type!r}; only 'llama3' scaling is implemented")
            else:
                keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
                rope_scaling = tuple((k, float(rope_scaling[k])) for k in keys)
        return cls(
            arch=model_type,
            vocab_size=int(get("vocab_size")),
            hidden_size=int(get("hidden_size")),
            intermediate_size=int(get("intermediate_size")),
            num_layers=int(get("num_hidden_layers")),
            num_heads=int(num_heads),
            num_kv_heads=int(get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta if rope_theta is not None else 10000.0),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
            qkv_bias=model_type == "qwen2",
            qk_norm=model_type == "qwen3",
            rope_scaling=rope_scaling,
            max_position_embeddings=int(get("max_position_embeddings", 32768) or 32768),
        )
