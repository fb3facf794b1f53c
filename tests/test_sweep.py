"""Sweeps as one batched job: same tokens as one run per configuration, resumable per
(configuration, id), clear grid errors, and the CLI feeding evaluate.py's sweep table and plots."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from costeer_jax.data import Example
from costeer_jax.decoding import methods
from costeer_jax.decoding.runner import Generator, generate_to_file
from costeer_jax.decoding.sweep import (SweepError, expand_grid, load_sweep_file, max_T, parse_assignments,
                                        run_sweep)
from costeer_jax.models.loading import load_model

from conftest import REPO_ROOT

EXAMPLES = [
    Example("a", "Suggest a weekend activity.", "I love birdwatching near lakes. Suggest a weekend activity."),
    Example("b", "Recommend a book.", "I enjoyed Dune. Recommend a book."),
    Example("c", "Plan a short workout for tomorrow morning, please.",
            "I have a bad knee. Plan a short workout for tomorrow morning, please."),
]
# beta large enough that the SLM delta changes tokens on the tiny random models.
GRID = {"alpha": ["1", "2"], "beta": ["0.5", "8"]}
FIXED = {"T": 3}
MAX_NEW_TOKENS = 6


@pytest.fixture(scope="module")
def models(tiny_chat_models):
    return {methods.LLM: load_model(str(tiny_chat_models["llm"])),
            methods.SLM: load_model(str(tiny_chat_models["slm"]))}


@pytest.fixture(scope="module")
def configs():
    return expand_grid(methods.get_method("costeer"), GRID, FIXED)


@pytest.fixture(scope="module")
def sweep_generator(models, configs):
    # 5 rows per batch: 12 rows make batches that mix examples and configurations, plus padding.
    return Generator(methods.get_method("costeer", max_T=max_T(configs)), models,
                     max_new_tokens=MAX_NEW_TOKENS, batch_size=5)


@pytest.fixture(scope="module")
def full_sweep(sweep_generator, configs, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep_full")
    figures = run_sweep(sweep_generator, EXAMPLES, configs, out, progress=False)
    return out, figures


def lines(path):
    return sorted(path.read_text().splitlines())


def test_grid_expansion_and_names(configs):
    assert [c.name for c in configs] == ["costeer_alpha=1.0_beta=0.5", "costeer_alpha=1.0_beta=8.0",
                                         "costeer_alpha=2.0_beta=0.5", "costeer_alpha=2.0_beta=8.0"]
    assert configs[1].hyper == {"alpha": 1.0, "beta": 8.0, "lam": 2.0, "eta": 10.0, "T": 3}
    assert list(configs[1].hyper) == list(methods.get_method("costeer").hyper_keys)  # generate.py's order
    assert parse_assignments(" alpha = 1, 2 ;beta=0.5;") == {"alpha": ["1", "2"], "beta": ["0.5"]}
    t_grid = expand_grid(methods.get_method("costeer"), {"T": [1, 20.0]}, {"alpha": "1.5"})
    assert [c.name for c in t_grid] == ["costeer_T=1", "costeer_T=20"] and max_T(t_grid) == 20
    assert t_grid[1].hyper["alpha"] == 1.5 and isinstance(t_grid[1].hyper["T"], int)
    spec = load_sweep_file(REPO_ROOT / "launch" / "sweeps" / "alpha_beta_2x2.json")
    assert spec["method"] == "costeer" and spec["grid"] == {"alpha": [1.0, 2.0], "beta": [0.5, 1.0]}


@pytest.mark.parametrize("grid, fixed, message", [
    ({"gamma": ["1"]}, {}, "unknown hyperparameter 'gamma' for method costeer .*alpha, beta, lam, eta, T"),
    ({"alpha": ["1", "x"]}, {}, "alpha='x' is not a number"),
    ({"alpha": ["1", "nan"]}, {}, "alpha=nan is not a finite number"),
    ({"T": ["2.5"]}, {}, "T=2.5 must be an integer"),
    ({"alpha": ["1", "1.0"]}, {}, "alpha repeats a value"),
    ({"alpha": []}, {}, "alpha needs a non-empty list"),
    ({}, {}, "nothing to sweep"),
    ({"alpha": ["1"]}, {"alpha": 2}, "alpha both swept and fixed"),
    ({"alpha": ["1"]}, {"tau": 0.5}, "fixed: unknown hyperparameter 'tau' for method costeer"),
])
def test_grid_errors_are_clear(grid, fixed, message):
    with pytest.raises(SweepError, match=message):
        expand_grid(methods.get_method("costeer"), grid, fixed)


def test_assignment_syntax_errors():
    with pytest.raises(SweepError, match="'alpha' is not KEY=V1,V2"):
        parse_assignments("alpha")
    with pytest.raises(SweepError, match="alpha has an empty value"):
        parse_assignments("alpha=1,,2")
    with pytest.raises(SweepError, match="alpha is given twice"):
        parse_assignments("alpha=1;alpha=2")
    with pytest.raises(SweepError, match="unknown hyperparameter 'alpha' for method llm_wo .*none"):
        expand_grid(methods.get_method("llm_wo"), {"alpha": [1]})


def test_batched_sweep_matches_one_run_per_configuration(models, configs, full_sweep, tmp_path):
    out, figures = full_sweep
    assert figures.rows == 12 and figures.skipped_rows == 0 and figures.configurations == 4
    assert figures.run.stats["steered_tokens"] == figures.run.tokens
    # One greedy run per configuration, as generate.py does it (its own max_T, batch of prompts).
    outputs = set()
    for config in configs:
        gen = Generator(methods.get_method("costeer", max_T=config.hyper["T"]), models,
                        max_new_tokens=MAX_NEW_TOKENS, batch_size=3, hyper=config.hyper)
        single = tmp_path / f"{config.name}.jsonl"
        generate_to_file(gen, EXAMPLES, single, progress=False, extra_fields={"config": dict(config.hyper)})
        assert lines(out / single.name) == lines(single), config.name  # same rows, byte for byte
        outputs.add(tuple(json.loads(line)["output"] for line in lines(single)))
    assert len(outputs) > 1  # the grid points really decode differently
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{c.name}.jsonl" for c in configs)


def test_interrupted_sweep_resumes_to_the_same_files(sweep_generator, configs, full_sweep, tmp_path):
    out, _ = full_sweep
    full = {c.name: (out / f"{c.name}.jsonl").read_text().splitlines(keepends=True) for c in configs}
    # As if killed mid-way: one file complete, one with a torn last line, one missing, one partial.
    (tmp_path / f"{configs[0].name}.jsonl").write_text("".join(full[configs[0].name]))
    torn = full[configs[1].name]
    (tmp_path / f"{configs[1].name}.jsonl").write_text(torn[0] + torn[1][:len(torn[1]) // 2])
    (tmp_path / f"{configs[3].name}.jsonl").write_text(full[configs[3].name][2])
    figures = run_sweep(sweep_generator, EXAMPLES, configs, tmp_path, progress=False)
    assert figures.rows == 0 + 2 + 3 + 2 and figures.skipped_rows == 5
    for c in configs:
        assert lines(tmp_path / f"{c.name}.jsonl") == lines(out / f"{c.name}.jsonl"), c.name
    again = run_sweep(sweep_generator, EXAMPLES, configs, tmp_path, progress=False)
    assert again.rows == 0 and again.skipped_rows == 12
    # A file written with other fixed values is refused, not mixed into.
    other = expand_grid(methods.get_method("costeer"), GRID, {"T": 2})
    with pytest.raises(SweepError, match="was written with config .* use another --output_dir"):
        run_sweep(sweep_generator, EXAMPLES, other, tmp_path, progress=False)


def cli(script, *args, timeout=300):
    return subprocess.run([sys.executable, str(REPO_ROOT / "experiments" / script), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def test_cli_sweep_then_evaluate_table_and_plots(tiny_chat_models, tmp_path):
    lamp = REPO_ROOT / "tests" / "fixtures" / "lamp"
    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps({"method": "costeer", "grid": {"alpha": [1.0, 2.0], "beta": [0.5, 1.0]},
                                "fixed": {"task": "lamp_4", "data_dir": str(lamp), "T": 2, "max_new_tokens": 4,
                                          "batch_size": 3}}))
    out = tmp_path / "sweep"
    common = [f"--llm={tiny_chat_models['llm']}", f"--slm={tiny_chat_models['slm']}", f"--config={spec}",
              f"--output_dir={out}", "--progress=false"]
    r = cli("sweep.py", *common, "--batch_size=8")  # the command line wins over "fixed"
    assert r.returncode == 0, r.stderr[-2000:]
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    assert {k: figures[k] for k in ("examples", "configurations", "rows", "batch_size", "max_new_tokens")} == \
        {"examples": 2, "configurations": 4, "rows": 8, "batch_size": 8, "max_new_tokens": 4}
    for key in ("tokens", "load_seconds", "compile_seconds", "generate_seconds", "tokens_per_s"):
        assert key in figures
    assert figures["fixed"] == {"lam": 2.0, "eta": 10.0, "T": 2}
    rows = [json.loads(l) for l in (out / "costeer_alpha=1.0_beta=0.5.jsonl").read_text().splitlines()]
    assert [r["config"] for r in rows] == [{"alpha": 1.0, "beta": 0.5, "lam": 2.0, "eta": 10.0, "T": 2}] * 2

    bad = cli("sweep.py", *common, "--grid=gamma=1,2")
    assert bad.returncode != 0 and "unknown hyperparameter 'gamma' for method costeer" in bad.stderr

    from costeer_jax.eval.evaluation import expand_paths
    assert expand_paths([str(out)]) == expand_paths([f"{out}/*.jsonl"]) and len(expand_paths([str(out)])) == 4
    report = tmp_path / "res" / "sweep.json"
    ev = cli("evaluate.py", "--task=lamp_4", f"--data_dir={lamp}", f"--predictions={out}/*.jsonl",
             "--metrics=rouge", f"--output={report}")
    assert ev.returncode == 0, ev.stderr[-2000:]
    settings = json.loads(report.read_text())["table"]["settings"]
    assert sorted(settings) == ["costeer[alpha=1.0,beta=0.5]", "costeer[alpha=1.0,beta=1.0]",
                                "costeer[alpha=2.0,beta=0.5]", "costeer[alpha=2.0,beta=1.0]"]
    # alpha at beta's default (1.0) and beta at alpha's default (2.0): one panel each.
    assert sorted(p.name for p in report.parent.glob("*.png")) == ["sweep_sweep_lamp_4_rouge1.png",
                                                                  "sweep_sweep_lamp_4_rougeL.png"]
