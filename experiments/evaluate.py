"""Scores generation outputs against a benchmark task and writes paper-style reports.

  python experiments/evaluate.py --task=longlamp_review --predictions=out/costeer.jsonl \
      [--data_dir=../shared/data/costeer_release] [--metrics=rouge,meteor] --output=results/review.json

Several --predictions (comma-separated, globs allowed) give one table row per setting (the rows'
"method", plus the config values that vary for sweeps) and one column per dataset x metric:
RESULT.json (per-example scores, averages, significance), RESULT.csv, RESULT.md and, for sweeps,
RESULT_sweep_*.png. Metrics default to what the papers report for the task: judge (CoGenesis),
reward (preference tasks), rouge + meteor (LongLaMP), rouge (LaMP).
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

from absl import flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from costeer_jax.data import TASKS  # noqa: E402
from costeer_jax.eval.evaluation import evaluate_prediction_files, expand_paths, write_reports  # noqa: E402
from costeer_jax.eval.judge import DEFAULT_JUDGE_MODEL, JudgeConfig  # noqa: E402
from costeer_jax.eval.reward import DEFAULT_REWARD_MODEL, ArmoRMScorer  # noqa: E402
from costeer_jax.eval.scoring import METRICS, Scorers  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("predictions", None, "Generation output JSON-lines files (globs allowed; a folder, "
                  "e.g. a sweep's --output_dir, stands for its *.jsonl files).")
flags.DEFINE_list("task", None, f"Task per file (one for all, or one per file); one of {', '.join(TASKS)}. "
                  "Default: the rows' 'task' field.")
flags.DEFINE_list("preference", None, "Preference per file for preference tasks (concise, creative, uplifting, "
                  "verbose). Default: the rows' 'preference' field.")
flags.DEFINE_string("data_dir", None, "Task data folder (default ../shared/data/costeer_release when present).")
flags.DEFINE_string("split", "dev", "LaMP/LongLaMP split: train, dev or test.")
flags.DEFINE_enum("longlamp_setting", "user", ["user", "temporal"], "LongLaMP hub setting when no --data_dir.")
flags.DEFINE_list("metrics", None, f"Subset of {','.join(METRICS)}; default depends on the task.")
flags.DEFINE_string("output", None, "RESULT.json; the CSV, Markdown and PNG files go beside it.")
flags.DEFINE_list("labels", None, "Row label per prediction file (default: method name + varying config).")
flags.DEFINE_string("leakage_tokenizer", None, "--metrics=leakage: the generating models' tokenizer (alias, "
                    "directory or .gguf) for copied spans in tokens (words are always measured).")
flags.DEFINE_string("nltk_data", None, "nltk_data folder with WordNet (default <repo>/.nltk_data).")
flags.DEFINE_string("reward_model", DEFAULT_REWARD_MODEL, "Reward model: local folder or hub id.")
flags.DEFINE_string("reward_device", "auto", "torch device for the reward model (auto, cpu, cuda).")
flags.DEFINE_string("reward_dtype", "auto", "torch dtype for the reward model (auto, bfloat16, float32).")
flags.DEFINE_integer("reward_max_length", 4096, "Token limit of a scored chat.")
flags.DEFINE_string("judge_url", None, "OpenAI-compatible endpoint, e.g. https://api.openai.com/v1.")
flags.DEFINE_string("judge_model", DEFAULT_JUDGE_MODEL, "Judge model name.")
flags.DEFINE_string("judge_api_key_env", "OPENAI_API_KEY", "Environment variable holding the judge API key.")
flags.DEFINE_integer("judge_runs", 5, "Judge requests per answer and aspect, averaged (paper: 5).")
flags.DEFINE_integer("judge_workers", 8, "Concurrent judge requests.")
flags.DEFINE_integer("judge_max_retries", 5, "Retries of a failed judge request (exponential backoff).")
flags.DEFINE_float("judge_timeout_s", 120.0, "Timeout of one judge request.")
flags.DEFINE_string("significance_method", "costeer", "Setting tested against the baselines (Table 7).")
flags.DEFINE_list("upper_bound_settings", ["llm_w"], "Settings left out of the significance baselines.")
flags.DEFINE_list("significance_baselines", None, "Explicit baselines (default: every other setting but the "
                  "upper bounds).")
flags.DEFINE_float("significance_level", 0.05, "p-value threshold of the paired t-test.")
flags.mark_flags_as_required(["predictions", "output"])


def leakage_tokenizer():
    if not FLAGS.leakage_tokenizer:
        return None
    from costeer_jax.models.loading import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(FLAGS.leakage_tokenizer))


def main(argv):
    del argv
    judge = None
    if FLAGS.judge_url:
        judge = JudgeConfig(url=FLAGS.judge_url, model=FLAGS.judge_model, api_key_env=FLAGS.judge_api_key_env,
                            runs=FLAGS.judge_runs, max_retries=FLAGS.judge_max_retries,
                            timeout_s=FLAGS.judge_timeout_s, workers=FLAGS.judge_workers)
    scorers = Scorers(
        reward_factory=functools.partial(ArmoRMScorer, FLAGS.reward_model, device=FLAGS.reward_device,
                                         dtype=FLAGS.reward_dtype, max_length=FLAGS.reward_max_length),
        judge=judge, nltk_data_dir=FLAGS.nltk_data, leakage_tokenizer=leakage_tokenizer())
    results = evaluate_prediction_files(
        expand_paths(FLAGS.predictions), scorers, tasks=FLAGS.task, preferences=FLAGS.preference,
        metrics=FLAGS.metrics, data_dir=FLAGS.data_dir, split=FLAGS.split, longlamp_setting=FLAGS.longlamp_setting)
    paths = write_reports(results, FLAGS.output, FLAGS.labels, FLAGS.significance_method,
                          FLAGS.upper_bound_settings, FLAGS.significance_level, FLAGS.significance_baselines)
    print(Path(paths["markdown"]).read_text())
    for kind, path in paths.items():
        for item in path if isinstance(path, list) else [path]:
            print(f"{kind}: {item}")


if __name__ == "__main__":
    from costeer_jax.cli import run

    run(main)
