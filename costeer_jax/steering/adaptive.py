"""AdaCoSteer: confidence-gated steering (CoSteer Appendix B.12.2, and B.12.4 "AdaCoSteer").

Paper text: "we monitor the token confidence of the LLM at each step, measured by the probability of
its argmax token.  If this confidence score exceeds a predefined threshold tau for k consecutive
steps, we deactivate CoSteer.  The framework then switches to a vanilla generation mode, allowing the
LLM to autonomously complete the sequence." (B.12.2); "the steering process is halted once the LLM's
output confidence ... remains above a predefined threshold for c consecutive steps.  After this
condition is met, generation continues using only the remote LLM" (B.12.4).

Counting rule chosen here (default ``count_current_step=False``):

* The confidence is the *unsteered* LLM's greedy-token probability max_a P_LLM(a | p_base, s),
  "exceeds" is strict (conf > tau).
* Step s's own confidence extends the streak, but the decision for step s is taken from the state
  *before* step s: the k confident steps that complete a streak are themselves steered, and
  vanilla LLM generation starts at the next step ("then switches", "after this condition is met,
  generation continues").  This also keeps the gate causal with respect to the SLM: Section 3.3 runs
  the SLM *simultaneously* with the LLM, so whether the SLM is needed at step s must be known before
  step s's LLM logits arrive -- which is exactly what lets AdaCoSteer save the SLM call and the
  communication round.
* ``count_current_step=True`` gives the other reading: the step that completes the streak is
  already generated unsteered (one round earlier).
* Deactivation is permanent for the rest of the generation (sticky), per row.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._util import f32

__all__ = ["AdaState", "ada_init", "ada_update", "llm_confidence"]


class AdaState(NamedTuple):
    consecutive: jnp.ndarray  # [B] int32: current run of steps with conf > tau
    active: jnp.ndarray  # [B] bool: steering still on for this row


def ada_init(batch_size: int) -> AdaState:
    """Fresh per-row state at the start of a generation: no streak, steering on."""
    return AdaState(jnp.zeros((batch_size,), jnp.int32), jnp.ones((batch_size,), jnp.bool_))


def llm_confidence(llm_logits) -> jnp.ndarray:
    """max_a softmax(h_LLM)(a): the probability of the LLM's greedy token, fp32 [B]."""
    return jnp.exp(jnp.max(jax.nn.log_softmax(f32(llm_logits), axis=-1), axis=-1))


def ada_update(state: AdaState, llm_logits, tau, k_consecutive, count_current_step: bool = False):
    """One AdaCoSteer gate step (Appendix B.12.2); pure, per row, jit-compatible.

        conf_s        = max_a P_LLM(a)                        (unsteered LLM, step s)
        consecutive_s = consecutive_{s-1} + 1  if conf_s > tau else 0
        active_s      = active_{s-1} and consecutive_s < k    (sticky: never turns back on)
        steer_mask_s  = active_{s-1}   (default)   |   active_s   (count_current_step=True)

    Args:
      state: AdaState from ``ada_init`` or the previous call.
      llm_logits: [B, V] logits of the LLM on the bare query for the current step (any dtype).
      tau: confidence threshold, scalar or [B].
      k_consecutive: k, scalar or [B] int.
      count_current_step: static; see the module docstring.

    Returns:
      (new_state, steer_mask): steer_mask [B] bool says whether this step's token is taken from the
      CoSteer policy (True) or from the plain LLM (False).
    """
    conf = llm_confidence(llm_logits)
    tau = jnp.broadcast_to(f32(tau), conf.shape)
    k = jnp.broadcast_to(jnp.asarray(k_consecutive, jnp.int32), conf.shape)
    consecutive = jnp.where(conf > tau, state.consecutive + 1, 0).astype(jnp.int32)
    active = jnp.logical_and(state.active, consecutive < k)
    steer_mask = active if count_current_step else state.active
    return AdaState(consecutive, active), steer_mask
