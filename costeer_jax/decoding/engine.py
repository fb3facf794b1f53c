"""The token loop shared by every decoding method: streams of rows, one jitted while_loop.

A *stream* is one view of each prompt fed to one model: e.g. CoSteer has three streams per
prompt (LLM on the query, SLM on the query, SLM on query + private context). Streams that run
on the same weights form a *group* whose rows are concatenated into one batch, so one forward
(one weight read) serves them all. Every step, a *policy* turns the streams' next-token logits
into one log-distribution per prompt, a token is chosen, and the same token is appended to
every stream of that prompt. Only the chosen token ever flows back into a stream, so the LLM's
stream never sees the private context by construction.

Everything from prefill to the last token is one `jax.jit` program: caches are allocated inside
(so there is nothing to donate), rows finish independently on EOS and the loop exits as soon as
all rows are done. No host round-trip per token. The prefill (`prefill_streams`) and the step
(`make_step`) are also the pieces of continuous batching (decoding/continuous.py), which refills
a finished row's slot between segments of steps.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from costeer_jax.models import lora
from costeer_jax.models.cache import KVCache, init_cache
from costeer_jax.models.decoder import decode_step_logits, prefill_logits
from costeer_jax.steering import copy_guard
from costeer_jax.steering.sampling import RowSampler, sample_rows

StepGate = Callable[[Any], jax.Array]


@dataclasses.dataclass(frozen=True)
class StreamLayout:
    """Static description of which streams run on which weights.

    groups[g] lists the stream names whose rows (in that order, B rows each) make up the batch
    of weight group g.
    """

    groups: tuple[tuple[str, ...], ...]
    # (alias, stream): streams that are the same model on the same text as another stream are
    # not recomputed (CoSteer with one checkpoint: the SLM on the query *is* the LLM stream).
    aliases: tuple[tuple[str, str], ...] = ()
    # Per group: skip its forward once the policy state says no row needs it (AdaCoSteer).
    gated: tuple[bool, ...] = ()

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(s for g in self.groups for s in g)


class GroupAdapters(NamedTuple):
    """LoRA adapters of one weight group: n stacked adapters (models/lora.stack) and, per stream of
    the group, each row's adapter index [B] (-1: the base model)."""

    layers: Any
    scales: jax.Array
    rows: dict  # stream -> [B] int32


def group_row_adapters(adapters: GroupAdapters | None, names) -> "lora.RowAdapters | None":
    """The adapters for the concatenated rows of the given streams (None: no LoRA in this group)."""
    if adapters is None:
        return None
    return lora.with_rows(adapters.layers, adapters.scales, jnp.concatenate([adapters.rows[n] for n in names]))


class TokenBridge(NamedTuple):
    """Models with different tokenizers (costeer_map / costeer_byte): the policy chooses an index
    into the N tokens both vocabularies share (models/vocab_alignment.py) and group g appends its
    own id `to_group[g][index]`; `aux` is what the method's policy reads (gather ids, byte tables).
    Each group's logits reach the policy uncut, in the group's own vocabulary."""

    to_group: tuple  # per group [N] int32
    aux: Any


class Prompt(NamedTuple):
    tokens: jax.Array  # [B, S] right-padded
    lengths: jax.Array  # [B]


class DecodeResult(NamedTuple):
    tokens: jax.Array  # [B, max_new_tokens], positions past num_tokens are padding
    num_tokens: jax.Array  # [B] tokens generated, EOS included when produced
    stats: Any  # the policy's per-row statistics (pytree of [B] arrays)
    finite: jax.Array  # [B] False where some stream produced NaN/Inf logits (row stopped there)
    cloud_tokens: Any = None  # speculative kernels: [B, T] ids uplinked to the cloud (privacy.py)
    cloud_counts: Any = None  # [B] how many of them are real


# A policy: (logits by stream [B, V] fp32, policy state, per-row hyperparameters) ->
#           (log-probabilities [B, V], new policy state, per-row stats increments).
# With a TokenBridge it also takes (bridge.aux, sampler: steering.sampling.RowSampler with this
# step's keys, or None when greedy)
# and returns log-probabilities over the N shared tokens.
Policy = Callable[[dict, Any, Any], tuple[jax.Array, Any, Any]]


def concat_caches(caches: list[KVCache]) -> KVCache:
    """One cache whose rows are the given caches' rows, in order (same layers and length)."""
    return KVCache(keys=jnp.concatenate([c.keys for c in caches], axis=1),
                   values=jnp.concatenate([c.values for c in caches], axis=1),
                   lengths=jnp.concatenate([c.lengths for c in caches]))


class RowInputs(NamedTuple):
    """What each row brings besides its prompt: per-row hyperparameters, PRNG key, sampling."""

    hyper: Any
    row_keys: jax.Array  # [B]
    temperature: jax.Array  # [B]
    top_p: jax.Array  # [B]


class Carry(NamedTuple):
    """The token loop's state. `steps` is each row's own step (tokens decided so far): in one
    static batch every row's equals the loop counter; continuous batching (decoding/continuous.py)
    refills a finished row's slot, whose step restarts at 0."""

    steps: jax.Array  # [B]
    caches: list
    logits: dict
    policy_state: Any
    out: jax.Array  # [B, max_new_tokens]
    done: jax.Array
    num_tokens: jax.Array
    stats: Any
    finite: jax.Array
    recent: Any  # [B, N-1] last committed tokens, for the copy guard (None without one)
    rows: RowInputs


def prefill_streams(params_groups: tuple, prompts: dict, cfgs: tuple, layout: StreamLayout,
                    vocab_limit: int | None, cache_lens: tuple[int, ...], group_adapters: tuple) -> tuple[list, dict]:
    """Every stream's prompt through its group's model: per group one cache (its streams' rows in
    layout order) and per stream the next-token logits [B, V]."""
    batch = next(iter(prompts.values())).tokens.shape[0]
    caches, logits_by_stream = [], {}
    for g, names in enumerate(layout.groups):
        # Each stream prefills at its own (bucketed) width: padding a 40-token query to a
        # 1.5k-token private context's width would multiply the LLM's prefill FLOPs by ~36.
        parts = []
        for n in names:
            cache = init_cache(cfgs[g], batch, cache_lens[g], params_groups[g]["embed"].dtype)
            logits, cache = prefill_logits(params_groups[g], cfgs[g], prompts[n].tokens, prompts[n].lengths, cache,
                                           adapters=group_row_adapters(group_adapters[g], [n]))
            logits_by_stream[n] = logits[:, :vocab_limit]
            parts.append(cache)
        caches.append(parts[0] if len(parts) == 1 else concat_caches(parts))
    return caches, logits_by_stream


def _per_row_fold(keys: jax.Array, steps: jax.Array) -> jax.Array:
    return jax.vmap(jax.random.fold_in)(keys, steps)


def make_step(params_groups: tuple, eos_ids: jax.Array, guard, group_adapters: tuple, bridge, *, cfgs: tuple,
              layout: StreamLayout, policy: Policy, gate: StepGate | None, vocab_limit: int | None, greedy: bool):
    """(zero_stats(logits, policy_state, rows): the policy's per-row statistics, all zero;
    step(carry) -> carry: one token for every row, where rows that are done (or whose logits went
    non-finite) append EOS and change nothing else)."""

    def split(logits: jax.Array, batch: int, names) -> dict:
        return {name: logits[i * batch:(i + 1) * batch, :vocab_limit] for i, name in enumerate(names)}

    def with_aliases(logits: dict) -> dict:
        return {**logits, **{alias: logits[stream] for alias, stream in layout.aliases}}

    def run_policy(logits, state, rows: RowInputs, steps):
        if bridge is None:
            return policy(logits, state, rows.hyper)
        # The byte walk draws with the row's key folded with its step (its own draws fold again).
        sampler = None if greedy else RowSampler(_per_row_fold(rows.row_keys, steps), rows.temperature, rows.top_p)
        return policy(logits, state, rows.hyper, bridge.aux, sampler)

    def group_token(g, token):
        return token if bridge is None else bridge.to_group[g][token]

    def zero_stats(logits, policy_state, rows):
        steps = jnp.zeros(rows.row_keys.shape[:1], jnp.int32)
        shapes = jax.eval_shape(lambda: run_policy(with_aliases(logits), policy_state, rows, steps)[2])
        return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def step(c: Carry) -> Carry:
        batch = c.done.shape[0]
        log_probs, policy_state, stats_inc = run_policy(with_aliases(c.logits), c.policy_state, c.rows, c.steps)
        log_probs = copy_guard.apply(guard, c.recent, log_probs)
        sampler = None if greedy else RowSampler(c.rows.row_keys, c.rows.temperature, c.rows.top_p)
        token = sample_rows(log_probs, sampler, c.steps)
        finite = c.finite & jnp.all(jnp.stack(
            [jnp.all(jnp.isfinite(x), axis=-1) for x in c.logits.values()]), axis=0)
        active = ~c.done & finite
        token = jnp.where(active, token, eos_ids[0])
        # Each row writes at its own step (none past the budget). A mask, not a scatter: it keeps
        # the rows' sharding on the mesh's data axis, which a per-row scatter loses.
        at_step = jnp.arange(c.out.shape[1])[None, :] == c.steps[:, None]
        out = jnp.where(at_step, token[:, None], c.out)
        stats = jax.tree.map(lambda s, inc: s + jnp.where(active, inc, 0).astype(s.dtype), c.stats, stats_inc)
        done = c.done | jnp.isin(token, eos_ids) | ~finite
        num_tokens = c.num_tokens + active.astype(jnp.int32)
        new_caches, logits = [], {}
        for g, names in enumerate(layout.groups):
            def run(cache, g=g, names=names):
                tokens = jnp.tile(group_token(g, token), len(names))
                return decode_step_logits(params_groups[g], cfgs[g], tokens, cache,
                                          group_row_adapters(group_adapters[g], names))

            if layout.gated and layout.gated[g] and gate is not None:
                # Once no row steers, the gated model is never needed again: keep stale logits.
                stale = jnp.concatenate([c.logits[n] for n in names])
                stale = jnp.pad(stale, ((0, 0), (0, cfgs[g].vocab_size - stale.shape[1])))
                step_logits, cache = jax.lax.cond(
                    gate(policy_state), run, lambda cache: (stale, cache), c.caches[g])
            else:
                step_logits, cache = run(c.caches[g])
            new_caches.append(cache)
            logits.update(split(step_logits, batch, names))
        recent = None if guard is None else copy_guard.push(c.recent, token, active)
        return c._replace(steps=c.steps + active.astype(jnp.int32), caches=new_caches, logits=logits,
                          policy_state=policy_state, out=out, done=done, num_tokens=num_tokens, stats=stats,
                          finite=finite, recent=recent)

    return zero_stats, step


@functools.partial(
    jax.jit,
    static_argnames=("cfgs", "layout", "policy", "gate", "max_new_tokens", "vocab_limit", "greedy",
                     "cache_lens"))
def decode(params_groups: tuple, prompts: dict, policy_state: Any, hyper: Any, row_keys: jax.Array,
           eos_ids: jax.Array, temperature: jax.Array, top_p: jax.Array,
           guard: copy_guard.CopyGuard | None = None, group_adapters: tuple | None = None,
           bridge: TokenBridge | None = None, *, cfgs: tuple, layout: StreamLayout, policy: Policy,
           gate: StepGate | None, max_new_tokens: int, vocab_limit: int | None, greedy: bool,
           cache_lens: tuple[int, ...]) -> DecodeResult:
    """Generates up to max_new_tokens per row.

    row_keys [B] are per-row PRNG keys (folded with the row's step), so a row samples the same
    tokens whatever batch it is in. Rows stop at any of eos_ids; logits are cut to vocab_limit
    (the shared tokenizer length) before the policy sees them. With a copy guard, the tokens
    that would complete a verbatim N-token copy of the row's private context get -inf in the
    policy's log-probabilities before the choice (steering/copy_guard.py). group_adapters[g]
    (a GroupAdapters, or None) adds per-row LoRA deltas to group g's one forward. With a bridge
    (models of different tokenizers; vocab_limit None), tokens, eos_ids and the guard's ids are
    indices into the shared tokens, and each group appends its own id for the chosen one.
    """
    batch = next(iter(prompts.values())).tokens.shape[0]
    group_adapters = group_adapters or (None,) * len(layout.groups)
    caches, logits = prefill_streams(params_groups, prompts, cfgs, layout, vocab_limit, cache_lens, group_adapters)
    zero_stats, step = make_step(params_groups, eos_ids, guard, group_adapters, bridge, cfgs=cfgs, layout=layout,
                                 policy=policy, gate=gate, vocab_limit=vocab_limit, greedy=greedy)
    rows = RowInputs(hyper, row_keys, temperature, top_p)
    init = Carry(
        steps=jnp.zeros((batch,), jnp.int32), caches=caches, logits=logits, policy_state=policy_state,
        out=jnp.zeros((batch, max_new_tokens), jnp.int32), done=jnp.zeros((batch,), bool),
        num_tokens=jnp.zeros((batch,), jnp.int32),
        stats=zero_stats(logits, policy_state, rows),
        finite=jnp.ones((batch,), bool), recent=None if guard is None else copy_guard.empty_recent(guard, batch),
        rows=rows)

    def cond(c: Carry):  # every active row has taken the same number of steps: the loop counter
        return (jnp.max(c.steps) < max_new_tokens) & ~jnp.all(c.done)

    final = jax.lax.while_loop(cond, step, init)
    return DecodeResult(final.out, final.num_tokens, final.stats, final.finite)
