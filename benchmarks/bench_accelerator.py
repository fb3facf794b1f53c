"""Decode-step time of llm_wo, costeer, light_costeer and specsteer on random-weight models of the
papers' shapes, each against the step's memory-bandwidth and compute bounds.

Pairs (--pairs): qwen2.5-7b/1.5b (CoSteer's Qwen2.5-7B LLM + Qwen2.5-1.5B SLM), qwen3-8b/0.6b
(SpecSteer's Qwen3-8B generalist + Qwen3-0.6B specialist), and `tiny` (a few-layer pair: what CI
runs on CPU so this file cannot rot). Weights are random in --dtype (bfloat16 by default); the
steering math runs in fp32 whatever the weights. Every stream's prompt is --prompt_len random ids.

How a step is timed. Each configuration is compiled once (its compile time reported apart) and
run twice with the same executable: once to --max_new_tokens (no row can stop: the EOS ids are
an id past the tokenizer), once with each row's own first token as its EOS, so the program does
the prefill and one step. Their difference over the difference in steps is the steady-state step
(or, for specsteer, iteration) time, prefill excluded. Best of --repeats.

The bounds, per step (specsteer: per iteration, K drafter steps + LLM and SLM- verifying K+1):
  bandwidth: bytes of weights read (each weight group once per forward, embedding gathered) plus
  the KV cache each forward reads (the attention reads every preallocated slot, masked), over
  the device's measured read bandwidth (a jitted sum of a --bandwidth_gb array);
  compute: matmul FLOPs (2 per weight per row-token) plus attention (4 * slots * heads * hd per
  layer per row-token), over a measured decoder-shaped matmul in --dtype.

  python benchmarks/bench_accelerator.py                       # the papers' shapes (a GPU/TPU)
  python benchmarks/bench_accelerator.py --pairs=tiny --batch_sizes=1,2 --prompt_len=32 \\
      --max_new_tokens=8 --bandwidth_gb=0.25                   # CPU smoke (what CI runs)

Stops starting new configurations after --time_budget_s (listed as skipped, in order: batch 1
first, the figure the accelerator target is about). Prints a markdown table, then one JSON line.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from absl import app, flags

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

FLAGS = flags.FLAGS
flags.DEFINE_list("pairs", ["qwen2.5-7b/1.5b", "qwen3-8b/0.6b"], "LLM/SLM shape pairs (see SHAPES): "
                  "qwen2.5-7b/1.5b, qwen3-8b/0.6b, tiny.")
flags.DEFINE_list("methods", ["llm_wo", "costeer", "light_costeer", "specsteer"], "Methods to time.")
flags.DEFINE_list("batch_sizes", ["1", "8", "32", "128"], "Rows per batch.")
flags.DEFINE_integer("prompt_len", 512, "Prompt tokens of every stream.")
flags.DEFINE_integer("max_new_tokens", 128, "Steps of the full run.")
flags.DEFINE_integer("num_draft", 4, "SpecSteer's K.")
flags.DEFINE_float("spec_lambda", 1e-30, "SpecSteer's lambda: this small accepts every draft (random weights "
                   "give acceptance no meaning of its own; as in bench_specsteer.py, lambda sets it).")
flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Weight and KV dtype.")
flags.DEFINE_integer("repeats", 3, "Timed runs per configuration and length (best is kept).")
flags.DEFINE_float("bandwidth_gb", 4.0, "Size of the array whose read measures the bandwidth bound.")
flags.DEFINE_float("time_budget_s", 420.0, "Start no new configuration after this many seconds.")
flags.DEFINE_string("output", None, "Also write the rows as JSON here.")

_QWEN_TOKENIZER_SIZE = 151665  # Qwen2.5/Qwen3's tokenizer: logits are cut to it (vocab_limit)
_QWEN = dict(rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768)
SHAPES = {
    "qwen2.5-7b": dict(arch="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                       num_heads=28, num_kv_heads=4, head_dim=128, tie_word_embeddings=False, qkv_bias=True,
                       qk_norm=False, **_QWEN),
    "qwen2.5-1.5b": dict(arch="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_layers=28,
                         num_heads=12, num_kv_heads=2, head_dim=128, tie_word_embeddings=True, qkv_bias=True,
                         qk_norm=False, **_QWEN),
    "qwen3-8b": dict(arch="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_layers=36,
                     num_heads=32, num_kv_heads=8, head_dim=128, tie_word_embeddings=False, qkv_bias=False,
                     qk_norm=True, **_QWEN),
    "qwen3-0.6b": dict(arch="qwen3", vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_layers=28,
                       num_heads=16, num_kv_heads=8, head_dim=128, tie_word_embeddings=True, qkv_bias=False,
                       qk_norm=True, **_QWEN),
    "tiny-llm": dict(arch="qwen2", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=3,
                     num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=False, qkv_bias=True,
                     qk_norm=False, **_QWEN),
    "tiny-slm": dict(arch="qwen2", vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8, tie_word_embeddings=True, qkv_bias=True,
                     qk_norm=False, **_QWEN),
}
PAIRS = {"qwen2.5-7b/1.5b": ("qwen2.5-7b", "qwen2.5-1.5b"), "qwen3-8b/0.6b": ("qwen3-8b", "qwen3-0.6b"),
         "tiny": ("tiny-llm", "tiny-slm")}


class SyntheticTokenizer:
    """What the generator asks of a tokenizer, for random-id prompts: a size (logits are cut to
    it), an EOS id, and a decode (the text of random ids means nothing: empty)."""

    def __init__(self, size: int):
        self.size, self.eos_token_id = size, size - 1

    def __len__(self):
        return self.size

    def decode(self, ids, skip_special_tokens=True):
        return ""


def synthetic_model(shape: str, tokenizer, dtype, seed: int):
    import jax

    from costeer_jax.models.config import DecoderConfig
    from costeer_jax.models.init import random_params
    from costeer_jax.models.loading import LoadedModel

    cfg = DecoderConfig(**SHAPES[shape])
    return LoadedModel(f"random-{shape}", cfg, random_params(cfg, jax.random.key(seed), dtype), tokenizer)


def kv_bytes_per_slot(cfg, itemsize: int) -> int:
    return cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * itemsize


def attention_flops_per_slot(cfg) -> int:
    return 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim  # q.k and p.v, 2 FLOPs per MAC


@dataclasses.dataclass
class Forward:
    """One forward of one weight group, `count` times a step: `tokens` row-tokens, `cache_rows`
    rows whose cache of `slots` slots it reads (a verify over K+1 positions of a row reads that
    row's cache once)."""

    model: object
    tokens: int
    cache_rows: int
    slots: int
    count: int = 1


def step_forwards(generator, batch: int, prompt_len: int, max_new_tokens: int, num_draft: int) -> list[Forward]:
    """The forwards one step (specsteer: one iteration) runs."""
    from costeer_jax.decoding import speculative
    from costeer_jax.decoding.runner import bucket_width
    from costeer_jax.models.cache import round_up

    width = bucket_width(prompt_len)
    if generator.spec is not None:
        slots = speculative.cache_len_for(width, max_new_tokens, num_draft)
        llm, slm = generator.models["llm"], generator.models["slm"]
        verify = batch * (num_draft + 1)
        return [Forward(slm, batch, batch, slots, count=num_draft),  # K drafter steps (SLM+)
                Forward(llm, verify, batch, slots),  # the LLM verifies K+1 positions
                Forward(slm, verify, batch, slots)]  # SLM- verifies them
    slots = round_up(width + max_new_tokens, 16)
    return [Forward(m, batch * len(names), batch * len(names), slots)
            for m, names in zip(generator.group_models, generator.layout.groups)]


def bounds_ms(forwards: list[Forward], itemsize: int, bandwidth: float, flops_per_s: float) -> dict:
    from common import matmul_flops, weight_bytes_read

    read = sum(f.count * (weight_bytes_read(f.model) + f.cache_rows * f.slots * kv_bytes_per_slot(f.model.cfg, itemsize))
               for f in forwards)
    flops = sum(f.count * f.tokens * (matmul_flops(f.model) + f.slots * attention_flops_per_slot(f.model.cfg))
                for f in forwards)
    return {"bytes_per_step": int(read), "flops_per_step": int(flops),
            "bandwidth_bound_ms": round(read / bandwidth * 1e3, 4), "compute_bound_ms": round(flops / flops_per_s * 1e3, 4)}


def time_configuration(method_name: str, models: dict, batch: int, itemsize: int, bandwidth: float,
                       flops_per_s: float) -> dict:
    import numpy as np

    from costeer_jax.data.example import Example
    from costeer_jax.decoding import methods
    from costeer_jax.decoding.runner import Generator

    options = methods.SpeculativeOptions(num_draft=FLAGS.num_draft) if method_name == "specsteer" else None
    hyper = {"spec_lambda": FLAGS.spec_lambda} if method_name == "specsteer" else {}
    generator = Generator(methods.get_method(method_name, speculative=options), models,
                          max_new_tokens=FLAGS.max_new_tokens, batch_size=batch, hyper=hyper)
    vocab = generator.vocab_limit

    def stream_ids(example):
        ids = {}
        for i, stream in enumerate(s for group in generator.layout.groups for s in group):
            rng = np.random.default_rng([int(example.id), i])
            ids[stream] = rng.integers(0, vocab - 1, FLAGS.prompt_len).tolist()
        return ids

    generator.stream_ids = stream_ids
    examples = [Example(str(b), "-", "-") for b in range(batch)]
    never = [vocab] * batch  # an id past the logits: no row stops before max_new_tokens

    def run(eos_ids):
        generator.eos_ids = eos_ids
        t0 = time.perf_counter()
        rows, _ = generator.run_batch(examples)
        return time.perf_counter() - t0, rows

    _, full_rows = run(never)  # compiles
    first = [r["token_ids"][0] for r in full_rows]
    full = min(run(never)[0] for _ in range(FLAGS.repeats))
    short_seconds, short_rows = zip(*(run(first) for _ in range(FLAGS.repeats)))
    short = min(short_seconds)
    steps = lambda rows: max(r.get("llm_calls", len(r["token_ids"])) for r in rows)
    full_steps, short_steps = steps(full_rows), steps(short_rows[0])
    tokens = sum(len(r["token_ids"]) for r in full_rows) - sum(len(r["token_ids"]) for r in short_rows[0])
    # At tiny shapes the steps can take less than the runs' jitter: no figure rather than a wrong one.
    resolved = full > short
    step_ms = (full - short) / max(full_steps - short_steps, 1) * 1e3 if resolved else None
    row = {"method": method_name, "batch": batch, "compile_seconds": round(generator.compile_seconds, 2),
           "prefill_and_one_step_ms": round(short * 1e3, 2), "steps": full_steps - short_steps,
           "step_ms": round(step_ms, 3) if resolved else None,
           "ms_per_token": round((full - short) * 1e3 / max(tokens / batch, 1), 3) if resolved else None,
           "tokens_per_s": round(tokens / (full - short), 1) if resolved else None,
           "short_run_steps": short_steps}
    if generator.spec is not None:
        accepted = sum(r["accepted_tokens"] for r in full_rows)
        row["acceptance_rate"] = round(accepted / max(sum(r["drafted_tokens"] for r in full_rows), 1), 4)
    row.update(bounds_ms(step_forwards(generator, batch, FLAGS.prompt_len, FLAGS.max_new_tokens, FLAGS.num_draft),
                         itemsize, bandwidth, flops_per_s))
    ratio = lambda bound: round(step_ms / bound, 2) if resolved and bound > 0 else None
    row["x_bandwidth_bound"] = ratio(row["bandwidth_bound_ms"])
    row["x_compute_bound"] = ratio(row["compute_bound_ms"])
    return row


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp

    from common import machine_note, matmul_throughput, read_bandwidth

    for pair in FLAGS.pairs:
        if pair not in PAIRS:
            raise app.UsageError(f"unknown pair {pair!r}; choose from {', '.join(PAIRS)}")
    dtype = jnp.bfloat16 if FLAGS.dtype == "bfloat16" else jnp.float32
    bandwidth = read_bandwidth(FLAGS.bandwidth_gb)
    # Decoder-shaped: the 7B's MLP on 4096 row-tokens on an accelerator, SmolLM2-like on a CPU.
    on_cpu = jax.default_backend() == "cpu"
    flops_per_s = matmul_throughput(*((512, 1536, 8960) if on_cpu else (4096, 3584, 18944)), dtype=dtype)
    result = {"machine": {**machine_note(), "device": str(jax.devices()[0].device_kind)},
              "read_bandwidth_gb_s": round(bandwidth / 1e9, 1), "matmul_tflop_s": round(flops_per_s / 1e12, 2),
              "flags": {k: FLAGS[k].value for k in ("prompt_len", "max_new_tokens", "num_draft", "spec_lambda", "dtype")},
              "rows": [], "skipped": []}
    start = time.perf_counter()
    for pair in FLAGS.pairs:
        llm_shape, slm_shape = PAIRS[pair]
        size = SHAPES[llm_shape]["vocab_size"] - 2 if pair == "tiny" else _QWEN_TOKENIZER_SIZE
        tokenizer = SyntheticTokenizer(size)
        models = {"llm": synthetic_model(llm_shape, tokenizer, dtype, 0), "slm": synthetic_model(slm_shape, tokenizer, dtype, 1)}
        for batch in map(int, FLAGS.batch_sizes):
            for method in FLAGS.methods:
                if time.perf_counter() - start > FLAGS.time_budget_s:
                    result["skipped"].append(f"{pair} {method} batch {batch}")
                    continue
                row = {"pair": pair, **time_configuration(method, models, batch, jnp.dtype(dtype).itemsize,
                                                          bandwidth, flops_per_s)}
                result["rows"].append(row)
                print(f"  {pair} {method} b={batch}: {row['step_ms']} ms/step ({row['x_bandwidth_bound']}x the "
                      f"bandwidth bound), compile {row['compile_seconds']} s", file=sys.stderr, flush=True)
        del models
    for row in result["rows"]:  # each method beside plain LLM decoding at the same pair and batch
        base = next((r for r in result["rows"] if r["pair"] == row["pair"] and r["batch"] == row["batch"]
                     and r["method"] == "llm_wo"), None)
        if base is not None and row["tokens_per_s"] and base["tokens_per_s"]:
            row["x_llm_wo_tokens_per_s"] = round(row["tokens_per_s"] / base["tokens_per_s"], 3)
    print(markdown(result))
    if FLAGS.output:
        Path(FLAGS.output).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


def markdown(result: dict) -> str:
    lines = [f"read bandwidth {result['read_bandwidth_gb_s']} GB/s, matmul {result['matmul_tflop_s']} TFLOP/s "
             f"({result['machine']['device']})", "",
             "| pair | method | batch | ms/step | ms/token/seq | tok/s | bandwidth bound ms | x bound | compute bound ms "
             "| x llm_wo tok/s | compile s |", "|" + "---|" * 11]
    for r in result["rows"]:
        lines.append(f"| {r['pair']} | {r['method']} | {r['batch']} | {r['step_ms']} | {r['ms_per_token']} | "
                     f"{r['tokens_per_s']} | {r['bandwidth_bound_ms']} | {r['x_bandwidth_bound']} | "
                     f"{r['compute_bound_ms']} | {r.get('x_llm_wo_tokens_per_s', '-')} | {r['compile_seconds']} |")
    if result["skipped"]:
        lines.append(f"\nskipped (time budget): {', '.join(result['skipped'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
