"""Scores one generation file against its task: per-example metric values and their means."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Sequence

from costeer_jax.data import PREFERENCE_TASKS, Example
from costeer_jax.eval.judge import JUDGE_ASPECTS, JudgeConfig, judge_answers
from costeer_jax import privacy
from costeer_jax.eval.leakage import longest_copied_span, union_leakage, words
from costeer_jax.eval.predictions import PredictionFile, join_by_id
from costeer_jax.eval.reward import ResponseScorer, score_responses
from costeer_jax.eval.text_metrics import METEOR_KEY, ROUGE_KEYS, overlap_scores

METRICS = ("rouge", "meteor", "reward", "judge", "leakage")
REWARD_KEY = "reward"
# Leakage of the output and of the cloud's view (eval/leakage.py): the longest copied span (words;
# tokens with a tokenizer) and the share of word 4- and 8-grams copied from the private context.
LEAKAGE_KEYS = tuple(f"{view}leak_{figure}" for view in ("", "cloud_")
                     for figure in ("span", "share_4", "share_8", "span_tokens"))
# Metric family -> the score keys it writes.
METRIC_KEYS = {"rouge": ROUGE_KEYS, "meteor": (METEOR_KEY,), "reward": (REWARD_KEY,), "judge": tuple(JUDGE_ASPECTS),
               "leakage": LEAKAGE_KEYS}


def default_metrics(task: str) -> tuple[str, ...]:
    """What each paper reports: judge for CoGenesis, reward for preference tasks, ROUGE (+ METEOR
    for LongLaMP) for the reference-based tasks."""
    if task == "cogenesis":
        return ("judge",)
    if task in PREFERENCE_TASKS:
        return ("reward",)
    if task.startswith("lamp_"):
        return ("rouge",)
    return ("rouge", "meteor")


def dataset_label(task: str, preference: str | None) -> str:
    return f"{task}/{preference}" if preference else task


@dataclasses.dataclass
class Scorers:
    """Lazily built model-backed scorers, shared by every prediction file of one evaluation."""

    reward_factory: Callable[[], ResponseScorer] | None = None
    judge: JudgeConfig | None = None
    nltk_data_dir: str | Path | None = None
    leakage_tokenizer: Any = None  # the generating models' tokenizer: token-level leakage
    _reward: ResponseScorer | None = dataclasses.field(default=None, init=False, repr=False)

    def reward(self) -> ResponseScorer:
        if self._reward is None:
            if self.reward_factory is None:
                raise ValueError("the reward metric needs a reward model: pass --reward_model")
            self._reward = self.reward_factory()
        return self._reward


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return sum(present) / len(present) if present else None


def leakage_scores(example: Example, predictions: PredictionFile, tokenizer=None) -> dict[str, float | None]:
    """Leakage of one row's output and, when recorded, of its cloud view; token spans need the
    tokenizer that generated the ids."""
    scores: dict[str, float | None] = {}
    output, output_ids = predictions.outputs[example.id], predictions.token_ids.get(example.id)
    views = [("", [output], [output_ids])]
    if example.id in predictions.cloud_view:
        view, view_ids = predictions.cloud_view_text[example.id], predictions.cloud_view[example.id]
        if privacy.CLOUD_VIEW.get(predictions.method) == privacy.UPLINKED:
            # The cloud decides every draft and sends the recoveries: it holds the committed text
            # as well as the uplink stream (in which rejected drafts interleave the committed text).
            views.append(("cloud_", [output, view], [output_ids, view_ids]))
        else:
            views.append(("cloud_", [view], [view_ids]))
    encode = (lambda text: tokenizer.encode(text, add_special_tokens=False)) if tokenizer is not None else None
    context, query = words(example.personalized_query), words(example.query)
    for prefix, texts, ids in views:
        for figure, value in union_leakage([words(t) for t in texts], context, query).items():
            scores[f"{prefix}leak_{figure}"] = value
        if encode is not None and all(i is not None for i in ids):
            context_ids, query_ids = encode(example.personalized_query), encode(example.query)
            scores[f"{prefix}leak_span_tokens"] = float(max(longest_copied_span(i, context_ids, query_ids)
                                                            for i in ids))
    return scores


def score_prediction_file(task: str, examples: Sequence[Example], predictions: PredictionFile,
                          metrics: Sequence[str], scorers: Scorers, preference: str | None = None) -> dict[str, Any]:
    """The evaluation record of one file: averages, per-example scores and join diagnostics."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
    joined = join_by_id(examples, predictions)
    per_example: list[dict[str, Any]] = [{"id": example.id} for example in joined.examples]
    extra: dict[str, Any] = {}
    overlap = [m for m in metrics if m in ("rouge", "meteor")]
    if overlap:
        lacking = [example.id for example in joined.examples if example.reference is None]
        if lacking:
            raise ValueError(f"task {task!r} has no reference for ids {lacking[:5]}: ROUGE/METEOR need one; "
                             "use --metrics=reward or judge, or a split with outputs")
        for row, scores in zip(per_example, overlap_scores(joined.outputs, [e.reference for e in joined.examples],
                                                          overlap, scorers.nltk_data_dir)):
            row.update(scores)
    if "reward" in metrics:
        # The preference-aware prompt is the personalized query of a preference task.
        prompts = [example.personalized_query for example in joined.examples]
        for row, value in zip(per_example, score_responses(scorers.reward(), prompts, joined.outputs,
                                                           f"reward {dataset_label(task, preference)}")):
            row[REWARD_KEY] = value
    if "judge" in metrics:
        if scorers.judge is None:
            raise ValueError("the judge metric needs an endpoint: pass --judge_url (and --judge_model)")
        rows, counts = judge_answers(joined.examples, joined.outputs, scorers.judge, f"judge {task}")
        for row, judged in zip(per_example, rows):
            row.update(judged)
        extra["judge_counts"] = counts
    if "leakage" in metrics:
        for row, example in zip(per_example, joined.examples):
            row.update(leakage_scores(example, predictions, scorers.leakage_tokenizer))
    score_keys = [key for metric in metrics for key in METRIC_KEYS[metric]]
    return {
        "task": task,
        "preference": preference,
        "dataset": dataset_label(task, preference),
        "method": predictions.method,
        "config": predictions.config,
        "predictions": str(predictions.path),
        "metrics": list(metrics),
        "scale": "rouge1/rougeL/meteor are F-measure or METEOR x100",
        "num_examples": len(joined.examples),
        "missing_ids": joined.missing_ids,
        "unmatched_ids": joined.unmatched_ids,
        "averages": {key: _mean([row.get(key) for row in per_example]) for key in score_keys},
        "per_example": per_example,
        **extra,
    }

