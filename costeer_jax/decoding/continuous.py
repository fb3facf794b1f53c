"""Continuous batching for the token-loop methods: a fixed pool of slots that finished rows hand on.

A static batch runs until its longest row ends, so the slots of rows that finished early idle.
Here the pool of `batch_size` slots decodes in segments of `segment_steps` steps (one jitted
`while_loop` each, the engine's own step, `engine.make_step`); between segments the host hands
every finished slot the next prompt: that prompt is prefilled alone (at its own bucketed width)
and written into the slot's cache rows, logits, policy state and per-row inputs (one jitted
insert whose slot index is an argument: no recompile per slot). Rows are at different steps,
so each row samples with its key folded with its *own* step: a row draws the same tokens as in
any static batch (greedy and seeded sampling), which the tests check.

This is JetStream's insert/generate split, with the host stepping in every `segment_steps` tokens
rather than the refill living inside the loop: a slot idles at most segment_steps - 1 steps
after its row ends, and the host's work per segment is reading which rows finished.

Not covered here (refused with a message by `check_continuous`): the speculative methods (their
loop commits a ragged number of tokens per iteration), the cross-tokenizer methods, the copy
guard, LoRA adapters and meshes.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from costeer_jax.decoding import engine
from costeer_jax.decoding.methods import hyper_arrays
from costeer_jax.decoding.runner import bucket_width
from costeer_jax.models.cache import KVCache, init_cache, round_up

STATIC, CONTINUOUS = "static", "continuous"


def check_continuous(method, *, copy_guard: int = 0, mesh=None, adapters: bool = False) -> None:
    """Raises ValueError naming what continuous batching does not cover for this run."""
    why = None
    if method.speculative is not None or method.cross_vocab:
        why = f"--method={method.name} (continuous batching covers the one-token-per-step methods)"
    elif copy_guard:
        why = "--copy_guard"
    elif adapters:
        why = "LoRA adapters (--slm_plus/--adapter)"
    elif mesh is not None:
        why = "--mesh"
    if why:
        raise ValueError(f"--batching=continuous does not support {why} yet; use --batching=static")


def _set_row(pool, one, slot):
    """Row `slot` of every leaf of `pool` (leading batch axis) becomes row 0 of `one`'s."""
    return jax.tree.map(lambda p, o: jax.lax.dynamic_update_index_in_dim(p, o[0].astype(p.dtype), slot, 0), pool, one)


def _set_cache_rows(pool: KVCache, one: KVCache, slot, streams: int) -> KVCache:
    """The pool's cache rows of `slot` in each of the group's streams (rows s*B + slot) become
    the prefilled one's rows (one row per stream, in the same order)."""
    batch = pool.lengths.shape[0] // streams
    keys, values, lengths = pool.keys, pool.values, pool.lengths
    for s in range(streams):
        row = s * batch + slot
        keys = jax.lax.dynamic_update_slice_in_dim(keys, one.keys[:, s:s + 1], row, axis=1)
        values = jax.lax.dynamic_update_slice_in_dim(values, one.values[:, s:s + 1], row, axis=1)
        lengths = jax.lax.dynamic_update_index_in_dim(lengths, one.lengths[s], row, 0)
    return KVCache(keys, values, lengths)


@functools.partial(jax.jit, static_argnames=("cfgs", "layout", "policy", "vocab_limit", "greedy", "max_new_tokens",
                                             "cache_lens", "vocab_widths"))
def empty_pool(params_groups: tuple, policy_state: Any, rows: engine.RowInputs, eos_ids, *, cfgs, layout, policy,
               vocab_limit, greedy, max_new_tokens, cache_lens, vocab_widths) -> engine.Carry:
    """A pool of B slots, all empty (done): caches of the run's length, zero logits."""
    batch = rows.row_keys.shape[0]
    none = (None,) * len(layout.groups)
    zero_stats, _ = engine.make_step(params_groups, eos_ids, None, none, None, cfgs=cfgs, layout=layout,
                                     policy=policy, gate=None, vocab_limit=vocab_limit, greedy=greedy)
    logits = {n: jnp.zeros((batch, vocab_widths[g]), jnp.float32)
              for g, names in enumerate(layout.groups) for n in names}
    caches = [init_cache(cfgs[g], batch * len(names), cache_lens[g], params_groups[g]["embed"].dtype)
              for g, names in enumerate(layout.groups)]
    return engine.Carry(
        steps=jnp.zeros((batch,), jnp.int32), caches=caches, logits=logits, policy_state=policy_state,
        out=jnp.zeros((batch, max_new_tokens), jnp.int32), done=jnp.ones((batch,), bool),
        num_tokens=jnp.zeros((batch,), jnp.int32), stats=zero_stats(logits, policy_state, rows),
        finite=jnp.ones((batch,), bool), recent=None, rows=rows)


@functools.partial(jax.jit, static_argnames=("cfgs", "layout", "vocab_limit", "cache_lens"), donate_argnums=(1,))
def insert(params_groups: tuple, pool: engine.Carry, slot, prompts: dict, policy_state: Any, rows: engine.RowInputs,
           *, cfgs, layout, vocab_limit, cache_lens) -> engine.Carry:
    """Prefills one prompt (batch 1, every stream) and makes it slot `slot`'s row, at step 0."""
    caches, logits = engine.prefill_streams(params_groups, prompts, cfgs, layout, vocab_limit, cache_lens,
                                            (None,) * len(layout.groups))
    zeroed = lambda tree: _set_row(tree, jax.tree.map(lambda a: jnp.zeros_like(a[:1]), tree), slot)
    return pool._replace(
        steps=zeroed(pool.steps), out=zeroed(pool.out), num_tokens=zeroed(pool.num_tokens), stats=zeroed(pool.stats),
        caches=[_set_cache_rows(p, c, slot, len(names)) for p, c, names in zip(pool.caches, caches, layout.groups)],
        logits={n: _set_row(pool.logits[n], logits[n], slot) for n in pool.logits},
        policy_state=_set_row(pool.policy_state, policy_state, slot),
        done=jax.lax.dynamic_update_index_in_dim(pool.done, False, slot, 0),
        finite=jax.lax.dynamic_update_index_in_dim(pool.finite, True, slot, 0),
        rows=_set_row(pool.rows, rows, slot))


@functools.partial(jax.jit, static_argnames=("cfgs", "layout", "policy", "vocab_limit", "greedy", "max_new_tokens",
                                             "segment_steps"), donate_argnums=(1,))
def run_segment(params_groups: tuple, pool: engine.Carry, eos_ids, *, cfgs, layout, policy, vocab_limit, greedy,
                max_new_tokens, segment_steps) -> tuple[engine.Carry, jax.Array]:
    """Up to `segment_steps` steps of every live slot (fewer once all are done); also returns
    the steps taken. A row whose budget is spent is done."""
    _, step = engine.make_step(params_groups, eos_ids, None, (None,) * len(layout.groups), None, cfgs=cfgs,
                               layout=layout, policy=policy, gate=None, vocab_limit=vocab_limit, greedy=greedy)

    def cond(state):
        i, c = state
        return (i < segment_steps) & ~jnp.all(c.done)

    def body(state):
        i, c = state
        c = step(c)
        return i + 1, c._replace(done=c.done | (c.steps >= max_new_tokens))

    taken, pool = jax.lax.while_loop(cond, body, (jnp.int32(0), pool))
    return pool, taken


@dataclasses.dataclass
class SlotFigures:
    """Slot-steps the pool ran and how many of them decoded a token of some row."""

    slot_steps: int = 0
    useful_slot_steps: int = 0


class ContinuousDecoder:
    """Decodes examples through a generator's method with a pool of generator.batch_size slots.
    `run` calls on_rows(rows, stats) as rows finish (rows in the generator's row format)."""

    def __init__(self, generator, segment_steps: int = 8):
        check_continuous(generator.method, copy_guard=generator.copy_guard, mesh=generator.mesh,
                         adapters=any(m.adapter is not None for m in generator.models.values()))
        if segment_steps < 1:
            raise ValueError(f"--segment_steps must be >= 1 (got {segment_steps})")
        self.generator, self.segment_steps = generator, segment_steps
        self.figures = SlotFigures()

    def _compiled_call(self, fn, signature, *args, **static):
        return self.generator.compiled(fn, args, static, signature)(*args)

    def run(self, examples: Iterable, on_rows: Callable[[list, dict], Any]) -> None:
        g = self.generator
        examples = list(examples)
        if not examples:
            return
        batch, layout, method = g.batch_size, g.layout, g.method
        params = tuple(m.params for m in g.group_models)
        cfgs = tuple(m.cfg for m in g.group_models)
        ids = {e.id: g.stream_ids(e) for e in examples}
        widest = {s: max(bucket_width(len(ids[e.id][s])) for e in examples) for s in ids[examples[0].id]}
        cache_lens = tuple(round_up(max(widest[n] for n in names) + g.max_new_tokens, 16) for names in layout.groups)
        common = dict(cfgs=cfgs, layout=layout, vocab_limit=g.vocab_limit)
        loop = dict(common, policy=method.policy, greedy=g.sampling.greedy, max_new_tokens=g.max_new_tokens)
        eos = jnp.asarray(g.eos_ids, jnp.int32)
        # Per-row inputs of the empty pool: placeholders, each slot's own are written at insert.
        keys, _, temperature, top_p = g._sampling_args([examples[0]] * batch)
        rows = engine.RowInputs(hyper_arrays(method, g.hyper, batch), keys, temperature, top_p)
        widths = tuple(g.vocab_limit or m.cfg.vocab_size for m in g.group_models)
        pool = self._compiled_call(empty_pool, ("pool", cache_lens), params, method.init_state(batch), rows, eos,
                                   **loop, cache_lens=cache_lens, vocab_widths=widths)
        queue = list(reversed(examples))
        occupant: list = [None] * batch
        while queue or any(o is not None for o in occupant):
            for slot in range(batch):
                if occupant[slot] is None and queue:
                    example = queue.pop()
                    pool = self._insert(pool, slot, example, ids[example.id], params, cache_lens, common)
                    occupant[slot] = example
            before = np.asarray(pool.num_tokens)
            pool, taken = self._compiled_call(run_segment, ("segment", cache_lens), params, pool, eos, **loop,
                                              segment_steps=self.segment_steps)
            done, num_tokens = jax.device_get((pool.done, pool.num_tokens))
            live = np.asarray([o is not None for o in occupant])
            self.figures.slot_steps += int(taken) * batch
            self.figures.useful_slot_steps += int(np.sum((num_tokens - before)[live]))
            finished = [b for b in range(batch) if occupant[b] is not None and done[b]]
            if finished:
                out, stats, finite = jax.device_get((pool.out, pool.stats, pool.finite))
                take = lambda x: np.asarray(x)[finished]
                result = engine.DecodeResult(take(out), take(num_tokens), jax.tree.map(take, stats), take(finite))
                done_examples = [occupant[b] for b in finished]
                on_rows(*g._rows(done_examples, result, [ids[e.id] for e in done_examples]))
                for b in finished:
                    occupant[b] = None

    def _insert(self, pool, slot, example, example_ids, params, cache_lens, common):
        g = self.generator
        prompts = {s: engine.Prompt(jnp.asarray([list(t) + [0] * (bucket_width(len(t)) - len(t))], jnp.int32),
                                    jnp.asarray([len(t)], jnp.int32))
                   for s, t in example_ids.items()}
        keys, _, temperature, top_p = g._sampling_args([example])
        rows = engine.RowInputs(hyper_arrays(g.method, g.hyper, 1), keys, temperature, top_p)
        signature = ("insert", tuple((s, p.tokens.shape[1]) for s, p in prompts.items()), cache_lens)
        return self._compiled_call(insert, signature, params, pool, jnp.int32(slot), prompts, g.method.init_state(1),
                                   rows, **common, cache_lens=cache_lens)

