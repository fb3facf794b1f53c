"""Host side of generation: tokenise examples into streams, batch them, run the jitted loop,
and write resumable jsonl output. Everything per token happens on the device in `engine.decode`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from costeer_jax import privacy
from costeer_jax.decoding import engine, speculative
from costeer_jax.decoding.hyperparams import check_hyper, check_sampling
from costeer_jax.decoding.methods import (LLM, PERSONALIZED, SLM, SLM_SFT, STREAMS, Method, hyper_arrays,
                                          steering_active)
from costeer_jax.models.cache import round_up
from costeer_jax.models.chat import chat_prompt_ids, check_same_vocabulary, eos_token_ids
from costeer_jax.models.loading import LoadedModel
from costeer_jax.process_env import check_mapping_headroom
from costeer_jax.steering.copy_guard import CopyGuard, build_copy_guard

def bucket_width(n: int) -> int:
    """A prompt width bucket: n rounded up to a multiple of 1/8th of its power of two (at least
    16), so nearby lengths share one compiled program and padding wastes at most ~12% of the
    prefill (40 -> 48, 1495 -> 1536, 3537 -> 3584)."""
    return round_up(max(n, 1), max(16, 2 ** (max(n, 1).bit_length() - 4)))



@dataclasses.dataclass
class Sampling:
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        check_sampling(self.greedy, self.temperature, self.top_p)


@dataclasses.dataclass
class RunFigures:
    examples: int = 0
    tokens: int = 0
    compile_seconds: float = 0.0
    generate_seconds: float = 0.0
    stats: dict = dataclasses.field(default_factory=dict)
    slot_steps: int | None = None  # continuous batching: slot-steps run, and those that decoded a token
    useful_slot_steps: int | None = None

    def as_dict(self) -> dict:
        out = {"examples": self.examples, "tokens": self.tokens,
               "compile_seconds": round(self.compile_seconds, 3),
               "generate_seconds": round(self.generate_seconds, 3),
               "tokens_per_s": round(self.tokens / self.generate_seconds, 3) if self.generate_seconds else 0.0}
        if self.slot_steps is not None:
            out["useful_slot_share"] = round(self.useful_slot_steps / max(self.slot_steps, 1), 4)
        for name, total in self.stats.items():
            out[name] = int(total)
            if name == "steered_tokens":
                out["steered_fraction"] = round(total / max(self.tokens, 1), 4)
        if "drafted_tokens" in self.stats:  # specsteer / sd
            out.update(speculative.stats_summary(self.stats, self.tokens))
        return out


def build_layout(method: Method, models: dict[str, LoadedModel]):
    """Groups the method's streams by the weights they run on; aliases duplicate streams. A model
    that is another's params plus a LoRA adapter shares that model's group (one weight read per
    step for base and adapted rows)."""
    groups: list[tuple[LoadedModel, list[str]]] = []
    seen: dict[tuple[int, str], str] = {}
    aliases = []
    for stream in method.streams:
        role, text = STREAMS[stream]
        model = models[role]
        if (id(model), text) in seen:
            aliases.append((stream, seen[(id(model), text)]))
            continue
        seen[(id(model), text)] = stream
        for m, names in groups:
            if m.params is model.params:
                names.append(stream)
                break
        else:
            groups.append((model, [stream]))
    gated = tuple(bool(method.gated_streams) and all(n in method.gated_streams for n in names)
                  for _, names in groups)
    layout = engine.StreamLayout(tuple(tuple(n) for _, n in groups), tuple(aliases), gated)
    return layout, [m for m, _ in groups]


UNSHARED = -2  # a context token the other vocabulary lacks (never equals a shared index or NO_TOKEN)


def cross_vocab_bridge(method: Method, models: dict[str, LoadedModel], layout: engine.StreamLayout):
    """The vocabulary alignment of the LLM and SLM (cached per pair) and the engine's bridge for
    costeer_map / costeer_byte."""
    from costeer_jax import steering
    from costeer_jax.decoding.methods import MapIds
    from costeer_jax.models.vocab_alignment import align_vocabularies

    llm, slm = models[LLM], models[SLM]
    alignment = align_vocabularies(
        llm.tokenizer, slm.tokenizer, eos_token_ids(llm.tokenizer, llm.generation_eos),
        eos_token_ids(slm.tokenizer, slm.generation_eos), llm.cfg.vocab_size, slm.cfg.vocab_size)
    llm_ids, slm_ids = jnp.asarray(alignment.llm_ids), jnp.asarray(alignment.slm_ids)
    to_group = tuple(llm_ids if "llm" in names else slm_ids for names in layout.groups)
    if method.cross_vocab == "map":
        aux = MapIds(llm_ids, slm_ids)
    else:
        llm_shared = np.full(alignment.llm_bytes.lengths.shape, -1, np.int32)
        llm_shared[alignment.llm_ids] = np.arange(alignment.size, dtype=np.int32)
        tables = lambda t: steering.ByteTables(jnp.asarray(t.table), jnp.asarray(t.lengths))
        aux = steering.ByteBridge(llm_ids, tables(alignment.llm_bytes), tables(alignment.slm_bytes),
                                  jnp.asarray(llm_shared))
    return alignment, engine.TokenBridge(to_group, aux)


def check_copy_guard(method_name: str, n: int) -> None:
    """Refuses a guard the method cannot use (callers check before loading models)."""
    if n and method_name in ("llm_wo", "llm_w"):
        raise ValueError(f"--copy_guard guards the edge's token choices; {method_name} decodes in the "
                         "cloud (llm_w already sends the private context): use a steering method")
    if n and method_name in ("costeer_byte", "specsteer_cross"):
        raise ValueError(f"--copy_guard is not implemented for {method_name} (its choices are byte walks, not a "
                         "token distribution); use costeer_map, whose guard works on the shared tokens")
    if n < 0 or n == 1:
        raise ValueError(f"--copy_guard={n} is out of range: N counts the tokens of a copy, in [2, inf) "
                         "(0 turns the guard off)")


def row_key(seed: int, example_id: str) -> np.ndarray:
    """Per-example PRNG key data: sampling depends on (seed, id), never on batch composition."""
    digest = int.from_bytes(hashlib.sha256(example_id.encode()).digest()[:4], "little")
    return jax.random.key_data(jax.random.fold_in(jax.random.key(seed), digest))


class Generator:
    """Runs one method over examples; reusable across calls (compiled programs are cached)."""

    def __init__(self, method: Method, models: dict[str, LoadedModel], *, max_new_tokens: int,
                 batch_size: int, sampling: Sampling = Sampling(), hyper: dict | None = None,
                 mesh=None, copy_guard: int = 0, record_cloud_view: bool = False):
        """copy_guard=N (0: off) forbids completing a verbatim N-token copy of a row's private
        context (steering/copy_guard.py); record_cloud_view adds each row's `cloud_view`, the
        token ids the cloud received (privacy.py)."""
        check_copy_guard(method.name, copy_guard)
        self.copy_guard, self.record_cloud_view = copy_guard, record_cloud_view
        self.method, self.models = method, models
        self.mesh = mesh  # a jax.sharding.Mesh: batch rows go on its 'data' axis
        self.max_new_tokens, self.batch_size, self.sampling = max_new_tokens, batch_size, sampling
        self.hyper = hyper or {}
        for note in check_hyper(self.hyper):
            print(f"warning: {note}", file=sys.stderr)
        self.layout, self.group_models = build_layout(method, models)
        self.stream_models = {s: models[STREAMS[s][0]] for s in method.streams}
        self._adapter_files: dict[str, Any] = {}  # per-example adapter folders, loaded once
        roles = {STREAMS[s][0] for s in method.streams}
        used = [models[r] for r in (LLM, SLM, SLM_SFT) if r in roles]
        self.tokenizer = used[0].tokenizer  # decodes the output (the LLM's, where there is one)
        self.stream_tokenizers = {s: self.tokenizer for s in method.streams}
        self.alignment = self.bridge = self._slm_to_shared = None
        if method.cross_vocab:
            # Each model keeps its own tokenization and chat template; tokens are shared indices.
            self.stream_tokenizers = {s: m.tokenizer for s, m in self.stream_models.items()}
            self.alignment, self.bridge = cross_vocab_bridge(method, models, self.layout)
            self.vocab_limit = None
            self.eos_ids = [int(i) for i in self.alignment.eos_shared]
        else:
            self.vocab_limit = len(self.tokenizer)
            for other in used[1:]:
                check_same_vocabulary(used[0].tokenizer, other.tokenizer, used[0].name, other.name)
            self.eos_ids = eos_token_ids(self.tokenizer, used[0].generation_eos)
        for m in used:
            if m.cfg.vocab_size < len(m.tokenizer):
                raise ValueError(f"{m.name}: embedding has {m.cfg.vocab_size} rows but the tokenizer "
                                 f"has {len(m.tokenizer)} tokens; the checkpoint does not match its tokenizer")
        self._compiled: dict[Any, Any] = {}
        self.compile_seconds = 0.0
        self.compile_cpu_seconds = 0.0  # process CPU time of compiling (benchmarks on shared machines)
        self.host_seconds = 0.0  # specsteer_cross: time in its host steps (the rest is device work)
        self.spec = None
        if method.speculative is not None:
            options = method.speculative
            aliases = dict(self.layout.aliases)
            # Streams the kernel reads, resolved through aliases (one checkpoint serving LLM and
            # SLM on the same text is one stream: SLM- logits are the LLM's, no second forward).
            drafter = options.specsteer_drafter if method.name == "specsteer" else options.sd_drafter
            self.spec_streams = {"llm": "llm", "draft": aliases.get(drafter, drafter)}
            slm_wo_is_llm = aliases.get("slm_wo") == "llm"
            if method.name == "specsteer" and not slm_wo_is_llm:
                self.spec_streams["slm_wo"] = aliases.get("slm_wo", "slm_wo")
            self.spec = speculative.make_spec_config(
                method.name, num_draft=options.num_draft, bonus=options.bonus,
                acceptance=options.acceptance, downlink_topk=options.downlink_topk,
                greedy=sampling.greedy, slm_wo_is_llm=slm_wo_is_llm)

    # -- tokenisation ---------------------------------------------------------------------
    def stream_ids(self, example) -> dict[str, list[int]]:
        texts = {"query": example.query, PERSONALIZED: example.personalized_query}
        for name, text in texts.items():
            if not text or not text.strip():
                raise ValueError(f"example {example.id!r} has an empty {name}; fix or drop that row")
        return {s: chat_prompt_ids(self.stream_tokenizers[s], texts[STREAMS[s][1]])
                for group in self.layout.groups for s in group}

    # -- one batch -------------------------------------------------------------------------
    def run_batch(self, examples: list, hyper_rows: list[dict] | None = None) -> tuple[list[dict], dict]:
        real = len(examples)
        padded = examples + [examples[-1]] * (self.batch_size - real)  # static batch shape
        ids = [self.stream_ids(e) for e in padded]
        widths = {stream: bucket_width(max(len(row[stream]) for row in ids)) for stream in ids[0]}
        prompts = {}
        for stream, width in widths.items():
            tokens = np.zeros((len(padded), width), np.int32)
            lengths = np.zeros((len(padded),), np.int32)
            for b, row in enumerate(ids):
                tokens[b, :len(row[stream])] = row[stream]
                lengths[b] = len(row[stream])
            prompts[stream] = engine.Prompt(jnp.asarray(tokens), jnp.asarray(lengths))
        rows_hyper = None
        if hyper_rows is not None:
            rows_hyper = hyper_rows + [hyper_rows[-1]] * (self.batch_size - real)
        hyper = hyper_arrays(self.method, rows_hyper if rows_hyper else self.hyper, len(padded))
        s = self.sampling
        if self.spec is not None:
            return self._run_speculative(examples, padded, prompts, hyper, widths, ids)
        if self.method.cross_vocab == "speculative":
            return self._run_cross_speculative(examples, padded, prompts, hyper, widths, ids)
        params = (tuple(m.params for m in self.group_models),)
        guard = self._guard(padded)
        group_adapters, adapter_names = self._group_adapters(padded)
        args = (prompts, self.method.init_state(len(padded)), hyper, *self._sampling_args(padded), guard,
                group_adapters, self.bridge)
        static = dict(
            cfgs=tuple(m.cfg for m in self.group_models), layout=self.layout, policy=self.method.policy,
            gate=steering_active if any(self.layout.gated) else None,
            max_new_tokens=self.max_new_tokens, vocab_limit=self.vocab_limit, greedy=s.greedy,
            cache_lens=self.token_loop_cache_lens(widths))
        result = self._compile_and_run(engine.decode, params, args, static,
                                       (tuple(widths.items()), static["cache_lens"], _guard_width(guard),
                                        _adapters_signature(group_adapters)))
        return self._token_loop_rows(examples, result, ids, adapter_names)

    def _token_loop_rows(self, examples, result, ids, adapter_names=None) -> tuple[list[dict], dict]:
        """_rows of a token-loop result, whose tokens are shared indices across tokenizers."""
        if self.alignment is not None:  # shared indices -> the LLM's own ids (what the cloud commits)
            result = result._replace(tokens=self.alignment.llm_ids[result.tokens])
        return self._rows(examples, result, ids, adapter_names)

    # -- LoRA adapters -------------------------------------------------------------------------
    def _row_adapter(self, example, model: LoadedModel):
        """(name, (Adapter, LoraConfig)) of the adapter an adapted stream uses for this example: the
        row's own `adapter` folder (prompts files may name one per row), else the model's."""
        path = (example.meta or {}).get("adapter")
        if path is None:
            return model.name, model.adapter
        if path in ("", "none"):
            return None, None
        if path not in self._adapter_files:
            from costeer_jax.models import lora

            self._adapter_files[path] = lora.load_adapter(path, model.cfg, model.params["embed"].dtype)
        return path, self._adapter_files[path]

    def _adapter_rows(self, padded: list, streams) -> tuple[engine.GroupAdapters | None, list]:
        """The adapters these streams' rows use, stacked, with each stream's per-row index [B]
        (-1: base), or None where no row has one; and each row's adapter name (None: base)."""
        from costeer_jax.models import lora

        names: list[str] = []
        stacked: list = []
        rows, row_names = {}, [None] * len(padded)
        for n in streams:
            model = self.stream_models[n]
            index = np.full((len(padded),), -1, np.int32)
            if model.adapter is not None:
                for b, e in enumerate(padded):
                    name, adapter = self._row_adapter(e, model)
                    if name is None:
                        continue  # this row runs the base model
                    if name not in names:
                        names.append(name)
                        stacked.append(adapter)
                    index[b] = names.index(name)
                    row_names[b] = name
            rows[n] = jnp.asarray(index)
        if not stacked:
            return None, row_names
        return engine.GroupAdapters(*lora.stack(stacked), rows), row_names

    def _group_adapters(self, padded: list):
        out, row_names = [], [None] * len(padded)
        for names in self.layout.groups:
            adapters, names_here = self._adapter_rows(padded, names)
            out.append(adapters)
            row_names = [a or b for a, b in zip(row_names, names_here)]
        return (tuple(out) if any(a is not None for a in out) else None), row_names

    def guard_ids(self, examples: list) -> tuple[list, list]:
        """Each row's private context and query as the ids the copy guard compares: the shared
        tokenizer's, or for costeer_map the edge's (SLM's) tokens as shared indices (UNSHARED
        where the LLM lacks the token)."""
        if self.alignment is None:
            encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False)
        else:
            slm_tokenizer = self.models[SLM].tokenizer
            if self._slm_to_shared is None:
                self._slm_to_shared = {int(t): i for i, t in enumerate(self.alignment.slm_ids)}
            shared = self._slm_to_shared
            encode = lambda text: [shared.get(t, UNSHARED) for t in slm_tokenizer.encode(text, add_special_tokens=False)]
        return [encode(e.personalized_query) for e in examples], [encode(e.query) for e in examples]

    def _guard(self, padded: list, width: int | None = None) -> CopyGuard | None:
        """The copy guard's windows over each row's private context (W = `width`, or what these
        rows need), in the ids of guard_ids."""
        if not self.copy_guard:
            return None
        guard = build_copy_guard(*self.guard_ids(padded), self.copy_guard, width=width)
        if self.alignment is None:
            return guard
        # costeer_map: a window over a token the LLM lacks can never be completed in the shared
        # space, so it is dropped.
        reachable = np.all(np.asarray(guard.prefixes) != UNSHARED, axis=-1) & (np.asarray(guard.next_tokens) >= 0)
        return guard._replace(live=jnp.asarray(np.asarray(guard.live) & reachable),
                              next_tokens=jnp.asarray(np.where(reachable, guard.next_tokens, 0), jnp.int32))

    def _sampling_args(self, padded: list) -> tuple:
        s = self.sampling
        return (jnp.stack([row_key(s.seed, str(e.id)) for e in padded]),
                jnp.asarray(self.eos_ids, jnp.int32),
                jnp.full((len(padded),), s.temperature, jnp.float32),
                jnp.full((len(padded),), s.top_p, jnp.float32))

    def _compile_and_run(self, kernel, params: tuple, args: tuple, static: dict, signature):
        """AOT-compiles once per shape signature (that time is `compile_seconds`) and runs.
        Under a mesh, per-row inputs are placed batch-sharded on 'data'; params are already
        placed (sharded at load time) and the program propagates their shardings."""
        if self.mesh is not None:
            from costeer_jax import sharding

            args = sharding.shard_batch(args, self.mesh, self.batch_size)
        return jax.device_get(self.compiled(kernel, (*params, *args), static, signature)(*params, *args))

    def compiled(self, kernel, args: tuple, static: dict, signature):
        """`kernel` AOT-compiled for these arguments, once per (kernel, signature); the time it
        takes is added to compile_seconds (and compile_cpu_seconds)."""
        key = (kernel, signature)
        if key not in self._compiled:
            check_mapping_headroom()  # a clear error instead of XLA:CPU's segfault at the limit
            t0, cpu0 = time.perf_counter(), time.process_time()
            self._compiled[key] = kernel.lower(*args, **static).compile()
            self.compile_seconds += time.perf_counter() - t0
            self.compile_cpu_seconds += time.process_time() - cpu0
        return self._compiled[key]

    def _run_speculative(self, examples, padded, prompts, hyper, widths, ids):
        """specsteer / sd: the Draft-Verify kernel instead of the token loop, same row format."""
        s = self.sampling
        llm, slm, params_draft = self.speculative_models()
        params = (llm.params, slm.params)
        guard = self._guard(padded)
        adapters, adapter_names = self._adapter_rows(padded, [self.spec_streams["draft"]])
        draft_adapters = engine.group_row_adapters(adapters, [self.spec_streams["draft"]])
        args = ({k: prompts[v] for k, v in self.spec_streams.items()}, hyper, *self._sampling_args(padded), guard,
                params_draft, draft_adapters)
        static = dict(
            cfg_llm=llm.cfg, cfg_slm=slm.cfg, spec=self.spec, max_new_tokens=self.max_new_tokens,
            vocab_limit=self.vocab_limit, greedy=s.greedy, cache_lens=self.speculative_cache_lens(widths))
        result = self._compile_and_run(speculative.decode, params, args, static,
                                       ("speculative", tuple(widths.items()), static["cache_lens"], _guard_width(guard),
                                        params_draft is not None, _adapters_signature(draft_adapters)))
        return self._speculative_rows(examples, result, ids, adapter_names)

    def token_loop_cache_lens(self, widths: dict) -> tuple[int, ...]:
        """Cache slots per weight group: its widest stream prompt (bucketed widths) + the budget."""
        return tuple(round_up(max(widths[n] for n in group) + self.max_new_tokens, 16) for group in self.layout.groups)

    def speculative_models(self) -> tuple[LoadedModel, LoadedModel, Any]:
        """(LLM, SLM running SLM-, the drafter's params when it is another checkpoint, else None)."""
        drafter = self.stream_models[self.spec_streams["draft"]]
        slm = self.models.get(SLM, drafter)
        return self.models[LLM], slm, None if drafter.params is slm.params else drafter.params

    def speculative_cache_lens(self, widths: dict) -> tuple[int, int]:
        """Cache slots of the LLM's stream and of the SLM streams for prompts of these widths."""
        cache_len = lambda kernel_streams: speculative.cache_len_for(
            max(widths[self.spec_streams[k]] for k in kernel_streams), self.max_new_tokens, self.spec.num_draft)
        return cache_len(["llm"]), cache_len([k for k in self.spec_streams if k != "llm"])

    def _speculative_rows(self, examples, result, ids, adapter_names=None) -> tuple[list[dict], dict]:
        """_rows plus each row's acceptance and link figures."""
        rows, stats = self._rows(examples, result, ids, adapter_names)
        for row in rows:
            row.update(speculative.stats_summary(row, len(row["token_ids"])))
        return rows, stats

    def _run_cross_speculative(self, examples, padded, prompts, hyper, widths, ids):
        """specsteer_cross: the host-stepped Draft-Verify loop across tokenizers, same row format.
        Its pieces compile on first use, inside the first batch's time."""
        from costeer_jax.decoding import cross_speculative

        k = self.method.cross_spec.num_draft
        slm_width = max(widths.get("slm_wo", widths["llm"]), widths["slm_w"])
        # The edge's streams grow by SLM tokens: room for 4 per LLM token of the budget.
        cache_lens = (round_up(widths["llm"] + self.max_new_tokens + 2 * k + 9, 16),
                      round_up(slm_width + 4 * self.max_new_tokens + k + 2, 16))
        keys, _, temperature, top_p = self._sampling_args(padded)
        streams = {"llm": prompts["llm"], "slm_wo": prompts.get("slm_wo", prompts["llm"]), "slm_w": prompts["slm_w"]}
        result = cross_speculative.decode(
            self.models[LLM], self.models[SLM], self.alignment, self.bridge.aux, streams, hyper, keys, temperature,
            top_p, num_draft=k, max_new_tokens=self.max_new_tokens, greedy=self.sampling.greedy, cache_lens=cache_lens)
        self.host_seconds += result.host_seconds
        return self._speculative_rows(examples, result, ids)

    def _rows(self, examples, result, ids, adapter_names=None) -> tuple[list[dict], dict]:
        real = len(examples)
        rows = []
        for b in range(real):
            n = int(result.num_tokens[b])
            token_ids = [int(t) for t in result.tokens[b, :n]]
            row = {"id": examples[b].id, "method": self.method.name,
                   "output": self.tokenizer.decode(token_ids, skip_special_tokens=True),
                   "token_ids": token_ids}
            if adapter_names and adapter_names[b] is not None:
                row["adapter"] = adapter_names[b]
            if self.record_cloud_view:
                uplinked = None
                if result.cloud_tokens is not None:
                    uplinked = [int(t) for t in result.cloud_tokens[b, :int(result.cloud_counts[b])]]
                view = privacy.cloud_view(self.method.name, token_ids, ids[b].get("llm_w", ()), uplinked)
                row["cloud_view"] = view
                row["cloud_view_text"] = self.tokenizer.decode(view, skip_special_tokens=True)
            for name, values in result.stats.items():
                row[name] = int(values[b])
            rows.append(row)
        stats = {k: int(np.sum(v[:real])) for k, v in result.stats.items()}
        stats["nonfinite_rows"] = int(np.sum(~result.finite[:real]))
        for b in range(real):
            if not result.finite[b]:
                rows[b]["error"] = "nonfinite_logits"
                print(f"warning: NaN/Inf logits in example {examples[b].id!r}; its output stops there "
                      "(with --dtype=bfloat16 try float32; check the checkpoint)", file=sys.stderr)
        return rows, stats


def _adapters_signature(adapters) -> tuple | None:
    """Shapes of the adapters a batch uses (the number stacked varies with the rows' adapters)."""
    if adapters is None:
        return None
    return tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(adapters))


def _guard_width(guard) -> tuple | None:
    return None if guard is None else tuple(guard.prefixes.shape)


def read_done_ids(path: Path) -> set[str]:
    """Ids already written by an earlier (possibly interrupted) run; a torn last line is ignored."""
    done = set()
    if path.exists():
        with open(path) as f:
            for line in f:
                try:
                    done.add(str(json.loads(line)["id"]))
                except (json.JSONDecodeError, KeyError):
                    continue
    return done


def repair_torn_tail(path: Path) -> None:
    """An interrupted write can leave half a line; cut the file back to its last newline."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            print(f"note: {path} ends in half a row ({len(data) - keep} bytes, an interrupted write); "
                  "dropping it, the row is decoded again", file=sys.stderr)
            f.truncate(keep)


def generate_to_file(generator: Generator, examples: Iterable, output: Path, *,
                     progress: bool = True, extra_fields: dict | None = None, batching: str = "static",
                     segment_steps: int = 8) -> RunFigures:
    """Decodes the examples not yet in `output`, appending rows as they are done (static: one
    flushed batch at a time; continuous: the rows that finished in each segment), so an
    interrupted run loses at most the rows in flight and a rerun resumes where it stopped."""
    from tqdm import tqdm

    from costeer_jax.decoding import continuous

    output.parent.mkdir(parents=True, exist_ok=True)
    repair_torn_tail(output)
    done = read_done_ids(output)
    todo = [e for e in examples if str(e.id) not in done]
    # Similar lengths together: less padding per batch (results do not depend on batching).
    todo.sort(key=lambda e: len(e.personalized_query) + len(e.query))
    figures = RunFigures()
    compile_before = generator.compile_seconds
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"{generator.method.name}", unit="ex", file=sys.stderr,
               disable=not progress)
    if batching not in (continuous.STATIC, continuous.CONTINUOUS):
        raise ValueError(f"--batching must be static or continuous (got {batching!r})")
    decoder = continuous.ContinuousDecoder(generator, segment_steps) if batching == continuous.CONTINUOUS else None
    with open(output, "a") as f:
        def write(rows, stats, positions=None):
            for row in rows:
                row.update(extra_fields or {})
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            figures.examples += len(rows)
            figures.tokens += sum(len(r["token_ids"]) for r in rows)
            for k, v in stats.items():
                figures.stats[k] = figures.stats.get(k, 0) + v
            bar.update(len(rows))

        if decoder is not None:
            decoder.run(todo, write)
            figures.slot_steps = decoder.figures.slot_steps
            figures.useful_slot_steps = decoder.figures.useful_slot_steps
        else:
            for start in range(0, len(todo), generator.batch_size):
                write(*generator.run_batch(todo[start:start + generator.batch_size]))
    bar.close()
    figures.generate_seconds = time.perf_counter() - t0
    figures.compile_seconds = generator.compile_seconds - compile_before
    return figures
