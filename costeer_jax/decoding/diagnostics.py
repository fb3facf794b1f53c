"""Why two greedy decodings differ: the policy's top-2 margin at every step of a given output.

fp32 greedy tokens can flip with batch shape (or between frameworks) where the policy's best two
tokens are within float noise of each other. `policy_margins` teacher-forces a token sequence
through every stream of a method with one cache-free forward per stream (all positions at
once), applies the method's policy step by step, and returns the top-2 log-probability margin
and the argmax at each step, so a parity report can say "row 3 differs at step 17, where the
margin is 4e-5".
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from costeer_jax.decoding.methods import PERSONALIZED, STREAMS, Method, hyper_arrays
from costeer_jax.models import cache as kv
from costeer_jax.models import decoder
from costeer_jax.models.chat import chat_prompt_ids


def _all_position_logits(model, ids: list[int]) -> np.ndarray:
    valid = jnp.ones((1, len(ids)), bool)
    cache = kv.init_cache(model.cfg, 1, len(ids))
    logits, _ = decoder.forward(model.params, model.cfg, jnp.asarray([ids], jnp.int32),
                                decoder.append_positions(cache, valid), valid, cache)
    return np.asarray(logits[0])


def policy_margins(method: Method, models: dict, example, token_ids: list[int],
                   hyper: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(margins [n], argmax [n]) of `method`'s policy along `token_ids` (n = len(token_ids));
    step i's policy sees the prompt plus token_ids[:i]. Stateless policies only (no AdaCoSteer)."""
    if method.policy is None:
        raise ValueError(f"{method.name} has no per-token policy (a Draft-Verify method)")
    texts = {"query": example.query, PERSONALIZED: example.personalized_query}
    vocab = len(next(iter(models.values())).tokenizer)
    n = len(token_ids)
    per_stream = {}
    for stream in method.streams:
        role, text = STREAMS[stream]
        model = models[role]
        prompt = chat_prompt_ids(model.tokenizer, texts[text])
        logits = _all_position_logits(model, prompt + list(token_ids[:-1]) if n else prompt)
        per_stream[stream] = logits[len(prompt) - 1:len(prompt) - 1 + n, :vocab]
    hyper_rows = hyper_arrays(method, hyper or {}, n)
    log_probs, _, _ = method.policy({k: jnp.asarray(v) for k, v in per_stream.items()},
                                    method.init_state(n), hyper_rows)
    log_probs = np.asarray(log_probs)
    top2 = np.sort(log_probs, axis=-1)[:, -2:]
    return top2[:, 1] - top2[:, 0], log_probs.argmax(-1)


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first step where two token lists differ (a length difference counts), or None."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))
