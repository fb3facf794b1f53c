"""Random params in the decoder's layout, for benchmarks at shapes no offline checkpoint has
(the papers' 7B/8B/32B LLMs) and for tests. Leaves are created on the default device, one at a
time, in `dtype` (bf16 halves the bytes a step reads)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from costeer_jax.models.config import DecoderConfig


def random_params(cfg: DecoderConfig, key: jax.Array, dtype=jnp.float32, scale: float = 0.02) -> dict:
    """N(0, scale) weights, unit norms, zero biases; the layout of models/decoder.py."""
    d, hd, f = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    q_kv = (cfg.num_heads + 2 * cfg.num_kv_heads) * hd
    keys = iter(jax.random.split(key, 2 + 4 * cfg.num_layers))
    normal = lambda shape: (scale * jax.random.normal(next(keys), shape, jnp.float32)).astype(dtype)
    ones = lambda n: jnp.ones((n,), dtype)

    def layer():
        weights = {"attn_norm": ones(d), "qkv": normal((d, q_kv)), "o": normal((cfg.num_heads * hd, d)),
                   "mlp_norm": ones(d), "gate_up": normal((d, 2 * f)), "down": normal((d, f))}
        if cfg.qkv_bias:
            weights["qkv_bias"] = jnp.zeros((q_kv,), dtype)
        if cfg.qk_norm:
            weights["q_norm"], weights["k_norm"] = ones(hd), ones(hd)
        return weights

    params = {"embed": normal((cfg.vocab_size, d)), "layers": [layer() for _ in range(cfg.num_layers)],
              "final_norm": ones(d)}
    if not cfg.tie_word_embeddings:
        params["lm_head"] = normal((cfg.vocab_size, d))
    return params
