"""Pure fp32 steering math over [batch, vocab] arrays: CoSteer (FTRL, Eq. 7), LightCoSteer (Eq. 16/17),
AdaCoSteer gating (B.12.2), LA/CS and proxy-tuning baselines (B.8), SpecSteer verification / recovery
(SpecSteer Eq. 7/8), vocabulary cutting and sampling.  Every function is jit-compatible."""
from .adaptive import AdaState, ada_init, ada_update, llm_confidence
from .cross_vocab import ByteBridge, ByteTables, costeer_byte_step, costeer_map_policy
from .baselines import contrastive_steering, fuse_logits, proxy_tuning
from .ftrl import (costeer_delta, costeer_delta_coefficient, costeer_policy, costeer_policy_iterative,
                   light_costeer_beta_star, light_costeer_closed_form)
from .sampling import cut_vocab, sample_tokens
from .speculative import first_rejection, gather_token_logprobs, residual_distribution, specsteer_accept_prob

__all__ = [
    "AdaState",
    "ada_init",
    "ada_update",
    "llm_confidence",
    "ByteBridge",
    "ByteTables",
    "costeer_byte_step",
    "costeer_map_policy",
    "contrastive_steering",
    "fuse_logits",
    "proxy_tuning",
    "costeer_delta",
    "costeer_policy",
    "costeer_policy_iterative",
    "costeer_delta_coefficient",
    "light_costeer_beta_star",
    "light_costeer_closed_form",
    "cut_vocab",
    "sample_tokens",
    "first_rejection",
    "gather_token_logprobs",
    "residual_distribution",
    "specsteer_accept_prob",
]
