"""One decode step of the model alone: ms per step at several batch sizes (no sampling, no policy).

A jitted `fori_loop` of --steps greedy `decode_step_logits` calls on a cache of --cache_len slots
(rows start at length 40), best of --repeats after a compile call. This is the probe behind the
layout decisions in BUILD_NOTES.md (Performance); it has no reference counterpart.

  python benchmarks/bench_step.py [--batch_sizes 1,8,24] [--model smollm2-135m-instruct]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

from common import machine_note


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch_sizes", default="1,8,24")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--cache_len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import jax
    import jax.numpy as jnp

    from costeer_jax.models.cache import init_cache
    from costeer_jax.models.decoder import decode_step_logits
    from costeer_jax.models.params_cache import load_model_cached

    model = load_model_cached(a.model)
    results = {"model": model.name, "machine": machine_note(), "ms_per_step": {}, "compile_seconds": {}}
    for batch in map(int, a.batch_sizes.split(",")):
        @jax.jit
        def run(params, cache, tokens):
            def step(_, carry):
                cache, tokens = carry
                logits, cache = decode_step_logits(params, model.cfg, tokens, cache)
                return cache, jnp.argmax(logits, -1).astype(jnp.int32)
            return jax.lax.fori_loop(0, a.steps, step, (cache, tokens))

        cache = init_cache(model.cfg, batch, a.cache_len)
        cache = dataclasses.replace(cache, lengths=jnp.full((batch,), 40, jnp.int32))
        tokens = jnp.ones((batch,), jnp.int32)
        t0 = time.perf_counter()
        jax.block_until_ready(run(model.params, cache, tokens))
        results["compile_seconds"][batch] = round(time.perf_counter() - t0, 2)
        best = float("inf")
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(run(model.params, cache, tokens))
            best = min(best, time.perf_counter() - t0)
        results["ms_per_step"][batch] = round(best / a.steps * 1e3, 1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
