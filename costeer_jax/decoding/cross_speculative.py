"""SpecSteer across tokenizers (SpecSteer A.4): the SLM+ drafts in its own tokens, the LLM and
SLM- score the drafted *text* with their own tokenizers, recovery happens in byte space.

One iteration, for every row of the batch at once:

1. Draft (device): SLM+ proposes K tokens from its own cache (`draft`).
2. Segment (host): the drafts' bytes up to the first EOS, cut back to whole UTF-8 characters,
   are re-tokenized by the LLM's tokenizer. The two tokenizations share *boundaries* (byte
   offsets where both have a token end); between consecutive ones lies a *chunk*: one or more
   SLM tokens spelling exactly the bytes of one or more LLM tokens (`segment_draft`).
3. Verify (device): one LLM forward over its tokens of the segment, one SLM- forward over the
   drafts (`score`): every token's log-probability.
4. Accept (host): chunk by chunk, SpecSteer's ratio on the chunk's probability under each model,
   min(1, P_LLM(chunk) / (lambda P_SLM-(chunk))): threshold (greedy: accept iff the ratio is 1)
   or a uniform draw per row, iteration and chunk; the first rejected chunk ends the run.
5. Recover (device): unless all K drafts were accepted, one token from Eq. 8 in byte space,
   log_softmax(h_LLM + beta (h_SLM+ - h_SLM-)) over the three byte distributions at the
   boundary (`steering.cross_vocab.byte_walk`); each model appends its own id of it (`feed`).

Caches roll back by lowering each row's length to its accepted boundary (models/cache.py); the
host makes one round trip per iteration (drafts down, the segment's tokens up), as a deployment
does, never per token. A drafted tail that is not whole UTF-8 characters (SLM tokens can split a
character) is not uplinked that iteration: it is dropped and the boundary before it recovers.

Deployment accounting: uplink = the segment's UTF-8 bytes; downlink = one accept/reject bit
per decided chunk and, on recovery, the LLM's 257-outcome byte distribution per byte walked (fp32),
what the edge needs to fuse in byte space.
"""
from __future__ import annotations

import dataclasses
import functools
import sys
import time
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from costeer_jax.decoding.speculative import _at_position, _sample_rows, sampling_log_probs
from costeer_jax.models.cache import KVCache, init_cache
from costeer_jax.models.decoder import decode_step_logits, forward, prefill_logits
from costeer_jax.models.vocab_alignment import TokenBytes, VocabAlignment
from costeer_jax.steering import cross_vocab
from costeer_jax.steering.sampling import RowSampler


class Segment(NamedTuple):
    """One row's verified draft: SLM tokens, the LLM's tokens of the same bytes, and the chunk
    ends as (SLM tokens, LLM tokens) counts at each shared boundary, increasing."""

    slm_tokens: list[int]
    llm_tokens: list[int]
    boundaries: list[tuple[int, int]]
    text_bytes: int


def segment_draft(drafts: Sequence[int], slm_bytes: TokenBytes, slm_eos: set[int], llm_encode, llm_bytes: TokenBytes,
                  llm_eos: int, max_llm_tokens: int) -> Segment:
    """Step 2 for one row: the verifiable prefix of the drafts and its chunks (module doc)."""
    drafts = list(drafts)
    eos_at = next((i for i, t in enumerate(drafts) if t in slm_eos), None)
    text_tokens = drafts if eos_at is None else drafts[:eos_at]
    for n in range(len(text_tokens), -1, -1):
        data = b"".join(slm_bytes.bytes_of(t) for t in text_tokens[:n])
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        llm_tokens = llm_encode(text) if text else []
        ends_eos = eos_at is not None and n == len(text_tokens)
        if b"".join(llm_bytes.bytes_of(t) for t in llm_tokens) != data:
            continue  # the tokenizer normalised these bytes: not the text the SLM drafted
        if len(llm_tokens) + int(ends_eos) > max_llm_tokens:
            continue
        slm_ends = np.cumsum([len(slm_bytes.bytes_of(t)) for t in text_tokens[:n]]).tolist()
        llm_ends = np.cumsum([len(llm_bytes.bytes_of(t)) for t in llm_tokens]).tolist()
        shared = sorted(set(slm_ends) & set(llm_ends))
        boundaries = [(slm_ends.index(o) + 1, llm_ends.index(o) + 1) for o in shared]
        slm_out, llm_out = list(text_tokens[:n]), list(llm_tokens)
        if ends_eos:
            slm_out.append(drafts[eos_at])
            llm_out.append(llm_eos)
            boundaries.append((len(slm_out), len(llm_out)))
        return Segment(slm_out, llm_out, boundaries, len(data))
    return Segment([], [], [], 0)


def accepted_chunks(segment: Segment, llm_logp: np.ndarray, slm_wo_logp: np.ndarray, lam: float,
                    uniforms: np.ndarray | None) -> int:
    """Step 4 for one row: how many chunks pass, in order, until the first rejection."""
    previous = (0, 0)
    for j, (s, l) in enumerate(segment.boundaries):
        log_ratio = float(np.sum(llm_logp[previous[1]:l]) - np.log(lam) - np.sum(slm_wo_logp[previous[0]:s]))
        accept = log_ratio >= 0.0 if uniforms is None else uniforms[j] <= np.exp(min(log_ratio, 0.0))
        if not accept:
            return j
        previous = (s, l)
    return len(segment.boundaries)


# -- device pieces (jitted once per shape) ---------------------------------------------------

def _fold(keys, i):
    """Each row's key folded with i: per-row streams for drafts, acceptance and recovery."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, i)


@functools.partial(jax.jit, static_argnames=("cfg", "cache_len"))
def prefill(params, cfg, tokens, lengths, *, cache_len: int):
    cache = init_cache(cfg, tokens.shape[0], cache_len, params["embed"].dtype)
    return prefill_logits(params, cfg, tokens, lengths, cache)


@functools.partial(jax.jit, static_argnames=("cfg", "num_draft", "greedy"))
def draft(params, cfg, cache: KVCache, next_logits, keys, temperature, top_p, *, num_draft: int, greedy: bool):
    """Step 1: K tokens [B, K] and the logits before each and after the last [B, K+1, V]."""
    def step(carry, i):
        cache, logits = carry
        if greedy:
            token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        else:
            token = _sample_rows(sampling_log_probs(logits, temperature, top_p), _fold(keys, i))
        new_logits, cache = decode_step_logits(params, cfg, token, cache)
        return (cache, new_logits), (token, logits)

    (cache, last), (tokens, before) = jax.lax.scan(step, (cache, next_logits), jnp.arange(num_draft))
    return tokens.T, jnp.concatenate([before.transpose(1, 0, 2), last[:, None]], axis=1), cache


@functools.partial(jax.jit, static_argnames=("cfg",))
def score(params, cfg, cache: KVCache, next_logits, tokens, valid):
    """Step 3: log-probabilities of tokens [B, M] (0 where not valid) and the logits before each
    and after the last [B, M+1, V]; the cache advances by the valid count."""
    positions = cache.lengths[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
    logits, cache = forward(params, cfg, tokens, positions, valid, cache)
    seq = jnp.concatenate([next_logits[:, None], logits], axis=1)
    log_probs = jax.nn.log_softmax(seq[:, :-1], axis=-1)
    logp = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
    return jnp.where(valid, logp, 0.0), seq, cache


@functools.partial(jax.jit, static_argnames=("greedy",))
def recover(llm_seq, wo_seq, w_seq, at_llm, at_slm, bridge: cross_vocab.ByteBridge, beta, keys, temperature, top_p,
            *, greedy: bool):
    """Step 5: the three models' logits at each row's boundary, and the byte-space Eq. 8 token
    there (a shared index) with the bytes walked."""
    llm, wo, w = _at_position(llm_seq, at_llm), _at_position(wo_seq, at_slm), _at_position(w_seq, at_slm)
    sampler = None if greedy else RowSampler(keys, temperature, top_p)
    fuse = lambda a, b, c, live: cross_vocab.fused_byte_recovery(a, b, c, live, beta)
    choice, walked = cross_vocab.byte_walk(llm, wo, w, bridge, fuse, sampler)
    return choice, walked, (llm, wo, w)


@functools.partial(jax.jit, static_argnames=("cfg",))
def feed(params, cfg, cache: KVCache, lengths, tokens, has, boundary_logits):
    """Rolls the cache back to `lengths`, then appends `tokens` where `has` (one step for all
    rows; the others keep their length and the boundary logits)."""
    cache = dataclasses.replace(cache, lengths=lengths)
    logits, cache = decode_step_logits(params, cfg, tokens, cache)
    grown = lengths + has.astype(jnp.int32)
    return jnp.where(has[:, None], logits, boundary_logits), dataclasses.replace(cache, lengths=grown)


# -- the host loop -----------------------------------------------------------------------------

@dataclasses.dataclass
class CrossResult:
    tokens: np.ndarray  # [B, max_new_tokens] LLM ids
    num_tokens: np.ndarray  # [B]
    stats: dict  # name -> [B]
    finite: np.ndarray
    cloud_tokens: np.ndarray  # [B, C] LLM ids the cloud received
    cloud_counts: np.ndarray
    host_seconds: float = 0.0  # wall time of the host steps (segmenting, accepting, committing)


def decode(llm, slm, alignment: VocabAlignment, bridge: cross_vocab.ByteBridge, prompts: dict, hyper: dict,
           row_keys, temperature, top_p, *, num_draft: int, max_new_tokens: int, greedy: bool,
           cache_lens: tuple[int, int]) -> CrossResult:
    """Cross-tokenizer SpecSteer over one batch (module doc). prompts: engine.Prompt per stream
    "llm", "slm_wo", "slm_w"; hyper: [B] spec_lambda, spec_beta; llm/slm: LoadedModel."""
    batch = prompts["llm"].tokens.shape[0]
    max_llm = 2 * num_draft + 8  # the LLM's tokens of one segment (static verify width)
    next_llm, cache_llm = prefill(llm.params, llm.cfg, prompts["llm"].tokens, prompts["llm"].lengths,
                                  cache_len=cache_lens[0])
    next_wo, cache_wo = prefill(slm.params, slm.cfg, prompts["slm_wo"].tokens, prompts["slm_wo"].lengths,
                                cache_len=cache_lens[1])
    next_w, cache_w = prefill(slm.params, slm.cfg, prompts["slm_w"].tokens, prompts["slm_w"].lengths,
                              cache_len=cache_lens[1])
    slm_eos = set(int(t) for t in alignment.slm_ids[alignment.eos_shared])
    llm_eos = int(alignment.llm_ids[alignment.eos_shared[0]])
    llm_encode = lambda text: llm.tokenizer.encode(text, add_special_tokens=False)
    lam = np.asarray(hyper["spec_lambda"], np.float64)
    out = [[] for _ in range(batch)]
    cloud = [[] for _ in range(batch)]
    done = np.zeros(batch, bool)
    finite = np.ones(batch, bool)
    names = ("drafted_tokens", "accepted_tokens", "recovered_tokens", "llm_calls", "uplink_bytes", "downlink_bytes",
             "byte_steps")
    stats = {n: np.zeros(batch, np.int64) for n in names}
    ends = set(alignment.eos_shared.tolist())
    iteration, host_seconds = 0, 0.0
    while not done.all():
        keys = _fold(row_keys, iteration)
        draft_keys = _fold(keys, 0)
        base = (np.asarray(cache_llm.lengths), np.asarray(cache_wo.lengths), np.asarray(cache_w.lengths))
        drafts, w_seq, cache_w = draft(slm.params, slm.cfg, cache_w, next_w, draft_keys, temperature, top_p,
                                       num_draft=num_draft, greedy=greedy)
        drafts_host = np.asarray(drafts)
        t0 = time.perf_counter()
        segments = [segment_draft(drafts_host[b], alignment.slm_bytes, slm_eos, llm_encode, alignment.llm_bytes,
                                  llm_eos, max_llm) for b in range(batch)]
        llm_tokens = np.zeros((batch, max_llm), np.int32)
        llm_valid = np.zeros((batch, max_llm), bool)
        for b, seg in enumerate(segments):
            llm_tokens[b, :len(seg.llm_tokens)] = seg.llm_tokens
            llm_valid[b, :len(seg.llm_tokens)] = True
        host_seconds += time.perf_counter() - t0
        llm_logp, llm_seq, cache_llm = score(llm.params, llm.cfg, cache_llm, next_llm, jnp.asarray(llm_tokens),
                                             jnp.asarray(llm_valid))
        wo_logp, wo_seq, cache_wo = score(slm.params, slm.cfg, cache_wo, next_wo, drafts,
                                          jnp.ones(drafts.shape, bool))
        llm_logp, wo_logp = np.asarray(llm_logp), np.asarray(wo_logp)
        uniforms = None
        if not greedy:
            accept_keys = _fold(keys, 1)
            uniforms = np.asarray(jax.vmap(lambda k: jax.random.uniform(k, (max_llm + 1,)))(accept_keys))
        t0 = time.perf_counter()
        at_llm, at_slm = np.zeros(batch, np.int32), np.zeros(batch, np.int32)
        recovering = np.zeros(batch, bool)
        for b, seg in enumerate(segments):
            if done[b]:
                continue
            n = accepted_chunks(seg, llm_logp[b], wo_logp[b], lam[b], None if uniforms is None else uniforms[b])
            at_slm[b], at_llm[b] = seg.boundaries[n - 1] if n else (0, 0)
            recovering[b] = at_slm[b] < num_draft and not (n and seg.llm_tokens[at_llm[b] - 1] == llm_eos)
            out[b] += seg.llm_tokens[:at_llm[b]]
            cloud[b] += seg.llm_tokens
            stats["drafted_tokens"][b] += num_draft
            stats["accepted_tokens"][b] += at_slm[b]
            stats["llm_calls"][b] += 1
            stats["uplink_bytes"][b] += seg.text_bytes
            stats["downlink_bytes"][b] += -(-(n + int(n < len(seg.boundaries))) // 8)
        host_seconds += time.perf_counter() - t0
        recover_keys = _fold(keys, 2)
        choice, walked, (b_llm, b_wo, b_w) = recover(
            llm_seq, wo_seq, w_seq, jnp.asarray(at_llm), jnp.asarray(at_slm), bridge, jnp.asarray(hyper["spec_beta"]),
            recover_keys, temperature, top_p, greedy=greedy)
        choice, walked = np.asarray(choice), np.asarray(walked)
        for b in range(batch):
            if done[b]:
                continue
            if recovering[b]:
                token = int(alignment.llm_ids[choice[b]])
                out[b].append(token)
                cloud[b].append(token)
                stats["recovered_tokens"][b] += 1
                stats["byte_steps"][b] += walked[b]
                stats["downlink_bytes"][b] += 4 * cross_vocab.OUTCOMES * int(walked[b])
            ended = bool(out[b]) and (out[b][-1] == llm_eos or (recovering[b] and int(choice[b]) in ends))
            if ended or len(out[b]) >= max_new_tokens:
                done[b] = True
                out[b] = out[b][:max_new_tokens]
        # Roll each cache back to its accepted boundary, then append the recovered token (rows
        # that finished earlier have at_* = 0 and nothing to append: they stay as they were).
        has = jnp.asarray(recovering)
        next_llm, cache_llm = feed(llm.params, llm.cfg, cache_llm, jnp.asarray(base[0] + at_llm),
                                   jnp.asarray(alignment.llm_ids)[choice], has, b_llm)
        slm_choice = jnp.asarray(alignment.slm_ids)[choice]
        next_wo, cache_wo = feed(slm.params, slm.cfg, cache_wo, jnp.asarray(base[1] + at_slm), slm_choice, has, b_wo)
        next_w, cache_w = feed(slm.params, slm.cfg, cache_w, jnp.asarray(base[2] + at_slm), slm_choice, has, b_w)
        # The edge's caches grow by SLM tokens, which the budget (LLM tokens) does not bound.
        full = ~done & (np.asarray(cache_w.lengths) + num_draft + 1 > cache_lens[1])
        if full.any():
            print(f"warning: rows {np.flatnonzero(full).tolist()} stop early: the SLM's cache ({cache_lens[1]} slots) "
                  "is full (its tokenizer spends more than 4 tokens per LLM token on this text)", file=sys.stderr)
        done |= full
        finite &= np.asarray(jnp.all(jnp.isfinite(b_llm), axis=-1) & jnp.all(jnp.isfinite(b_w), axis=-1))
        done |= ~finite
        iteration += 1
    width = max([len(c) for c in cloud] + [1])
    tokens = np.full((batch, max_new_tokens), llm_eos, np.int32)
    cloud_tokens = np.zeros((batch, width), np.int32)
    for b in range(batch):
        tokens[b, :len(out[b])] = out[b]
        cloud_tokens[b, :len(cloud[b])] = cloud[b]
    return CrossResult(tokens, np.asarray([len(o) for o in out], np.int32), stats, finite, cloud_tokens,
                       np.asarray([len(c) for c in cloud], np.int32), host_seconds)
