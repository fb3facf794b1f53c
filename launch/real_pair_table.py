"""Every method on the real pair, on real data, as one resumable command: generate, evaluate, table.

  .venv/bin/python launch/real_pair_table.py --output_dir=outputs/real_pair_table

Runs experiments/generate.py for every (task, method) (greedy, --max_new_tokens, the Qwen pair by
default), then scores each task with the library's evaluation (ROUGE-1/L, METEOR against the
references) and writes `table.md` / `table.json`: per method and task the scores, tokens/s of
that run (steady state: generate seconds, compile apart) and, for specsteer/sd, the acceptance
rate and mean accepted length. Interrupted runs resume (generate.py skips finished ids; a run's
figures are kept from the invocation that decoded its rows). --dry_run prints the commands.

It is a plumbing-and-behaviour table for a small pair on a CPU, not the papers' numbers.
"""
from __future__ import annotations

import json
import subprocess
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
                              "specsteer", "sd"], "Methods (generate.py --method values).")
flags.DEFINE_integer("max_new_tokens", 128, "Tokens per example.")
flags.DEFINE_integer("batch_size", 8, "Prompts per batch.")
flags.DEFINE_list("extra", [], "More generate.py flags for every run, e.g. --K=4,--spec_lambda=0.5.")
flags.DEFINE_bool("dry_run", False, "Print the generate commands and exit.")
flags.mark_flag_as_required("output_dir")


def run_paths(task: str, method: str) -> tuple[Path, Path]:
    folder = Path(FLAGS.output_dir) / task
    return folder / f"{method}.jsonl", folder / f"{method}.figures.json"


def generate(task: str, limit: int, method: str) -> None:
    output, figures_path = run_paths(task, method)
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(REPO_ROOT / "experiments" / "generate.py"), f"--method={method}",
           f"--task={task}", f"--limit={limit}", f"--llm={FLAGS.llm}", f"--slm={FLAGS.slm}",
           f"--max_new_tokens={FLAGS.max_new_tokens}", f"--batch_size={FLAGS.batch_size}", f"--output={output}",
           *FLAGS.extra]
    if FLAGS.dry_run:
        print(" ".join(cmd))
        return
    print(f"== {task} {method}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"generate.py failed for {task} {method} (exit {done.returncode}); rerun to resume")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    if figures["examples"]:  # a resumed run with nothing left keeps the figures of the run that decoded
        figures_path.write_text(json.dumps(figures, indent=1))


def speculative_figures(outputs: list[Path]) -> dict:
    """Acceptance rate and mean accepted length over every row of the given run files."""
    from costeer_jax.decoding.speculative import STAT_NAMES, stats_summary

    rows = [json.loads(line) for output in outputs for line in output.read_text().splitlines() if line.strip()]
    if not rows or "drafted_tokens" not in rows[0]:
        return {}
    totals = {name: sum(r.get(name, 0) for r in rows) for name in STAT_NAMES}
    summary = stats_summary(totals, sum(len(r["token_ids"]) for r in rows))
    return {"acceptance": summary["acceptance_rate"], "accepted_length": summary["mean_accepted_length"]}


def table(tasks: list[tuple[str, int]]) -> str:
    from costeer_jax.eval.evaluation import evaluate_prediction_files
    from costeer_jax.eval.scoring import Scorers

    scores: dict[tuple[str, str], dict] = {}
    for task, _ in tasks:
        files = [run_paths(task, m)[0] for m in FLAGS.methods]
        results = evaluate_prediction_files(files, Scorers(), tasks=[task], metrics=["rouge", "meteor"])
        for method, result in zip(FLAGS.methods, results):
            scores[(task, method)] = {k: round(v, 2) for k, v in result["averages"].items()}
    header = ["method"]
    for task, limit in tasks:
        header += [f"{task} R-1", "R-L", "METEOR", "tok/s"]
    header += ["acceptance (all tasks)", "accepted length"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    data = {}
    for method in FLAGS.methods:
        cells = [method]
        for task, _ in tasks:
            s = scores[(task, method)]
            figures_path = run_paths(task, method)[1]
            figures = json.loads(figures_path.read_text()) if figures_path.exists() else {}
            cells += [str(s.get("rouge1", "")), str(s.get("rougeL", "")), str(s.get("meteor", "")),
                      str(figures.get("tokens_per_s", ""))]
            data[f"{task}/{method}"] = {**s, "tokens_per_s": figures.get("tokens_per_s"),
                                        **speculative_figures([run_paths(task, method)[0]])}
        spec = speculative_figures([run_paths(t, method)[0] for t, _ in tasks])
        cells += [str(spec.get("acceptance", "")), str(spec.get("accepted_length", ""))]
        lines.append("| " + " | ".join(cells) + " |")
    (Path(FLAGS.output_dir) / "table.json").write_text(json.dumps(data, indent=1))
    return "\n".join(lines)


def main(argv):
    del argv
    tasks = []
    for item in FLAGS.tasks:
        name, _, limit = item.partition(":")
        tasks.append((name, int(limit or 0)))
    for task, limit in tasks:
        for method in FLAGS.methods:
            generate(task, limit, method)
    if FLAGS.dry_run:
        return
    text = table(tasks)
    (Path(FLAGS.output_dir) / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    app.run(main)
