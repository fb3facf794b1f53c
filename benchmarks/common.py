"""Shared benchmark plumbing: the reference loop measured in the same run, and steady-state
timing of our kernels (compile time measured and reported apart)."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from costeer_jax.data.demo_prompts import demo_examples  # noqa: E402
from costeer_jax.data.example import Example  # noqa: E402


def bench_examples(n: int) -> list[Example]:
    """n prompts: the built-in demo prompts, cycled with distinct ids."""
    base = demo_examples()
    return [Example(f"{base[i % len(base)].id}-{i}", base[i % len(base)].query,
                    base[i % len(base)].personalized_query) for i in range(n)]


def gguf_path(alias_or_path: str) -> str:
    """The GGUF file behind a registered alias (or a path), as the reference loop takes it."""
    from costeer_jax.models.loading import resolve_model

    source = resolve_model(alias_or_path)
    if not source.gguf_file:
        raise SystemExit(f"the reference loop reads GGUF files; {alias_or_path} is not one")
    return str(source.directory / source.gguf_file)


def load_pair(llm: str, slm: str) -> dict:
    """LLM and SLM roles, memory-mapped from the params cache; one object when they are the same."""
    from costeer_jax.decoding import methods
    from costeer_jax.models.params_cache import load_model_cached

    llm_model = load_model_cached(llm)
    return {methods.LLM: llm_model, methods.SLM: llm_model if slm == llm else load_model_cached(slm)}


def run_reference(method: str, examples: list[Example], max_new_tokens: int, T: int = 20,
                  llm: str | None = None, slm: str | None = None) -> dict:
    """The PyTorch reference loop as a user runs it (one example at a time); its own figures.
    llm/slm: aliases or GGUF paths (default: its own default, SmolLM2 as both)."""
    models = [a for pair in (("--llm", llm), ("--slm", slm)) if pair[1] for a in (pair[0], gguf_path(pair[1]))]
    with tempfile.TemporaryDirectory() as d:
        prompts = Path(d) / "p.jsonl"
        prompts.write_text("".join(json.dumps({"id": e.id, "input": e.query,
                                               "personalized_input": e.personalized_query}) + "\n"
                                   for e in examples))
        out = subprocess.run(
            [sys.executable, str(REPO_ROOT / "benchmarks" / "reference_loop.py"), "--prompts", str(prompts),
             "--out", str(Path(d) / "o.jsonl"), "--method", method, "--max-new-tokens", str(max_new_tokens),
             "--T", str(T), *models], check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def time_generator(generator, examples: list[Example], repeats: int = 2) -> dict:
    """Steady-state tokens/s over all examples in batches (first pass compiles; best of repeats)."""
    batches = [examples[i:i + generator.batch_size] for i in range(0, len(examples), generator.batch_size)]
    for b in batches[:1]:
        generator.run_batch(b)  # compile
    best = None
    for _ in range(repeats):
        t0, tokens = time.perf_counter(), 0
        for b in batches:
            rows, _ = generator.run_batch(b)
            tokens += sum(len(r["token_ids"]) for r in rows)
        seconds = time.perf_counter() - t0
        if best is None or seconds < best[1]:
            best = (tokens, seconds)
    tokens, seconds = best
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 2),
            "compile_seconds": round(generator.compile_seconds, 2)}


def weight_bytes_read(model) -> int:
    """Bytes of weights one decode step reads: every leaf but the embedding table, which is
    gathered (a few rows), unless the model is tied and projects with it."""
    import numpy as np

    import jax

    leaves = jax.tree_util.tree_flatten_with_path(model.params)[0]
    tied = "lm_head" not in model.params
    return int(sum(x.size * np.dtype(x.dtype).itemsize for path, x in leaves
                   if tied or jax.tree_util.keystr(path, simple=True, separator="/") != "embed"))


def matmul_flops(model) -> int:
    """FLOPs of one token through one model's matmuls (2 per weight read), attention excluded."""
    import numpy as np

    return 2 * weight_bytes_read(model) // np.dtype(model.params["final_norm"].dtype).itemsize


def read_bandwidth(gigabytes: float = 2.0) -> float:
    """Bytes/s of a jitted full read of a fresh array (a sum): the memory roofline of a
    memory-bound decode step on this backend. Best of 5."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((int(gigabytes * 2**30) // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    total(x).block_until_ready()
    best = min(_timed(lambda: total(x).block_until_ready()) for _ in range(5))
    return x.nbytes / best


def matmul_throughput(m: int = 512, k: int = 1536, n: int = 8960, dtype=None) -> float:
    """FLOP/s of a jitted [m, k] x [k, n] matmul (decoder-shaped; fp32 unless `dtype`): the
    compute roofline."""
    import jax
    import jax.numpy as jnp

    dtype = dtype or jnp.float32
    a, b = jnp.ones((m, k), dtype), jnp.ones((k, n), dtype)
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()
    best = min(_timed(lambda: mm(a, b).block_until_ready()) for _ in range(5))
    return 2 * m * k * n / best


def _timed(f) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def machine_note() -> dict:
    import os

    import jax

    return {"cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
            "jax": jax.__version__, "backend": jax.default_backend()}


def decode_step_seconds(model, batch: int, cache_len: int, start_length: int, steps: int,
                        repeats: int, adapters=None) -> tuple[float, float]:
    """(seconds per greedy `decode_step_logits` call, best of `repeats` runs of a jitted `fori_loop`
    of `steps` calls; compile seconds of the first run). Rows start at `start_length` of a cache
    of `cache_len` slots; `adapters` (models/lora.py, optional) add their LoRA deltas."""
    import dataclasses

    import jax
    import jax.numpy as jnp

    from costeer_jax.models.cache import init_cache
    from costeer_jax.models.decoder import decode_step_logits

    @jax.jit
    def run(params, cache, tokens, adapters):
        def step(_, carry):
            cache, tokens = carry
            logits, cache = decode_step_logits(params, model.cfg, tokens, cache, adapters)
            return cache, jnp.argmax(logits, -1).astype(jnp.int32)
        return jax.lax.fori_loop(0, steps, step, (cache, tokens))

    cache = init_cache(model.cfg, batch, cache_len)
    cache = dataclasses.replace(cache, lengths=jnp.full((batch,), start_length, jnp.int32))
    best, compile_seconds = best_seconds(run, (model.params, cache, jnp.ones((batch,), jnp.int32), adapters), repeats)
    return best / steps, compile_seconds


def best_seconds(fn, args, repeats: int) -> tuple[float, float]:
    """(best of `repeats` timed calls of the jitted `fn(*args)`, seconds of the first call, which
    compiles it)."""
    import jax

    compile_seconds = _timed(lambda: jax.block_until_ready(fn(*args)))
    return min(_timed(lambda: jax.block_until_ready(fn(*args))) for _ in range(repeats)), compile_seconds
