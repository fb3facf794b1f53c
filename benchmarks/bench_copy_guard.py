"""What the copy guard costs per decode step, against the model time of the step it guards.

End-to-end runs cannot show it: on the privacy table's long private contexts the prefill is most
of a run and run-to-run spread (~5-15%) is larger than the guard. So this times, each as a jitted
`fori_loop` of --steps steps (best of --repeats after a compile call):
  - the guard alone: `copy_guard.apply` on [B, V] scores (one [B, W, N-1] window compare and a
    scatter into a [B, V] mask), the argmax and the `recent` push, with W windows per row;
  - the model's decode step at B rows and at 2B rows (CoSteer's SLM runs with and without the
    context), on a cache of --cache_len slots filled to near its end, as on long contexts.
The guard's share is its time over one CoSteer step's model time (LLM at B + SLM at 2B; on the
self-pair both are --model).

  python benchmarks/bench_copy_guard.py [--model smollm2-135m-instruct] [--batch 12] \
      [--windows 4096] [--n 8] [--cache_len 2432] [--guard_vocab 151936]
"""
from __future__ import annotations

import argparse
import json

from common import best_seconds, decode_step_seconds, machine_note


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--windows", type=int, default=4096, help="W: a private context's N-grams (padded)")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--cache_len", type=int, default=2432)
    ap.add_argument("--guard_vocab", type=int, default=0, help="V of the guard alone (default: the model's), "
                    "e.g. 151936 for Qwen's")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from costeer_jax.models.params_cache import load_model_cached
    from costeer_jax.steering import copy_guard

    model = load_model_cached(a.model)
    vocab = a.guard_vocab or model.cfg.vocab_size
    rng = np.random.default_rng(0)
    contexts = [rng.integers(0, vocab, a.windows + a.n - 1).tolist() for _ in range(a.batch)]
    queries = [rng.integers(0, vocab, 64).tolist() for _ in range(a.batch)]
    guard = copy_guard.build_copy_guard(contexts, queries, a.n, width=a.windows)

    @jax.jit
    def guard_only(guard, scores, recent):
        def step(_, recent):
            token = jnp.argmax(copy_guard.apply(guard, recent, scores), -1).astype(jnp.int32)
            return copy_guard.push(recent, token)
        return jax.lax.fori_loop(0, a.steps, step, recent)

    # recent = each row's first context prefix, so the guard has a live match to forbid.
    recent = jnp.asarray([c[:a.n - 1] for c in contexts], jnp.int32)
    scores = jnp.asarray(rng.standard_normal((a.batch, vocab)), jnp.float32)
    guard_s, guard_compile = best_seconds(guard_only, (guard, scores, recent), a.repeats)

    def model_step_seconds(batch: int) -> float:
        return decode_step_seconds(model, batch, a.cache_len, a.cache_len - a.steps - 1, a.steps, a.repeats)[0]

    llm_step, slm_step = model_step_seconds(a.batch), model_step_seconds(2 * a.batch)
    guard_step = guard_s / a.steps
    costeer_model_step = llm_step + slm_step
    print(json.dumps({
        "model": model.name, "machine": machine_note(), "batch": a.batch, "windows": a.windows, "n": a.n,
        "vocab": vocab, "cache_len": a.cache_len,
        "guard_ms_per_step": round(guard_step * 1e3, 3), "guard_compile_seconds": round(guard_compile, 2),
        "model_ms_per_step_batch": round(llm_step * 1e3, 1),
        "model_ms_per_step_2x_batch": round(slm_step * 1e3, 1),
        "guard_share_of_costeer_step": round(guard_step / (costeer_model_step + guard_step), 4),
    }, indent=1))


if __name__ == "__main__":
    main()
