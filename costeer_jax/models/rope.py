"""Rotary position embeddings (HF "rotate_half" layout), with Llama-3 frequency scaling."""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from costeer_jax.models.config import DecoderConfig


def inverse_frequencies(cfg: DecoderConfig) -> np.ndarray:
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
    inv_freq = inv_freq.astype(np.float32)
    if cfg.rope_scaling is None:
        return inv_freq
    s = dict(cfg.rope_scaling)
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rope_tables(inv_freq: jnp.ndarray, positions: jnp.ndarray):
    """cos/sin of shape [batch, seq, head_dim/2] in fp32 for integer positions [batch, seq]."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """x: [batch, seq, heads, head_dim]; rotates in fp32 and returns x's dtype."""
    half = x.shape[-1] // 2
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # fp32, or fp64 in gradient checks
    x1, x2 = xf[..., :half], xf[..., half:]
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1).astype(x.dtype)
