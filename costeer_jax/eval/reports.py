"""Paper-style result tables (CoSteer Tables 1, 5 and 7) from any set of evaluated generation files.

Rows are settings (methods, or sweep points), columns are dataset x metric. With a reference
method (CoSteer) present, each column records a paired t-test against every baseline; the
Markdown table bolds the method where it beats all baselines and adds Table 7's asterisk where
every one of those improvements is significant.
"""
from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

from costeer_jax.data import PREFERENCE_TASKS, TASKS
from costeer_jax.eval.significance import SIGNIFICANCE_LEVEL, paired_t_test_by_id, significance_marker

METRIC_LABELS = {"judge_overall": "Ovl", "judge_personalized": "Per", "rouge1": "R-1", "rougeL": "R-L",
                 "meteor": "MET", "reward": "reward",
                 # leakage (eval/leakage.py): of the output, then of what the cloud received
                 "leak_span": "leak span", "leak_span_tokens": "leak span (tok)", "leak_share_4": "leak 4-gram",
                 "leak_share_8": "leak 8-gram", "cloud_leak_span": "cloud leak span",
                 "cloud_leak_span_tokens": "cloud leak span (tok)", "cloud_leak_share_4": "cloud leak 4-gram",
                 "cloud_leak_share_8": "cloud leak 8-gram"}
_METRIC_ORDER = tuple(METRIC_LABELS)
PREF_ALIGN = "pref_align"  # Table 1's "Pref Align": reward averaged over the preference datasets
_PREFERENCE_COLUMN_ORDER = ("creative", "verbose", "concise", "uplifting")  # as in Tables 1 and 5

Column = tuple[str, str]  # (dataset label, score key)


def is_leakage(key: str) -> bool:
    """Leakage columns are reported, not ranked: lower is better, and no method is bolded on them."""
    return "leak_" in key


def format_value(key: str, value: float | None) -> str:
    if value is None:
        return "-"
    if is_leakage(key) and "share" in key:
        return f"{100 * value:.1f}%"
    return f"{value:.4f}" if key == "reward" else f"{value:.2f}"


def setting_labels(results: Sequence[Mapping[str, Any]], explicit: Sequence[str] | None = None) -> list[str]:
    """One row label per result: the method name, plus the config entries that vary between
    results of that method on the same dataset (so sweep points get distinct rows)."""
    if explicit:
        if len(explicit) != len(results):
            raise ValueError(f"--labels has {len(explicit)} entries for {len(results)} prediction files")
        return list(explicit)
    methods = [r.get("method") or Path(r["predictions"]).stem for r in results]
    labels = []
    for method, result in zip(methods, results):
        configs = [r.get("config") or {} for m, r in zip(methods, results)
                   if m == method and r["dataset"] == result["dataset"]]
        keys = sorted({k for c in configs for k in c})
        varying = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
        config = result.get("config") or {}
        labels.append(f"{method}[{','.join(f'{k}={config.get(k)}' for k in varying)}]" if varying else method)
    # Files that still share a label on one dataset (a sweep's default point evaluated once per
    # parameter, or runs whose rows do not say what differs) get their file name appended.
    cells = [(label, r["dataset"]) for label, r in zip(labels, results)]
    clashing = {cell for cell in cells if cells.count(cell) > 1}
    return [f"{label} ({Path(r['predictions']).stem})" if (label, r["dataset"]) in clashing else label
            for label, r in zip(labels, results)]


def _dataset_sort_key(dataset: str) -> tuple[float, int]:
    """Paper order: generation tasks, then the averaged preference columns, then per-dataset ones."""
    task, _, preference = dataset.partition("/")
    if task == PREF_ALIGN:
        task_rank = TASKS.index(PREFERENCE_TASKS[0]) - 0.5
    else:
        task_rank = TASKS.index(task) if task in TASKS else len(TASKS)
    preference_rank = _PREFERENCE_COLUMN_ORDER.index(preference) if preference in _PREFERENCE_COLUMN_ORDER else -1
    return task_rank, preference_rank


def _column_sort_key(column: Column) -> tuple[tuple[float, int], int]:
    dataset, key = column
    return _dataset_sort_key(dataset), _METRIC_ORDER.index(key) if key in _METRIC_ORDER else len(_METRIC_ORDER)


@dataclasses.dataclass(frozen=True)
class Table:
    settings: list[str]
    columns: list[Column]
    values: dict[tuple[str, Column], float | None]
    significance: dict[Column, dict[str, Any]]
    method: str | None
    baselines: list[str]
    level: float


def _per_example(result: Mapping[str, Any], key: str, id_prefix: str = "") -> dict[str, float | None]:
    return {id_prefix + str(row["id"]): row.get(key) for row in result["per_example"]}


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def build_table(results: Sequence[Mapping[str, Any]], labels: Sequence[str],
                significance_method: str | None = "costeer", upper_bound_settings: Sequence[str] = ("llm_w",),
                level: float = SIGNIFICANCE_LEVEL, baselines: Sequence[str] | None = None) -> Table:
    """`baselines` default: every setting but the method and the upper bounds (Table 7 compares
    CoSteer with LLM w/o, SLM w/ and SLM w/o, not with the privacy-violating LLM w/)."""
    if len(labels) != len(results):
        raise ValueError(f"{len(labels)} labels for {len(results)} results")
    settings = list(dict.fromkeys(labels))
    values: dict[tuple[str, Column], float | None] = {}
    scores: dict[tuple[str, Column], dict[str, float | None]] = {}
    origin: dict[tuple[str, Column], str] = {}
    for label, result in zip(labels, results):
        for key, average in result["averages"].items():
            cell = (label, (result["dataset"], key))
            if cell in origin:
                raise ValueError(f"setting {label!r} has two results for {result['dataset']} {key}: "
                                 f"{origin[cell]} and {result['predictions']}; give them distinct --labels")
            origin[cell] = result["predictions"]
            values[cell] = average
            scores[cell] = _per_example(result, key)
    _add_preference_averages(results, labels, values, scores)

    columns = sorted({column for _, column in values}, key=_column_sort_key)
    method = significance_method if significance_method in settings else None
    if method is None:
        baselines = []
    elif baselines is None:
        baselines = [s for s in settings if s != method and s not in upper_bound_settings]
    else:
        unknown = [b for b in baselines if b not in settings]
        if unknown:
            raise ValueError(f"significance baselines {unknown} are not settings; settings: {', '.join(settings)}")
        baselines = [b for b in baselines if b != method]
    significance = {}
    for column in columns:
        if method is None or values.get((method, column)) is None or is_leakage(column[1]):
            continue
        compared = [b for b in baselines if values.get((b, column)) is not None]
        tests = {b: paired_t_test_by_id(scores[(method, column)], scores[(b, column)]) for b in compared}
        significance[column] = {
            "method": method,
            "better_than_all": bool(compared) and all(values[(method, column)] > values[(b, column)] for b in compared),
            "marker": significance_marker(list(tests.values()), level),
            "tests": {b: dataclasses.asdict(t) for b, t in tests.items()},
        }
    return Table(settings, columns, values, significance, method, baselines, level)


def _add_preference_averages(results, labels, values, scores) -> None:
    """Per preference, each setting's reward averaged over the preference datasets (Table 1)."""
    by_preference: dict[str, set[str]] = {}
    for result in results:
        if result["task"] in PREFERENCE_TASKS and "reward" in result["averages"]:
            by_preference.setdefault(result["preference"], set()).add(result["task"])
    for preference, tasks in by_preference.items():
        if len(tasks) < 2:
            continue  # one dataset: its own column already says it all
        column = (f"{PREF_ALIGN}/{preference}", "reward")
        for label in dict.fromkeys(labels):
            mine = [r for other, r in zip(labels, results)
                    if other == label and r["preference"] == preference and r["task"] in tasks]
            if {r["task"] for r in mine} != tasks:
                values[(label, column)] = None  # an average over a different set of datasets would mislead
                continue
            values[(label, column)] = _mean([r["averages"]["reward"] for r in mine])
            pooled: dict[str, float | None] = {}
            for r in mine:
                pooled.update(_per_example(r, "reward", id_prefix=f"{r['task']}:"))
            scores[(label, column)] = pooled


def column_header(column: Column) -> str:
    dataset, key = column
    return f"{dataset} {METRIC_LABELS.get(key, key)}"


def table_markdown(table: Table) -> str:
    lines = ["| Setting | " + " | ".join(column_header(c) for c in table.columns) + " |",
             "|---|" + "---:|" * len(table.columns)]
    for setting in table.settings:
        cells = []
        for column in table.columns:
            text = format_value(column[1], table.values.get((setting, column)))
            verdict = table.significance.get(column)
            if verdict and setting == table.method and text != "-":
                if verdict["marker"]:
                    text += "\\*"  # escaped, so Markdown shows Table 7's asterisk instead of emphasis
                if verdict["better_than_all"]:
                    text = f"**{text}**"
            cells.append(text)
        lines.append(f"| {setting} | " + " | ".join(cells) + " |")
    if table.method:
        lines += ["", f"**Bold**: {table.method} above every baseline ({', '.join(table.baselines) or 'none'}); "
                      f"*: each of those improvements significant (paired t-test, p < {table.level:g})."]
    return "\n".join(lines) + "\n"


def table_csv(table: Table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["setting", *(f"{dataset}/{key}" for dataset, key in table.columns)])
    for setting in table.settings:
        row = [table.values.get((setting, column)) for column in table.columns]
        writer.writerow([setting, *("" if v is None else repr(float(v)) for v in row)])
    return buffer.getvalue()


def table_json(table: Table) -> dict[str, Any]:
    return {
        "settings": table.settings,
        "columns": [{"dataset": d, "metric": k, "header": column_header((d, k))} for d, k in table.columns],
        "values": {s: {f"{d}/{k}": table.values.get((s, (d, k))) for d, k in table.columns} for s in table.settings},
        "significance": {f"{d}/{k}": v for (d, k), v in table.significance.items()},
        "significance_method": table.method,
        "baselines": table.baselines,
        "level": table.level,
    }
