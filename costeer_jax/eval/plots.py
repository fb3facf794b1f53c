"""Hyperparameter sweep plots like CoSteer Figure 2: a metric against alpha, beta, lambda, eta and T,
each varied with the others at their default values (CoSteer Table 4)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from costeer_jax.eval.reports import METRIC_LABELS

# Canonical name -> (config keys that may hold it, default from CoSteer Table 4, axis label).
SWEEP_PARAMETERS: dict[str, tuple[tuple[str, ...], float, str]] = {
    "alpha": (("alpha",), 2.0, "α"),
    "beta": (("beta",), 1.0, "β"),
    "lambda": (("lambda", "lam", "player_lambda", "lambda_"), 2.0, "λ"),
    "eta": (("eta",), 10.0, "η"),
    "T": (("T", "iterations", "num_iterations"), 20.0, "T"),
}


def sweep_value(config: Mapping[str, Any], parameter: str) -> float | None:
    keys, _, _ = SWEEP_PARAMETERS[parameter]
    for key in keys:
        if config.get(key) is not None:
            return float(config[key])
    return None


def sweep_series(results: Sequence[Mapping[str, Any]], dataset: str, metric: str,
                 parameter: str) -> list[tuple[float, float]]:
    """(parameter value, metric mean) for results of `dataset` where only `parameter` leaves its
    default; sorted by value. Results whose config lacks a parameter count it as default, and so
    does a parameter held at one value by every result of the dataset (a sweep's fixed T=5)."""
    held: dict[str, float] = {}
    for other in SWEEP_PARAMETERS:
        values = {sweep_value(r.get("config") or {}, other) for r in results if r["dataset"] == dataset} - {None}
        if len(values) == 1:
            held[other] = values.pop()
    points: dict[float, float] = {}
    for result in results:
        config = result.get("config") or {}
        average = result["averages"].get(metric)
        value = sweep_value(config, parameter)
        if result["dataset"] != dataset or average is None or value is None:
            continue
        others_default = all(
            sweep_value(config, other) in (None, default, held.get(other))
            for other, (_, default, _) in SWEEP_PARAMETERS.items() if other != parameter)
        if others_default:
            points[value] = average
    return sorted(points.items())


def plot_sweeps(results: Sequence[Mapping[str, Any]], output_prefix: str | Path) -> list[Path]:
    """One PNG per (dataset, metric) with a panel per swept parameter; returns the files written.

    A parameter is drawn when at least two of its values were evaluated with the others at default.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    written = []
    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    for dataset in datasets:
        metrics = list(dict.fromkeys(k for r in results if r["dataset"] == dataset for k in r["averages"]))
        for metric in metrics:
            series = {p: sweep_series(results, dataset, metric, p) for p in SWEEP_PARAMETERS}
            series = {p: s for p, s in series.items() if len(s) >= 2}
            if not series:
                continue
            figure, axes = plt.subplots(1, len(series), figsize=(3.2 * len(series), 2.8), squeeze=False)
            for axis, (parameter, points) in zip(axes[0], series.items()):
                xs, ys = zip(*points)
                axis.plot(xs, ys, marker="o")
                axis.set_xlabel(SWEEP_PARAMETERS[parameter][2])
                axis.set_ylabel(METRIC_LABELS.get(metric, metric))
                axis.grid(alpha=0.3)
            written.append(_save(figure, f"{dataset}: {METRIC_LABELS.get(metric, metric)}",
                                 f"{output_prefix}_sweep_{_file_part(dataset)}_{metric}.png"))
    return written


def _file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _save(figure, title: str, path: str) -> Path:
    import matplotlib.pyplot as plt

    figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_leakage_vs_quality(results: Sequence[Mapping[str, Any]], labels: Sequence[str], output_prefix: str | Path,
                            leak_keys: Sequence[str] = ("leak_share_4", "cloud_leak_share_4"),
                            quality_keys: Sequence[str] = ("rougeL", "meteor")) -> list[Path]:
    """One PNG per dataset: each setting (a method, a sweep point) as a point of leakage (x, % of
    4-grams copied from the private context) against quality (y), for the output and for the
    cloud's view; returns the files written (none without leakage and a quality metric)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        rows = [(label, r["averages"]) for label, r in zip(labels, results) if r["dataset"] == dataset]
        quality = next((q for q in quality_keys if any(a.get(q) is not None for _, a in rows)), None)
        leaks = [k for k in leak_keys if any(a.get(k) is not None for _, a in rows)]
        if quality is None or not leaks:
            continue
        figure, axes = plt.subplots(1, len(leaks), figsize=(4.2 * len(leaks), 3.4), squeeze=False)
        for axis, leak in zip(axes[0], leaks):
            for label, averages in rows:
                if averages.get(leak) is None or averages.get(quality) is None:
                    continue
                axis.scatter(100 * averages[leak], averages[quality])
                axis.annotate(label, (100 * averages[leak], averages[quality]), fontsize=7,
                              xytext=(3, 3), textcoords="offset points")
            axis.set_xlabel(f"{METRIC_LABELS.get(leak, leak)} (%)")
            axis.set_ylabel(METRIC_LABELS.get(quality, quality))
            axis.grid(alpha=0.3)
        written.append(_save(figure, f"{dataset}: leakage vs quality",
                             f"{output_prefix}_leakage_{_file_part(dataset)}.png"))
    return written
