"""SpecSteer's Draft-Verify-Recover math (SpecSteer Section 4.2), pure and batched with static shapes.

* Verification: alpha_t = min(1, P_LLM(y_t) / (lam P_SLM-(y_t)))        (SpecSteer Eq. 7)
* Accepted prefix: the number of leading accepted draft positions per row (Algorithm 1, lines 6-17:
  the loop breaks at the first rejection).
* Recovery: softmax(h_rec) with h_rec from ``fuse_logits`` (SpecSteer Eq. 8); for standard
  speculative decoding the residual normalize(max(p - q, 0)) (Leviathan et al., 2023) is provided too.
"""
from __future__ import annotations

import jax.numpy as jnp

from ._util import f32, per_row

__all__ = ["gather_token_logprobs", "specsteer_accept_prob", "first_rejection", "residual_distribution"]


def gather_token_logprobs(log_probs, tokens) -> jnp.ndarray:
    """log_probs[..., tokens]: [B, K, V] x [B, K] -> [B, K] (any matching leading shape), fp32."""
    tokens = jnp.asarray(tokens, jnp.int32)
    return jnp.take_along_axis(f32(log_probs), tokens[..., None], axis=-1)[..., 0]


def specsteer_accept_prob(logp_llm_tok, logp_slm_wo_tok, lam=0.5) -> jnp.ndarray:
    """Ratio-based acceptance probability, SpecSteer Eq. 7, computed in log space:

        alpha(y) = min(1, P_LLM(y) / (lam P_SLM-(y)))
                 = exp(min(0, log P_LLM(y) - log P_SLM-(y) - log lam)).

    Args:
      logp_llm_tok: log P_LLM of each drafted token, e.g. [B, K] (from ``gather_token_logprobs``).
      logp_slm_wo_tok: log P_SLM- (specialist *without* the private context) of the same tokens.
      lam: the partition-function surrogate lambda > 0, scalar or per-row [B] (paper default 0.5).

    Returns: fp32 acceptance probabilities in [0, 1].  Limits: lam -> 0 gives 1, lam -> inf gives 0;
    P_SLM-(y) = 0 gives 1 (unless P_LLM(y) = 0 too); P_LLM(y) = 0 gives 0.  Never NaN for lam >= 0.
    """
    lp_llm = f32(logp_llm_tok)
    lp_slm = f32(logp_slm_wo_tok)
    log_lam = jnp.log(per_row(lam, lp_llm))
    log_ratio = lp_llm - lp_slm - log_lam
    acc = jnp.exp(jnp.minimum(0.0, log_ratio))
    # -inf - (-inf) is NaN: a token the LLM gives zero probability is never accepted.
    return jnp.where(jnp.isneginf(lp_llm), 0.0, jnp.where(jnp.isnan(acc), 1.0, acc))


def first_rejection(accept_mask) -> jnp.ndarray:
    """Number of leading accepted draft positions per row: [B, K] bool -> [B] int32.

    n[b] = max{ j : accept_mask[b, :j] all True }  (SpecSteer Algorithm 1: the verification loop
    breaks at the first rejected position; positions after it are discarded even if they passed).
    n[b] = K when the whole draft is accepted; n[b] is also the index of the first rejection.
    """
    m = jnp.asarray(accept_mask).astype(jnp.int32)
    return jnp.sum(jnp.cumprod(m, axis=-1), axis=-1).astype(jnp.int32)


def residual_distribution(p, q) -> jnp.ndarray:
    """Standard speculative-sampling residual (Leviathan et al., 2023; Chen et al., 2023):

        p'(x) = max(p(x) - q(x), 0) / sum_x' max(p(x') - q(x'), 0),

    with p the target and q the draft distribution (probabilities, [..., V]).  When the residual mass
    is zero (p == q wherever p > q, so a rejection has probability 0) the target p itself is returned
    instead of 0/0.  fp32.
    """
    p = f32(p)
    q = f32(q)
    r = jnp.maximum(p - q, 0.0)
    mass = jnp.sum(r, axis=-1, keepdims=True)
    ok = mass > 0.0
    return jnp.where(ok, r / jnp.where(ok, mass, 1.0), p)
