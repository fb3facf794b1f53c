"""CoSteer's FTRL policy update (Eq. 7, Algorithm 1) and its LightCoSteer closed form (Eq. 16/17).

Notation follows the CoSteer paper (Section 3.2, Appendix A.3):

* ``pi_base``        = P_LLM(a | p_base, s)           -> ``llm_logits``
* ``pi*_base``       = P_SLM(a | p_base, s)           -> ``slm_wo_logits``
* ``pi*_pers``       = P_SLM(a | p_base, p_pers, s)   -> ``slm_w_logits``
* ``Delta``          = log pi*_pers - log pi*_base     (Algorithm 1, line 6)
* ``u_t``            = alpha (log pi_{t-1} - log pi_base) + beta Delta   (Algorithm 1, line 9; Eq. 4)
* Eq. 7:  pi_t ∝ exp( (sum_{i<t} u_i + t lam log pi_0 + (1/eta) log pi_{t-1}) / (t lam + 1/eta) ),
  with pi_0 = pi_base.

**The T iterations collapse to one vocabulary pass.** Every quantity of Eq. 7 is an
affine combination of log pi_base and Delta plus a per-row constant, and log_softmax discards the
constant. By induction, log pi_t = log_softmax(log pi_base + c_t Delta) with a per-row scalar c_t:
if log pi_{t-1} = log pi_base + c_{t-1} Delta + k, then u_{t-1} = (alpha c_{t-1} + beta) Delta + alpha k,
so sum_{i<t} u_i = s_t Delta + const with s_t = s_{t-1} + alpha c_{t-1} + beta, and Eq. 7's argument is

    (t lam log pi_base + s_t Delta + (log pi_base + c_{t-1} Delta) / eta) / (t lam + 1/eta) + const
    = log pi_base + c_t Delta + const,     c_t = (s_t + c_{t-1} / eta) / (t lam + 1/eta),

with c_0 = s_0 = 0. `costeer_policy` therefore runs Algorithm 1's loop over T on the [B] scalars
(c_t, s_t) and applies one log_softmax over the vocabulary at the end: the same policy as the
vocabulary-wide iteration (`costeer_policy_iterative`, kept as the literal transcription and
checked against it and a float64 NumPy transcription in tests/test_steering.py), at the cost of
LightCoSteer whatever T is. At T = 1, c_1 = beta / (lam + 1/eta) = beta*, Eq. 16/17.

All arrays are [B, V]; every input is upcast to float32 first, and all arithmetic is fp32.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ._util import F32, f32, per_row

__all__ = ["costeer_delta", "costeer_delta_coefficient", "costeer_policy", "costeer_policy_iterative",
           "light_costeer_closed_form", "light_costeer_beta_star"]


def costeer_delta(slm_wo_logits, slm_w_logits) -> jnp.ndarray:
    """Delta = log pi*_pers - log pi*_base (Algorithm 1, line 6), fp32 [B, V]."""
    return jax.nn.log_softmax(f32(slm_w_logits), axis=-1) - jax.nn.log_softmax(f32(slm_wo_logits), axis=-1)


def costeer_policy_iterative(llm_logits, slm_wo_logits, slm_w_logits, alpha=2.0, beta=1.0, lam=2.0, eta=10.0,
                             T=20, max_T: int | None = None) -> jnp.ndarray:
    """CoSteer's iterated FTRL update (Eq. 7, Algorithm 1 lines 6-12) over the whole vocabulary.

    The literal transcription, T log_softmax passes over [B, V]; `costeer_policy` computes the
    same policy in one (see the module docstring). Returns log pi_T, fp32 [B, V].

    For t = 1 .. T (Algorithm 1, lines 8-11), with pi_0 = pi_base:

        u_{t-1}   = alpha (log pi_{t-1} - log pi_base) + beta Delta                 (Eq. 4 / line 9)
        cum_t     = cum_{t-1} + u_{t-1}                  (= sum_{i<t} u_i of Eq. 7)
        log pi_t  = log_softmax( (t lam log pi_base + cum_t + log pi_{t-1} / eta) / (t lam + 1/eta) )
                                                                                     (Eq. 7)

    The update is written exactly as the reference ``ftrl_policy`` (same operations in the same
    order): ``cum = cum + alpha*(player-base) + beta*delta`` then
    ``player = log_softmax((t*lam*base + cum + player/eta) / (t*lam + 1/eta))``.

    Arguments as `costeer_policy`.

    Returns:
      The final log-policy log pi_T, [B, V] float32 (normalised: logsumexp over V is 0).
    """
    max_T = _static_max_T(T, max_T)
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


def _static_max_T(T, max_T) -> int:
    if max_T is None:
        if not isinstance(T, int):
            raise ValueError("max_T (static) is required when T is an array")
        max_T = T
    return int(max_T)


def costeer_delta_coefficient(alpha=2.0, beta=1.0, lam=2.0, eta=10.0, T=20, max_T: int | None = None):
    """c_T of log pi_T = log_softmax(log pi_base + c_T Delta): Algorithm 1's loop over t = 1 .. T
    on per-row scalars (module docstring). Hyperparameters: scalars or [B]; returns fp32 [B] or [].

        s_t = s_{t-1} + alpha c_{t-1} + beta                (the Delta part of sum_{i<t} u_i)
        c_t = (s_t + c_{t-1} / eta) / (t lam + 1/eta)       (Eq. 7's Delta part)
    """
    max_T = _static_max_T(T, max_T)
    alpha, beta, lam, eta = (f32(x) for x in (alpha, beta, lam, eta))
    T_rows = jnp.asarray(T, jnp.int32)
    shape = jnp.broadcast_shapes(alpha.shape, beta.shape, lam.shape, eta.shape, T_rows.shape)

    def step(carry, t):
        c, s = carry  # c_{t-1}, s_{t-1}
        tf = t.astype(F32)
        new_s = s + alpha * c + beta
        new_c = (new_s + c / eta) / (tf * lam + 1.0 / eta)
        active = t <= T_rows  # per-row stop after its own T[b]
        return (jnp.where(active, new_c, c), jnp.where(active, new_s, s)), None

    zero = jnp.zeros(shape, F32)
    (c, _), _ = jax.lax.scan(step, (zero, zero), jnp.arange(1, max_T + 1, dtype=jnp.int32))
    return c


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
    """CoSteer's T-step FTRL policy (Eq. 7, Algorithm 1 lines 6-12); returns log pi_T, fp32 [B, V].

        log pi_T = log_softmax(log pi_base + c_T Delta),   c_T = costeer_delta_coefficient(...)

    equal to iterating Eq. 7 T times over the vocabulary (`costeer_policy_iterative`; the module
    docstring derives it), in one vocabulary pass.

    Args:
      llm_logits, slm_wo_logits, slm_w_logits: [B, V] logits (any float dtype; upcast to fp32).
        All three must share one vocabulary: cut padded embeddings first (``cut_vocab``).
      alpha, beta, lam, eta: scalars or per-row arrays [B] (Table 4 defaults 2, 1, 2, 10).
      T: scalar or per-row int array [B]; row b is updated for t = 1 .. min(T[b], max_T) and
        then frozen (T[b] <= 0 returns log pi_base for that row).
      max_T: static loop length (the largest T in any batch that shares this compiled program).
        If None, ``T`` must be a Python int and max_T = T.
    """
    max_T = _static_max_T(T, max_T)
    base = jax.nn.log_softmax(f32(llm_logits), axis=-1)  # log pi_base = log pi_0
    delta = costeer_delta(slm_wo_logits, slm_w_logits)  # Delta
    c = per_row(costeer_delta_coefficient(alpha, beta, lam, eta, T, max_T), base)
    return jax.nn.log_softmax(base + c * delta, axis=-1)


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
