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

The speculative methods (specsteer, sd) use the same pool over their Draft-Verify iteration
(`speculative.make_spec_iteration`): a row's iteration count restarts at 0 in its slot, so its
keys are those of any static batch; a segment is `segment_steps` iterations, each committing a
ragged number of tokens per row. Sweeps (configurations as rows) pass each row's
hyperparameters, which the slot takes at insert.

Per-row inputs that live beside the pool take the slot with the row: a copy guard's windows
(one width W for the run's widest context), LoRA adapters (every adapter of the run stacked once;
each slot's adapter index is an argument of the segment) and, for costeer_map / costeer_byte, the
vocabulary bridge (the same for every row). Not covered (refused with a message by
`check_continuous`): specsteer_cross (its Draft-Verify loop is stepped by the host) and meshes.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from costeer_jax.decoding import engine, speculative
from costeer_jax.decoding.methods import hyper_arrays
from costeer_jax.decoding.runner import bucket_width
from costeer_jax.models.cache import KVCache, init_cache
from costeer_jax.steering import copy_guard

STATIC, CONTINUOUS = "static", "continuous"


class ContinuousBatchingError(ValueError):
    """A run continuous batching cannot take (the message names the fix)."""


def check_continuous(method, *, mesh=None) -> None:
    """Raises ValueError naming what continuous batching does not cover for this run."""
    why = None
    if method.cross_vocab == "speculative":
        why = f"--method={method.name} (its Draft-Verify loop is stepped by the host)"
    elif mesh is not None:
        why = "--mesh"
    if why:
        raise ContinuousBatchingError(f"--batching=continuous does not support {why} yet; use --batching=static")


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
def empty_pool(params_groups: tuple, policy_state: Any, rows: engine.RowInputs, eos_ids, guard, bridge, *, cfgs,
               layout, policy, vocab_limit, greedy, max_new_tokens, cache_lens, vocab_widths) -> engine.Carry:
    """A pool of B slots, all empty (done): caches of the run's length, zero logits (and, with a
    copy guard of B rows, no committed tokens)."""
    batch = rows.row_keys.shape[0]
    none = (None,) * len(layout.groups)
    zero_stats, _ = engine.make_step(params_groups, eos_ids, None, none, bridge, cfgs=cfgs, layout=layout,
                                     policy=policy, gate=None, vocab_limit=vocab_limit, greedy=greedy)
    logits = {n: jnp.zeros((batch, vocab_widths[g]), jnp.float32)
              for g, names in enumerate(layout.groups) for n in names}
    caches = [init_cache(cfgs[g], batch * len(names), cache_lens[g], params_groups[g]["embed"].dtype)
              for g, names in enumerate(layout.groups)]
    return engine.Carry(
        steps=jnp.zeros((batch,), jnp.int32), caches=caches, logits=logits, policy_state=policy_state,
        out=jnp.zeros((batch, max_new_tokens), jnp.int32), done=jnp.ones((batch,), bool),
        num_tokens=jnp.zeros((batch,), jnp.int32), stats=zero_stats(logits, policy_state, rows),
        finite=jnp.ones((batch,), bool), recent=None if guard is None else copy_guard.empty_recent(guard, batch),
        rows=rows)


@functools.partial(jax.jit, static_argnames=("cfgs", "layout", "vocab_limit", "cache_lens"), donate_argnums=(1,))
def insert(params_groups: tuple, pool: engine.Carry, slot, prompts: dict, policy_state: Any, rows: engine.RowInputs,
           group_adapters: tuple, *, cfgs, layout, vocab_limit, cache_lens) -> engine.Carry:
    """Prefills one prompt (batch 1, every stream; group_adapters with that row's adapter index)
    and makes it slot `slot`'s row, at step 0."""
    caches, logits = engine.prefill_streams(params_groups, prompts, cfgs, layout, vocab_limit, cache_lens,
                                            group_adapters)
    zeroed = lambda tree: _set_row(tree, jax.tree.map(lambda a: jnp.zeros_like(a[:1]), tree), slot)
    recent = None
    if pool.recent is not None:
        recent = _set_row(pool.recent, jnp.full_like(pool.recent[:1], copy_guard.NO_TOKEN), slot)
    return pool._replace(
        steps=zeroed(pool.steps), out=zeroed(pool.out), num_tokens=zeroed(pool.num_tokens), stats=zeroed(pool.stats),
        caches=[_set_cache_rows(p, c, slot, len(names)) for p, c, names in zip(pool.caches, caches, layout.groups)],
        logits={n: _set_row(pool.logits[n], logits[n], slot) for n in pool.logits},
        policy_state=_set_row(pool.policy_state, policy_state, slot),
        done=jax.lax.dynamic_update_index_in_dim(pool.done, False, slot, 0),
        finite=jax.lax.dynamic_update_index_in_dim(pool.finite, True, slot, 0),
        recent=recent, rows=_set_row(pool.rows, rows, slot))


@functools.partial(jax.jit, donate_argnums=(0,))
def set_slot_row(pool_tree, one_tree, slot):
    """A pytree of B-row arrays beside the pool (the copy guard's windows) with row `slot` set."""
    return _set_row(pool_tree, one_tree, slot)


@functools.partial(jax.jit, static_argnames=("cfgs", "layout", "policy", "vocab_limit", "greedy", "max_new_tokens",
                                             "segment_steps"), donate_argnums=(1,))
def run_segment(params_groups: tuple, pool: engine.Carry, eos_ids, guard, group_adapters: tuple, bridge, *, cfgs,
                layout, policy, vocab_limit, greedy, max_new_tokens, segment_steps) -> tuple[engine.Carry, jax.Array]:
    """Up to `segment_steps` steps of every live slot (fewer once all are done); also returns
    the steps taken. A row whose budget is spent is done."""
    _, step = engine.make_step(params_groups, eos_ids, guard, group_adapters, bridge, cfgs=cfgs, layout=layout,
                               policy=policy, gate=None, vocab_limit=vocab_limit, greedy=greedy)

    def cond(state):
        i, c = state
        return (i < segment_steps) & ~jnp.all(c.done)

    def body(state):
        i, c = state
        c = step(c)
        return i + 1, c._replace(done=c.done | (c.steps >= max_new_tokens))

    taken, pool = jax.lax.while_loop(cond, body, (jnp.int32(0), pool))
    return pool, taken


def _set_slot(pool: speculative.SpecCarry, one: speculative.SpecCarry, slot) -> speculative.SpecCarry:
    """Row `slot` of the pool's every field becomes the one-row state's row 0."""
    return speculative.SpecCarry(*[
        None if p is None else _set_cache_rows(p, o, slot, 1) if isinstance(p, KVCache) else _set_row(p, o, slot)
        for p, o in zip(pool, one)])


_SPEC_STATIC = ("cfg_llm", "cfg_slm", "spec", "max_new_tokens", "cache_lens")


@functools.partial(jax.jit, static_argnames=_SPEC_STATIC)
def empty_spec_pool(rows: engine.RowInputs, params_llm, params_slm, guard, *, cfg_llm, cfg_slm, spec, max_new_tokens,
                    cache_lens) -> speculative.SpecCarry:
    return speculative.spec_empty(rows, params_llm, params_slm, guard, cfg_llm=cfg_llm, cfg_slm=cfg_slm, spec=spec,
                                  max_new_tokens=max_new_tokens, cache_lens=cache_lens)


@functools.partial(jax.jit, static_argnames=_SPEC_STATIC, donate_argnums=(0,))
def insert_spec(pool: speculative.SpecCarry, slot, params_llm, params_slm, params_draft, prompts: dict,
                rows: engine.RowInputs, guard, draft_adapters, *, cfg_llm, cfg_slm, spec, max_new_tokens,
                cache_lens) -> speculative.SpecCarry:
    """Prefills one prompt's streams (batch 1; guard and draft_adapters of that one row) and
    makes it slot `slot`'s row, at iteration 0."""
    one = speculative.spec_prefill(params_llm, params_slm, prompts, rows, guard, params_draft, draft_adapters,
                                   cfg_llm=cfg_llm, cfg_slm=cfg_slm, spec=spec, max_new_tokens=max_new_tokens,
                                   cache_lens=cache_lens)
    return _set_slot(pool, one, slot)


@functools.partial(jax.jit, static_argnames=("cfg_llm", "cfg_slm", "spec", "max_new_tokens", "vocab_limit", "greedy",
                                             "segment_steps"), donate_argnums=(0,))
def run_spec_segment(pool: speculative.SpecCarry, params_llm, params_slm, params_draft, eos_ids, guard, draft_adapters,
                     *, cfg_llm, cfg_slm, spec, max_new_tokens, vocab_limit, greedy, segment_steps):
    """Up to `segment_steps` Draft-Verify iterations of every live slot; also returns the
    iterations taken."""
    body = speculative.make_spec_iteration(params_llm, params_slm, eos_ids, guard, params_draft, draft_adapters,
                                           cfg_llm=cfg_llm, cfg_slm=cfg_slm, spec=spec, max_new_tokens=max_new_tokens,
                                           vocab_limit=vocab_limit, greedy=greedy)

    def cond(state):
        i, c = state
        return (i < segment_steps) & ~jnp.all(c.done)

    taken, pool = jax.lax.while_loop(cond, lambda state: (state[0] + 1, body(state[1])), (jnp.int32(0), pool))
    return pool, taken


@dataclasses.dataclass
class SlotFigures:
    """Slot-steps the pool ran and how many of them decoded a token of some row."""

    slot_steps: int = 0
    useful_slot_steps: int = 0


class _SideInputs:
    """What a row brings beside its prompt and keeps outside the pool's carry, handed on with its
    slot: the copy guard's windows (B rows of one width W, the run's widest context's) and the
    slot's LoRA adapter index (every adapter of the run stacked once, so the segment program does
    not change as rows come and go)."""

    def __init__(self, g, examples: list, adapters, adapter_names: list):
        self.g = g
        self.width = 0
        if g.copy_guard:
            self.width = copy_guard.guard_width(g.guard_ids(examples)[0], g.copy_guard)
        groups = adapters if isinstance(adapters, tuple) else (adapters,)
        stacked = max((a.scales.shape[0] for a in groups if a is not None), default=0)
        if stacked > g.batch_size:
            # Static batches stack at most batch_size adapters at a time; so does the pool.
            raise ContinuousBatchingError(f"--batching=continuous holds every adapter of the run at once: these rows name {stacked} "
                             f"adapters, more than the {g.batch_size} slots; use --batching=static (or fewer adapters "
                             "per run)")
        self.adapters, self.adapter_names = adapters, adapter_names
        self.positions = np.full((g.batch_size,), -1)  # the example in each slot (-1: none yet)
        self.guard = None
        if self.width:  # B rows without a window; each slot's are written at insert
            no_context = [[]] * g.batch_size
            self.guard = copy_guard.build_copy_guard(no_context, no_context, g.copy_guard, width=self.width)

    def signature(self) -> tuple:
        from costeer_jax.decoding.runner import _adapters_signature

        return self.width, _adapters_signature(self.adapters)

    def take(self, slot: int, position: int, example):
        """Slot `slot` now holds examples[position]: (its guard rows, or None)."""
        self.positions[slot] = position
        if not self.width:
            return None
        one = self.g._guard([example], self.width)
        self.guard = set_slot_row(self.guard, one, jnp.int32(slot))
        return one

    @staticmethod
    def adapter_rows(adapters: engine.GroupAdapters | None, positions) -> engine.GroupAdapters | None:
        """The run's stacked adapters with each row's index, for rows holding these examples."""
        if adapters is None:
            return None
        positions = np.asarray(positions)
        index = lambda r: np.where(positions >= 0, np.asarray(r)[np.maximum(positions, 0)], -1)
        return adapters._replace(rows={s: jnp.asarray(index(r), jnp.int32) for s, r in adapters.rows.items()})

    def names(self, positions) -> list:
        return [self.adapter_names[p] for p in positions]


class _TokenLoopSlots:
    """The token loop's pool: engine.Carry, one token per slot per step."""

    def __init__(self, g, examples: list, widest: dict):
        self.g = g
        self.params = tuple(m.params for m in g.group_models)
        cfgs = tuple(m.cfg for m in g.group_models)
        self.cache_lens = g.token_loop_cache_lens(widest)
        self.side = _SideInputs(g, examples, *g._group_adapters(examples))
        self.common = dict(cfgs=cfgs, layout=g.layout, vocab_limit=g.vocab_limit)
        self.loop = dict(self.common, policy=g.method.policy, greedy=g.sampling.greedy,
                         max_new_tokens=g.max_new_tokens)
        self.signature = (self.cache_lens, *self.side.signature())

    def _group_adapters(self, positions) -> tuple:
        if self.side.adapters is None:
            return (None,) * len(self.g.layout.groups)
        return tuple(self.side.adapter_rows(a, positions) for a in self.side.adapters)

    def empty(self, rows):
        g = self.g
        widths = tuple(g.vocab_limit or m.cfg.vocab_size for m in g.group_models)
        args = (self.params, g.method.init_state(g.batch_size), rows, self.eos, self.side.guard, g.bridge)
        return g.compiled(empty_pool, args, dict(self.loop, cache_lens=self.cache_lens, vocab_widths=widths),
                          ("pool", self.signature))(*args)

    @property
    def eos(self):
        return jnp.asarray(self.g.eos_ids, jnp.int32)

    def insert(self, pool, slot, position, example, prompts: dict, rows):
        g = self.g
        self.side.take(slot, position, example)
        args = (self.params, pool, jnp.int32(slot), prompts, g.method.init_state(1), rows,
                self._group_adapters([position]))
        signature = ("insert", tuple((s, p.tokens.shape[1]) for s, p in prompts.items()), self.signature)
        return g.compiled(insert, args, dict(self.common, cache_lens=self.cache_lens), signature)(*args)

    def segment(self, pool, segment_steps: int):
        g = self.g
        args = (self.params, pool, self.eos, self.side.guard, self._group_adapters(self.side.positions), g.bridge)
        return g.compiled(run_segment, args, dict(self.loop, segment_steps=segment_steps),
                          ("segment", self.signature))(*args)

    def useful(self, pool):
        return pool.num_tokens  # every step of a live row decodes one token

    def result(self, pool) -> engine.DecodeResult:
        return engine.DecodeResult(pool.out, pool.num_tokens, pool.stats, pool.finite)

    def rows(self, examples, result, ids, positions):
        return self.g._token_loop_rows(examples, result, ids, self.side.names(positions))


class _SpeculativeSlots:
    """SpecSteer / SD's pool: speculative.SpecCarry, one Draft-Verify iteration per slot per step."""

    def __init__(self, g, examples: list, widest: dict):
        self.g = g
        llm, slm, params_draft = g.speculative_models()
        self.params = (llm.params, slm.params, params_draft)
        self.cache_lens = g.speculative_cache_lens(widest)
        self.draft = g.spec_streams["draft"]
        self.side = _SideInputs(g, examples, *g._adapter_rows(examples, [self.draft]))
        self.static = dict(cfg_llm=llm.cfg, cfg_slm=slm.cfg, spec=g.spec, max_new_tokens=g.max_new_tokens)
        self.signature = (self.cache_lens, *self.side.signature())

    def _draft_adapters(self, positions):
        return engine.group_row_adapters(self.side.adapter_rows(self.side.adapters, positions), [self.draft])

    def empty(self, rows):
        args = (rows, *self.params[:2], self.side.guard)
        return self.g.compiled(empty_spec_pool, args, dict(self.static, cache_lens=self.cache_lens),
                               ("spec_pool", self.signature))(*args)

    def insert(self, pool, slot, position, example, prompts: dict, rows):
        guard = self.side.take(slot, position, example)
        prompts = {k: prompts[v] for k, v in self.g.spec_streams.items()}
        args = (pool, jnp.int32(slot), *self.params, prompts, rows, guard, self._draft_adapters([position]))
        signature = ("spec_insert", tuple((s, p.tokens.shape[1]) for s, p in prompts.items()), self.signature)
        return self.g.compiled(insert_spec, args, dict(self.static, cache_lens=self.cache_lens), signature)(*args)

    def segment(self, pool, segment_steps: int):
        g = self.g
        args = (pool, *self.params, jnp.asarray(g.eos_ids, jnp.int32), self.side.guard,
                self._draft_adapters(self.side.positions))
        static = dict(self.static, vocab_limit=g.vocab_limit, greedy=g.sampling.greedy, segment_steps=segment_steps)
        return g.compiled(run_spec_segment, args, static, ("spec_segment", self.signature))(*args)

    def useful(self, pool):
        return pool.stats["llm_calls"]  # one per iteration of a live row

    def result(self, pool) -> engine.DecodeResult:
        return speculative.spec_result(pool, jnp.asarray(self.g.eos_ids, jnp.int32), self.g.max_new_tokens)

    def rows(self, examples, result, ids, positions):
        return self.g._speculative_rows(examples, result, ids, self.side.names(positions))


class ContinuousDecoder:
    """Decodes examples through a generator's method with a pool of generator.batch_size slots.
    `run` calls on_rows(rows, stats, positions) as rows finish (rows in the generator's row
    format; positions index the examples given to `run`)."""

    def __init__(self, generator, segment_steps: int = 8):
        check_continuous(generator.method, mesh=generator.mesh)
        if segment_steps < 1:
            raise ValueError(f"--segment_steps must be >= 1 (got {segment_steps})")
        self.generator, self.segment_steps = generator, segment_steps
        self.figures = SlotFigures()

    def run(self, examples: Iterable, on_rows: Callable[[list, dict, list], Any],
            hyper_rows: list[dict] | None = None) -> None:
        """hyper_rows (optional, one per example): each row's own hyperparameters (sweeps)."""
        g = self.generator
        examples = list(examples)
        if not examples:
            return
        batch = g.batch_size
        ids = {e.id: g.stream_ids(e) for e in examples}
        widest = {s: max(bucket_width(len(ids[e.id][s])) for e in examples) for s in ids[examples[0].id]}
        slots = (_SpeculativeSlots if g.spec is not None else _TokenLoopSlots)(g, examples, widest)
        # Per-row inputs of the empty pool: placeholders, each slot's own are written at insert.
        keys, _, temperature, top_p = g._sampling_args([examples[0]] * batch)
        pool = slots.empty(engine.RowInputs(hyper_arrays(g.method, g.hyper, batch), keys, temperature, top_p))
        queue = list(reversed(range(len(examples))))
        occupant: list = [None] * batch  # position in `examples` of each slot's row
        while queue or any(o is not None for o in occupant):
            for slot in range(batch):
                if occupant[slot] is None and queue:
                    position = queue.pop()
                    example = examples[position]
                    hyper = [hyper_rows[position]] if hyper_rows is not None else g.hyper
                    pool = slots.insert(pool, slot, position, example, self._prompts(ids[example.id]),
                                        self._rows(example, hyper))
                    occupant[slot] = position
            before = np.asarray(slots.useful(pool))
            pool, taken = slots.segment(pool, self.segment_steps)
            done, useful = jax.device_get((pool.done, slots.useful(pool)))
            live = np.asarray([o is not None for o in occupant])
            self.figures.slot_steps += int(taken) * batch
            self.figures.useful_slot_steps += int(np.sum((useful - before)[live]))
            finished = [b for b in range(batch) if occupant[b] is not None and done[b]]
            if finished:
                result = jax.tree.map(lambda x: np.asarray(x)[finished], jax.device_get(slots.result(pool)))
                positions = [occupant[b] for b in finished]
                done_examples = [examples[p] for p in positions]
                on_rows(*slots.rows(done_examples, result, [ids[e.id] for e in done_examples], positions),
                        positions)
                for b in finished:
                    occupant[b] = None

    @staticmethod
    def _prompts(example_ids: dict) -> dict:
        return {s: engine.Prompt(jnp.asarray([list(t) + [0] * (bucket_width(len(t)) - len(t))], jnp.int32),
                                 jnp.asarray([len(t)], jnp.int32))
                for s, t in example_ids.items()}

    def _rows(self, example, hyper) -> engine.RowInputs:
        keys, _, temperature, top_p = self.generator._sampling_args([example])
        return engine.RowInputs(hyper_arrays(self.generator.method, hyper, 1), keys, temperature, top_p)
