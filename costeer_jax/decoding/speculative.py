"""Speculative decoding kernels, batched and jitted: SpecSteer and standard speculative decoding.

Both are Draft-Verify loops (SpecSteer Algorithm 1; Leviathan et al., 2023):

* Draft: the drafter (the SLM on query + private context, "SLM+") proposes K tokens with its own
  cache, one single-token step at a time.
* Verify: the LLM (and, for SpecSteer, the generic SLM on the bare query, "SLM-") scores all K
  drafted positions in one forward each, on [pending token, draft_1 .. draft_K].
* Accept the longest accepted prefix per row, then add one token drawn at the first rejected
  position (SpecSteer: steering recovery, Eq. 8; SD: the residual max(p - q, 0)), or, when every
  draft passed and the bonus token is on, one more token at position K+1.

Rows progress independently: every row commits its own number of tokens per iteration (its
accepted prefix plus one), into its own offset of the output buffer, and each of the caches
advances by exactly that count. Rolling back the rejected tail is *not advancing* the row's cache
length: the stale K/V beyond it is masked by position and overwritten by the next iteration's
writes (it is never zeroed). The whole generation, prefill included, is one `jax.jit` program
with one `lax.while_loop` over iterations; rows stop on EOS or the budget, and the loop exits when
every row is done. No host round trip per token or per iteration.

Cache invariant (per stream): the cache holds every committed token except the last one, the
*pending* token, which the next iteration feeds first. At the start the pending token is the
prompt's last token (prefill writes the prompt minus that token). So verification always runs on
K+1 tokens [pending, draft_1..draft_K] at positions lengths .. lengths+K, whose logits score
draft_1..draft_K and the bonus position.

Deployment accounting follows SpecSteer Appendix D: the edge uploads the K draft ids; the cloud
answers with one accept/reject bit per decided position and, on a rejection, the top-k entries of
its share of Eq. 8, h_cloud = h_LLM - beta h_SLM- (k = 32 unless --downlink_topk sets it), to which
the edge adds beta h_SLM+ and draws locally.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from costeer_jax.costs.speculative import ACCOUNTING_TOPK, CLOUD_VALUE_BYTES, token_id_bytes

from costeer_jax.decoding.engine import DecodeResult, Prompt, RowInputs
from costeer_jax.models.cache import KVCache, init_cache, round_up
from costeer_jax.models.config import DecoderConfig
from costeer_jax.models.decoder import decode_step_logits, forward, prefill_logits
from costeer_jax.steering import copy_guard
from costeer_jax.steering.baselines import fuse_logits
from costeer_jax.steering.speculative import (first_rejection, gather_token_logprobs,
                                              residual_distribution, specsteer_accept_prob)

SPECSTEER, SD = "specsteer", "sd"
# Per-row statistics, summed over a row's iterations: LLM verification forwards (= iterations),
# drafted and accepted draft tokens (the verification outcome, before EOS/budget truncation),
# tokens drawn at a rejection / as the bonus, and the Appendix D link bytes.
STAT_NAMES = ("llm_calls", "drafted_tokens", "accepted_tokens", "recovered_tokens", "bonus_tokens",
              "uplink_bytes", "downlink_bytes")


class VerifyInputs(NamedTuple):
    """What a verification rule sees for one iteration (logits cut to the shared vocabulary).

    Position j of a [B, K+1, V] logits array is the distribution of the token after j tokens of
    [pending, draft_1..draft_K], i.e. of draft_{j+1} (j < K) or of the bonus token (j = K).
    """

    drafts: jax.Array  # [B, K] int32
    drafter_logits: jax.Array  # [B, D, V]; D = K+1 when the bonus token is on, else K
    llm_logits: jax.Array  # [B, K+1, V]
    slm_wo_logits: jax.Array | None  # [B, K+1, V] (SpecSteer only)
    hyper: dict  # per-row [B] hyperparameters (spec_lambda, spec_beta)
    temperature: jax.Array  # [B]
    top_p: jax.Array  # [B]
    accept_keys: jax.Array  # [B] PRNG keys for the uniform acceptance draws
    recover_keys: jax.Array  # [B] PRNG keys for the recovery / bonus draw
    forbidden: jax.Array | None = None  # [B, D, V] copy-guard masks at each drafted position


class Verdict(NamedTuple):
    n_accepted: jax.Array  # [B] int32 in [0, K]: length of the accepted draft prefix
    next_token: jax.Array  # [B] the token at position n_accepted (recovery, or bonus when = K)


# A rule: (inputs, spec, greedy) -> Verdict. Static (part of SpecConfig), like engine's policies.
VerifyRule = Callable[[VerifyInputs, "SpecConfig", bool], Verdict]


@dataclasses.dataclass(frozen=True)
class SpecConfig:
    """Static description of one speculative method (a jit cache key)."""

    kind: str  # SPECSTEER or SD: which accounting applies
    rule: VerifyRule
    num_draft: int = 4  # K
    bonus: bool = False  # draw one more token when all K drafts pass
    threshold_acceptance: bool = False  # SpecSteer: accept iff alpha_t = 1 (no uniform draw)
    downlink_topk: int = 0  # SpecSteer: truncate the cloud term to its top-k (0: exact Eq. 8)
    uses_slm_wo: bool = True  # the rule needs SLM- logits (SpecSteer)
    slm_wo_is_llm: bool = False  # SLM- is the LLM on the same text: reuse its logits

    @property
    def accounting_topk(self) -> int:
        return self.downlink_topk or ACCOUNTING_TOPK


# ------------------------------------------------------------------------------------------
# Sampling helpers (per row; each row has its own key, so a row's draws do not depend on its batch)

def sampling_log_probs(logits: jax.Array, temperature: jax.Array, top_p: jax.Array) -> jax.Array:
    """Log of the distribution `sample_tokens` draws from, for logits [B, ..., V].

    softmax(logits / temperature) restricted to the top-p nucleus (the smallest set of most
    likely tokens whose mass reaches top_p; the top token is always kept); rows with
    temperature <= 0 get the one-hot argmax, so the exact speculative rules reduce to greedy
    there. Speculative sampling is only exact when draft and target are processed the same way,
    so drafts, acceptance ratios and recoveries all use this one function.
    """
    x = logits.astype(jnp.float32)
    per_row = lambda a: a.reshape(a.shape[:1] + (1,) * (x.ndim - 1))
    temperature, top_p = per_row(temperature), per_row(top_p)
    scaled = x / jnp.where(temperature > 0, temperature, 1.0)

    def nucleus(s):
        sorted_desc = -jnp.sort(-s, axis=-1)
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        keep_sorted = (mass_before < top_p) | (top_p >= 1.0)
        keep_sorted = keep_sorted.at[..., 0].set(True)
        # The smallest kept value is the cutoff (ties at the cutoff all stay: measure zero).
        cutoff = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
        return jnp.where(s >= cutoff, s, -jnp.inf)

    # Sorting the vocabulary is the costly part; skip it when no row asks for a nucleus.
    scaled = jax.lax.cond(jnp.all(top_p >= 1.0), lambda s: s, nucleus, scaled)
    log_probs = jax.nn.log_softmax(scaled, axis=-1)
    one_hot = jax.nn.one_hot(jnp.argmax(x, axis=-1), x.shape[-1], dtype=bool)
    return jnp.where(temperature > 0, log_probs, jnp.where(one_hot, 0.0, -jnp.inf))


def _sample_rows(log_probs: jax.Array, keys: jax.Array) -> jax.Array:
    """One categorical draw per row: log_probs [B, V], keys [B] -> [B] int32."""
    return jax.vmap(lambda lp, k: jax.random.categorical(k, lp))(log_probs, keys).astype(jnp.int32)


def _uniform_rows(keys: jax.Array, n: int) -> jax.Array:
    return jax.vmap(lambda k: jax.random.uniform(k, (n,)))(keys)


def _at_position(x: jax.Array, index: jax.Array) -> jax.Array:
    """x[b, index[b]] for x [B, S, ...]; index is clipped (callers mask what it means)."""
    index = jnp.clip(index, 0, x.shape[1] - 1)
    return jnp.take_along_axis(x, index.reshape((-1,) + (1,) * (x.ndim - 1)), axis=1)[:, 0]


def _argmax(x: jax.Array) -> jax.Array:
    return jnp.argmax(x, axis=-1).astype(jnp.int32)


# ------------------------------------------------------------------------------------------
# Verification rules

def cloud_term(llm_logits: jax.Array, slm_wo_logits: jax.Array, beta, topk: int) -> jax.Array:
    """The cloud's share of Eq. 8, h_cloud = log P_LLM - beta log P_SLM- ([B, V] -> [B, V]),
    truncated to its top-k entries (the rest -inf) when topk > 0, as sent downlink (App. D)."""
    base = jax.nn.log_softmax(llm_logits, axis=-1)
    beta = jnp.asarray(beta, jnp.float32).reshape((-1, 1))
    h_cloud = base - beta * jax.nn.log_softmax(slm_wo_logits, axis=-1)
    if topk <= 0 or topk >= h_cloud.shape[-1]:
        return h_cloud
    _, top = jax.lax.top_k(h_cloud, topk)
    rows = jnp.arange(h_cloud.shape[0])[:, None]
    kept = jnp.zeros(h_cloud.shape, bool).at[rows, top].set(True)
    return jnp.where(kept, h_cloud, -jnp.inf)


def specsteer_rule(v: VerifyInputs, spec: SpecConfig, greedy: bool) -> Verdict:
    """SpecSteer verification (Eq. 7) and steering recovery (Eq. 8), Algorithm 1 lines 6-17.

    alpha_t = min(1, P_LLM(y_t) / (lam P_SLM-(y_t))) on the models' own (untempered)
    probabilities. Stochastic acceptance: accept iff u_t <= alpha_t (Algorithm 1, line 8).
    Threshold acceptance: accept iff alpha_t = 1, i.e. P_LLM(y_t) >= lam P_SLM-(y_t), lambda read
    as the "verification threshold" of Appendix B.2 (whose experiments decode greedily).
    At the first rejection the token comes from softmax(h_LLM + beta (h_SLM+ - h_SLM-)) at that
    position (argmax when greedy); with the bonus on, a fully accepted draft gets one more token
    from the same fusion at position K+1.
    """
    k = v.drafts.shape[1]
    lam, beta = v.hyper["spec_lambda"], v.hyper["spec_beta"]
    lp_llm = gather_token_logprobs(jax.nn.log_softmax(v.llm_logits[:, :k], axis=-1), v.drafts)
    lp_wo = gather_token_logprobs(jax.nn.log_softmax(v.slm_wo_logits[:, :k], axis=-1), v.drafts)
    alpha = specsteer_accept_prob(lp_llm, lp_wo, lam)  # [B, K]
    if spec.threshold_acceptance:
        accept = alpha >= 1.0
    else:
        accept = _uniform_rows(v.accept_keys, k) <= alpha
    n_acc = first_rejection(accept)
    h_llm = _at_position(v.llm_logits, n_acc)
    h_wo = _at_position(v.slm_wo_logits, n_acc)
    h_w = _at_position(v.drafter_logits, n_acc)  # index K exists when the bonus is on
    if spec.downlink_topk > 0:
        h_rec = cloud_term(h_llm, h_wo, beta, spec.downlink_topk) + (
            jnp.asarray(beta, jnp.float32).reshape((-1, 1)) * jax.nn.log_softmax(h_w, axis=-1))
    else:
        h_rec = fuse_logits(h_llm, h_w, h_wo, beta)
    if v.forbidden is not None:  # the recovered token is the edge's choice: guard it too
        h_rec = jnp.where(_at_position(v.forbidden, n_acc), -jnp.inf, h_rec)
    if greedy:
        return Verdict(n_acc, _argmax(h_rec))
    return Verdict(n_acc, _sample_rows(sampling_log_probs(h_rec, v.temperature, v.top_p), v.recover_keys))


def sd_rule(v: VerifyInputs, spec: SpecConfig, greedy: bool, *, recovery: str = "residual") -> Verdict:
    """Standard speculative decoding (Leviathan et al., 2023; Chen et al., 2023): exact for the LLM.

    Greedy: accept draft_t iff it is the LLM's argmax there; the first mismatch (or the bonus
    position) takes the LLM's argmax, so the output is token-identical to greedy LLM decoding.
    Sampling, with p, q the LLM's and drafter's sampling distributions (same temperature/top-p):
    accept iff u_t < p(y_t) / q(y_t); at the first rejection draw from normalize(max(p - q, 0));
    after a full acceptance draw the bonus from p. Every output token is then distributed as p.
    recovery="target" draws rejections from p instead of the residual: a known, *wrong* shortcut
    that the distribution test uses as its negative control.
    """
    k = v.drafts.shape[1]
    if greedy:
        target = _argmax(v.llm_logits)  # [B, K+1]
        n_acc = first_rejection(v.drafts == target[:, :k])
        return Verdict(n_acc, _at_position(target, n_acc))
    p = sampling_log_probs(v.llm_logits, v.temperature, v.top_p)  # [B, K+1, V]
    q = sampling_log_probs(v.drafter_logits[:, :k], v.temperature, v.top_p)  # [B, K, V]
    p_tok, q_tok = gather_token_logprobs(p[:, :k], v.drafts), gather_token_logprobs(q, v.drafts)
    # q_tok is finite (the drafter sampled the token from q); p_tok = -inf gives ratio 0.
    ratio = jnp.exp(jnp.minimum(0.0, p_tok - q_tok))
    accept = _uniform_rows(v.accept_keys, k) < ratio
    n_acc = first_rejection(accept)
    p_at = jnp.exp(_at_position(p, n_acc))
    if recovery == "residual":
        q_at = jnp.exp(_at_position(q, n_acc))
        rejected_dist = residual_distribution(p_at, q_at)
    elif recovery == "target":
        rejected_dist = p_at
    else:
        raise ValueError(f"unknown recovery {recovery!r}")
    dist = jnp.where((n_acc == k)[:, None], p_at, rejected_dist)  # bonus: plain p
    return Verdict(n_acc, _sample_rows(jnp.log(dist), v.recover_keys))


def make_spec_config(kind: str, *, num_draft: int = 4, bonus: bool | None = None,
                     acceptance: str = "auto", downlink_topk: int = 0, greedy: bool = True,
                     slm_wo_is_llm: bool = False) -> SpecConfig:
    """SpecConfig for --method=specsteer|sd.

    bonus=None picks each method's usual choice: SpecSteer follows Algorithm 1 (no bonus token;
    a fully accepted draft just starts the next draft), SD takes the standard bonus token.
    acceptance: "auto" (threshold when greedy, stochastic when sampling), "threshold" or
    "stochastic"; SpecSteer only (SD's rule is fixed by exactness).
    """
    if num_draft < 1:
        raise ValueError(f"K (num_draft) must be >= 1, got {num_draft}")
    if acceptance not in ("auto", "threshold", "stochastic"):
        raise ValueError(f"acceptance must be auto, threshold or stochastic, got {acceptance!r}")
    if downlink_topk < 0:
        raise ValueError(f"downlink_topk must be >= 0, got {downlink_topk}")
    if kind == SPECSTEER:
        return SpecConfig(
            SPECSTEER, specsteer_rule, num_draft=num_draft, bonus=bool(bonus),
            threshold_acceptance=greedy if acceptance == "auto" else acceptance == "threshold",
            downlink_topk=downlink_topk, uses_slm_wo=True, slm_wo_is_llm=slm_wo_is_llm)
    if kind == SD:
        return SpecConfig(SD, sd_rule, num_draft=num_draft, bonus=True if bonus is None else bool(bonus),
                          uses_slm_wo=False)
    raise ValueError(f"unknown speculative method {kind!r}")


# ------------------------------------------------------------------------------------------
# Accounting (SpecSteer Appendix D)

def link_bytes(spec: SpecConfig, greedy: bool, n_acc: jax.Array, vocab_size: int):
    """(uplink, downlink) bytes of one iteration per row, float32 [B] (sums exceed int32 for SD).

    Uplink: the K draft ids; sampling SD must also ship the drafter's K distributions q (the
    residual max(p - q, 0) needs them), which is the O(K V) cost SpecSteer's ratio rule avoids.
    Downlink: one bit per decided position (accepted ones and the first rejected one), packed into
    whole bytes, plus, when a token is drawn at the edge's request: SpecSteer sends the top-k of
    h_cloud (id + fp32 value each) for the edge to fuse with beta h_SLM+; SD sends the token id.
    """
    k = spec.num_draft
    id_bytes = token_id_bytes(vocab_size)
    rejected = n_acc < k
    decided = jnp.where(rejected, n_acc + 1, k)
    draw = rejected | ((n_acc == k) & spec.bonus)
    uplink = jnp.full(n_acc.shape, k * id_bytes, jnp.float32)
    if spec.kind == SD and not greedy:
        uplink = uplink + float(k * vocab_size * CLOUD_VALUE_BYTES)
    per_draw = (spec.accounting_topk * (id_bytes + CLOUD_VALUE_BYTES) if spec.kind == SPECSTEER
                else id_bytes)
    downlink = jnp.ceil(decided / 8.0) + jnp.where(draw, float(per_draw), 0.0)
    return uplink, downlink.astype(jnp.float32)


# ------------------------------------------------------------------------------------------
# The kernel

def _with_lengths(cache: KVCache, lengths: jax.Array) -> KVCache:
    return dataclasses.replace(cache, lengths=lengths)


def _prefill_all_but_last(params, cfg, prompt: Prompt, cache_len: int, adapters=None):
    """Writes the prompt minus its last token, which becomes the stream's pending token; each
    stream at its own width (a bare query is not padded to a private context's length)."""
    cache = init_cache(cfg, prompt.tokens.shape[0], cache_len, params["embed"].dtype)
    _, cache = prefill_logits(params, cfg, prompt.tokens, prompt.lengths - 1, cache, adapters=adapters)
    return cache, prompt.tokens[jnp.arange(prompt.tokens.shape[0]), prompt.lengths - 1]


def _verify_forward(params, cfg, cache: KVCache, pending, drafts, vocab_limit: int):
    """One forward over [pending, drafts] at each row's own offset; logits [B, K+1, V]."""
    tokens = jnp.concatenate([pending[:, None], drafts], axis=1)
    positions = cache.lengths[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    logits, cache = forward(params, cfg, tokens, positions, jnp.ones(tokens.shape, bool), cache)
    return logits[..., :vocab_limit], cache


def _all_finite(x: jax.Array) -> jax.Array:
    return jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1)


class SpecCarry(NamedTuple):
    """The Draft-Verify loop's state. `iteration` is each row's own count of iterations since its
    prefill: in one static batch every row's equals the loop counter; continuous batching
    (decoding/continuous.py) refills a finished row's slot, whose count restarts at 0, so a row
    draws the same keys in any batch."""

    iteration: jax.Array  # [B]
    llm_cache: KVCache
    draft_cache: KVCache
    wo_cache: KVCache | None
    llm_pending: jax.Array
    draft_pending: jax.Array
    wo_pending: jax.Array | None
    out: jax.Array  # [B, max_new_tokens + K + 1]: room for a full run at any offset
    num_tokens: jax.Array
    done: jax.Array
    finite: jax.Array
    stats: dict
    cloud: jax.Array  # [B, (max_new_tokens + 1) * (K+1)] uplinked ids, in order
    cloud_count: jax.Array  # [B]
    recent: Any  # [B, N-1] last committed tokens (copy guard), or None
    rows: RowInputs  # per-row hyperparameters (spec_lambda, spec_beta), keys, temperature, top_p


def _separate_slm_wo(spec: SpecConfig) -> bool:
    return spec.uses_slm_wo and not spec.slm_wo_is_llm


def _start_carry(caches: tuple, pendings: tuple, rows: RowInputs, done: jax.Array, guard, *, spec: SpecConfig,
                 max_new_tokens: int) -> SpecCarry:
    k, batch = spec.num_draft, done.shape[0]
    zeros_i = jnp.zeros((batch,), jnp.int32)
    stats = {name: jnp.zeros((batch,), jnp.float32 if name.endswith("_bytes") else jnp.int32)
             for name in STAT_NAMES}
    return SpecCarry(zeros_i, *caches, *pendings, jnp.zeros((batch, max_new_tokens + k + 1), jnp.int32), zeros_i,
                     done, jnp.ones((batch,), bool), stats,
                     jnp.zeros((batch, (max_new_tokens + 1) * (k + 1)), jnp.int32), zeros_i,
                     None if guard is None else copy_guard.empty_recent(guard, batch), rows)


def spec_prefill(params_llm, params_slm, prompts: dict, rows: RowInputs, guard=None, params_draft=None,
                 draft_adapters=None, *, cfg_llm: DecoderConfig, cfg_slm: DecoderConfig, spec: SpecConfig,
                 max_new_tokens: int, cache_lens: tuple[int, int]) -> SpecCarry:
    """Every stream's prompt (minus its pending last token) into its cache: the loop's first state."""
    llm_cache, llm_pending = _prefill_all_but_last(params_llm, cfg_llm, prompts["llm"], cache_lens[0])
    params_draft = params_slm if params_draft is None else params_draft
    draft_cache, draft_pending = _prefill_all_but_last(params_draft, cfg_slm, prompts["draft"], cache_lens[1],
                                                       draft_adapters)
    wo_cache, wo_pending = None, None
    if _separate_slm_wo(spec):
        wo_cache, wo_pending = _prefill_all_but_last(params_slm, cfg_slm, prompts["slm_wo"], cache_lens[1])
    done = jnp.zeros(llm_pending.shape, bool)
    return _start_carry((llm_cache, draft_cache, wo_cache), (llm_pending, draft_pending, wo_pending), rows, done,
                        guard, spec=spec, max_new_tokens=max_new_tokens)


def spec_empty(rows: RowInputs, params_llm, params_slm, guard=None, *, cfg_llm: DecoderConfig,
               cfg_slm: DecoderConfig, spec: SpecConfig, max_new_tokens: int, cache_lens: tuple[int, int]) -> SpecCarry:
    """A state of B empty rows (all done) with caches of the given lengths: continuous batching's
    pool (with a copy guard's `recent` when guard, of B rows, is given)."""
    batch = rows.row_keys.shape[0]
    cache = lambda cfg, params, n: init_cache(cfg, batch, n, params["embed"].dtype)
    pending = jnp.zeros((batch,), jnp.int32)
    wo = _separate_slm_wo(spec)
    caches = (cache(cfg_llm, params_llm, cache_lens[0]), cache(cfg_slm, params_slm, cache_lens[1]),
              cache(cfg_slm, params_slm, cache_lens[1]) if wo else None)
    return _start_carry(caches, (pending, pending, pending if wo else None), rows, jnp.ones((batch,), bool), guard,
                        spec=spec, max_new_tokens=max_new_tokens)


def make_spec_iteration(params_llm, params_slm, eos_ids: jax.Array, guard=None, params_draft=None,
                        draft_adapters=None, *, cfg_llm: DecoderConfig, cfg_slm: DecoderConfig, spec: SpecConfig,
                        max_new_tokens: int, vocab_limit: int, greedy: bool) -> Callable[[SpecCarry], SpecCarry]:
    """One Draft-Verify iteration of every row: SpecCarry -> SpecCarry (done rows commit nothing)."""
    k = spec.num_draft
    draft_steps = k + 1 if spec.bonus else k  # with the bonus, draft_K's K/V must be cached too
    separate_slm_wo = _separate_slm_wo(spec)
    params_draft = params_slm if params_draft is None else params_draft

    def body(c: SpecCarry) -> SpecCarry:
        batch = c.done.shape[0]
        hyper, temperature, top_p = c.rows.hyper, c.rows.temperature, c.rows.top_p
        iteration_keys = jax.vmap(jax.random.fold_in)(c.rows.row_keys, c.iteration)
        draft_keys, accept_keys, recover_keys = jnp.moveaxis(
            jax.vmap(lambda key: jax.random.split(key, 3))(iteration_keys), 1, 0)

        # Phase 1: the drafter proposes K tokens (one more step with the bonus, for its K/V and
        # for h_SLM+ at position K+1).
        def draft_step(j, carry):
            cache, token, drafts, logits_buf, masks, recent, finite = carry
            logits, cache = decode_step_logits(params_draft, cfg_slm, token, cache, draft_adapters)
            logits = logits[:, :vocab_limit]
            finite = finite & _all_finite(logits)  # before the guard's -inf
            if guard is not None:
                mask = copy_guard.forbidden(guard, recent, vocab_limit)
                logits = jnp.where(mask, -jnp.inf, logits)
                masks = masks.at[:, j].set(mask)
            if greedy:
                token = _argmax(logits)
            else:
                step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(draft_keys, j)
                token = _sample_rows(sampling_log_probs(logits, temperature, top_p), step_keys)
            if guard is not None:
                recent = copy_guard.push(recent, token)
            return (cache, token, drafts.at[:, j].set(token), logits_buf.at[:, j].set(logits), masks, recent,
                    finite)

        masks = None if guard is None else jnp.zeros((batch, draft_steps, vocab_limit), bool)
        draft_init = (c.draft_cache, c.draft_pending, jnp.zeros((batch, draft_steps), jnp.int32),
                      jnp.zeros((batch, draft_steps, vocab_limit), jnp.float32), masks, c.recent,
                      jnp.ones((batch,), bool))
        draft_cache, _, drafts, drafter_logits, masks, _, drafter_finite = jax.lax.fori_loop(
            0, draft_steps, draft_step, draft_init)
        drafts = drafts[:, :k]

        # Phase 2: LLM (and SLM-) score all K drafted positions and the bonus position at once.
        llm_logits, llm_cache = _verify_forward(params_llm, cfg_llm, c.llm_cache, c.llm_pending, drafts,
                                                vocab_limit)
        wo_cache, wo_logits = None, None
        if separate_slm_wo:
            wo_logits, wo_cache = _verify_forward(params_slm, cfg_slm, c.wo_cache, c.wo_pending, drafts,
                                                  vocab_limit)
        elif spec.uses_slm_wo:
            wo_logits = llm_logits
        verdict = spec.rule(VerifyInputs(drafts, drafter_logits, llm_logits, wo_logits, hyper, temperature,
                                         top_p, accept_keys, recover_keys, masks), spec, greedy)
        n_acc = verdict.n_accepted

        # Phase 3: commit the accepted prefix plus the recovery/bonus token, per row.
        slots = jnp.arange(k + 1, dtype=jnp.int32)[None, :]
        run = jnp.where(slots < n_acc[:, None], jnp.pad(drafts, ((0, 0), (0, 1))), verdict.next_token[:, None])
        full = n_acc == k
        n_new = jnp.where(full & (not spec.bonus), k, n_acc + 1)
        is_eos = jnp.isin(run, eos_ids) & (slots < n_new[:, None])
        n_new = jnp.where(jnp.any(is_eos, axis=1), jnp.argmax(is_eos, axis=1) + 1, n_new)
        n_new = jnp.minimum(n_new, max_new_tokens - c.num_tokens)
        finite_now = _all_finite(llm_logits) & drafter_finite
        if separate_slm_wo:
            finite_now = finite_now & _all_finite(wo_logits)
        active = ~c.done & finite_now
        n_new = jnp.where(active, n_new, 0).astype(jnp.int32)
        ended_on_eos = jnp.any(is_eos & (slots < n_new[:, None]), axis=1)

        out = jax.vmap(lambda row, new, at: jax.lax.dynamic_update_slice(row, new, (at,)))(
            c.out, run, c.num_tokens)
        num_tokens = c.num_tokens + n_new
        last = _at_position(run, n_new - 1)
        advanced = n_new > 0

        def commit(cache, lengths_before, pending):
            # Rollback is here: the row advances by what it committed, whatever the forward wrote.
            return _with_lengths(cache, lengths_before + n_new), jnp.where(advanced, last, pending)

        llm_cache, llm_pending = commit(llm_cache, c.llm_cache.lengths, c.llm_pending)
        draft_cache, draft_pending = commit(draft_cache, c.draft_cache.lengths, c.draft_pending)
        wo_pending = None
        if separate_slm_wo:
            wo_cache, wo_pending = commit(wo_cache, c.wo_cache.lengths, c.wo_pending)

        # What reached the cloud (privacy.py): the K drafts, then the drawn token if committed.
        drawn = active & (n_new > n_acc)
        uplinked = jnp.concatenate([drafts, verdict.next_token[:, None]], axis=1)
        cloud = jax.vmap(lambda row, new, at: jax.lax.dynamic_update_slice(row, new, (at,)))(
            c.cloud, uplinked, c.cloud_count)
        cloud_count = c.cloud_count + jnp.where(active, k + drawn.astype(jnp.int32), 0)
        recent = c.recent
        if guard is not None:  # the last N-1 committed tokens: slide the window by n_new
            history = jnp.concatenate([c.recent, run], axis=1)
            window = n_new[:, None] + jnp.arange(c.recent.shape[1])[None, :]
            recent = jnp.take_along_axis(history, window, axis=1)

        uplink, downlink = link_bytes(spec, greedy, n_acc, vocab_limit)
        increments = {
            "llm_calls": jnp.ones_like(n_acc), "drafted_tokens": jnp.full_like(n_acc, k),
            "accepted_tokens": n_acc, "recovered_tokens": (n_acc < k).astype(jnp.int32),
            "bonus_tokens": (full & spec.bonus).astype(jnp.int32),
            "uplink_bytes": uplink, "downlink_bytes": downlink}
        stats = {name: c.stats[name] + jnp.where(active, increments[name], 0).astype(c.stats[name].dtype)
                 for name in STAT_NAMES}
        done = c.done | ~finite_now | ended_on_eos | (num_tokens >= max_new_tokens)
        return SpecCarry(c.iteration + 1, llm_cache, draft_cache, wo_cache, llm_pending, draft_pending, wo_pending,
                         out, num_tokens, done, c.finite & (finite_now | c.done), stats, cloud, cloud_count, recent,
                         c.rows)

    return body


def spec_result(c: SpecCarry, eos_ids: jax.Array, max_new_tokens: int) -> DecodeResult:
    """The rows' tokens (as the engine: positions past a row's num_tokens hold eos_ids[0]), stats
    and what was uplinked."""
    filled = jnp.arange(max_new_tokens)[None, :] < c.num_tokens[:, None]
    tokens = jnp.where(filled, c.out[:, :max_new_tokens], eos_ids[0])
    return DecodeResult(tokens, c.num_tokens, c.stats, c.finite, c.cloud, c.cloud_count)


@functools.partial(
    jax.jit,
    static_argnames=("cfg_llm", "cfg_slm", "spec", "max_new_tokens", "vocab_limit", "greedy", "cache_lens"))
def decode(params_llm, params_slm, prompts: dict, hyper: dict, row_keys: jax.Array, eos_ids: jax.Array,
           temperature: jax.Array, top_p: jax.Array, guard: copy_guard.CopyGuard | None = None,
           params_draft=None, draft_adapters=None, *,
           cfg_llm: DecoderConfig, cfg_slm: DecoderConfig,
           spec: SpecConfig, max_new_tokens: int, vocab_limit: int, greedy: bool,
           cache_lens: tuple[int, int]) -> DecodeResult:
    """Speculative generation of up to max_new_tokens per row.

    prompts: {"llm": LLM on the query, "draft": the drafter's text, and "slm_wo": SLM- on the
    query (only when spec.uses_slm_wo and not spec.slm_wo_is_llm)}, right-padded `Prompt`s.
    params_slm runs SLM- and, unless params_draft is given (a fine-tuned SLM+ checkpoint), the
    drafter; it may be the same pytree as params_llm. draft_adapters (models/lora.RowAdapters)
    make the drafter the SLM plus a LoRA adapter (SpecSteer A.2), on the same base weights.
    row_keys [B]: per-row PRNG keys, folded with the row's iteration index (a row runs its
    iteration i with the same key whatever its batch, so its draws do not depend on batch
    composition). cache_lens (LLM's, SLM streams') must each hold its widest prompt +
    max_new_tokens + K + 1.

    The result's cloud_tokens / cloud_counts record, per row and in order, what was uplinked
    (privacy.py): each iteration's K drafts, then the token drawn at the first rejection (or the
    bonus) when the row commits it. With a copy guard, the drafter cannot propose, and the
    recovery cannot draw, a token completing a verbatim N-token copy of the private context.
    """
    static = dict(cfg_llm=cfg_llm, cfg_slm=cfg_slm, spec=spec, max_new_tokens=max_new_tokens)
    rows = RowInputs(hyper, row_keys, temperature, top_p)
    init = spec_prefill(params_llm, params_slm, prompts, rows, guard, params_draft, draft_adapters, **static,
                        cache_lens=cache_lens)
    body = make_spec_iteration(params_llm, params_slm, eos_ids, guard, params_draft, draft_adapters, **static,
                               vocab_limit=vocab_limit, greedy=greedy)

    def cond(c: SpecCarry):
        # Every iteration commits >= 1 token to each active row, so this bound is never binding
        # before the budget is; it only makes the trip count provably finite.
        return (jnp.max(c.iteration) < max_new_tokens) & ~jnp.all(c.done)

    return spec_result(jax.lax.while_loop(cond, body, init), eos_ids, max_new_tokens)


def cache_len_for(prompt_width: int, max_new_tokens: int, num_draft: int) -> int:
    """Cache slots a run needs: the verify forward writes K+1 tokens past the last committed one."""
    return round_up(prompt_width + max_new_tokens + num_draft + 1, 16)


def stats_summary(stats: dict[str, Any], tokens: int) -> dict[str, float]:
    """Figures from (summed) stats: acceptance rate (accepted / drafted), mean accepted length
    (tokens one verification commits: accepted drafts plus the drawn recovery/bonus token, i.e.
    1 + accepted per call with the bonus token on; without it a fully accepted draft commits K,
    not K+1), LLM calls and link bytes per generated token."""
    value = lambda name: float(stats.get(name, 0))
    calls = max(value("llm_calls"), 1.0)
    committed = value("accepted_tokens") + value("recovered_tokens") + value("bonus_tokens")
    tokens = max(float(tokens), 1.0)
    return {
        "acceptance_rate": round(value("accepted_tokens") / max(value("drafted_tokens"), 1.0), 4),
        "mean_accepted_length": round(committed / calls, 4),
        "llm_calls_per_token": round(value("llm_calls") / tokens, 4),
        "uplink_bytes_per_token": round(value("uplink_bytes") / tokens, 2),
        "downlink_bytes_per_token": round(value("downlink_bytes") / tokens, 2),
    }
