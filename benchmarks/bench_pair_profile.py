"""Where a CoSteer step's time goes on an LLM/SLM pair: each model's decode step and prefill at
the row counts CoSteer uses (LLM: 1 row per prompt; SLM: 2, with and without context), and
XLA:CPU's fp32 matmul throughput at those row counts (the decoder's [m, 1536] x [1536, 8960]
gate/up shape). Best of 3 after a compile call; prints JSON.

  python benchmarks/bench_pair_profile.py [--llm qwen2.5-coder-1.5b-instruct] [--slm qwen2.5-coder-0.5b-instruct]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

from common import load_pair, machine_note, weight_bytes_read


def best(f, repeats: int = 3) -> float:
    f()
    fastest = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f()
        fastest = min(fastest, time.perf_counter() - t0)
    return fastest


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llm", default="qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--slm", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--batch_sizes", default="1,16")
    ap.add_argument("--prefill_width", type=int, default=48)
    a = ap.parse_args()
    import jax
    import jax.numpy as jnp

    from costeer_jax.decoding import methods
    from costeer_jax.models.cache import init_cache
    from costeer_jax.models.decoder import decode_step_logits, prefill_logits

    pair = load_pair(a.llm, a.slm)
    out = {"llm": a.llm, "slm": a.slm, "machine": machine_note()}
    for role, rows_per_prompt in ((methods.LLM, 1), (methods.SLM, 2)):
        model = pair[role]
        out[f"{role}_weight_GB_per_step"] = round(weight_bytes_read(model) / 1e9, 2)
        step = jax.jit(lambda p, c, t, cfg=model.cfg: decode_step_logits(p, cfg, t, c)[0])
        prefill = jax.jit(lambda p, c, t, n, cfg=model.cfg: prefill_logits(p, cfg, t, n, c)[0])
        for bs in map(int, a.batch_sizes.split(",")):
            rows = bs * rows_per_prompt
            cache = init_cache(model.cfg, rows, 128)
            cache = dataclasses.replace(cache, lengths=jnp.full((rows,), a.prefill_width, jnp.int32))
            tokens = jnp.ones((rows,), jnp.int32)
            seconds = best(lambda: step(model.params, cache, tokens).block_until_ready())
            out[f"{role}_decode_step_ms_batch{bs}"] = round(seconds * 1e3, 1)
            out[f"{role}_decode_step_GB_per_s_batch{bs}"] = round(weight_bytes_read(model) / seconds / 1e9, 1)
            empty = init_cache(model.cfg, rows, 128)
            prompt = jnp.ones((rows, a.prefill_width), jnp.int32)
            lengths = jnp.full((rows,), a.prefill_width, jnp.int32)
            out[f"{role}_prefill_ms_batch{bs}"] = round(
                best(lambda: prefill(model.params, empty, prompt, lengths).block_until_ready(), 2) * 1e3, 1)
    for m in (1, 2, 16, 32, 512):
        x, w = jnp.ones((m, 1536), jnp.float32), jnp.ones((1536, 8960), jnp.float32)
        matmul = jax.jit(jnp.matmul)
        seconds = best(lambda: matmul(x, w).block_until_ready(), 5)
        out[f"matmul_m{m}_GFLOP_per_s"] = round(2 * m * 1536 * 8960 / seconds / 1e9, 1)
        out[f"matmul_m{m}_weight_GB_per_s"] = round(w.nbytes / seconds / 1e9, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
