"""Preallocated KV cache with per-row lengths.

Row b holds its tokens contiguously in slots [0, lengths[b]); the RoPE position of a token is
its slot. Rows of one batch may be at different lengths, and rolling a row back (speculative
decoding) is just lowering its length: stale K/V beyond the length is never read, because a
query at position p attends only to slots <= p, all of which were rewritten on the way there.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from costeer_jax.models.config import DecoderConfig


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    # [layers, batch, kv_heads, max_len, head_dim]: the score and value dots contract/batch over
    # (batch, kv_head) with slots contiguous, so attention reads the cache without transposing it.
    keys: jax.Array
    values: jax.Array
    lengths: jax.Array  # [batch] int32: number of valid slots per row

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]


def init_cache(cfg: DecoderConfig, batch_size: int, max_len: int, dtype=jnp.float32) -> KVCache:
    shape = (cfg.num_layers, batch_size, cfg.num_kv_heads, max_len, cfg.head_dim)
    return KVCache(keys=jnp.zeros(shape, dtype), values=jnp.zeros(shape, dtype),
                   lengths=jnp.zeros((batch_size,), jnp.int32))


def round_up(n: int, multiple: int) -> int:
    """Cache/prompt sizes are rounded so nearby request sizes share one compiled program."""
    return max(multiple, -(-n // multiple) * multiple)
