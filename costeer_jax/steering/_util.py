"""Small shared helpers: fp32 upcast and per-row hyperparameter broadcasting."""
from __future__ import annotations

import jax.numpy as jnp

F32 = jnp.float32


def f32(x) -> jnp.ndarray:
    """Upcast any array (bf16, fp16, int, Python scalar) to float32; all steering math is fp32."""
    return jnp.asarray(x).astype(F32)


def per_row(x, ref: jnp.ndarray, dtype=F32) -> jnp.ndarray:
    """Broadcast a scalar or a per-row array against ``ref`` ([B, ...]).

    A scalar stays a scalar; an array of shape [B] (or [B, K] against [B, K, V], ...) gets trailing
    singleton axes so that it multiplies row-wise.  No Python branching on values, only on ranks.
    """
    x = jnp.asarray(x).astype(dtype)
    if x.ndim == 0:
        return x
    return x.reshape(x.shape + (1,) * (ref.ndim - x.ndim))
