"""The decoding methods of both papers as (streams, policy) pairs for the shared token loop.

A stream is (model role, which text): "llm" is the cloud LLM on the bare query, "slm_wo"/"slm_w"
the local SLM without/with the private context, "sft_w"/"sft_wo" the fine-tuned SLM (a LoRA
adapter on the SLM's own weights, or a full checkpoint) with/without it.
Policies are pure functions of the streams' logits and per-row hyperparameter arrays, so one
batch may mix configurations (sweeps).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from costeer_jax import steering

QUERY, PERSONALIZED = "query", "personalized"
LLM, SLM, SLM_SFT = "llm", "slm", "slm_sft"

# stream name -> (model role, text the stream is prompted with)
STREAMS = {
    "llm": (LLM, QUERY),
    "llm_w": (LLM, PERSONALIZED),
    "slm_wo": (SLM, QUERY),
    "slm_w": (SLM, PERSONALIZED),
    "sft_w": (SLM_SFT, PERSONALIZED),
    "sft_wo": (SLM_SFT, QUERY),
}

# Hyperparameter defaults (CoSteer Table 4 / Section 4; LA/CS lambda from B.8's grid).
DEFAULT_HYPER = {
    "alpha": 2.0, "beta": 1.0, "lam": 2.0, "eta": 10.0, "T": 20,
    "tau": 0.9, "k_consecutive": 3, "cs_lambda": 2.0,
    # SpecSteer Appendix B.2: verification threshold lambda = 0.5, recovery strength beta = 1.0.
    "spec_lambda": 0.5, "spec_beta": 1.0,
}

SPECULATIVE_METHOD_NAMES = ("specsteer", "sd")
CROSS_VOCAB_METHOD_NAMES = ("costeer_map", "costeer_byte", "specsteer_cross")
DRAFTER_STREAMS = ("slm_w", "slm_wo", "sft_wo", "sft_w")


@dataclasses.dataclass(frozen=True)
class SpeculativeOptions:
    """Static options of the Draft-Verify methods (run by `decoding.speculative`, not the token
    loop): K drafts per iteration, the bonus token on full acceptance (None: the method's usual
    choice, off for SpecSteer's Algorithm 1, on for SD), SpecSteer's acceptance mode
    (auto|threshold|stochastic), the downlink top-k truncation of the cloud term (0: exact), and
    the drafter stream: SD's slm_w (SLM with the private context) or slm_wo; with a fine-tuned
    SLM+ (`--slm_plus`), sft_wo (the adapted SLM on the query: SpecSteer A.2's LoRA specialist)
    or sft_w (LoRA + RAG). SpecSteer's drafter is slm_w unless one of the sft streams is named."""

    num_draft: int = 4
    bonus: bool | None = None
    acceptance: str = "auto"
    downlink_topk: int = 0
    sd_drafter: str = "slm_w"
    specsteer_drafter: str = "slm_w"


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    streams: tuple[str, ...]
    policy: Callable | None  # (logits by stream, state, hyper) -> (log_probs, state, stats)
    hyper_keys: tuple[str, ...] = ()
    init_state: Callable[[int], Any] = lambda batch: None
    # Streams only needed while `steering_active(state)` is true somewhere in the batch; the
    # loop skips their model's forward once every row has stopped steering (AdaCoSteer).
    gated_streams: tuple[str, ...] = ()
    description: str = ""
    # Set for the Draft-Verify methods (specsteer, sd): they have no per-token policy.
    speculative: SpeculativeOptions | None = None
    # Models of different tokenizers: "map" (fusion on the shared tokens) or "byte" (in byte
    # space): the policy then takes the engine's TokenBridge aux and sampler (engine.py);
    # "speculative": specsteer_cross, run by decoding/cross_speculative.py (no policy).
    cross_vocab: str | None = None
    cross_spec: SpeculativeOptions | None = None  # specsteer_cross: K (the other options do not apply)


def _log_softmax(x):
    return jax.nn.log_softmax(x.astype(jnp.float32), axis=-1)


def _plain(stream, logits, state, hyper):
    return _log_softmax(logits[stream]), state, {}


def _costeer(max_T, logits, state, hyper):
    policy = steering.costeer_policy(
        logits["llm"], logits["slm_wo"], logits["slm_w"], hyper["alpha"], hyper["beta"],
        hyper["lam"], hyper["eta"], hyper["T"], max_T=max_T)
    return policy, state, {"steered_tokens": jnp.ones(policy.shape[:1], jnp.int32)}


def _ada_costeer(max_T, stop_on_streak, logits, state, hyper):
    state, steer = steering.ada_update(state, logits["llm"], hyper["tau"], hyper["k_consecutive"],
                                       count_current_step=stop_on_streak)
    steered = steering.costeer_policy(
        logits["llm"], logits["slm_wo"], logits["slm_w"], hyper["alpha"], hyper["beta"],
        hyper["lam"], hyper["eta"], hyper["T"], max_T=max_T)
    policy = jnp.where(steer[:, None], steered, _log_softmax(logits["llm"]))
    return policy, state, {"steered_tokens": steer.astype(jnp.int32)}


def _contrastive(logits, state, hyper):
    policy = steering.contrastive_steering(logits["slm_wo"], logits["slm_w"], hyper["cs_lambda"])
    return policy, state, {}


def _fuse(logits, state, hyper):
    fused = steering.fuse_logits(logits["llm"], logits["slm_w"], logits["slm_wo"], hyper["spec_beta"])
    return _log_softmax(fused), state, {}


class MapIds(NamedTuple):
    llm: jax.Array  # [N] LLM ids of the shared tokens
    slm: jax.Array  # [N] SLM ids


def _costeer_map(max_T, logits, state, hyper, ids: MapIds, sampler):
    policy = steering.costeer_map_policy(
        logits["llm"], logits["slm_wo"], logits["slm_w"], ids.llm, ids.slm, hyper["alpha"], hyper["beta"],
        hyper["lam"], hyper["eta"], hyper["T"], max_T=max_T)
    return policy, state, {"steered_tokens": jnp.ones(policy.shape[:1], jnp.int32)}


def _costeer_byte(max_T, logits, state, hyper, bridge: steering.ByteBridge, sampler):
    choice, walked = steering.costeer_byte_step(logits["llm"], logits["slm_wo"], logits["slm_w"], bridge, hyper,
                                                max_T, sampler)
    shared = jnp.arange(bridge.llm_ids.shape[0], dtype=jnp.int32)
    # The walk has chosen: the loop's own choice over this one-hot returns it, greedy or sampled.
    policy = jnp.where(shared[None, :] == choice[:, None], 0.0, -jnp.inf)
    return policy, state, {"steered_tokens": jnp.ones(choice.shape, jnp.int32), "byte_steps": walked}


def _proxy_tuning(logits, state, hyper):
    return steering.proxy_tuning(logits["llm"], logits["sft_w"], logits["slm_w"]), state, {}


@functools.lru_cache(maxsize=None)
def get_method(name: str, max_T: int = 20, speculative: SpeculativeOptions | None = None,
               ada_stop_on_streak: bool = False) -> Method:
    """Method objects are cached so the static policy (a jit cache key) is reused across calls.
    `speculative` configures specsteer/sd (defaults when None) and is ignored by other methods.
    `ada_stop_on_streak` (ada_costeer): the step that completes the confidence streak is already
    decoded by the plain LLM, as the authors' release does; default: that step is still steered
    (steering/adaptive.py says why)."""
    plain = {
        "llm_wo": ("llm", "LLM on the bare query (no personal context)"),
        "llm_w": ("llm_w", "LLM with the personal context (privacy-violating upper bound)"),
        "slm_wo": ("slm_wo", "SLM on the bare query"),
        "slm_w": ("slm_w", "SLM with the personal context"),
        "sft": ("sft_w", "fine-tuned SLM (--slm_sft: a LoRA adapter or checkpoint) with the personal context"),
    }
    steering_keys = ("alpha", "beta", "lam", "eta", "T")
    if name in plain:
        stream, description = plain[name]
        return Method(name, (stream,), functools.partial(_plain, stream), description=description)
    if name == "costeer":
        return Method(name, ("llm", "slm_wo", "slm_w"), functools.partial(_costeer, max_T),
                      steering_keys, description=f"CoSteer, FTRL steering (T up to {max_T})")
    if name == "light_costeer":
        return Method(name, ("llm", "slm_wo", "slm_w"), functools.partial(_costeer, 1),
                      steering_keys, description="LightCoSteer (T=1)")
    if name == "ada_costeer":
        when = "at" if ada_stop_on_streak else "after"
        return Method(name, ("llm", "slm_wo", "slm_w"), functools.partial(_ada_costeer, max_T, ada_stop_on_streak),
                      steering_keys + ("tau", "k_consecutive"),
                      init_state=steering.ada_init, gated_streams=("slm_wo", "slm_w"),
                      description=f"AdaCoSteer (steering stops {when} the step completing k confident LLM steps)")
    if name == "cs":
        return Method(name, ("slm_wo", "slm_w"), _contrastive, ("cs_lambda",),
                      description="LA/CS: the SLM steering itself with its own context delta")
    if name == "fuse":
        return Method(name, ("llm", "slm_wo", "slm_w"), _fuse, ("spec_beta",),
                      description="fuse: SpecSteer's Eq. 8 on every token, h_LLM + beta (h_SLM+ - h_SLM-) "
                                  "(the SpecSteer paper's 'LightCoSteer' row)")
    if name == "specsteer_cross":
        options = speculative or SpeculativeOptions()
        return Method(name, ("llm", "slm_wo", "slm_w"), None, ("spec_lambda", "spec_beta"), cross_vocab="speculative",
                      cross_spec=options,
                      description=f"SpecSteer across tokenizers (A.4): SLM+ drafts K={options.num_draft} in its tokens, "
                                  "LLM and SLM- verify the text in theirs, recovery in byte space")
    if name in CROSS_VOCAB_METHOD_NAMES:
        kind = name.split("_")[1]
        policy = _costeer_map if kind == "map" else _costeer_byte
        how = ("on the tokens both vocabularies share (B.11.1)" if kind == "map"
               else "in byte space, 256 bytes + commit (B.11.2)")
        return Method(name, ("llm", "slm_wo", "slm_w"), functools.partial(policy, max_T), steering_keys,
                      cross_vocab=kind, description=f"CoSteer across tokenizers, FTRL {how}")
    if name == "proxy_tuning":
        return Method(name, ("llm", "sft_w", "slm_w"), _proxy_tuning,
                      description="proxy-tuning: LLM + (SLM-SFT - SLM-base) logits")
    if name in SPECULATIVE_METHOD_NAMES:
        options = speculative or SpeculativeOptions()
        if name == "specsteer":
            if options.specsteer_drafter not in DRAFTER_STREAMS:
                raise ValueError(f"specsteer's drafter must be one of {', '.join(DRAFTER_STREAMS)}, "
                                 f"got {options.specsteer_drafter!r}")
            return Method(name, ("llm", "slm_wo", options.specsteer_drafter), None, ("spec_lambda", "spec_beta"),
                          speculative=options,
                          description=f"SpecSteer: SLM+ drafts K={options.num_draft}, ratio verification, "
                                      "steering recovery")
        if options.sd_drafter not in DRAFTER_STREAMS:
            raise ValueError(f"sd_drafter must be one of {', '.join(DRAFTER_STREAMS)}, got {options.sd_drafter!r}")
        return Method(name, ("llm", options.sd_drafter), None, speculative=options,
                      description=f"speculative decoding: {options.sd_drafter} drafts K={options.num_draft}, "
                                  "exact rejection sampling against the LLM")
    raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHOD_NAMES)}")


METHOD_NAMES = ("llm_wo", "llm_w", "slm_wo", "slm_w", "sft", "costeer", "light_costeer", "ada_costeer",
                "cs", "fuse", "proxy_tuning") + CROSS_VOCAB_METHOD_NAMES + SPECULATIVE_METHOD_NAMES


def steering_active(state) -> jax.Array:
    """Whether any row still needs the gated streams (AdaCoSteer state); True otherwise."""
    if isinstance(state, steering.AdaState):
        return jnp.any(state.active)
    return jnp.bool_(True)


def hyper_arrays(method: Method, values: dict[str, Any] | list[dict[str, Any]], batch: int) -> dict:
    """Per-row hyperparameter arrays: one dict for the whole batch, or one dict per row."""
    rows = values if isinstance(values, list) else [values] * batch
    out = {}
    for key in method.hyper_keys:
        column = [r.get(key, DEFAULT_HYPER[key]) for r in rows]
        dtype = np.int32 if key in ("T", "k_consecutive") else np.float32
        out[key] = jnp.asarray(np.asarray(column, dtype))
    return out
