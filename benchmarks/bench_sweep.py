"""A 2x2 sweep (alpha x beta) as one batched job vs one run per configuration.

Same prompts, SmolLM2 self-pair, CoSteer T=20, greedy: the sweep decodes prompts x configurations
as rows of the same batches (8 prompts x 4 configurations = 32 rows, per-row hyperparameters, one
compiled program); the baseline is four runs of 8 prompts at batch 8, one per configuration (as
four generate.py runs). Steady state, best of --repeats, compile time reported apart. Also checks
that both give the same tokens.

  python benchmarks/bench_sweep.py [--prompts 8] [--max_new_tokens 32] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import time

from common import bench_examples, machine_note


def timed(fn, repeats: int) -> tuple[float, list]:
    best, out = None, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        best = seconds if best is None else min(best, seconds)
    return best, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--grid", default="alpha=1,2;beta=0.5,1")
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    from costeer_jax.decoding import methods
    from costeer_jax.decoding.runner import Generator
    from costeer_jax.decoding.sweep import expand_grid, max_T, parse_assignments
    from costeer_jax.models.params_cache import load_model_cached

    results = {"machine_before": machine_note()}
    model = load_model_cached(a.model)
    pair = {methods.LLM: model, methods.SLM: model}
    examples = bench_examples(a.prompts)
    configs = expand_grid(methods.get_method("costeer"), parse_assignments(a.grid))
    rows = [(e, c) for e in examples for c in configs]

    # One batched job: every (prompt, configuration) row in one batch.
    sweep = Generator(methods.get_method("costeer", max_T=max_T(configs)), pair,
                      max_new_tokens=a.max_new_tokens, batch_size=len(rows))
    run_sweep = lambda: sweep.run_batch([e for e, _ in rows], hyper_rows=[c.hyper for _, c in rows])[0]
    run_sweep()  # compile (+ first run)
    sweep_seconds, sweep_rows = timed(run_sweep, a.repeats)
    sweep_tokens = {(e.id, c.name): r["token_ids"] for (e, c), r in zip(rows, sweep_rows)}

    # One run per configuration, batch = the prompts, each its own program (as separate processes).
    separate = [Generator(methods.get_method("costeer", max_T=c.hyper["T"]), pair,
                          max_new_tokens=a.max_new_tokens, batch_size=len(examples), hyper=c.hyper)
                for c in configs]
    for gen in separate:
        gen.run_batch(examples)  # compile (+ first run)
    run_separate = lambda: [gen.run_batch(examples)[0] for gen in separate]
    separate_seconds, separate_rows = timed(run_separate, a.repeats)
    separate_tokens = {(r["id"], c.name): r["token_ids"] for c, rs in zip(configs, separate_rows) for r in rs}

    tokens = sum(len(t) for t in sweep_tokens.values())
    results.update({
        "model": a.model, "prompts": len(examples), "configurations": len(configs), "grid": a.grid,
        "max_new_tokens": a.max_new_tokens, "T": max_T(configs), "repeats": a.repeats,
        "sweep_batched": {"batch_rows": len(rows), "seconds": round(sweep_seconds, 3), "tokens": tokens,
                          "tokens_per_s": round(tokens / sweep_seconds, 2),
                          "compile_seconds": round(sweep.compile_seconds, 2)},
        "separate_runs": {"runs": len(configs), "batch_rows": len(examples), "seconds": round(separate_seconds, 3),
                          "tokens": sum(len(t) for t in separate_tokens.values()),
                          "tokens_per_s": round(tokens / separate_seconds, 2),
                          "compile_seconds": round(sum(g.compile_seconds for g in separate), 2)},
        "speedup_batched_vs_separate": round(separate_seconds / sweep_seconds, 2),
        "same_tokens": sweep_tokens == separate_tokens,
        "machine_after": machine_note(),
    })
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
