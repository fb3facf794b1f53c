"""Vanilla decoding (LLM w/o) tokens/s at batch 1 and 8 vs the PyTorch reference loop, same run.

  python benchmarks/bench_decode.py [--max_new_tokens 32] [--prompts 8]
"""
from __future__ import annotations

import argparse
import json

from common import bench_examples, machine_note, run_reference, time_generator


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--batch_sizes", default="1,8")
    a = ap.parse_args()
    from costeer_jax.decoding import methods
    from costeer_jax.decoding.runner import Generator
    from costeer_jax.models.params_cache import load_model_cached

    examples = bench_examples(a.prompts)
    ref = run_reference("llm_wo", examples, a.max_new_tokens)
    model = load_model_cached("smollm2-135m-instruct")
    results = {"reference_llm_wo": ref, "machine": machine_note()}
    for bs in map(int, a.batch_sizes.split(",")):
        gen = Generator(methods.get_method("llm_wo"), {methods.LLM: model}, max_new_tokens=a.max_new_tokens,
                        batch_size=bs)
        ours = time_generator(gen, examples)
        ours["ratio_vs_reference"] = round(ours["tokens_per_s"] / ref["tokens_per_s"], 2)
        results[f"ours_batch{bs}"] = ours
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
