"""End to end: generation files -> per-file scores -> JSON, CSV and Markdown table, sweep plots."""
from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any, Sequence

from costeer_jax.data import is_preference_task, load_task
from costeer_jax.data.context_options import ContextOptions
from costeer_jax.eval.plots import plot_leakage_vs_quality, plot_sweeps
from costeer_jax.eval.predictions import read_predictions
from costeer_jax.eval.reports import build_table, setting_labels, table_csv, table_json, table_markdown
from costeer_jax.eval.scoring import Scorers, default_metrics, score_prediction_file
from costeer_jax.eval.significance import SIGNIFICANCE_LEVEL


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """Paths, glob patterns and folders (a sweep's output_dir: its *.jsonl files), in the order
    given (each glob's or folder's matches sorted)."""
    paths: list[Path] = []
    for pattern in patterns:
        if Path(pattern).is_dir():
            pattern = str(Path(pattern) / "*.jsonl")
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise FileNotFoundError(f"--predictions pattern {pattern!r} matches no file")
        paths += [Path(m) for m in matches]
    return paths


def _per_file(values: Sequence[str] | None, count: int, flag: str) -> list[str | None]:
    """A flag given once applies to every file; otherwise it needs one entry per file."""
    if not values:
        return [None] * count
    if len(values) == 1:
        return list(values) * count
    if len(values) != count:
        raise ValueError(f"--{flag} has {len(values)} entries for {count} prediction files; give one or {count}")
    return list(values)


def evaluate_prediction_files(prediction_paths: Sequence[str | Path], scorers: Scorers,
                              tasks: Sequence[str] | None = None, preferences: Sequence[str] | None = None,
                              metrics: Sequence[str] | None = None, data_dir: str | Path | None = None,
                              split: str = "dev", longlamp_setting: str = "user") -> list[dict[str, Any]]:
    """One evaluation record per file. Task and preference come from the flags or, failing that,
    from the rows' "task" / "preference" (or config["preference"]) fields; the LongLaMP context
    options, split and setting from the rows' config when they were not the defaults."""
    files = [read_predictions(path) for path in prediction_paths]
    task_flags = _per_file(tasks, len(files), "task")
    preference_flags = _per_file(preferences, len(files), "preference")
    examples_cache: dict[tuple, list] = {}
    results = []
    for predictions, task_flag, preference_flag in zip(files, task_flags, preference_flags):
        task = task_flag or predictions.task
        if task is None:
            raise ValueError(f"{predictions.path}: no task; pass --task (its rows carry no 'task' field)")
        preference = (preference_flag or predictions.preference) if is_preference_task(task) else None
        # Rows generated under --retrieval/--noise name their context; leakage is measured against it.
        context = ContextOptions.from_config(predictions.config)
        row_split = predictions.config.get("split", split)
        row_setting = predictions.config.get("longlamp_setting", longlamp_setting)
        key = (task, preference, context, row_split, row_setting)
        if key not in examples_cache:
            examples_cache[key] = load_task(task, data_dir, preference, split=row_split, setting=row_setting,
                                            context=context)
        results.append(score_prediction_file(task, examples_cache[key], predictions,
                                             list(metrics) if metrics else default_metrics(task), scorers,
                                             preference))
    return results


def write_reports(results: Sequence[dict[str, Any]], output: str | Path, labels: Sequence[str] | None = None,
                  significance_method: str | None = "costeer", upper_bound_settings: Sequence[str] = ("llm_w",),
                  level: float = SIGNIFICANCE_LEVEL,
                  baselines: Sequence[str] | None = None) -> dict[str, Path | list[Path]]:
    """Writes OUTPUT.json (every record + table), OUTPUT.csv, OUTPUT.md and sweep PNGs beside it."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    settings = setting_labels(results, labels)
    table = build_table(results, settings, significance_method, upper_bound_settings, level, baselines)
    records = [dict(result, setting=setting) for result, setting in zip(results, settings)]
    prefix = output.with_suffix("")
    paths: dict[str, Path | list[Path]] = {"json": output, "csv": prefix.with_suffix(".csv"),
                                           "markdown": prefix.with_suffix(".md")}
    output.write_text(json.dumps({"results": records, "table": table_json(table)}, indent=1) + "\n")
    paths["csv"].write_text(table_csv(table))
    paths["markdown"].write_text(table_markdown(table))
    paths["plots"] = plot_sweeps(results, prefix) + plot_leakage_vs_quality(results, settings, prefix)
    return paths
