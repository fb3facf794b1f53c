"""Logit-arithmetic baselines: LA/CS and proxy-tuning (CoSteer Appendix B.8) and SpecSteer's
steering-recovery fusion (SpecSteer Eq. 8, the reference's ``fuse`` method).

A useful identity used throughout: log_softmax(x) = x - logsumexp(x) differs from the logits x by a
per-row constant, so any linear combination of models' scores, once renormalised, gives the same
distribution whether it is written on logits or on log-probs (the shifts add up to a per-row
constant).  We always work on log-probs (log_softmax of fp32 logits) because it removes the arbitrary, possibly
large, per-model logit offset before subtracting models from each other.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from ._util import f32, per_row

__all__ = ["contrastive_steering", "proxy_tuning", "fuse_logits"]


def _lsm(x) -> jnp.ndarray:
    return jax.nn.log_softmax(f32(x), axis=-1)


def contrastive_steering(slm_wo_logits, slm_w_logits, cs_lambda) -> jnp.ndarray:
    """Linear Alignment / Context Steering (CoSteer Appendix B.8); normalised log-probs, fp32.

        log P'(x) = log P(x | ∅) + lambda (log P(x | C) - log P(x | ∅)),

    renormalised with log_softmax (B.8 states the unnormalised score; the argmax is identical).
    Both inputs come from the same (small) model, without / with the context C.  cs_lambda: scalar
    or [B] (the paper searches {1.5, 2.0, 2.5}).
    """
    lp_wo = _lsm(slm_wo_logits)
    lp_w = _lsm(slm_w_logits)
    lam = per_row(cs_lambda, lp_wo)
    return jax.nn.log_softmax(lp_wo + lam * (lp_w - lp_wo), axis=-1)


def proxy_tuning(llm_logits, slm_sft_logits, slm_base_logits) -> jnp.ndarray:
    """Proxy-tuning (Liu et al., 2024; CoSteer Appendix B.8); normalised log-probs, fp32.

        p(x_t | x_<t) = softmax[ s_LLM(x_t | x_<t) + s_SLM-SFT(x_t | x_<t) - s_SLM-base(x_t | x_<t) ],

    where B.8 defines the s terms as *logits*.  Replacing each logit vector by its log_softmax only
    shifts every row by a constant (c_LLM + c_SFT - c_base), so computing it on log-probs (as here,
    for fp32 stability) gives the same softmax exactly in real arithmetic.
    """
    return jax.nn.log_softmax(_lsm(llm_logits) + _lsm(slm_sft_logits) - _lsm(slm_base_logits), axis=-1)


def fuse_logits(llm_logits, slm_w_logits, slm_wo_logits, beta=1.0) -> jnp.ndarray:
    """SpecSteer's steering-recovery logits (SpecSteer Eq. 8; the reference's ``fuse`` method):

        h_rec = log_softmax(h_LLM) + beta (log_softmax(h_SLM+) - log_softmax(h_SLM-)),

    fp32 [..., V], *unnormalised* (a per-row shift of Eq. 8's h_LLM + beta (h_SLM+ - h_SLM-); same
    softmax, same argmax).  The recovery distribution of Eq. 8 is softmax(h_rec); it is also the
    target P* ∝ P_LLM P_SLM+ / P_SLM- of SpecSteer Eq. 4 when beta = 1.  beta: scalar or per-row
    (shape [B] against [B, V], or [B, K] against [B, K, V]).
    """
    base = _lsm(llm_logits)
    return base + per_row(beta, base) * (_lsm(slm_w_logits) - _lsm(slm_wo_logits))
