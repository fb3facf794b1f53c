"""CoSteer throughput vs the PyTorch reference loop, measured in the same run.

Reports: CoSteer (T=20) tokens/s at batch 1, 8 and 32 with the SmolLM2 self-pair; T=20 vs T=1
vs plain LLM decoding at batch 8; and the steering math's share of a decode step at T=20.

  python benchmarks/bench_costeer.py [--max_new_tokens 32]
"""
from __future__ import annotations

import argparse
import json
import time

from common import bench_examples, machine_note, run_reference, time_generator


def steering_share(batch: int, vocab: int, step_seconds: float) -> dict:
    """Time of the T=20 FTRL update alone on [batch, vocab] logits vs a measured decode step: the
    one-pass form the kernels run, and the vocabulary-wide T-pass iteration for comparison."""
    import jax

    from costeer_jax.steering import costeer_policy, costeer_policy_iterative

    keys = jax.random.split(jax.random.key(0), 3)
    logits = [jax.random.normal(k, (batch, vocab)) for k in keys]
    out = {"batch": batch, "decode_step_ms": round(step_seconds * 1e3, 2)}
    for name, policy in (("kernel", costeer_policy), ("iterative", costeer_policy_iterative)):
        f = jax.jit(lambda a, b, c, policy=policy: policy(a, b, c, T=20))
        f(*logits).block_until_ready()
        t0 = time.perf_counter()
        for _ in range(20):
            result = f(*logits)
        result.block_until_ready()
        seconds = (time.perf_counter() - t0) / 20
        out[f"{name}_steering_ms"] = round(seconds * 1e3, 3)
        out[f"{name}_share_of_step"] = round(seconds / step_seconds, 4)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--batch_sizes", default="1,8,32")
    ap.add_argument("--reference_prompts", type=int, default=4)
    a = ap.parse_args()
    from costeer_jax.decoding import methods
    from costeer_jax.decoding.runner import Generator
    from costeer_jax.models.loading import load_model

    ref = run_reference("costeer", bench_examples(a.reference_prompts), a.max_new_tokens)
    model = load_model("smollm2-135m-instruct")
    pair = {methods.LLM: model, methods.SLM: model}
    results = {"reference_costeer": ref, "machine": machine_note()}

    def measure(method, bs, n_prompts=None):
        gen = Generator(methods.get_method(method), pair, max_new_tokens=a.max_new_tokens, batch_size=bs)
        r = time_generator(gen, bench_examples(n_prompts or max(bs, 8)))
        r["ratio_vs_reference"] = round(r["tokens_per_s"] / ref["tokens_per_s"], 2)
        return r

    for bs in map(int, a.batch_sizes.split(",")):
        results[f"costeer_T20_batch{bs}"] = measure("costeer", bs)
    results["light_costeer_T1_batch8"] = measure("light_costeer", 8)
    results["llm_wo_batch8"] = measure("llm_wo", 8)
    b8 = results["costeer_T20_batch8"]
    # A CoSteer step at batch 8 runs 16 model rows (the self-pair's SLM-w/o stream is the LLM
    # stream); its per-step time bounds the steering share from above.
    step = b8["seconds"] / (b8["tokens"] / 8)
    results["steering_math_T20"] = steering_share(8, len(model.tokenizer), step)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
