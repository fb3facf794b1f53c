"""Copy guard: on the edge, forbid the token that would complete a verbatim copy of N tokens of the
private context (that are not also in the query).

A mitigation, not a guarantee: it only stops exact copies of N consecutive context tokens, as
the model tokenizes them. Paraphrase, shorter copies, a copy whose tokens split differently
(e.g. a word at a sentence start without its leading space), and leakage through what the
steering does to the LLM's choices are not caught.

Static shapes: per row the context's N-grams as W windows (`prefixes` [B, W, N-1] and
`next_tokens` [B, W]), `live` [B, W] false for padding and for N-grams that also occur in the
query; the decoding loop keeps the row's last N-1 committed tokens (`recent`, -1 where fewer
have been generated). A step forbids every window's next token whose prefix equals `recent`:
one [B, W, N-1] compare and a scatter into a [B, V] mask.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

NO_TOKEN = -1  # fills `recent` before N-1 tokens exist: matches no real id


class CopyGuard(NamedTuple):
    prefixes: jax.Array  # [B, W, N-1] int32
    next_tokens: jax.Array  # [B, W] int32
    live: jax.Array  # [B, W] bool

    @property
    def n(self) -> int:
        return self.prefixes.shape[-1] + 1


def guard_width(contexts: Sequence[Sequence[int]], n: int, width_multiple: int = 64) -> int:
    """W for these contexts: their most windows, rounded up to a multiple of `width_multiple` so
    nearby lengths share a program."""
    counts = [max(len(c) - n + 1, 0) for c in contexts]
    return max(-(-max(counts + [1]) // width_multiple) * width_multiple, width_multiple)


def build_copy_guard(contexts: Sequence[Sequence[int]], queries: Sequence[Sequence[int]], n: int,
                     width: int | None = None) -> CopyGuard:
    """Host side: the windows of every row's context ids (rows padded to one W: `width`, or
    guard_width(contexts)), minus the N-grams found in its query."""
    if n < 2:
        raise ValueError(f"copy guard N must be >= 2 (a copy of N tokens), got {n}")
    counts = [max(len(c) - n + 1, 0) for c in contexts]
    width = guard_width(contexts, n) if width is None else width
    if max(counts + [0]) > width:
        raise ValueError(f"copy guard width {width} is below a context's {max(counts)} windows")
    prefixes = np.full((len(contexts), width, n - 1), NO_TOKEN, np.int32)
    next_tokens = np.zeros((len(contexts), width), np.int32)
    live = np.zeros((len(contexts), width), bool)
    for b, (context, query) in enumerate(zip(contexts, queries)):
        in_query = {tuple(query[i:i + n]) for i in range(len(query) - n + 1)}
        for j in range(counts[b]):
            gram = tuple(context[j:j + n])
            prefixes[b, j] = gram[:-1]
            next_tokens[b, j] = gram[-1]
            live[b, j] = gram not in in_query
    return CopyGuard(jnp.asarray(prefixes), jnp.asarray(next_tokens), jnp.asarray(live))


def empty_recent(guard: CopyGuard, batch: int) -> jax.Array:
    return jnp.full((batch, guard.n - 1), NO_TOKEN, jnp.int32)


def push(recent: jax.Array, token: jax.Array, where: jax.Array | None = None) -> jax.Array:
    """recent after committing `token` [B] (rows where `where` [B] is false keep theirs)."""
    shifted = jnp.concatenate([recent[:, 1:], token[:, None].astype(jnp.int32)], axis=1)
    return shifted if where is None else jnp.where(where[:, None], shifted, recent)


def forbidden(guard: CopyGuard, recent: jax.Array, vocab: int) -> jax.Array:
    """[B, V] bool: tokens that would complete a live context N-gram after `recent` [B, N-1]."""
    match = guard.live & jnp.all(guard.prefixes == recent[:, None, :], axis=-1)  # [B, W]
    rows = jnp.broadcast_to(jnp.arange(match.shape[0])[:, None], match.shape)
    tokens = jnp.where(match, guard.next_tokens, vocab)  # vocab: out of range, dropped
    return jnp.zeros((match.shape[0], vocab), bool).at[rows, tokens].set(True, mode="drop")


def apply(guard: CopyGuard | None, recent: jax.Array | None, scores: jax.Array) -> jax.Array:
    """scores [B, V] (logits or log-probs) with the forbidden tokens at -inf; no guard: as is."""
    if guard is None:
        return scores
    return jnp.where(forbidden(guard, recent, scores.shape[-1]), -jnp.inf, scores)
