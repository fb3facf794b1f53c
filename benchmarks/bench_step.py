"""One decode step of the model alone: ms per step at several batch sizes (no sampling, no policy).

A jitted `fori_loop` of --steps greedy `decode_step_logits` calls on a cache of --cache_len slots
(rows start at length 40), best of --repeats after a compile call. This is the probe behind the
layout decisions in BUILD_NOTES.md (Performance); it has no reference counterpart.

  python benchmarks/bench_step.py [--batch_sizes 1,8,24] [--model smollm2-135m-instruct]
"""
from __future__ import annotations

import argparse
import json

from common import decode_step_seconds, machine_note


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--batch_sizes", default="1,8,24")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--cache_len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    from costeer_jax.models.params_cache import load_model_cached

    model = load_model_cached(a.model)
    results = {"model": model.name, "machine": machine_note(), "ms_per_step": {}, "compile_seconds": {}}
    for batch in map(int, a.batch_sizes.split(",")):
        seconds, compile_seconds = decode_step_seconds(model, batch, a.cache_len, 40, a.steps, a.repeats)
        results["compile_seconds"][batch] = round(compile_seconds, 2)
        results["ms_per_step"][batch] = round(seconds * 1e3, 1)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
