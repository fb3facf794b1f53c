"""`make demo`: the papers' settings side by side on the embedded SmolLM2-135M-Instruct.

Runs LLM w/o, LLM w/, SLM w/, CoSteer, LightCoSteer and AdaCoSteer on a few built-in prompts
(SmolLM2 plays both the cloud LLM and the local SLM: the only real offline weights) and prints
each prompt's outputs together, then one line of throughput per method.
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
flags.DEFINE_string("model", "smollm2-135m-instruct", "Checkpoint playing both LLM and SLM.")
flags.DEFINE_integer("max_new_tokens", 48, "Tokens per answer.")
flags.DEFINE_integer("num_prompts", 4, "How many built-in prompts to run.")
flags.DEFINE_list("methods", ["llm_wo", "llm_w", "slm_w", "costeer", "light_costeer", "ada_costeer"],
                  "Methods to compare.")
run_setup.define_compilation_cache_flag()

LABELS = {"llm_wo": "LLM w/o", "llm_w": "LLM w/ (sees the context)", "slm_w": "SLM w/",
          "costeer": "CoSteer", "light_costeer": "LightCoSteer", "ada_costeer": "AdaCoSteer",
          "slm_wo": "SLM w/o", "cs": "LA/CS"}


def main(argv):
    del argv
    from costeer_jax.data.demo_prompts import demo_examples
    from costeer_jax.decoding import methods
    from costeer_jax.decoding.runner import Generator
    from costeer_jax.models.loading import load_model

    run_setup.enable_compilation_cache()
    examples = demo_examples()[:FLAGS.num_prompts]
    print(f"loading {FLAGS.model} ...", file=sys.stderr)
    model = load_model(FLAGS.model)
    models = {methods.LLM: model, methods.SLM: model}
    outputs, speed = {}, {}
    for name in FLAGS.methods:
        gen = Generator(methods.get_method(name), models, max_new_tokens=FLAGS.max_new_tokens,
                        batch_size=len(examples))
        t0 = time.perf_counter()
        rows, stats = gen.run_batch(examples)
        seconds = time.perf_counter() - t0 - gen.compile_seconds
        outputs[name] = {r["id"]: r for r in rows}
        tokens = sum(len(r["token_ids"]) for r in rows)
        speed[name] = (tokens, seconds, gen.compile_seconds, stats.get("steered_tokens"))
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
    for name, (tokens, seconds, compile_s, steered) in speed.items():
        extra = f", steered {steered}/{tokens} tokens" if steered is not None else ""
        print(f"{LABELS.get(name, name):>26}: {tokens} tokens in {seconds:.2f} s "
              f"({tokens / max(seconds, 1e-9):.1f} tok/s, batch {len(examples)}; compile {compile_s:.1f} s{extra})")


if __name__ == "__main__":
    app.run(main)
