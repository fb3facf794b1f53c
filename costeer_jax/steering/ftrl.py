"""CoSteer's FTRL policy update (Eq. 7, Algorithm 1) and its LightCoSteer closed form (Eq. 16/17).

Notation follows the CoSteer paper (Section 3.2, Appendix A.3):

* ``pi_base``        = P_LLM(a | p_base, s)           -> ``llm_logits``
* ``pi*_base``       = P_SLM(a | p_base, s)           -> ``slm_wo_logits``
* ``pi*_pers``       = P_SLM(a | p_base, p_pers, s)   -> ``slm_w_logits``
* ``Delta``          = log pi*_pers - log pi*_base     (Algorithm 1, line 6)
* ``u_t``            = alpha (log pi_{t-1} - log pi_base) + beta Delta   (Algorithm 1, line 9; Eq. 4)
* Eq. 7:  pi_t ∝ exp( (sum_{i<t} u_i + t lam log pi_0 + (1/eta) log pi_{t-1}) / (t lam + 1/eta) ),
  with pi_0 = pi_base.

All arrays are [B, V]; every input is upcast to float32 first, and all arithmetic is fp32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ._util import F32, f32, per_row

__all__ = ["costeer_delta", "costeer_policy", "light_costeer_closed_form", "light_costeer_beta_star"]


def costeer_delta(slm_wo_logits, slm_w_logits) -> jnp.ndarray:
    """Delta = log pi*_pers - log pi*_base (Algorithm 1, line 6), fp32 [B, V]."""
    return jax.nn.log_softmax(f32(slm_w_logits), axis=-1) - jax.nn.log_softmax(f32(slm_wo_logits), axis=-1)


def costeer_policy(
    llm_logits,
    slm_wo_logits,
    slm_w_logits,
    alpha=2.0,
    beta=1.0,
    lam=2.0,
    eta=10.0,
    T=20,
    max_T: int | None = None,
) -> jnp.ndarray:
    """CoSteer's iterated FTRL update (Eq. 7, Algorithm 1 lines 6-12); returns log pi_T, fp32 [B, V].

    For t = 1 .. T (Algorithm 1, lines 8-11), with pi_0 = pi_base:

        u_{t-1}   = alpha (log pi_{t-1} - log pi_base) + beta Delta                 (Eq. 4 / line 9)
        cum_t     = cum_{t-1} + u_{t-1}                  (= sum_{i<t} u_i of Eq. 7)
        log pi_t  = log_softmax( (t lam log pi_base + cum_t + log pi_{t-1} / eta) / (t lam + 1/eta) )
                                                                                     (Eq. 7)

    The update is written exactly as the reference ``ftrl_policy`` (same operations in the same
    order): ``cum = cum + alpha*(player-base) + beta*delta`` then
    ``player = log_softmax((t*lam*base + cum + player/eta) / (t*lam + 1/eta))``.

    Args:
      llm_logits, slm_wo_logits, slm_w_logits: [B, V] logits (any float dtype; upcast to fp32).
        All three must share one vocabulary: cut padded embeddings first (``cut_vocab``).
      alpha, beta, lam, eta: scalars or per-row arrays [B] (Table 4 defaults 2, 1, 2, 10).
      T: scalar or per-row int array [B]; row b is updated for t = 1 .. min(T[b], max_T) and
        then frozen (T[b] <= 0 returns log pi_base for that row).
      max_T: static scan length (the largest T in any batch that shares this compiled program).
        If None, ``T`` must be a Python int and max_T = T.

    Returns:
      The final log-policy log pi_T, [B, V] float32 (normalised: logsumexp over V is 0).
    """
    if max_T is None:
        if not isinstance(T, int):
            raise ValueError("max_T (static) is required when T is an array")
        max_T = T
    max_T = int(max_T)

    base = jax.nn.log_softmax(f32(llm_logits), axis=-1)  # log pi_base = log pi_0
    delta = costeer_delta(slm_wo_logits, slm_w_logits)  # Delta
    alpha = per_row(alpha, base)
    beta = per_row(beta, base)
    lam = per_row(lam, base)
    eta = per_row(eta, base)
    T_rows = jnp.broadcast_to(jnp.asarray(T, jnp.int32), base.shape[:1])

    def step(carry, t):
        player, cum = carry  # log pi_{t-1}, sum_{i<t-1} u_i
        tf = t.astype(F32)
        new_cum = cum + alpha * (player - base) + beta * delta
        new_player = jax.nn.log_softmax((tf * lam * base + new_cum + player / eta) / (tf * lam + 1.0 / eta), axis=-1)
        active = (t <= T_rows)[:, None]  # per-row stop after its own T[b]
        return (jnp.where(active, new_player, player), jnp.where(active, new_cum, cum)), None

    (player, _), _ = jax.lax.scan(step, (base, jnp.zeros_like(base)), jnp.arange(1, max_T + 1, dtype=jnp.int32))
    return player


def light_costeer_beta_star(beta=1.0, lam=2.0, eta=10.0) -> jnp.ndarray:
    """beta* = beta / (lam + 1/eta)  (Appendix A.3, below Eq. 15)."""
    return f32(beta) / (f32(lam) + 1.0 / f32(eta))


def light_costeer_closed_form(llm_logits, slm_wo_logits, slm_w_logits, beta=1.0, lam=2.0, eta=10.0) -> jnp.ndarray:
    """LightCoSteer (T = 1) in closed form, Eq. 16 / Eq. 17; returns log pi, fp32 [B, V].

        pi(a) ∝ exp( log pi_0(a) + beta* (log pi*_pers(a) - log pi*_base(a)) ),
        beta* = beta / (lam + 1/eta).

    Equal (up to fp32 rounding) to ``costeer_policy(..., T=1)``: at t = 1 the alpha term vanishes
    because pi_0 = pi_base, and (lam log pi_0 + beta Delta + log pi_0 / eta) / (lam + 1/eta) =
    log pi_0 + beta* Delta.  alpha therefore does not appear.  beta, lam, eta: scalars or [B].
    """
    base = jax.nn.log_softmax(f32(llm_logits), axis=-1)
    delta = costeer_delta(slm_wo_logits, slm_w_logits)
    beta_star = per_row(light_costeer_beta_star(beta, lam, eta), base)
    return jax.nn.log_softmax(base + beta_star * delta, axis=-1)
