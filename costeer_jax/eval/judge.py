"""LLM-as-a-judge for CoGenesis (CoSteer Sec. 4.2, App. B.7, Figures 6 and 7).

Any OpenAI-compatible `/chat/completions` endpoint works. Each answer is rated 1-10 for overall
quality and for personalization at temperature 0; each rating is requested `runs` times (5 in
the paper) and averaged. Transient failures (HTTP 429/5xx, timeouts, refused connections) are
retried with exponential backoff; a reply without a parseable [[rating]] is counted as a parse
failure and left out of the average instead of stopping the evaluation.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Sequence

from costeer_jax.data.example import Example

_RATING_INSTRUCTION = ("After providing your explanation, you must rate the response on a scale of 1 to 10 by "
                       "strictly following this format: [[rating]], for example: Rating: [[5]].")
_CONTEXT_AND_ANSWER = """

[User Profile and Writing History]
{profile_info}
{writing_history}

[Question]
{question}

[The Start of Assistant's Answer]
{answer}
[The End of Assistant's Answer]"""

# Figure 6.
OVERALL_PROMPT = (
    "[Instruction]\n"
    "Please act as an impartial evaluator and assess the quality of the AI assistant's response to the user "
    "question shown below. Your assessment should focus on how well the response aligns with the user's "
    "personalized profile and writing history. Evaluate factors such as the response's adherence to the "
    "user's personal style, consistency with their profile, helpfulness, relevance, accuracy, depth, "
    "creativity, and level of detail. Begin your evaluation by providing a short explanation. Be as "
    "objective as possible.\n" + _RATING_INSTRUCTION + _CONTEXT_AND_ANSWER)

# Figure 7.
PERSONALIZATION_PROMPT = (
    "[Instruction]\n"
    "Please act as an impartial judge and evaluate the AI assistant's response based on its alignment with "
    "the user's personal profile and writing history. Focus your assessment on the personalization aspects "
    "of the response, including its adherence to the user's unique style, preferences, and consistency "
    "with their profile. Consider how well the response addresses the user's individual needs and "
    "interests. Begin your evaluation by providing a short explanation. Be as objective as possible.\n"
    + _RATING_INSTRUCTION + _CONTEXT_AND_ANSWER)

JUDGE_ASPECTS = {"judge_overall": OVERALL_PROMPT, "judge_personalized": PERSONALIZATION_PROMPT}
DEFAULT_JUDGE_MODEL = "gpt-4o-2024-08-06"
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_RETRYABLE_HTTP_CODES = {408, 409, 425, 429, 500, 502, 503, 504}


class JudgeConfigurationError(RuntimeError):
    """The endpoint refuses the request itself (bad URL, model or key): retrying cannot help."""


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
    url: str  # base URL (".../v1") or the full ".../chat/completions" URL
    model: str = DEFAULT_JUDGE_MODEL
    api_key_env: str = "OPENAI_API_KEY"
    runs: int = 5
    max_retries: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    timeout_s: float = 120.0
    workers: int = 8

    @property
    def endpoint(self) -> str:
        url = self.url.rstrip("/")
        return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def judge_prompt(aspect: str, example: Example, answer: str) -> str:
    """The Figure 6/7 prompt; profile and history come from the CoGenesis adapter's meta."""
    profile = example.meta.get("profile")
    history = example.meta.get("writing_history", "")
    if not profile:  # tasks without a split profile: show the whole private context
        profile, history = example.personalized_query, ""
    return JUDGE_ASPECTS[aspect].format(profile_info=profile, writing_history=history,
                                        question=example.query, answer=answer.strip())


def parse_rating(reply: str) -> float | None:
    """The last [[n]] in the reply if it lies in 1..10, else None."""
    ratings = _RATING.findall(reply or "")
    if not ratings:
        return None
    value = float(ratings[-1])
    return value if 1.0 <= value <= 10.0 else None


def _post_chat(config: JudgeConfig, prompt: str) -> str:
    body = json.dumps({"model": config.model, "temperature": 0,
                       "messages": [{"role": "user", "content": prompt}]}).encode("utf-8")
    headers = {"Content-Type": "application/json"}
    api_key = os.environ.get(config.api_key_env)
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(config.endpoint, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
        payload = json.loads(response.read().decode("utf-8"))
    return payload["choices"][0]["message"]["content"] or ""


def request_with_retries(config: JudgeConfig, prompt: str,
                         sleep: Callable[[float], None] = time.sleep) -> str | None:
    """The judge's reply, or None once `max_retries` retries of transient failures are spent."""
    for attempt in range(config.max_retries + 1):
        try:
            return _post_chat(config, prompt)
        except urllib.error.HTTPError as error:
            if error.code not in _RETRYABLE_HTTP_CODES:
                detail = error.read().decode("utf-8", "replace")[:300]
                raise JudgeConfigurationError(
                    f"judge endpoint {config.endpoint} answered HTTP {error.code}: {detail}. Check --judge_url, "
                    f"--judge_model and the key in ${config.api_key_env}") from error
            reason = f"HTTP {error.code}"
        except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError,
                KeyError, IndexError, TypeError) as error:
            reason = f"{type(error).__name__}: {error}"
        if attempt < config.max_retries:
            delay = min(config.max_backoff_s, config.backoff_s * 2 ** attempt)
            logging.warning("judge request failed (%s); retry %d/%d in %.1fs", reason, attempt + 1,
                            config.max_retries, delay)
            sleep(delay)
    logging.error("judge request failed after %d retries (%s)", config.max_retries, reason)
    return None


def judge_answers(examples: Sequence[Example], answers: Sequence[str], config: JudgeConfig,
                  description: str = "judge") -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Per example: mean rating per aspect (None if no run parsed) and the raw run ratings.

    Returns (rows, counts) where counts has requests, parse_failures and request_failures.
    """
    from tqdm.auto import tqdm

    if len(examples) != len(answers):
        raise ValueError(f"{len(examples)} examples but {len(answers)} answers")
    if config.runs < 1:
        raise ValueError(f"--judge_runs must be >= 1, got {config.runs}")
    jobs = [(index, aspect, run) for index in range(len(examples)) for aspect in JUDGE_ASPECTS
            for run in range(config.runs)]
    prompts = {(index, aspect): judge_prompt(aspect, examples[index], answers[index])
               for index in range(len(examples)) for aspect in JUDGE_ASPECTS}
    ratings: dict[tuple[int, str], list[float | None]] = {key: [None] * config.runs for key in prompts}
    counts = {"requests": len(jobs), "parse_failures": 0, "request_failures": 0}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, config.workers)) as pool:
        futures = {pool.submit(request_with_retries, config, prompts[(index, aspect)]): (index, aspect, run)
                   for index, aspect, run in jobs}
        for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc=description,
                           leave=False):
            index, aspect, run = futures[future]
            try:
                reply = future.result()
            except JudgeConfigurationError:
                pool.shutdown(wait=False, cancel_futures=True)  # every other request would fail alike
                raise
            if reply is None:
                counts["request_failures"] += 1
                continue
            rating = parse_rating(reply)
            if rating is None:
                counts["parse_failures"] += 1
            ratings[(index, aspect)][run] = rating
    rows = []
    for index in range(len(examples)):
        row: dict[str, Any] = {}
        for aspect in JUDGE_ASPECTS:
            runs = ratings[(index, aspect)]
            parsed = [r for r in runs if r is not None]
            row[aspect] = sum(parsed) / len(parsed) if parsed else None
            row[f"{aspect}_runs"] = runs
        rows.append(row)
    return rows, counts
