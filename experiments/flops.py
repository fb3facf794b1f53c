"""Analytic FLOPs per answer (costeer_jax/costs/flops.py): CoSteer Table 14 and SpecSteer Table 11
beside ours, and an account per method for any pair, context length and run file.

  .venv/bin/python experiments/flops.py                                   # the two paper tables
  .venv/bin/python experiments/flops.py --pair=Qwen3-32B/0.6B --context=1000 --methods=llm_w,costeer,specsteer
  .venv/bin/python experiments/flops.py --llm_config=path/config.json --slm_config=... --run_file=run.jsonl

Conventions: `exact` counts what our decoder computes (prefill of every prompt, logits where
taken, attention over the real lengths); `narayanan` is the estimate CoSteer Table 14 uses.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from costeer_jax.costs import flops  # noqa: E402
from costeer_jax.reproduction import analytic  # noqa: E402
from costeer_jax.costs.speculative import expected_tokens_per_iteration  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("pair", None, sorted(flops.PAPER_PAIRS), "A paper pair (presets); or --llm_config/--slm_config.")
flags.DEFINE_string("llm_config", None, "LLM: a Hugging Face config.json, a .gguf file or a registered alias.")
flags.DEFINE_string("slm_config", None, "SLM: as --llm_config.")
flags.DEFINE_list("methods", ["llm_wo", "llm_w", "costeer", "specsteer", "sd"], "Methods to account.")
flags.DEFINE_integer("query_tokens", 20, "Query (and chat template) tokens.")
flags.DEFINE_list("context", ["100", "1000", "10000"], "Private context lengths (tokens).")
flags.DEFINE_integer("new_tokens", 100, "Generated tokens per answer.")
flags.DEFINE_integer("K", 4, "specsteer/sd: drafts per iteration.")
flags.DEFINE_float("acceptance", 0.56, "specsteer/sd without --run_file: per-draft acceptance.")
flags.DEFINE_string("run_file", None, "A generate.py output of specsteer/sd: iterations and drafts per row from it.")
flags.DEFINE_enum("convention", "exact", ["exact", "narayanan"], "Token-loop counting convention.")

def run_statistics() -> tuple[float, float]:
    """Mean iterations (llm_calls) and drafted tokens per row of --run_file."""
    rows = [json.loads(line) for line in Path(FLAGS.run_file).read_text().splitlines() if line.strip()]
    if not rows or "llm_calls" not in rows[0]:
        raise app.UsageError(f"--run_file {FLAGS.run_file}: needs specsteer/sd rows (with llm_calls, drafted_tokens)")
    return (sum(r["llm_calls"] for r in rows) / len(rows), sum(r["drafted_tokens"] for r in rows) / len(rows))


def main(argv):
    del argv
    if not (FLAGS.pair or FLAGS.llm_config):
        print(analytic.costeer_table14_markdown())
        print()
        print(analytic.specsteer_table11_markdown())
        return
    if FLAGS.pair:
        llm, slm = (flops.PRESETS[n] for n in flops.PAPER_PAIRS[FLAGS.pair])
    elif FLAGS.slm_config:
        llm, slm = flops.model_shape(FLAGS.llm_config, "llm"), flops.model_shape(FLAGS.slm_config, "slm")
    else:
        raise app.UsageError("--llm_config needs --slm_config")
    print(f"TFLOPs per answer: {llm.name} / {slm.name}, query {FLAGS.query_tokens}, {FLAGS.new_tokens} new tokens "
          f"({FLAGS.convention} convention for the token loop)")
    print("| method | context | cloud prefill | cloud decode | edge prefill | edge decode | total |\n|---|---|---|---|---|---|---|")
    for context in map(int, FLAGS.context):
        for method in FLAGS.methods:
            if method in ("specsteer", "sd"):
                if FLAGS.run_file:
                    iterations, drafted = run_statistics()
                else:
                    iterations = FLAGS.new_tokens / expected_tokens_per_iteration(FLAGS.acceptance, FLAGS.K, method == "sd")
                    drafted = FLAGS.K * iterations
                account = flops.speculative_account(method, llm, slm, FLAGS.query_tokens, context, FLAGS.new_tokens,
                                                    iterations, drafted, FLAGS.K)
            else:
                try:
                    account = flops.token_loop_account(method, llm, slm, FLAGS.query_tokens, context,
                                                       FLAGS.new_tokens, FLAGS.convention)
                except ValueError as e:
                    raise app.UsageError(str(e)) from None
            d = account.as_dict()
            print(f"| {method} | {context} | " + " | ".join(f"{d[k] / 1e12:.3f}" for k in
                  ("cloud_prefill", "cloud_decode", "edge_prefill", "edge_decode", "total")) + " |")


if __name__ == "__main__":
    from costeer_jax.cli import run

    run(main)
