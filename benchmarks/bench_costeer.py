"""CoSteer throughput vs the PyTorch reference loop, measured in the same run, held against the
machine's rooflines.

Reports CoSteer (T=20) tokens/s at each batch size, T=20 vs T=1 vs plain LLM decoding at batch
8, the steering math's share of a step, and, per batch size, the two bounds a step cannot beat
on this machine: the weight-read bound (bytes of weights one CoSteer step reads, LLM + SLM, over
the measured read bandwidth) and the compute bound (matmul FLOPs of the step's rows over the
measured matmul throughput). `ratio_vs_reference` is ours over the reference; `bound_ratio` is
what that ratio could be at the bound.

  python benchmarks/bench_costeer.py                                   # SmolLM2 self-pair, batch 1,8,32
  python benchmarks/bench_costeer.py --llm qwen2.5-coder-1.5b-instruct \\
      --slm qwen2.5-coder-0.5b-instruct --batch_sizes 1,16                 # the real pair
"""
from __future__ import annotations

import argparse
import json
import time

from common import (bench_examples, load_pair, machine_note, matmul_flops, matmul_throughput, read_bandwidth,
                    run_reference, time_generator, weight_bytes_read)


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
    ap.add_argument("--llm", default="smollm2-135m-instruct")
    ap.add_argument("--slm", default=None, help="default: the LLM (self-pair)")
    ap.add_argument("--max_new_tokens", type=int, default=32)
    ap.add_argument("--batch_sizes", default="1,8,32")
    ap.add_argument("--reference_prompts", type=int, default=4)
    ap.add_argument("--compare_batch", type=int, default=8, help="batch of the T=20 / T=1 / llm_wo comparison")
    a = ap.parse_args()
    slm = a.slm or a.llm
    from costeer_jax.decoding import methods
    from costeer_jax.decoding.runner import Generator

    ref = run_reference("costeer", bench_examples(a.reference_prompts), a.max_new_tokens, llm=a.llm, slm=slm)
    pair = load_pair(a.llm, slm)
    llm, slm_model = pair[methods.LLM], pair[methods.SLM]
    results = {"llm": a.llm, "slm": slm, "reference_costeer": ref, "machine": machine_note()}
    bandwidth, flops_per_s = read_bandwidth(), matmul_throughput()
    self_pair = llm is slm_model
    # A CoSteer step reads each model's weights once (the SLM's two streams share its forward;
    # with one checkpoint the SLM-w/o stream *is* the LLM stream).
    step_bytes = weight_bytes_read(llm) + (0 if self_pair else weight_bytes_read(slm_model))
    token_flops = matmul_flops(llm) * (2 if self_pair else 1) + matmul_flops(slm_model) * (0 if self_pair else 2)
    ref_step = 1.0 / ref["tokens_per_s"]
    results["roofline"] = {"read_GB_per_s": round(bandwidth / 1e9, 1), "matmul_GFLOP_per_s": round(flops_per_s / 1e9, 1),
                           "weight_GB_per_step": round(step_bytes / 1e9, 2),
                           "GFLOP_per_costeer_token": round(token_flops / 1e9, 2)}

    def measure(method, bs):
        gen = Generator(methods.get_method(method), pair, max_new_tokens=a.max_new_tokens, batch_size=bs)
        r = time_generator(gen, bench_examples(max(bs, 8)))
        r["ratio_vs_reference"] = round(r["tokens_per_s"] / ref["tokens_per_s"], 2)
        return r

    for bs in map(int, a.batch_sizes.split(",")):
        r = measure("costeer", bs)
        bound_step = max(step_bytes / bandwidth, bs * token_flops / flops_per_s)
        r["bound_seconds_per_step"] = round(bound_step, 4)
        r["bound_kind"] = "weight-read" if step_bytes / bandwidth >= bs * token_flops / flops_per_s else "compute"
        r["bound_ratio"] = round(bs * ref_step / bound_step, 2)
        r["seconds_per_step"] = round(bs / r["tokens_per_s"], 4)
        results[f"costeer_T20_batch{bs}"] = r
    cb = a.compare_batch
    results[f"light_costeer_T1_batch{cb}"] = measure("light_costeer", cb)
    results[f"llm_wo_batch{cb}"] = measure("llm_wo", cb)
    if f"costeer_T20_batch{cb}" not in results:
        results[f"costeer_T20_batch{cb}"] = measure("costeer", cb)
    compare = results[f"costeer_T20_batch{cb}"]
    step = compare["seconds"] / (compare["tokens"] / cb)
    results["steering_math_T20"] = steering_share(cb, len(llm.tokenizer), step)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
