"""Wall-clock speedup of SpecSteer and speculative decoding (sd) over plain LLM decoding.

Three pairings, each timed against plain greedy LLM decoding (llm_wo) in the same process:

* qwen: the real pair of one tokenizer, Qwen2.5-Coder-1.5B-Instruct verifying drafts of
  Qwen2.5-Coder-0.5B-Instruct (lambda swept over --qwen_lambdas), plus sd at every K. For this
  pairing the run also measures the step times of the cost model
  (costeer_jax.costs.speculative: drafter step, LLM and SLM- verify over K+1 positions, plain
  LLM step), prints the speedup that model predicts from each row's own tokens per iteration
  beside the measured one, and the speedup the same model predicts on a memory-bound
  accelerator for the papers' pairs at the acceptance measured here.

* smollm2: SmolLM2-135M-Instruct as both LLM and drafter (the only real offline weights). The
  drafter reads query + private context, the LLM the query. A drafter as large as the LLM cannot
  make decoding faster; this measures the kernel's overhead and acceptance on real text.
  (SpecSteer with one checkpoint is degenerate: SLM- *is* the LLM, every draft passes.)
* random_llm: a larger random-weight Llama-style LLM on SmolLM2's vocabulary and tokenizer,
  drafted for by SmolLM2. Its acceptance has no meaning of its own, so SpecSteer's lambda is swept
  to set it, which gives speedup as a function of measured acceptance; sd (acceptance ~0 against
  random weights) is the no-acceptance end.

  python benchmarks/bench_specsteer.py --Ks=2,4,8 --max_new_tokens=32 --output=bench_specsteer.json

Prints a markdown table and, last, one JSON line with every row. Times exclude compilation
(reported separately) and model loading; each configuration decodes the same examples once, to
exactly max_new_tokens per row (--ignore_eos). The plain-LLM baseline runs first and again last;
speedups are against the mean of the two, as wall-clock and as process CPU time (the latter is
less sensitive to other jobs sharing the machine).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from absl import app, flags

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

FLAGS = flags.FLAGS
flags.DEFINE_list("parts", ["smollm2", "random_llm"], "Which pairings to time: smollm2, random_llm, qwen.")
flags.DEFINE_string("qwen_llm", "qwen2.5-coder-1.5b-instruct", "LLM of the qwen pairing.")
flags.DEFINE_string("qwen_slm", "qwen2.5-coder-0.5b-instruct", "SLM of the qwen pairing.")
flags.DEFINE_list("qwen_lambdas", ["0.1", "0.5", "1.0"], "SpecSteer lambdas for the qwen pairing.")
flags.DEFINE_string("task", "ultrachat", "Prompts: query vs query + private context (see costeer_jax.data.TASKS).")
flags.DEFINE_string("preference", "verbose", "Preference for preference tasks (verbose: rows rarely stop early).")
flags.DEFINE_integer("limit", 4, "Examples (decoded as one batch when limit <= batch_size).")
flags.DEFINE_integer("batch_size", 4, "Rows per batch.")
flags.DEFINE_integer("max_new_tokens", 32, "Tokens per example.")
flags.DEFINE_list("Ks", ["2", "4", "8"], "Draft lengths.")
flags.DEFINE_list("smol_lambdas", ["0.5"], "SpecSteer lambdas for the smollm2 pairing.")
flags.DEFINE_list("big_lambdas", ["1e-6", "1e-4", "1e-3"], "SpecSteer lambdas for the random LLM (sets acceptance).")
flags.DEFINE_list("big_sd_Ks", ["4"], "Draft lengths for sd against the random LLM (acceptance ~0: slow).")
flags.DEFINE_integer("big_hidden", 2048, "Random LLM hidden size.")
flags.DEFINE_integer("big_layers", 16, "Random LLM layers.")
flags.DEFINE_integer("big_heads", 16, "Random LLM attention heads.")
flags.DEFINE_integer("big_kv_heads", 4, "Random LLM KV heads.")
flags.DEFINE_integer("big_intermediate", 5632, "Random LLM MLP width.")
flags.DEFINE_bool("ignore_eos", True, "Decode exactly max_new_tokens per row, so every configuration "
                  "times the same number of tokens (a batch runs until its longest row ends).")
flags.DEFINE_string("output", None, "Also write the rows as JSON here.")


def random_llm(like, hidden, layers, heads, kv_heads, intermediate, seed=0):
    """A random-weight Llama-style model on `like`'s vocabulary and tokenizer (fp32)."""
    import jax

    from costeer_jax.models.config import DecoderConfig
    from costeer_jax.models.init import random_params
    from costeer_jax.models.loading import LoadedModel

    head_dim = hidden // heads
    vocab = like.cfg.vocab_size
    cfg = DecoderConfig(arch="llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                        num_layers=layers, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                        rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True, qkv_bias=False,
                        qk_norm=False, max_position_embeddings=like.cfg.max_position_embeddings)
    params = random_params(cfg, jax.random.key(seed))
    return LoadedModel(f"random-llama-{hidden}x{layers}", cfg, params, like.tokenizer, like.generation_eos)


def time_method(pairing, method_name, models, examples, *, options=None, hyper=None):
    from costeer_jax.decoding.methods import get_method
    from costeer_jax.decoding.runner import Generator, RunFigures

    generator = Generator(get_method(method_name, speculative=options), models,
                          max_new_tokens=FLAGS.max_new_tokens, batch_size=FLAGS.batch_size, hyper=hyper or {})
    if FLAGS.ignore_eos:
        generator.eos_ids = [generator.vocab_limit]  # an id no model can emit
    figures, token_ids = RunFigures(), {}
    t0, cpu0 = time.perf_counter(), time.process_time()
    for start in range(0, len(examples), FLAGS.batch_size):
        rows, stats = generator.run_batch(examples[start:start + FLAGS.batch_size])
        figures.examples += len(rows)
        figures.tokens += sum(len(r["token_ids"]) for r in rows)
        token_ids.update({r["id"]: r["token_ids"] for r in rows})
        for k, v in stats.items():
            figures.stats[k] = figures.stats.get(k, 0) + v
    figures.compile_seconds = generator.compile_seconds
    figures.generate_seconds = time.perf_counter() - t0 - generator.compile_seconds
    cpu_seconds = time.process_time() - cpu0 - generator.compile_cpu_seconds
    out = figures.as_dict()
    row = {"pairing": pairing, "method": method_name,
           "K": options.num_draft if options else None, "lambda": (hyper or {}).get("spec_lambda"),
           "tokens": out["tokens"], "seconds": out["generate_seconds"], "cpu_seconds": round(cpu_seconds, 3),
           "tokens_per_s": out["tokens_per_s"], "compile_seconds": out["compile_seconds"],
           "loadavg_1min": round(os.getloadavg()[0], 2), "batch": FLAGS.batch_size}
    for key in ("acceptance_rate", "mean_accepted_length", "llm_calls_per_token", "uplink_bytes_per_token",
                "downlink_bytes_per_token"):
        if key in out:
            row[key] = out[key]
    print(f"  {pairing} {method_name} K={row['K']} lambda={row['lambda']}: {row['tokens_per_s']} tok/s, "
          f"acceptance {row.get('acceptance_rate', '-')}", file=sys.stderr, flush=True)
    return row, token_ids


def run_pairing(pairing, models, examples, lambdas, sd_ks):
    """Baseline first and again last (load drift shows as their difference); speedups are against
    their mean: wall-clock, and process CPU time (less sensitive to other jobs on a shared box)."""
    from costeer_jax.decoding.methods import SpeculativeOptions, get_method
    from costeer_jax.decoding.runner import Generator

    # Untimed warm-up (a 2-token program): the process's first executions pay one-time costs
    # (runtime thread pools, first touch of the weights) that would otherwise land on the baseline.
    Generator(get_method("llm_wo"), models, max_new_tokens=2, batch_size=FLAGS.batch_size).run_batch(
        examples[:FLAGS.batch_size])
    base, base_ids = time_method(pairing, "llm_wo", models, examples)
    rows = [base]
    for k in (int(x) for x in FLAGS.Ks):
        if k in sd_ks:
            row, ids = time_method(pairing, "sd", models, examples, options=SpeculativeOptions(num_draft=k))
            row["identical_to_llm"] = ids == base_ids  # greedy sd must reproduce llm_wo exactly
            rows.append(row)
        for lam in lambdas:
            row, _ = time_method(pairing, "specsteer", models, examples, options=SpeculativeOptions(num_draft=k),
                                 hyper={"spec_lambda": lam})
            rows.append(row)
    again, _ = time_method(pairing, "llm_wo", models, examples)
    rows.append(again)
    # Every configuration decodes the same token count (ignore_eos), so time ratios are speedups.
    wall = (base["seconds"] + again["seconds"]) / 2
    cpu = (base["cpu_seconds"] + again["cpu_seconds"]) / 2
    for row in rows:
        per_token = row["tokens"] / base["tokens"]
        row["speedup"] = round(wall * per_token / row["seconds"], 3)
        row["cpu_speedup"] = round(cpu * per_token / row["cpu_seconds"], 3)
    return rows


# Weights one decode step reads, in parameters (the embedding table is gathered, not read, unless
# tied): the papers' pairs from their model cards (Qwen3-0.6B tied, 32B untied with a 151936 x 5120
# embedding; Qwen2.5-1.5B tied, 32B untied with 152064 x 5120).
PAPER_PAIRS = {"Qwen3-0.6B/32B": (32.76e9 - 0.78e9, 0.60e9), "Qwen2.5-1.5B/32B": (32.76e9 - 0.78e9, 1.54e9)}


def forward_seconds(model, batch: int, positions: int, cache_len: int = 256, repeats: int = 5) -> float:
    """One jitted forward of `positions` tokens per row on a cache already holding 96 tokens (what a
    verify over K+1 positions, or a single-token step, costs), best of `repeats`."""
    import dataclasses as dc

    import jax
    import jax.numpy as jnp

    from costeer_jax.models.cache import init_cache
    from costeer_jax.models.decoder import append_positions, forward

    cache = init_cache(model.cfg, batch, cache_len, model.params["embed"].dtype)
    cache = dc.replace(cache, lengths=jnp.full((batch,), 96, jnp.int32))
    tokens = jnp.ones((batch, positions), jnp.int32)
    valid = jnp.ones((batch, positions), bool)

    @jax.jit
    def run(params, cache, tokens):
        logits, _ = forward(params, model.cfg, tokens, append_positions(cache, valid), valid, cache)
        return logits

    run(model.params, cache, tokens).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(model.params, cache, tokens).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return best


def cost_model_rows(models, rows):
    """Step times of the cost model at this batch, each speculative row's predicted speedup from
    its own tokens per iteration, and accelerator predictions for the papers' pairs."""
    from costeer_jax.costs import speculative as cost
    from costeer_jax.decoding.methods import LLM, SLM

    llm, slm, batch = models[LLM], models[SLM], FLAGS.batch_size
    step = {"llm_step": forward_seconds(llm, batch, 1), "draft_step": forward_seconds(slm, batch, 1)}
    verify = {k: (forward_seconds(llm, batch, k + 1), forward_seconds(slm, batch, k + 1)) for k in map(int, FLAGS.Ks)}
    measured = {"batch": batch, **{k: round(v * 1e3, 2) for k, v in step.items()},
                "verify_ms": {k: [round(a * 1e3, 2), round(b * 1e3, 2)] for k, (a, b) in verify.items()}}
    predictions = []
    for row in rows:
        if row["method"] not in ("specsteer", "sd"):
            continue
        k = row["K"]
        times = cost.StepTimes(step["llm_step"], step["draft_step"], verify[k][0],
                               verify[k][1] if row["method"] == "specsteer" else 0.0)
        row["predicted_speedup"] = round(cost.predicted_speedup(times, k, row["mean_accepted_length"]), 3)
        for pair, (llm_params, slm_params) in PAPER_PAIRS.items():
            bound = cost.memory_bound_times(2 * llm_params, 2 * slm_params, 1.0, row["method"] == "specsteer")
            predictions.append({"pair": pair, "method": row["method"], "K": k, "lambda": row["lambda"],
                                "acceptance_rate": row["acceptance_rate"],
                                "tokens_per_iteration": row["mean_accepted_length"],
                                "predicted_speedup": round(cost.predicted_speedup(bound, k, row["mean_accepted_length"]), 2)})
    return measured, predictions


def markdown(rows):
    cols = ["pairing", "batch", "method", "K", "lambda", "tokens", "seconds", "cpu_seconds", "speedup", "cpu_speedup",
            "predicted_speedup", "acceptance_rate", "mean_accepted_length", "llm_calls_per_token", "loadavg_1min",
            "identical_to_llm"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join("" if row.get(c) is None else str(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv):
    del argv
    from costeer_jax import data
    from costeer_jax.decoding.methods import LLM, SLM
    from costeer_jax.models.params_cache import load_model_cached

    examples = data.load_task(FLAGS.task, None, FLAGS.preference, FLAGS.limit)
    load_before = os.getloadavg()
    if {"smollm2", "random_llm"} & set(FLAGS.parts):
        smol = load_model_cached("smollm2-135m-instruct")
    rows, cost_model, predictions = [], None, []
    if "qwen" in FLAGS.parts:
        qwen = {LLM: load_model_cached(FLAGS.qwen_llm), SLM: load_model_cached(FLAGS.qwen_slm)}
        qwen_rows = run_pairing("qwen", qwen, examples, [float(x) for x in FLAGS.qwen_lambdas],
                                [int(x) for x in FLAGS.Ks])
        cost_model, predictions = cost_model_rows(qwen, qwen_rows)
        rows += qwen_rows
    if "smollm2" in FLAGS.parts:
        rows += run_pairing("smollm2", {LLM: smol, SLM: smol}, examples, [float(x) for x in FLAGS.smol_lambdas],
                            [int(x) for x in FLAGS.Ks])
    if "random_llm" in FLAGS.parts:
        big = random_llm(smol, FLAGS.big_hidden, FLAGS.big_layers, FLAGS.big_heads, FLAGS.big_kv_heads,
                         FLAGS.big_intermediate)
        rows += run_pairing(big.name, {LLM: big, SLM: smol}, examples, [float(x) for x in FLAGS.big_lambdas],
                            [int(x) for x in FLAGS.big_sd_Ks])
    summary = {"task": FLAGS.task, "preference": FLAGS.preference, "ignore_eos": FLAGS.ignore_eos, "examples": len(examples), "batch_size": FLAGS.batch_size,
               "max_new_tokens": FLAGS.max_new_tokens, "cpu_count": os.cpu_count(),
               "loadavg_before": [round(x, 2) for x in load_before],
               "loadavg_after": [round(x, 2) for x in os.getloadavg()], "rows": rows,
               "cost_model_step_ms": cost_model, "accelerator_predictions": predictions}
    print(markdown(rows))
    if predictions:
        print(f"\ncost model step times (ms, batch {FLAGS.batch_size}): {json.dumps(cost_model)}")
        print("\n| pair (memory-bound accelerator) | method | K | lambda | acceptance here | tokens/iteration | "
              "predicted speedup |\n|---|---|---|---|---|---|---|")
        for p in predictions:
            print(f"| {p['pair']} | {p['method']} | {p['K']} | {p['lambda']} | {p['acceptance_rate']} | "
                  f"{p['tokens_per_iteration']} | {p['predicted_speedup']} |")
    if FLAGS.output:
        Path(FLAGS.output).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
