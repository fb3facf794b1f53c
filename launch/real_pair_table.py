"""Every method on the real pair, on real data, as one resumable command: generate, evaluate, table.

  .venv/bin/python launch/real_pair_table.py --output_dir=outputs/real_pair_table

Runs experiments/generate.py for every (task, method) (greedy, --max_new_tokens, the Qwen pair by
default), then scores each task with the library's evaluation (ROUGE-1/L, METEOR against the
references) and writes `table.md` / `table.json`: per method and task the scores, tokens/s of
that run (steady state: generate seconds, compile apart) and, for specsteer/sd, the acceptance
rate and mean accepted length; with the leakage metric, the leakage table and a leakage-vs-quality
plot per task (`<table_name>_leakage_<task>.png`). Interrupted runs resume (generate.py skips
finished ids; a run's figures are kept from the invocation that decoded its rows). --dry_run
prints the commands.

It is a plumbing-and-behaviour table for a small pair on a CPU, not the papers' numbers.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Folder of the runs and the table (resumable).")
flags.DEFINE_string("llm", "qwen2.5-coder-1.5b-instruct", "Cloud LLM.")
flags.DEFINE_string("slm", "qwen2.5-coder-0.5b-instruct", "Edge SLM.")
flags.DEFINE_list("tasks", ["cogenesis:24", "longlamp_review:6", "longlamp_writing:6"], "TASK:LIMIT pairs.")
flags.DEFINE_list("methods", ["llm_wo", "llm_w", "slm_wo", "slm_w", "costeer", "light_costeer", "ada_costeer", "cs",
                              "specsteer", "sd"],
                  "Runs: a generate.py --method value, or NAME=METHOD+FLAG+FLAG for a variant, e.g. "
                  "costeer_guard8=costeer+--copy_guard=8 or specsteer_lam0.1=specsteer+--spec_lambda=0.1.")
flags.DEFINE_integer("max_new_tokens", 128, "Tokens per example.")
flags.DEFINE_integer("batch_size", 12, "Prompts per batch (at most the task's limit).")
flags.DEFINE_list("extra", [], "More generate.py flags for every run, e.g. --record_cloud_view.")
flags.DEFINE_list("metrics", ["rouge", "meteor", "leakage"], "evaluate metrics (leakage adds the second table).")
flags.DEFINE_string("table_name", "table", "Basename of the table files (table.md, table.json).")
flags.DEFINE_bool("dry_run", False, "Print the generate commands and exit.")
flags.mark_flag_as_required("output_dir")


def parse_run(item: str) -> tuple[str, str, list[str]]:
    """(run name, method, its own generate.py flags) of a --methods entry."""
    if "=" not in item.split("+")[0]:
        method, *own = item.split("+")
        return method, method, own
    name, rest = item.split("=", 1)
    method, *own = rest.split("+")
    return name, method, own


def run_paths(task: str, name: str) -> tuple[Path, Path]:
    folder = Path(FLAGS.output_dir) / task
    return folder / f"{name}.jsonl", folder / f"{name}.figures.json"


def batch_size(limit: int) -> int:
    """--batch_size, never above the task's row count: a short task is not padded to a wide batch."""
    return min(FLAGS.batch_size, limit) if limit else FLAGS.batch_size


def generate(task: str, limit: int, item: str) -> None:
    from costeer_jax.reproduction import harness

    name, method, own = parse_run(item)
    output, figures_path = run_paths(task, name)
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = harness.generate_command(method, task, output, FLAGS.llm, FLAGS.slm, limit, FLAGS.max_new_tokens,
                                   batch_size(limit), (*FLAGS.extra, *own))
    if FLAGS.dry_run:
        print(" ".join(cmd))
        return
    print(f"== {task} {name}", file=sys.stderr, flush=True)
    try:
        harness.run_generate(cmd, figures_path)
    except RuntimeError as e:
        raise SystemExit(str(e)) from None


LEAKAGE_COLUMNS = (("leak_span", "out span"), ("leak_share_4", "out 4-gram"), ("cloud_leak_span", "cloud span"),
                   ("cloud_leak_share_4", "cloud 4-gram"))


def _cell(value, share: bool = False) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if share else f"{value:.2f}" if isinstance(value, float) else str(value)


def table(tasks: list[tuple[str, int]]) -> str:
    """The quality table (per task: R-1, R-L, METEOR, tok/s; acceptance over all tasks) and, with
    leakage, the leakage table (per task: the output's and the cloud view's longest copied span
    in words and share of copied 4-grams). Also writes every average to table.json."""
    from costeer_jax.eval.evaluation import evaluate_prediction_files
    from costeer_jax.eval.plots import plot_leakage_vs_quality
    from costeer_jax.eval.scoring import Scorers
    from costeer_jax.reproduction.harness import speculative_figures

    names = [parse_run(item)[0] for item in FLAGS.methods]
    scores: dict[tuple[str, str], dict] = {}
    for task, _ in tasks:
        results = evaluate_prediction_files([run_paths(task, n)[0] for n in names], Scorers(), tasks=[task],
                                            metrics=FLAGS.metrics)
        for name, result in zip(names, results):
            scores[(task, name)] = result["averages"]
        # One PNG per task (<table_name>_leakage_<task>.png): every run as leakage against quality.
        plot_leakage_vs_quality(results, names, Path(FLAGS.output_dir) / FLAGS.table_name)
    header = ["run"] + [c for task, _ in tasks for c in (f"{task} R-1", "R-L", "METEOR", "tok/s")]
    header += ["acceptance (all tasks)", "accepted length"]
    quality = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    leak_header = ["run"] + [f"{task} {label}" if i == 0 else label for task, _ in tasks
                             for i, (_, label) in enumerate(LEAKAGE_COLUMNS)]
    leakage = ["| " + " | ".join(leak_header) + " |", "|" + "---|" * len(leak_header)]
    data = {}
    for name in names:
        cells, leak_cells = [name], [name]
        for task, _ in tasks:
            s = scores[(task, name)]
            figures_path = run_paths(task, name)[1]
            figures = json.loads(figures_path.read_text()) if figures_path.exists() else {}
            cells += [_cell(s.get("rouge1")), _cell(s.get("rougeL")), _cell(s.get("meteor")),
                      _cell(figures.get("tokens_per_s"))]
            leak_cells += [_cell(s.get(key), "share" in key) for key, _ in LEAKAGE_COLUMNS]
            data[f"{task}/{name}"] = {**s, "tokens_per_s": figures.get("tokens_per_s"),
                                      **speculative_figures([run_paths(task, name)[0]])}
        spec = speculative_figures([run_paths(t, name)[0] for t, _ in tasks])
        cells += [_cell(spec.get("acceptance")), _cell(spec.get("accepted_length"))]
        quality.append("| " + " | ".join(cells) + " |")
        leakage.append("| " + " | ".join(leak_cells) + " |")
    (Path(FLAGS.output_dir) / f"{FLAGS.table_name}.json").write_text(json.dumps(data, indent=1))
    text = "\n".join(quality)
    if "leakage" in FLAGS.metrics:
        text += "\n\nLeakage (words; share of the text's 4-grams copied from the private context, not in the query):\n\n"
        text += "\n".join(leakage)
    return text


def main(argv):
    del argv
    tasks = []
    for item in FLAGS.tasks:
        name, _, limit = item.partition(":")
        tasks.append((name, int(limit or 0)))
    for task, limit in tasks:
        for item in FLAGS.methods:
            generate(task, limit, item)
    if FLAGS.dry_run:
        return
    text = table(tasks)
    (Path(FLAGS.output_dir) / f"{FLAGS.table_name}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    app.run(main)
