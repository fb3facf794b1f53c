"""One command per table of both papers: runs what is missing (resumable), evaluates, and writes
the paper-style table with the paper's numbers beside ours (costeer_jax/reproduction/).

  .venv/bin/python experiments/reproduce.py --list
  .venv/bin/python experiments/reproduce.py --table=costeer_table14
  .venv/bin/python experiments/reproduce.py --table=costeer_table9 --llm=qwen2.5-coder-1.5b-instruct \\
      --slm=qwen2.5-coder-0.5b-instruct --limit=6
  .venv/bin/python experiments/reproduce.py --table=all --dry_run

Output: OUTPUT_DIR/TABLE/TASK/ROW.jsonl (generate.py rows, resumable), OUTPUT_DIR/TABLE.md/.csv/.json.
Cells read `ours (paper)`; the paper's numbers are its own pair's (printed in the header), not
a target for a small local pair. A table that needs something absent says what and how to supply it.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from absl import app, flags

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from costeer_jax.atomic_files import write_text_atomic  # noqa: E402
from costeer_jax.reproduction import harness  # noqa: E402
from costeer_jax.reproduction.tables import TABLES, TableSpec, table  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("table", None, "A registered table (--list), or 'all' with --dry_run.")
flags.DEFINE_bool("list", False, "List the registered tables and exit.")
flags.DEFINE_string("llm", "smollm2-135m-instruct", "Cloud LLM (alias, directory or file).")
flags.DEFINE_string("slm", "smollm2-135m-instruct", "Edge SLM (alias, directory or file).")
flags.DEFINE_integer("limit", 6, "Rows per task.")
flags.DEFINE_integer("max_new_tokens", 128, "Tokens per answer.")
flags.DEFINE_integer("batch_size", 8, "Prompts per batch (at most --limit).")
flags.DEFINE_list("tasks", None, "Override the table's tasks.")
flags.DEFINE_list("rows", None, "Only these rows of the table (labels as --dry_run prints them).")
flags.DEFINE_list("extra", [], "More generate.py flags for every run (e.g. --progress=false).")
flags.DEFINE_string("data_dir", None, "Task data (default ../shared/data/costeer_release).")
flags.DEFINE_string("output_dir", "outputs/reproduce", "Runs and tables.")
flags.DEFINE_bool("dry_run", False, "List the runs and their estimated FLOPs; run nothing.")


def shapes():
    """FLOPs shapes of --llm/--slm: a preset name, or the checkpoint's own config (header only)."""
    from costeer_jax.costs.flops import model_shape

    return [model_shape(spec) for spec in (FLAGS.llm, FLAGS.slm)]


def analytic(spec: TableSpec) -> str:
    from costeer_jax.reproduction import analytic as tables

    return tables.costeer_table14_markdown() if spec.name == "costeer_table14" else tables.specsteer_table11_markdown()


def latency_model(spec: TableSpec) -> str:
    from costeer_jax.costs import latency
    from costeer_jax.costs.flops import PAPER_PAIRS, PRESETS

    paper_table = latency.COSTEER_TABLE13 if spec.name == "costeer_table13" else latency.SPECSTEER_TABLE4
    llm, slm = (PRESETS[n] for n in PAPER_PAIRS[paper_table[0]])
    times = latency.StepTimes.roofline(llm, slm, latency.DEVICES["H100-SXM"], latency.DEVICES["RTX-4090"])
    rows = latency.paper_table(paper_table, times, latency.NETWORKS["lan"])
    lines = [f"Latency model, {paper_table[0]}, H100 cloud / RTX-4090 edge rooflines, lan network (1 ms, 1 Gbit/s); "
             "see experiments/latency.py", "", "| row | paper speed ratio | model ratio |", "|---|---|---|"]
    lines += [f"| {r['label']} | {r['paper_ratio']:.2f}x | {r['model_ratio']:.2f}x |" for r in rows]
    return "\n".join(lines)


def run_table(spec: TableSpec) -> None:
    out_dir = Path(FLAGS.output_dir)
    print(f"== {spec.name}: {spec.caption}")
    for need in spec.needs:
        print(f"note: {need}")
    if spec.kind == "flops":
        text = analytic(spec)
        print(text)
        if not FLAGS.dry_run:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out_dir / f"{spec.name}.md", text + "\n")
        return
    if FLAGS.rows:
        unknown = set(FLAGS.rows) - {run.label for run in spec.runs}
        if unknown:
            raise app.UsageError(f"--rows: {', '.join(sorted(unknown))} not in {spec.name} "
                                 f"(rows: {', '.join(run.label for run in spec.runs)})")
        spec = dataclasses.replace(spec, runs=tuple(run for run in spec.runs if run.label in FLAGS.rows))
    tasks, missing = harness.available_tasks(spec, FLAGS.data_dir, FLAGS.tasks)
    for task, why in missing:
        print(f"skipped {task}: {why}")
    if not tasks:
        why = (f"{spec.name}: none of its tasks has data here ({', '.join(t for t, _ in missing)}); supply the file "
               "or pick others with --tasks")
        if FLAGS.dry_run:
            print(why)
            return
        raise app.UsageError(why)
    jobs = harness.plan(spec, out_dir, FLAGS.llm, FLAGS.slm, FLAGS.limit, FLAGS.max_new_tokens, FLAGS.batch_size,
                        tasks, FLAGS.extra)
    if FLAGS.dry_run:
        llm_shape, slm_shape = shapes()
        total = 0.0
        for job in jobs:
            estimate = harness.estimated_flops(job, llm_shape, slm_shape, FLAGS.max_new_tokens, FLAGS.data_dir,
                                               FLAGS.limit)
            total += estimate
            done = "done" if job.figures_path.exists() else "todo"
            print(f"[{done}] {spec.name} {job.task} {job.run.label!r}: ~{estimate:.1f} TFLOPs: {' '.join(job.command[1:])}")
        print(f"{spec.name}: {len(jobs)} runs, ~{total:.1f} TFLOPs")
        return
    commands = list(dict.fromkeys(job.command for job in jobs))  # a sweep serves several rows
    for number, command in enumerate(commands, start=1):
        served = [job for job in jobs if job.command == command]
        served[0].output.parent.mkdir(parents=True, exist_ok=True)
        print(f"== [{number}/{len(commands)}] {spec.name} {served[0].task} {', '.join(j.run.label for j in served)}",
              file=sys.stderr, flush=True)
        try:
            harness.run_generate(command, [job.figures_path for job in served])
        except RuntimeError as e:
            raise app.UsageError(str(e)) from None
    markdown, csv_text, data, evaluated = harness.build_table(spec, jobs, tasks, FLAGS.data_dir)
    header = (f"{spec.caption}. Ours: --llm={FLAGS.llm} --slm={FLAGS.slm}, {FLAGS.limit} rows per task, "
              f"{FLAGS.max_new_tokens} new tokens, greedy; (paper: {spec.paper_pair}).")
    text = header + "\n\n" + markdown
    if spec.kind == "latency":
        text += "\n\n" + latency_model(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    if spec.name == "costeer_figure2":  # the figure itself: a panel per swept parameter
        from costeer_jax.eval.plots import plot_sweeps

        plots = plot_sweeps(evaluated, out_dir / spec.name)
        text += "\n\nPlots: " + ", ".join(str(p) for p in plots)
    write_text_atomic(out_dir / f"{spec.name}.md", text + "\n")
    write_text_atomic(out_dir / f"{spec.name}.csv", csv_text)
    write_text_atomic(out_dir / f"{spec.name}.json", json.dumps({"spec": dataclasses.asdict(spec), "rows": data}, indent=1))
    print(text)


def main(argv):
    del argv
    if FLAGS.list:
        for name, spec in TABLES.items():
            print(f"{name}: {spec.caption}" + (f" [needs: {'; '.join(spec.needs)}]" if spec.needs else ""))
        return
    if not FLAGS.table:
        raise app.UsageError("pass --table=NAME (see --list)")
    if FLAGS.table == "all":
        if not FLAGS.dry_run:
            raise app.UsageError("--table=all runs every table's plan only with --dry_run")
        for spec in TABLES.values():
            run_table(spec)
        return
    try:
        spec = table(FLAGS.table)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    run_table(spec)


if __name__ == "__main__":
    from costeer_jax.cli import run

    run(main)
