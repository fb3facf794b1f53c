"""`make demo` / `make demo-pair`: the papers' settings side by side on a few built-in prompts.

Runs LLM w/o, LLM w/, SLM w/, CoSteer, LightCoSteer, AdaCoSteer and SpecSteer, prints each
prompt's outputs together, then one line of throughput per method (SpecSteer with its
acceptance rate and mean accepted length).

  make demo       SmolLM2-135M-Instruct as both LLM and SLM (quick; a degenerate pair: the SLM
                  without context *is* the LLM, so SpecSteer accepts every draft)
  make demo-pair  the real pair: Qwen2.5-Coder-1.5B-Instruct steered by Qwen2.5-Coder-0.5B-Instruct
  make demo-cross a cross-family pair: Qwen2.5-Coder-1.5B-Instruct steered by SmolLM2-135M-Instruct
                  (another tokenizer) with CoSteer_map and CoSteer_byte
"""
from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

from absl import app, flags

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from experiments import run_setup  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("llm", "smollm2-135m-instruct", "Cloud LLM (alias, directory or .gguf).")
flags.DEFINE_string("slm", None, "Local SLM (default: the LLM itself).")
flags.DEFINE_integer("max_new_tokens", 48, "Tokens per answer.")
flags.DEFINE_integer("num_prompts", 4, "How many built-in prompts to run.")
flags.DEFINE_list("methods", ["llm_wo", "llm_w", "slm_w", "costeer", "light_costeer", "ada_costeer", "specsteer"],
                  "Methods to compare.")
run_setup.define_compilation_cache_flag()

LABELS = {"llm_wo": "LLM w/o", "llm_w": "LLM w/ (sees the context)", "slm_w": "SLM w/",
          "costeer": "CoSteer", "light_costeer": "LightCoSteer", "ada_costeer": "AdaCoSteer",
          "slm_wo": "SLM w/o", "cs": "LA/CS", "specsteer": "SpecSteer (K=4, lambda=0.5)", "sd": "spec. decoding",
          "costeer_map": "CoSteer_map (shared tokens)", "costeer_byte": "CoSteer_byte (byte space)"}


def main(argv):
    del argv
    from costeer_jax.data.demo_prompts import demo_examples
    from costeer_jax.decoding import methods
    from costeer_jax.decoding.runner import Generator
    from costeer_jax.models.params_cache import load_model_cached

    run_setup.enable_compilation_cache()
    examples = demo_examples()[:FLAGS.num_prompts]
    slm_name = FLAGS.slm or FLAGS.llm
    print(f"loading LLM {FLAGS.llm} and SLM {slm_name} ...", file=sys.stderr)
    llm = load_model_cached(FLAGS.llm)
    models = {methods.LLM: llm, methods.SLM: llm if slm_name == FLAGS.llm else load_model_cached(slm_name)}
    outputs, speed, alignment = {}, {}, None
    for name in FLAGS.methods:
        gen = Generator(methods.get_method(name), models, max_new_tokens=FLAGS.max_new_tokens,
                        batch_size=len(examples))
        t0 = time.perf_counter()
        rows, stats = gen.run_batch(examples)
        seconds = time.perf_counter() - t0 - gen.compile_seconds
        outputs[name] = {r["id"]: r for r in rows}
        alignment = gen.alignment if gen.alignment is not None else alignment
        tokens = sum(len(r["token_ids"]) for r in rows)
        extra = ""
        if "steered_tokens" in stats:
            extra = f", steered {stats['steered_tokens']}/{tokens} tokens"
        if "drafted_tokens" in stats:
            from costeer_jax.decoding.speculative import stats_summary

            spec = stats_summary(stats, tokens)
            extra = (f", acceptance {spec['acceptance_rate']:.2f}, {spec['mean_accepted_length']:.2f} tokens "
                     "per LLM call")
        speed[name] = (tokens, seconds, gen.compile_seconds, extra)
    width = 100
    for ex in examples:
        print("=" * width)
        print(f"[{ex.id}] query: {ex.query}")
        print(f"      private context (local only): {ex.personalized_query[:-len(ex.query) - 1]}")
        for name in FLAGS.methods:
            text = " ".join(outputs[name][ex.id]["output"].split())
            print(textwrap.fill(text, width, initial_indent=f"  {LABELS.get(name, name):>26} | ",
                                subsequent_indent=" " * 31))
    print("=" * width)
    print(f"LLM {FLAGS.llm}, SLM {slm_name}")
    if alignment is not None:
        summary = alignment.summary(len(llm.tokenizer), len(models[methods.SLM].tokenizer))
        print(f"different tokenizers: {summary['shared_normal_tokens']} tokens shared by bytes "
              f"({summary['llm_share_kept']:.0%} of the LLM's, {summary['slm_share_kept']:.0%} of the SLM's)")
    for name, (tokens, seconds, compile_s, extra) in speed.items():
        print(f"{LABELS.get(name, name):>26}: {tokens} tokens in {seconds:.2f} s "
              f"({tokens / max(seconds, 1e-9):.1f} tok/s, batch {len(examples)}; compile {compile_s:.1f} s{extra})")


if __name__ == "__main__":
    app.run(main)
