"""Paired t-tests, paper-style tables (JSON/CSV/Markdown), sweep plots and the evaluate.py command."""
from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from costeer_jax.data import load_task
from costeer_jax.eval.evaluation import evaluate_prediction_files, expand_paths, write_reports
from costeer_jax.eval.plots import plot_sweeps, sweep_series
from costeer_jax.eval.reports import build_table, setting_labels, table_csv, table_markdown
from costeer_jax.eval.scoring import Scorers, default_metrics
from costeer_jax.eval.significance import paired_t_test, paired_t_test_by_id, significance_marker
from costeer_jax.eval.text_metrics import rouge

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def result(dataset_task: str, method: str, scores: dict[str, list[float]], preference: str | None = None,
           config: dict | None = None, name: str | None = None) -> dict:
    """An evaluation record as score_prediction_file writes it, from per-example score lists."""
    count = len(next(iter(scores.values())))
    per_example = [{"id": str(i), **{k: v[i] for k, v in scores.items()}} for i in range(count)]
    return {"task": dataset_task, "preference": preference,
            "dataset": f"{dataset_task}/{preference}" if preference else dataset_task,
            "method": method, "config": config or {}, "predictions": f"/runs/{name or method}.jsonl",
            "averages": {k: sum(v) / len(v) for k, v in scores.items()}, "per_example": per_example}


# ---------------------------------------------------------------- significance

def test_paired_t_test_matches_the_textbook_formula():
    from scipy import stats

    method, baseline = [3.0, 5.0, 7.0, 9.0], [2.0, 3.0, 4.0, 5.0]  # differences 1, 2, 3, 4
    test = paired_t_test(method, baseline)
    mean, sd = 2.5, math.sqrt(sum((d - 2.5) ** 2 for d in (1, 2, 3, 4)) / 3)
    t = mean / (sd / math.sqrt(4))
    assert test.num_pairs == 4 and test.mean_difference == pytest.approx(2.5)
    assert test.t_statistic == pytest.approx(t) and t == pytest.approx(3.8729833)
    assert test.p_value == pytest.approx(2 * stats.t.sf(t, df=3))
    assert test.improves() and not paired_t_test(baseline, method).improves()  # worse is never an improvement


def test_significance_needs_every_baseline_beaten_significantly():
    strong = paired_t_test([3.0, 5.0, 7.0, 9.0], [2.0, 3.0, 4.0, 5.0])
    noisy = paired_t_test([1.0, 5.0, 2.0, 9.0], [2.0, 3.0, 3.0, 5.0])  # higher on average, p > 0.05
    assert noisy.mean_difference > 0 and noisy.p_value > 0.05
    assert significance_marker([strong]) == "*"
    assert significance_marker([strong, noisy]) == ""
    assert significance_marker([]) == ""
    assert math.isnan(paired_t_test([1.0], [0.0]).p_value)
    by_id = paired_t_test_by_id({"a": 3.0, "b": 5.0, "c": 7.0, "x": 100.0}, {"c": 4.0, "b": 3.0, "a": 2.0, "y": 0.0})
    assert by_id == paired_t_test([3.0, 5.0, 7.0], [2.0, 3.0, 4.0])  # only shared ids, paired by id


# ---------------------------------------------------------------- tables

def table1_like_results() -> list[dict]:
    review = {"costeer": [30.0, 32.0, 34.0, 36.0, 38.0], "llm_wo": [29.0, 30.0, 31.0, 32.0, 33.0],
              "slm_w": [20.0, 21.0, 23.0, 22.0, 24.0], "llm_w": [40.0, 41.0, 42.0, 43.0, 44.0]}
    results = [result("longlamp_review", m, {"rouge1": v, "rougeL": [x / 2 for x in v]}) for m, v in review.items()]
    # rougeL of llm_wo made to beat costeer on one column.
    results[1]["averages"]["rougeL"] = 99.0
    for row in results[1]["per_example"]:
        row["rougeL"] = 99.0
    for task in ("helpsteer", "ultrachat"):
        for method, base in (("costeer", 0.8), ("llm_wo", 0.7), ("slm_w", 0.6), ("llm_w", 0.9)):
            spread = [0.0, 0.01, 0.03] if method == "costeer" else [0.0, 0.02, 0.01]  # paired differences vary
            results.append(result(task, method, {"reward": [base + d for d in spread]}, preference="concise"))
    return results


def test_table_layout_bold_and_asterisks():
    results = table1_like_results()
    table = build_table(results, setting_labels(results))
    assert table.settings == ["costeer", "llm_wo", "slm_w", "llm_w"]
    assert table.baselines == ["llm_wo", "slm_w"]  # llm_w is the privacy-violating upper bound
    assert table.columns == [("longlamp_review", "rouge1"), ("longlamp_review", "rougeL"),
                             ("pref_align/concise", "reward"), ("helpsteer/concise", "reward"),
                             ("ultrachat/concise", "reward")]
    assert table.values[("costeer", ("longlamp_review", "rouge1"))] == pytest.approx(34.0)
    assert table.values[("slm_w", ("pref_align/concise", "reward"))] == pytest.approx(0.61)
    review_r1 = table.significance[("longlamp_review", "rouge1")]
    assert review_r1["better_than_all"] and review_r1["marker"] == "*"
    assert set(review_r1["tests"]) == {"llm_wo", "slm_w"}
    assert not table.significance[("longlamp_review", "rougeL")]["better_than_all"]
    markdown = table_markdown(table)
    lines = markdown.splitlines()
    assert lines[0] == ("| Setting | longlamp_review R-1 | longlamp_review R-L | pref_align/concise reward | "
                        "helpsteer/concise reward | ultrachat/concise reward |")
    assert lines[2].startswith("| costeer | **34.00\\*** | 17.00 | ")
    assert lines[3] == "| llm_wo | 31.00 | 99.00 | 0.7100 | 0.7100 | 0.7100 |"
    rouge_l = ("longlamp_review", "rougeL")
    only_slm = build_table(results, setting_labels(results), baselines=["slm_w"])
    assert only_slm.baselines == ["slm_w"] and set(only_slm.significance[rouge_l]["tests"]) == {"slm_w"}
    assert only_slm.significance[rouge_l]["better_than_all"]  # llm_wo no longer counts
    with pytest.raises(ValueError, match="not settings"):
        build_table(results, setting_labels(results), baselines=["sft"])
    rows = list(csv.reader(io.StringIO(table_csv(table))))
    assert rows[0][:3] == ["setting", "longlamp_review/rouge1", "longlamp_review/rougeL"]
    assert float(rows[1][1]) == pytest.approx(34.0) and float(rows[4][3]) == pytest.approx(0.91)


def test_preference_average_needs_every_dataset():
    results = table1_like_results()
    results = [r for r in results if not (r["method"] == "slm_w" and r["task"] == "ultrachat")]
    table = build_table(results, setting_labels(results))
    assert table.values[("slm_w", ("pref_align/concise", "reward"))] is None
    assert table.values[("costeer", ("pref_align/concise", "reward"))] == pytest.approx(0.8 + 0.04 / 3)


def test_setting_labels_for_sweeps_and_clashes():
    results = [result("longlamp_abstract", "costeer", {"rougeL": [1.0]}, config={"alpha": a, "T": 20}, name=f"a{a}")
               for a in (1.0, 2.0)]
    results.append(result("longlamp_abstract", "costeer", {"rougeL": [1.0]}, config={"alpha": 2.0, "T": 20},
                          name="t20"))
    results.append(result("longlamp_abstract", "llm_wo", {"rougeL": [1.0]}))
    assert setting_labels(results) == ["costeer[alpha=1.0]", "costeer[alpha=2.0] (a2.0)",
                                       "costeer[alpha=2.0] (t20)", "llm_wo"]
    assert setting_labels(results, ["A", "B", "C", "D"]) == ["A", "B", "C", "D"]
    with pytest.raises(ValueError, match="distinct --labels"):
        build_table(results, ["A", "A", "C", "D"])


# ---------------------------------------------------------------- sweeps

def sweep_results() -> list[dict]:
    defaults = {"alpha": 2.0, "beta": 1.0, "lam": 2.0, "eta": 10.0, "T": 20}
    points = [("alpha", 0.5, 20.0), ("alpha", 2.0, 24.0), ("alpha", 5.0, 21.0), ("T", 1, 22.0), ("T", 100, 24.5),
              ("lam", 0.0, 18.0)]
    results = [result("longlamp_abstract", "costeer", {"rougeL": [score]}, config=dict(defaults, **{k: v}),
                      name=f"{k}{v}") for k, v, score in points]
    # Two parameters off their defaults: belongs to no one-at-a-time series.
    results.append(result("longlamp_abstract", "costeer", {"rougeL": [99.0]}, config=dict(defaults, alpha=5.0, T=1)))
    return results


def test_sweep_series_vary_one_parameter_at_a_time():
    results = sweep_results()
    assert sweep_series(results, "longlamp_abstract", "rougeL", "alpha") == [(0.5, 20.0), (2.0, 24.0), (5.0, 21.0)]
    assert sweep_series(results, "longlamp_abstract", "rougeL", "T") == [(1.0, 22.0), (20.0, 24.0), (100.0, 24.5)]
    assert sweep_series(results, "longlamp_abstract", "rougeL", "lambda") == [(0.0, 18.0), (2.0, 24.0)]
    assert sweep_series(results, "longlamp_abstract", "rougeL", "eta") == [(10.0, 24.0)]  # not swept


def test_sweep_plot_is_a_png(tmp_path):
    (path,) = plot_sweeps(sweep_results(), tmp_path / "abstract")
    assert path == tmp_path / "abstract_sweep_longlamp_abstract_rougeL.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert plot_sweeps([result("longlamp_abstract", "costeer", {"rougeL": [1.0]})], tmp_path / "none") == []


def test_write_reports_files(tmp_path):
    results = table1_like_results() + sweep_results()
    paths = write_reports(results, tmp_path / "out" / "table.json")
    saved = json.loads((tmp_path / "out" / "table.json").read_text())
    assert [r["setting"] for r in saved["results"]][:4] == ["costeer", "llm_wo", "slm_w", "llm_w"]
    assert saved["results"][0]["per_example"][0] == {"id": "0", "rouge1": 30.0, "rougeL": 15.0}
    assert saved["table"]["values"]["costeer"]["longlamp_review/rouge1"] == pytest.approx(34.0)
    assert saved["table"]["significance"]["longlamp_review/rouge1"]["marker"] == "*"
    assert paths["csv"].read_text().startswith("setting,")
    assert paths["markdown"].read_text().startswith("| Setting |")
    assert [p.name for p in paths["plots"]] == ["table_sweep_longlamp_abstract_rougeL.png"]


# ---------------------------------------------------------------- the pipeline and the command

def write_predictions(path: Path, method: str, outputs: dict[str, str], **extra) -> Path:
    path.write_text("".join(json.dumps({"id": k, "method": method, "output": v, "token_ids": [1], **extra}) + "\n"
                            for k, v in outputs.items()))
    return path


def test_default_metrics_follow_the_papers():
    assert default_metrics("cogenesis") == ("judge",)
    assert default_metrics("truthfulqa") == ("reward",)
    assert default_metrics("longlamp_writing") == ("rouge", "meteor") == default_metrics("longlamp_2")
    assert default_metrics("lamp_5") == ("rouge",)


def test_pipeline_joins_by_id_and_reports_gaps(tmp_path):
    examples = load_task("lamp_4", FIXTURES / "lamp")
    predictions = write_predictions(tmp_path / "p.jsonl", "costeer",
                                    {"4002": "Firefighters rescue cat", "9999": "stray row"}, task="lamp_4")
    (record,) = evaluate_prediction_files([predictions], Scorers(), data_dir=FIXTURES / "lamp")  # task from rows
    assert record["missing_ids"] == ["4001"] and record["unmatched_ids"] == ["9999"]
    expected = rouge("Firefighters rescue cat", examples[1].reference)
    assert record["per_example"] == [{"id": "4002", **expected}]
    assert record["averages"] == pytest.approx(expected)
    tweet = write_predictions(tmp_path / "tweet.jsonl", "costeer", {"7001": "weekend hike, so excited"})
    with pytest.raises(ValueError, match="no reference for ids \\['7001'\\]"):  # LaMP test split: no outputs
        evaluate_prediction_files([tweet], Scorers(), tasks=["lamp_7"], data_dir=FIXTURES / "lamp", split="test")
    with pytest.raises(ValueError, match="none of its 2 ids"):
        evaluate_prediction_files([predictions], Scorers(), tasks=["lamp_5"], data_dir=FIXTURES / "lamp")
    with pytest.raises(ValueError, match="--task has 2 entries for 1 prediction files"):
        evaluate_prediction_files([predictions], Scorers(), tasks=["lamp_4", "lamp_5"], data_dir=FIXTURES / "lamp")
    with pytest.raises(FileNotFoundError, match="matches no file"):
        expand_paths([str(tmp_path / "nothing_*.jsonl")])


def test_evaluate_command_end_to_end(tmp_path):
    examples = load_task("lamp_4", FIXTURES / "lamp")
    outputs = {"costeer": {"4001": "Solar panels for every public school", "4002": "Firefighters save stray cat"},
               "llm_wo": {"4001": "Council news", "4002": "Cat rescued"}}
    files = [write_predictions(tmp_path / f"{m}.jsonl", m, o) for m, o in outputs.items()]
    command = [sys.executable, str(REPO_ROOT / "experiments" / "evaluate.py"), "--task=lamp_4",
               f"--data_dir={FIXTURES / 'lamp'}", "--predictions=" + ",".join(map(str, files)),
               "--metrics=rouge", f"--output={tmp_path / 'res' / 'lamp4.json'}"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr
    saved = json.loads((tmp_path / "res" / "lamp4.json").read_text())
    for record in saved["results"]:
        method_outputs = outputs[record["method"]]
        for row in record["per_example"]:
            reference = next(e.reference for e in examples if e.id == row["id"])
            expected = rouge(method_outputs[row["id"]], reference)
            assert {k: row[k] for k in ("rouge1", "rougeL")} == pytest.approx(expected)
        assert record["averages"]["rouge1"] == pytest.approx(sum(r["rouge1"] for r in record["per_example"]) / 2)
    assert "| costeer |" in completed.stdout and (tmp_path / "res" / "lamp4.md").is_file()
    assert (tmp_path / "res" / "lamp4.csv").read_text().splitlines()[0] == "setting,lamp_4/rouge1,lamp_4/rougeL"
