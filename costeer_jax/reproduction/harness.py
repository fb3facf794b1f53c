"""Runs a registered table: one experiments/generate.py run per (task, row), resumable (generate
skips finished ids; a run's figures are kept from the invocation that decoded its rows), then the
library's evaluation and a Markdown/CSV table with the paper's numbers beside ours."""
from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from costeer_jax.atomic_files import write_text_atomic
from costeer_jax.reproduction.tables import Run, TableSpec

REPO_ROOT = Path(__file__).resolve().parents[2]
CHARS_PER_TOKEN = 4.0  # for the dry run's FLOPs estimate only (no tokenizer is loaded)


@dataclasses.dataclass(frozen=True)
class Job:
    task: str
    run: Run
    output: Path
    command: tuple[str, ...]

    @property
    def figures_path(self) -> Path:
        return self.output.with_suffix(".figures.json")


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", label).strip("_")


def _run_command(script: str, method: str, task: str, llm: str, slm: str, limit: int, max_new_tokens: int,
                 batch_size: int) -> tuple[str, ...]:
    return (sys.executable, str(REPO_ROOT / "experiments" / script), f"--method={method}", f"--task={task}",
            f"--limit={limit}", f"--llm={llm}", f"--slm={slm}", f"--max_new_tokens={max_new_tokens}",
            f"--batch_size={batch_size}")


def generate_command(method: str, task: str, output: Path, llm: str, slm: str, limit: int, max_new_tokens: int,
                     batch_size: int, flags: Sequence[str] = ()) -> tuple[str, ...]:
    return (*_run_command("generate.py", method, task, llm, slm, limit, max_new_tokens, batch_size),
            f"--output={output}", *flags)


def run_generate(command: Sequence[str], figures_path: Path | Sequence[Path]) -> dict:
    """One generate.py (or sweep.py) run, its stderr passing through; the figures of the invocation
    that decoded rows are kept beside the output (a sweep's beside each configuration's file), so
    a resumed run with nothing left keeps them."""
    done = subprocess.run(list(command), stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(command[1]).name} failed (exit {done.returncode}): {' '.join(command)}; "
                           "rerun to resume")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    if figures.get("rows", figures["examples"]):  # rows / examples decoded by this invocation
        for path in [figures_path] if isinstance(figures_path, Path) else figures_path:
            write_text_atomic(path, json.dumps(figures, indent=1))  # whole or absent: it marks the run done
    return figures


def speculative_figures(outputs: Sequence[Path]) -> dict:
    """Acceptance rate and mean accepted length over every row of the given run files."""
    from costeer_jax.decoding.speculative import STAT_NAMES, stats_summary

    rows = [json.loads(line) for output in outputs if output.exists()
            for line in output.read_text().splitlines() if line.strip()]
    if not rows or "drafted_tokens" not in rows[0]:
        return {}
    totals = {name: sum(r.get(name, 0) for r in rows) for name in STAT_NAMES}
    summary = stats_summary(totals, sum(len(r["token_ids"]) for r in rows))
    return {"acceptance": summary["acceptance_rate"], "accepted_length": summary["mean_accepted_length"]}


def available_tasks(spec: TableSpec, data_dir: str | None, tasks: Sequence[str] | None = None) -> tuple[list, list]:
    """(tasks whose data is here, [(task, what to supply)] for the others)."""
    from costeer_jax.data.costeer_release import COSTEER_TASKS, release_file
    from costeer_jax.data.tasks import default_data_dir

    directory = Path(data_dir) if data_dir else default_data_dir()
    present, missing = [], []
    for task in tasks or spec.tasks:
        if task in COSTEER_TASKS and (directory is None or not release_file(task, directory).is_file()):
            missing.append((task, f"{task}.jsonl is not in --data_dir ({directory}); the CoSteer release's file "
                                  "(or its head rows) supplies it"))
        else:
            present.append(task)
    return present, missing


def swept_value(run: Run) -> tuple[str, str] | None:
    """(hyperparameter, value) when the run differs from its method's defaults by one
    hyperparameter flag only (`--alpha=4`): such rows of one method and key batch as one sweep."""
    from costeer_jax.decoding.methods import get_method

    if len(run.flags) != 1:
        return None
    match = re.fullmatch(r"--([A-Za-z_]+)=(\S+)", run.flags[0])
    if not match or match.group(1) not in get_method(run.method).hyper_keys:
        return None
    return match.group(1), match.group(2)


def sweep_command(method: str, task: str, output_dir: Path, llm: str, slm: str, limit: int, max_new_tokens: int,
                  batch_size: int, key: str, values: Sequence[str], flags: Sequence[str] = ()) -> tuple[str, ...]:
    return (*_run_command("sweep.py", method, task, llm, slm, limit, max_new_tokens, batch_size),
            f"--grid={key}={','.join(values)}", f"--output_dir={output_dir}", *flags)


def plan(spec: TableSpec, output_dir: Path, llm: str, slm: str, limit: int, max_new_tokens: int, batch_size: int,
         tasks: Sequence[str], extra: Sequence[str] = ()) -> list[Job]:
    """One job per (task, row). Rows of one method that each set one hyperparameter (Figure 2's
    alpha = 0, 1, 2, 4) share one experiments/sweep.py command, the configurations as rows of the
    same batches (its batch counts (prompt, configuration) rows: --batch_size x the values); each
    row reads its configuration's file. A grid of one value runs as a plain generate."""
    from costeer_jax.decoding import sweep
    from costeer_jax.decoding.methods import get_method

    groups: dict[tuple[str, str], list[Run]] = {}
    for run in spec.runs:
        point = swept_value(run)
        if point is not None:
            groups.setdefault((run.method, point[0]), []).append(run)
    jobs = []
    for task in tasks:
        rows = min(batch_size, limit or batch_size)
        for run in spec.runs:
            point = swept_value(run)
            group = groups.get((run.method, point[0])) if point else None
            if group and len(group) > 1:
                key = point[0]
                values = [swept_value(r)[1] for r in group]
                folder = output_dir / spec.name / task / slug(f"sweep_{run.method}_{key}")
                config = sweep.expand_grid(get_method(run.method), {key: [point[1]]})[0]
                command = sweep_command(run.method, task, folder, llm, slm, limit, max_new_tokens, rows * len(group),
                                        key, values, (*spec.common_flags, *extra))
                jobs.append(Job(task, run, sweep.output_path(folder, config), command))
                continue
            output = output_dir / spec.name / task / f"{slug(run.label)}.jsonl"
            command = generate_command(run.method, task, output, llm, slm, limit, max_new_tokens, rows,
                                       (*spec.common_flags, *run.flags, *extra))
            jobs.append(Job(task, run, output, command))
    return jobs


@functools.lru_cache(maxsize=None)
def _examples(task: str, data_dir: str | None, limit: int) -> tuple:
    """A task's examples, read once per dry run (every row of a table shares them)."""
    from costeer_jax.data import load_task

    return tuple(load_task(task, data_dir, limit=limit or None))


def estimated_flops(job: Job, llm_shape, slm_shape, max_new_tokens: int, data_dir: str | None, limit: int) -> float:
    """TFLOPs of a job from the examples' character counts (~4 per token), exact convention;
    specsteer/sd at acceptance 0.5, K=4."""
    from costeer_jax.costs import flops
    from costeer_jax.costs.speculative import expected_tokens_per_iteration

    total = 0.0
    for example in _examples(job.task, data_dir, limit):
        query = int(len(example.query) / CHARS_PER_TOKEN) + 20
        context = max(0, int((len(example.personalized_query) - len(example.query)) / CHARS_PER_TOKEN))
        if job.run.method in ("specsteer", "sd"):
            iterations = max_new_tokens / expected_tokens_per_iteration(0.5, 4, job.run.method == "sd")
            account = flops.speculative_account(job.run.method, llm_shape, slm_shape, query, context, max_new_tokens,
                                                iterations, 4 * iterations, 4)
        elif job.run.method in flops.METHOD_STREAMS:
            account = flops.token_loop_account(job.run.method, llm_shape, slm_shape, query, context, max_new_tokens)
        else:
            return float("nan")
        total += account.total
    return total / 1e12


def _ours(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def build_table(spec: TableSpec, jobs: Sequence[Job], tasks: Sequence[str],
                data_dir: str | None) -> tuple[str, str, dict, list]:
    """(Markdown, CSV, JSON, evaluation records) of the table: per row and task each column as
    `ours (paper)`, then the run figures (tokens/s; acceptance over the row's tasks)."""
    from costeer_jax.eval.evaluation import evaluate_prediction_files
    from costeer_jax.eval.scoring import Scorers

    scores: dict[tuple[str, str], dict] = {}
    evaluated = []
    for task in tasks:
        task_jobs = [j for j in jobs if j.task == task and j.output.exists() and j.output.stat().st_size]
        if not task_jobs:
            continue
        results = evaluate_prediction_files([j.output for j in task_jobs], Scorers(), tasks=[task],
                                            metrics=list(spec.metrics) or ["rouge"], data_dir=data_dir)
        evaluated += results
        for job, result in zip(task_jobs, results):
            scores[(task, job.run.label)] = result["averages"]
    paper_tasks = list(spec.tasks)
    header = ["row"] + [f"{t} {c}" if i == 0 else c for t in tasks for i, c in enumerate(spec.columns)]
    header += list(spec.extra_columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows_csv, data = [header], {}
    for run in spec.runs:
        cells, record = [run.label], {}
        for task in tasks:
            averages = scores.get((task, run.label), {})
            for i, column in enumerate(spec.columns):
                ours = averages.get(column)
                paper_values = spec.paper.get(run.label)
                paper = None
                if paper_values and task in paper_tasks:
                    paper = paper_values[paper_tasks.index(task) * len(spec.columns) + i]
                cells.append(f"{_ours(ours)} ({paper:.2f})" if paper is not None else _ours(ours))
                record[f"{task}/{column}"] = {"ours": ours, "paper": paper}
        row_jobs = [j for j in jobs if j.run.label == run.label]
        for column in spec.extra_columns:
            if column == "tokens_per_s":
                figures = [json.loads(j.figures_path.read_text()) for j in row_jobs if j.figures_path.exists()]
                tokens = sum(f["tokens"] for f in figures)
                seconds = sum(f["generate_seconds"] for f in figures)
                value = tokens / seconds if seconds else None
            else:
                value = speculative_figures([j.output for j in row_jobs]).get(column)
            cells.append(_ours(value))
            record[column] = value
        lines.append("| " + " | ".join(cells) + " |")
        rows_csv.append(cells)
        data[run.label] = record
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows_csv)
    return "\n".join(lines), buffer.getvalue(), data, evaluated
