"""CoSteer across tokenizers: fusion on the vocabulary intersection (CoSteer_map, B.11.1) and in
byte space (CoSteer_byte, B.11.2, after Hayase et al. 2025). Pure fp32 jit-compatible math; the
tables come from `models.vocab_alignment`.

**Map.** Each model's logits are gathered onto the N shared tokens; the FTRL policy runs there
unchanged; the chosen shared index maps back to each model's own id.

**Byte.** A row's state is a byte prefix of the token being built, held as each model's mask of
*candidates* (its tokens whose bytes start with the prefix). A model's next-token distribution
projects onto 257 outcomes: byte b (candidates whose next byte is b) and COMMIT (the candidate
that *is* the prefix; at the empty prefix, the end-of-turn token), each the log-sum-exp of its
candidates' logits, normalised over all candidates: an exact factorisation, so the product of a
token's byte conditionals and its commit is the token's own probability. The FTRL policy fuses
the three byte distributions (LLM, SLM-, SLM+), a byte is chosen, the candidate masks narrow,
until COMMIT: each model appends its own token whose bytes equal the prefix.

**When the prefix is a token in one vocabulary only.** A commit must give *both* models one
token, so COMMIT is allowed only where the prefix is a token of both vocabularies, and byte b
only where some token of both vocabularies starts with prefix + b (the *live* outcomes; the
policy is renormalised over them). The text therefore never reaches a dead end, and every
committed token lies in the byte intersection -- but unlike the map variant, each model's byte
probabilities keep the mass of *all* its tokens (also those the other vocabulary lacks), so a
model that prefers a longer token of its own still pushes the shared prefix that way.

The inner loop over bytes is a bounded `lax.while_loop` (at most the longest shared token's
bytes + 1 iterations); rows are independent and stop on their own commit.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._util import f32
from .ftrl import costeer_policy
from .sampling import RowSampler, sample_rows

COMMIT = 256
OUTCOMES = 257
NEG_INF = -jnp.inf
SUM_CHUNK = 1024


def gather_shared(logits: jax.Array, ids: jax.Array) -> jax.Array:
    """[B, V] native logits -> [B, N] on the shared tokens (ids [N] native)."""
    return jnp.take(f32(logits), ids, axis=-1)


def costeer_map_policy(llm_logits, slm_wo_logits, slm_w_logits, llm_ids, slm_ids, alpha, beta, lam, eta, T,
                       max_T: int) -> jax.Array:
    """CoSteer_map: log pi_T over the N shared tokens, [B, N] fp32 (B.11.1 steps 2-3)."""
    return costeer_policy(gather_shared(llm_logits, llm_ids), gather_shared(slm_wo_logits, slm_ids),
                          gather_shared(slm_w_logits, slm_ids), alpha, beta, lam, eta, T, max_T=max_T)


class ByteTables(NamedTuple):
    """One model's byte table on the device (vocab_alignment.TokenBytes)."""

    table: jax.Array  # [L, V] uint8
    lengths: jax.Array  # [V] int32: bytes, 0 = end-of-turn, -1 = never emitted


class ByteBridge(NamedTuple):
    llm_ids: jax.Array  # [N] int32: the LLM ids of the shared tokens (N: the policy's width)
    llm: ByteTables
    slm: ByteTables
    llm_shared: jax.Array  # [V_llm] int32: the shared index of an LLM token, -1 if the SLM lacks it


def initial_candidates(tables: ByteTables, batch: int) -> jax.Array:
    """Candidates of the empty prefix: every token that can be emitted, [B, V] bool."""
    return jnp.broadcast_to(tables.lengths >= 0, (batch, tables.lengths.shape[0]))


def next_byte_keys(tables: ByteTables, prefix_len: jax.Array) -> jax.Array:
    """[B, V] int32: each token's outcome after a prefix of prefix_len[b] bytes (its next byte,
    or COMMIT where the token ends there)."""
    column = jnp.take(tables.table, jnp.minimum(prefix_len, tables.table.shape[0] - 1), axis=0).astype(jnp.int32)
    return jnp.where(tables.lengths[None, :] > prefix_len[:, None], column, COMMIT)


def byte_log_probs(logits: jax.Array, candidates: jax.Array, keys: jax.Array) -> jax.Array:
    """A model's distribution over the 257 outcomes given its candidates, [B, 257] fp32:
    log-sum-exp of the candidates' logits per outcome, normalised over the candidates
    (-inf where no candidate leads)."""
    x = jnp.where(candidates, f32(logits), NEG_INF)

    vocab = x.shape[-1]
    chunks = -(-vocab // SUM_CHUNK)
    chunk_of = jnp.arange(vocab, dtype=jnp.int32) // SUM_CHUNK

    def one_row(x_row, keys_row):
        peak = jax.ops.segment_max(x_row, keys_row, OUTCOMES)
        peak = jnp.where(jnp.isfinite(peak), peak, 0.0)
        # A scatter-add runs in order: summing 60k fp32 terms in one segment drifts ~1e-5. Per
        # chunk, then across chunks (a tree reduction), it stays near 1e-7.
        terms = jnp.exp(x_row - peak[keys_row])
        mass = jax.ops.segment_sum(terms, chunk_of * OUTCOMES + keys_row, chunks * OUTCOMES)
        mass = mass.reshape(chunks, OUTCOMES).sum(axis=0)
        return jnp.where(mass > 0, jnp.log(jnp.where(mass > 0, mass, 1.0)) + peak, NEG_INF)

    out = jax.vmap(one_row)(x, keys)
    return out - jax.nn.logsumexp(out, axis=-1, keepdims=True)


def live_outcomes(candidates: jax.Array, shared: jax.Array, keys: jax.Array) -> jax.Array:
    """[B, 257] bool: outcomes through which some token of both vocabularies is still reachable
    (computed on the LLM side: shared tokens have the same bytes in both)."""
    hit = (candidates & (shared >= 0)[None, :]).astype(jnp.int32)
    return jax.vmap(lambda h, k: jax.ops.segment_max(h, k, OUTCOMES))(hit, keys) > 0


def fused_byte_policy(llm, slm_wo, slm_w, live, alpha, beta, lam, eta, T, max_T: int) -> jax.Array:
    """CoSteer's policy over the byte outcomes, renormalised over the live ones, [B, 257] fp32:
    log_softmax(log pi_base + c_T Delta) (ftrl.costeer_policy) restricted to `live`."""
    feasible = live & jnp.isfinite(llm) & jnp.isfinite(slm_wo) & jnp.isfinite(slm_w)
    safe = lambda x: jnp.where(feasible, x, 0.0)  # masked below; keeps -inf - -inf out of Delta
    policy = costeer_policy(safe(llm), safe(slm_wo), safe(slm_w), alpha, beta, lam, eta, T, max_T=max_T)
    return jax.nn.log_softmax(jnp.where(feasible, policy, NEG_INF), axis=-1)


def fused_byte_recovery(llm, slm_wo, slm_w, live, beta) -> jax.Array:
    """SpecSteer's recovery (Eq. 8) over the byte outcomes, renormalised over the live ones:
    log_softmax(h_LLM + beta (h_SLM+ - h_SLM-)) with h the byte log-distributions (A.4)."""
    feasible = live & jnp.isfinite(llm) & jnp.isfinite(slm_wo) & jnp.isfinite(slm_w)
    safe = lambda x: jnp.where(feasible, x, 0.0)
    fused = safe(llm) + jnp.asarray(beta, jnp.float32).reshape(-1, 1) * (safe(slm_w) - safe(slm_wo))
    return jax.nn.log_softmax(jnp.where(feasible, fused, NEG_INF), axis=-1)


def byte_walk(llm_logits, slm_wo_logits, slm_w_logits, bridge: ByteBridge, fuse, sampler: RowSampler | None = None):
    """One committed token for every row: the byte walk from the empty prefix to COMMIT, each
    byte chosen from fuse(llm, slm_wo, slm_w, live) over the three byte distributions. Returns
    (shared index [B] int32 of the committed token, bytes walked + 1 [B] int32)."""
    batch = llm_logits.shape[0]
    llm_logits, slm_wo_logits, slm_w_logits = f32(llm_logits), f32(slm_wo_logits), f32(slm_w_logits)
    max_steps = bridge.llm.table.shape[0] + 1

    class Walk(NamedTuple):
        i: jax.Array
        prefix_len: jax.Array
        cand_llm: jax.Array
        cand_slm: jax.Array
        done: jax.Array
        choice: jax.Array

    def cond(w: Walk):
        return (w.i < max_steps) & ~jnp.all(w.done)

    def body(w: Walk):
        keys_llm = next_byte_keys(bridge.llm, w.prefix_len)
        keys_slm = next_byte_keys(bridge.slm, w.prefix_len)
        llm = byte_log_probs(llm_logits, w.cand_llm, keys_llm)
        wo = byte_log_probs(slm_wo_logits, w.cand_slm, keys_slm)
        with_context = byte_log_probs(slm_w_logits, w.cand_slm, keys_slm)
        policy = fuse(llm, wo, with_context, live_outcomes(w.cand_llm, bridge.llm_shared, keys_llm))
        outcome = sample_rows(policy, sampler, w.i)
        commit = ~w.done & (outcome == COMMIT)
        ends_here = w.cand_llm & (keys_llm == COMMIT) & (bridge.llm_shared >= 0)[None, :]
        token = jnp.argmax(jnp.where(ends_here, llm_logits, NEG_INF), axis=-1)
        choice = jnp.where(commit, bridge.llm_shared[token], w.choice)
        extend = ~w.done & ~commit
        cand_llm = jnp.where(extend[:, None], w.cand_llm & (keys_llm == outcome[:, None]), w.cand_llm)
        cand_slm = jnp.where(extend[:, None], w.cand_slm & (keys_slm == outcome[:, None]), w.cand_slm)
        return Walk(w.i + 1, w.prefix_len + extend.astype(jnp.int32), cand_llm, cand_slm, w.done | commit, choice)

    init = Walk(jnp.int32(0), jnp.zeros((batch,), jnp.int32), initial_candidates(bridge.llm, batch),
                initial_candidates(bridge.slm, batch), jnp.zeros((batch,), bool), jnp.zeros((batch,), jnp.int32))
    final = jax.lax.while_loop(cond, body, init)
    return final.choice, final.prefix_len + 1


def costeer_byte_step(llm_logits, slm_wo_logits, slm_w_logits, bridge: ByteBridge, hyper: dict, max_T: int,
                      sampler: RowSampler | None = None):
    """CoSteer_byte's committed token for every row: the byte walk under CoSteer's FTRL policy."""
    fuse = lambda llm, wo, w, live: fused_byte_policy(llm, wo, w, live, hyper["alpha"], hyper["beta"], hyper["lam"],
                                                      hyper["eta"], hyper["T"], max_T)
    return byte_walk(llm_logits, slm_wo_logits, slm_w_logits, bridge, fuse, sampler)


__all__ = ["COMMIT", "OUTCOMES", "ByteBridge", "ByteTables", "byte_log_probs",
           "byte_walk", "costeer_byte_step", "costeer_map_policy", "fused_byte_policy", "fused_byte_recovery",
           "gather_shared", "initial_candidates",
           "live_outcomes", "next_byte_keys"]
