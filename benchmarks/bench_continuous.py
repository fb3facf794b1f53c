"""Static vs continuous batching in the same run: tokens/s and the share of slot-steps that decoded
a token, on real rows whose outputs end at different lengths.

Each mode decodes the same examples (the first --limit rows of --task) into a fresh file through
`generate_to_file`, the path the CLI takes. tokens/s excludes compile time (reported apart). The
useful share is the slot-steps that advanced a live row over all slot-steps run (a step is a token,
or for specsteer/sd a Draft-Verify iteration): static runs every row of a batch until its longest
row ends (batch_size x longest per batch); continuous counts the steps its pool ran. Also printed: the
output length distribution, and how many rows differ in tokens between the modes (0 unless a
real-model near-tie flips with the cache length; see BUILD_NOTES.md on fp32 near-ties).

  python benchmarks/bench_continuous.py --llm=qwen2.5-coder-1.5b-instruct --slm=qwen2.5-coder-0.5b-instruct \\
      --task=cogenesis --limit=24 --max_new_tokens=512 --batch_size=8
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from absl import app, flags

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

FLAGS = flags.FLAGS
flags.DEFINE_string("llm", "smollm2-135m-instruct", "LLM (alias or path).")
flags.DEFINE_string("slm", "smollm2-135m-instruct", "SLM (alias or path).")
flags.DEFINE_string("method", "costeer", "Any method continuous batching covers (e.g. costeer, specsteer, sd).")
flags.DEFINE_string("task", "cogenesis", "Task whose first --limit rows are decoded.")
flags.DEFINE_string("data_dir", None, "Data folder (default: the task's).")
flags.DEFINE_string("preference", None, "Preference tasks (truthfulqa, helpsteer, ultrachat, ...): concise|creative|uplifting|verbose.")
flags.DEFINE_integer("limit", 24, "Rows.")
flags.DEFINE_integer("batch_size", 8, "Rows per static batch = slots of the continuous pool.")
flags.DEFINE_integer("max_new_tokens", 512, "Budget per row.")
flags.DEFINE_integer("segment_steps", 8, "Continuous: steps between refills.")
flags.DEFINE_list("modes", ["static", "continuous"], "Which batchings to time.")
flags.DEFINE_string("output", None, "Also write the figures as JSON here.")


def row_steps(row: dict) -> int:
    """Loop steps a row needed: its tokens, or for specsteer/sd its Draft-Verify iterations."""
    return int(row.get("llm_calls", len(row["token_ids"])))


def static_slot_steps(rows: list[dict], batch_size: int) -> int:
    """Slot-steps of static batching in generate_to_file's order (rows sorted by prompt length):
    every slot of a batch runs as long as its longest row."""
    steps = [row_steps(r) for r in rows]
    return sum(batch_size * max(steps[i:i + batch_size]) for i in range(0, len(steps), batch_size))


def main(argv):
    del argv
    import numpy as np

    from common import load_pair, machine_note
    from costeer_jax.data import load_task
    from costeer_jax.decoding.methods import get_method
    from costeer_jax.decoding.runner import Generator, generate_to_file

    examples = load_task(FLAGS.task, limit=FLAGS.limit, data_dir=FLAGS.data_dir, preference=FLAGS.preference)
    order = {e.id: i for i, e in enumerate(sorted(examples, key=lambda e: len(e.personalized_query) + len(e.query)))}
    models = load_pair(FLAGS.llm, FLAGS.slm)
    result = {"machine": machine_note(), "llm": FLAGS.llm, "slm": FLAGS.slm, "method": FLAGS.method,
              "task": FLAGS.task, "preference": FLAGS.preference, "rows": len(examples), "batch_size": FLAGS.batch_size,
              "max_new_tokens": FLAGS.max_new_tokens, "segment_steps": FLAGS.segment_steps, "modes": {}}
    tokens_by_mode = {}
    with tempfile.TemporaryDirectory() as d:
        for mode in FLAGS.modes:
            generator = Generator(get_method(FLAGS.method), models, max_new_tokens=FLAGS.max_new_tokens,
                                  batch_size=FLAGS.batch_size)
            out = Path(d) / f"{mode}.jsonl"
            figures = generate_to_file(generator, examples, out, progress=True, batching=mode,
                                       segment_steps=FLAGS.segment_steps)
            rows = sorted(map(json.loads, out.read_text().splitlines()), key=lambda r: order[r["id"]])
            tokens_by_mode[mode] = {r["id"]: r["token_ids"] for r in rows}
            seconds = figures.generate_seconds - figures.compile_seconds
            if mode == "continuous":
                useful, slot_steps = figures.useful_slot_steps, figures.slot_steps
            else:
                useful, slot_steps = sum(map(row_steps, rows)), static_slot_steps(rows, FLAGS.batch_size)
            result["modes"][mode] = {"tokens": figures.tokens, "seconds": round(seconds, 2),
                                     "tokens_per_s": round(figures.tokens / seconds, 3),
                                     "compile_seconds": round(figures.compile_seconds, 2),
                                     "useful_slot_share": round(useful / max(slot_steps, 1), 4)}
            print(f"  {mode}: {result['modes'][mode]}", file=sys.stderr, flush=True)
    lengths = np.asarray([len(t) for t in next(iter(tokens_by_mode.values())).values()])
    result["output_lengths"] = {"min": int(lengths.min()), "p25": float(np.percentile(lengths, 25)),
                                "median": float(np.median(lengths)), "p75": float(np.percentile(lengths, 75)),
                                "max": int(lengths.max()), "at_budget": int(np.sum(lengths == FLAGS.max_new_tokens))}
    if {"static", "continuous"} <= set(tokens_by_mode):
        a, b = tokens_by_mode["static"], tokens_by_mode["continuous"]
        result["rows_differing"] = sum(a[k] != b[k] for k in a)
        result["continuous_over_static"] = round(result["modes"]["continuous"]["tokens_per_s"]
                                                 / result["modes"]["static"]["tokens_per_s"], 3)
    if FLAGS.output:
        Path(FLAGS.output).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
