"""Hyperparameter sweeps decoded as one batched job.

A sweep is a grid over a method's per-row hyperparameters (alpha, beta, lam, eta, T, ...). Its
configurations are not run one after another: every (example, configuration) pair is a row, and
rows of different configurations share batches, each row carrying its own hyperparameters
(`Generator.run_batch(..., hyper_rows=...)`). One compiled program serves the whole grid (T is
masked per row up to the static max_T = the largest T of the grid).

Output layout is generate.py's, once per configuration: OUTPUT_DIR/<method>_<k>=<v>_....jsonl with
the same rows (including "config"), so `experiments/evaluate.py --predictions='OUTPUT_DIR/*.jsonl'`
tabulates and plots the sweep. Resumable per (configuration, id): a rerun skips rows already
present, an interrupted sweep loses at most the batch in flight and torn tails are cut back.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from costeer_jax.decoding import continuous
from costeer_jax.decoding.hyperparams import check_hyper
from costeer_jax.decoding.methods import DEFAULT_HYPER, Method
from costeer_jax.decoding.runner import Generator, RunFigures, repair_torn_tail

INTEGER_KEYS = ("T", "k_consecutive")  # hyper_arrays feeds these as int32


class SweepError(ValueError):
    """A grid, fixed value or sweep output that cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    name: str  # file stem: <method>_<key>=<value>_... over the grid keys
    point: tuple[tuple[str, Any], ...]  # the grid coordinates, in grid order
    hyper: dict[str, Any]  # every hyperparameter of the method (the rows' "config")


# ------------------------------------------------------------------------ grid parsing

def coerce_value(method: Method, key: str, value: Any, where: str = "") -> int | float:
    """A hyperparameter value as the number the method takes; clear errors otherwise."""
    prefix = f"{where}: " if where else ""
    if key not in method.hyper_keys:
        known = ", ".join(method.hyper_keys) or "none"
        raise SweepError(f"{prefix}unknown hyperparameter {key!r} for method {method.name} "
                         f"(its hyperparameters: {known})")
    if isinstance(value, bool):
        raise SweepError(f"{prefix}{key}={value!r} is not a number")
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            raise SweepError(f"{prefix}{key}={value!r} is not a number") from None
    elif isinstance(value, (int, float)):
        number = float(value)
    else:
        raise SweepError(f"{prefix}{key}={value!r} is not a number")
    try:
        check_hyper({key: number})  # the ranges, in one place (degenerate warnings come at run time)
    except ValueError as e:
        raise SweepError(f"{prefix}{e}") from None
    return int(number) if key in INTEGER_KEYS else number


def parse_assignments(text: str | None, flag: str = "--grid") -> dict[str, list[str]]:
    """'alpha=1,2;beta=0.5,1' -> {"alpha": ["1", "2"], "beta": ["0.5", "1"]} (strings; see
    `coerce_value`). Entries are separated by ';', values by ','."""
    out: dict[str, list[str]] = {}
    for entry in (text or "").split(";"):
        if not entry.strip():
            continue
        key, sep, values = entry.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SweepError(f"{flag}: {entry.strip()!r} is not KEY=V1,V2,... (e.g. {flag}='alpha=1,2;beta=0.5,1')")
        if key in out:
            raise SweepError(f"{flag}: {key} is given twice")
        items = [v.strip() for v in values.split(",")]
        if not all(items):
            raise SweepError(f"{flag}: {key} has an empty value in {values.strip()!r}")
        out[key] = items
    return out


def load_sweep_file(path: str | Path) -> dict[str, Any]:
    """A JSON sweep file: {"method": NAME, "grid": {KEY: [values]}, "fixed": {KEY: value}}; "fixed"
    may hold hyperparameters and run options (task, limit, batch_size, max_new_tokens, ...)."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {path} not found")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SweepError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(spec, dict):
        raise SweepError(f"{path}: expected an object with 'method', 'grid' and 'fixed'")
    unknown = sorted(set(spec) - {"method", "grid", "fixed", "description"})
    if unknown:
        raise SweepError(f"{path}: unknown top-level keys {unknown} (expected method, grid, fixed)")
    grid, fixed = spec.get("grid") or {}, spec.get("fixed") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
        raise SweepError(f"{path}: 'grid' must map each hyperparameter to a list of values")
    if not isinstance(fixed, dict):
        raise SweepError(f"{path}: 'fixed' must be an object")
    return {"method": spec.get("method"), "grid": grid, "fixed": fixed}


def format_value(value: int | float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def config_name(method_name: str, point: Sequence[tuple[str, Any]]) -> str:
    """'costeer' + (('alpha', 1.0), ('beta', 0.5)) -> 'costeer_alpha=1.0_beta=0.5'."""
    return "_".join([method_name] + [f"{k}={format_value(v)}" for k, v in point])


def expand_grid(method: Method, grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any] | None = None,
                where: str = "grid") -> list[SweepConfig]:
    """The grid's cartesian product (first key varies slowest). Every configuration carries all of
    the method's hyperparameters: grid value, else `fixed`, else DEFAULT_HYPER."""
    fixed = dict(fixed or {})
    if not grid:
        raise SweepError(f"{where}: nothing to sweep; give at least one hyperparameter with values "
                         "(e.g. --grid='alpha=1,2;beta=0.5,1')")
    both = sorted(set(grid) & set(fixed))
    if both:
        raise SweepError(f"{where}: {', '.join(both)} both swept and fixed; keep one")
    base = {k: coerce_value(method, k, v, "fixed") for k, v in fixed.items()}
    axes = []
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise SweepError(f"{where}: {key} needs a non-empty list of values")
        coerced = [coerce_value(method, key, v, where) for v in values]
        if len(set(coerced)) != len(coerced):
            raise SweepError(f"{where}: {key} repeats a value ({', '.join(map(format_value, coerced))})")
        axes.append([(key, v) for v in coerced])
    configs = []
    for point in itertools.product(*axes):
        hyper = {k: DEFAULT_HYPER[k] for k in method.hyper_keys}
        hyper.update(base)
        hyper.update(point)
        hyper = {k: (int(v) if k in INTEGER_KEYS else float(v)) for k, v in hyper.items()}
        configs.append(SweepConfig(config_name(method.name, point), tuple(point), hyper))
    return configs


def max_T(configs: Sequence[SweepConfig]) -> int:
    """The static scan length that serves every configuration (get_method(name, max_T=...))."""
    return max([int(c.hyper.get("T", 1)) for c in configs] + [1])


# ------------------------------------------------------------------------ the sweep loop

@dataclasses.dataclass
class SweepFigures:
    examples: int = 0  # distinct examples of the sweep
    configurations: int = 0
    rows: int = 0  # (example, configuration) rows decoded by this call
    skipped_rows: int = 0  # already present in the output files (resumed)
    run: RunFigures = dataclasses.field(default_factory=RunFigures)

    def as_dict(self) -> dict:
        run = self.run.as_dict()
        run.pop("examples")
        return {"examples": self.examples, "configurations": self.configurations, "rows": self.rows,
                "skipped_rows": self.skipped_rows, **run}


def output_path(output_dir: str | Path, config: SweepConfig) -> Path:
    return Path(output_dir) / f"{config.name}.jsonl"


def _normalised(config: Mapping[str, Any]) -> Any:
    return json.loads(json.dumps(config, sort_keys=True))


def read_done(path: Path, expected_config: Mapping[str, Any]) -> set[str]:
    """Ids already in a configuration's file; refuses a file written with another configuration
    (same grid point, different fixed values) instead of mixing the two."""
    done: set[str] = set()
    if not path.exists():
        return done
    expected = _normalised(expected_config)
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                example_id = str(row["id"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if "config" in row and _normalised(row["config"]) != expected:
                raise SweepError(
                    f"{path}:{line_number} was written with config {row['config']} but this sweep "
                    f"decodes {dict(expected_config)} into that file; use another --output_dir")
            done.add(example_id)
    return done


def run_sweep(generator: Generator, examples: Iterable, configs: Sequence[SweepConfig],
              output_dir: str | Path, *, progress: bool = True, static_config: Mapping[str, Any] | None = None,
              extra_fields: Mapping[str, Any] | None = None, batching: str = "static",
              segment_steps: int = 8) -> SweepFigures:
    """Decodes every (example, configuration) row not yet in OUTPUT_DIR, `generator.batch_size`
    rows per batch with per-row hyperparameters; after each batch every touched file is flushed
    and fsynced. The generator's method must be built with max_T >= `max_T(configs)`.

    Rows are `generator.run_batch` rows plus {"config": hyper | static_config} and `extra_fields`,
    written to `output_path(output_dir, config)` - generate.py's format for that configuration.
    batching="continuous" decodes the rows through continuous batching's slots instead
    (decoding/continuous.py; rows are flushed as they finish).
    """
    from tqdm import tqdm

    examples = list(examples)
    names = [c.name for c in configs]
    if len(set(names)) != len(names):
        raise SweepError(f"two configurations share an output name: {names}")
    for config in configs:
        unknown = sorted(set(config.hyper) - set(generator.method.hyper_keys))
        if unknown:
            raise SweepError(f"{config.name}: {unknown} are not hyperparameters of {generator.method.name}")
        for note in check_hyper(config.hyper, config.name):
            print(f"warning: {note}", file=sys.stderr)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    row_configs = [{**c.hyper, **(static_config or {})} for c in configs]
    done = []
    for config, row_config in zip(configs, row_configs):
        path = output_path(output_dir, config)
        repair_torn_tail(path)
        done.append(read_done(path, row_config))
    # Similar prompt lengths together (less padding), an example's configurations side by side.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].personalized_query) + len(examples[i].query))
    todo = [(i, c) for i in order for c in range(len(configs)) if str(examples[i].id) not in done[c]]
    figures = SweepFigures(examples=len(examples), configurations=len(configs),
                           skipped_rows=len(examples) * len(configs) - len(todo))
    compile_before = generator.compile_seconds
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"sweep {generator.method.name} x{len(configs)}", unit="row",
               file=sys.stderr, disable=not progress)
    files: dict[int, Any] = {}

    def write(items: list, rows: list, stats: dict) -> None:
        touched = set()
        for (_, c), row in zip(items, rows):
            row["config"] = dict(row_configs[c])
            row.update(extra_fields or {})
            if c not in files:
                files[c] = open(output_path(output_dir, configs[c]), "a")
            files[c].write(json.dumps(row, ensure_ascii=False) + "\n")
            touched.add(c)
        for c in touched:
            files[c].flush()
            os.fsync(files[c].fileno())
        figures.rows += len(rows)
        figures.run.tokens += sum(len(r["token_ids"]) for r in rows)
        for k, v in stats.items():
            figures.run.stats[k] = figures.run.stats.get(k, 0) + v
        bar.update(len(rows))

    try:
        if batching == continuous.CONTINUOUS:
            # The same slots as generate.py's continuous batching; each row brings its configuration.
            decoder = continuous.ContinuousDecoder(generator, segment_steps)
            decoder.run([examples[i] for i, _ in todo],
                        lambda rows, stats, positions: write([todo[p] for p in positions], rows, stats),
                        hyper_rows=[configs[c].hyper for _, c in todo])
            figures.run.slot_steps = decoder.figures.slot_steps
            figures.run.useful_slot_steps = decoder.figures.useful_slot_steps
        else:
            for start in range(0, len(todo), generator.batch_size):
                batch = todo[start:start + generator.batch_size]
                write(batch, *generator.run_batch([examples[i] for i, _ in batch],
                                                  hyper_rows=[configs[c].hyper for _, c in batch]))
    finally:
        for f in files.values():
            f.close()
        bar.close()
    figures.run.examples = figures.rows
    figures.run.generate_seconds = time.perf_counter() - t0
    figures.run.compile_seconds = generator.compile_seconds - compile_before
    return figures
