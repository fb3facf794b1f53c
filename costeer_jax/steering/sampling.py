"""Vocabulary cutting and per-row token sampling (CoSteer Algorithm 1 line 13: "Sample a ~ pi*")."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from typing import NamedTuple

from ._util import f32

__all__ = ["RowSampler", "cut_vocab", "sample_rows", "sample_tokens"]


def cut_vocab(logits, n: int):
    """logits[..., :n]: keep the first n (static) vocabulary entries.

    Checkpoints pad their embedding / LM-head rows beyond the tokenizer length (e.g. Qwen2.5 pads
    151665 tokens to 151936 rows, and pairs of models pad differently), so logits from two models
    must be cut to the shared tokenizer length before any arithmetic between them (the padded
    entries are untrained and would otherwise receive probability mass).  The dtype is kept.
    """
    return logits[..., : int(n)]


def sample_tokens(log_probs, key, temperature=1.0, top_p=1.0, greedy: bool = False) -> jnp.ndarray:
    """Draw one token per row from softmax(log_probs / temperature) restricted to the top-p nucleus.

    Args:
      log_probs: [B, V] log-probabilities or logits (any per-row shift is harmless), any dtype.
      key: a jax.random key (one key; rows get independent draws).
      temperature: scalar or [B]; rows with temperature <= 0 are decoded greedily.
      top_p: scalar or [B] in (0, 1]; keeps the smallest prefix of tokens, in decreasing
        probability, whose mass reaches top_p (the top token is always kept, so top_p -> 0 is greedy).
      greedy: static; if True, returns argmax for every row and ignores key/temperature/top_p.

    Returns: [B] int32 token ids.  Ties in argmax resolve to the lowest index (like torch.argmax).
    """
    x = f32(log_probs)
    argmax = jnp.argmax(x, axis=-1).astype(jnp.int32)
    if greedy:
        return argmax
    b = x.shape[0]
    temp = jnp.broadcast_to(f32(temperature), (b,))
    top_p = jnp.broadcast_to(f32(top_p), (b,))
    scaled = x / jnp.where(temp > 0, temp, 1.0)[:, None]
    order = jnp.argsort(-scaled, axis=-1, stable=True)  # decreasing probability, ties by index
    sorted_scaled = jnp.take_along_axis(scaled, order, axis=-1)
    probs = jax.nn.softmax(sorted_scaled, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # exclusive cumulative mass
    keep = (mass_before < top_p[:, None]) | (top_p[:, None] >= 1.0)
    keep = keep.at[:, 0].set(True)
    # Draw in vocabulary order (the nucleus mask scattered back), so the Gumbel noise a token gets
    # does not depend on how near-equal logits happened to sort: float noise from a different
    # batch shape cannot move the draw.
    rows = jnp.arange(b)[:, None]
    keep_vocab = jnp.zeros_like(keep).at[rows, order].set(keep)
    sampled = jax.random.categorical(key, jnp.where(keep_vocab, scaled, -jnp.inf), axis=-1).astype(jnp.int32)
    return jnp.where(temp > 0, sampled, argmax)


class RowSampler(NamedTuple):
    """Per-row sampling settings of one decoding step."""

    keys: jax.Array  # [B] PRNG keys of this step
    temperature: jax.Array  # [B]
    top_p: jax.Array  # [B]


def sample_rows(log_probs, sampler: RowSampler | None, draw) -> jnp.ndarray:
    """One token per row [B]: greedy (sampler None), or drawn with each row's key folded with
    `draw`, so a row's draw never depends on the rest of its batch."""
    if sampler is None:
        return sample_tokens(log_probs, None, greedy=True)
    # draw: one index for all rows, or each row's own [B] (continuous batching: rows at different steps)
    draw = jnp.broadcast_to(jnp.asarray(draw, jnp.int32), sampler.keys.shape[:1])
    keys = jax.vmap(jax.random.fold_in)(sampler.keys, draw)
    one_row = lambda lp, k, t, p: sample_tokens(lp[None], k, t, p)[0]
    return jax.vmap(one_row)(log_probs, keys, sampler.temperature, sampler.top_p)
