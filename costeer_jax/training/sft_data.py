"""Training sets for the papers' fine-tuned baselines, built from the evaluation data we have.

- CoSteer B.8 (SFT, proxy-tuning): N random rows of a task (the paper: 1,000 per dataset),
  personalized prompt -> reference. Rows that an evaluation will decode are excluded by id, so
  a fine-tuned model is never scored on rows it was trained on.
- SpecSteer B.3/B.5 (LoRA specialist): per user, the profile entries minus the 10 most recent
  ones, each entry as a task prompt (Figure 14: the entry's task input -> the entry's output).
  The CoSteer release's LongLaMP head files carry no timestamps (their profiles are sorted by
  bge-reranker score against the row's query), so "most recent" cannot be read off them: we
  hold out the 10 entries ranked first, the ones the private context would show for that query.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from costeer_jax.data.example import Example
from costeer_jax.training.packing import TokenizedExample, truncate

HELD_OUT_RECENT = 10  # SpecSteer B.3: the 10 most recent interactions are not trained on


@dataclasses.dataclass(frozen=True)
class SFTRow:
    id: str
    prompt: str
    response: str


def costeer_sft_rows(examples: Sequence[Example], count: int, seed: int, exclude_ids: Sequence[str] = ()) -> list[SFTRow]:
    """count random rows (seeded) with references, personalized prompt -> reference."""
    excluded = {str(i) for i in exclude_ids}
    pool = [e for e in examples if e.reference and str(e.id) not in excluded]
    if not pool:
        raise ValueError("no rows with references left to train on (all excluded or reference-free); "
                         "SFT needs a task with references such as cogenesis or the LongLaMP files")
    order = np.random.default_rng(seed).permutation(len(pool))[:count]
    return [SFTRow(str(pool[i].id), pool[i].personalized_query, pool[i].reference) for i in sorted(order)]


# LongLaMP entry -> (the task input an entry would have had, its output), LongLaMP's own phrasing.
_HISTORY_FORMATS = {
    "longlamp_review": lambda p: (
        f'Generate the review text written by a reviewer who has a given an overall rating of "{p.get("overall", "")}" '
        f'for a product with description "{p["description"]}". The summary of the review text is "{p["summary"]}".',
        p["reviewText"]),
    "longlamp_writing": lambda p: (f"Generate the content for a reddit post {p['summary']}", p["content"]),
    "longlamp_abstract": lambda p: (f'Generate an abstract for the title "{p["title"]}".', p["abstract"]),
}


def specsteer_history_rows(task: str, data_dir: str | Path, held_out: int = HELD_OUT_RECENT) -> list[SFTRow]:
    """Every user's profile entries after the first `held_out`, as (entry prompt -> entry output)."""
    if task not in _HISTORY_FORMATS:
        raise ValueError(f"history training data is built for {', '.join(_HISTORY_FORMATS)}, not {task!r}")
    path = Path(data_dir) / f"{task}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; pass --data_dir with the CoSteer release files")
    rows = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        user = str(row.get("reviewerId") or row.get("author") or row.get("id", line_number))
        for j, entry in enumerate(row.get("profile", [])[held_out:]):
            try:
                prompt, response = _HISTORY_FORMATS[task](entry)
            except KeyError as e:
                raise ValueError(f"{path}:{line_number}: profile entry lacks field {e}") from e
            if str(response).strip():
                rows.append(SFTRow(f"{row.get('id', line_number)}/{user}/{held_out + j}", prompt, str(response)))
    return rows


def tokenize_rows(rows: Sequence[SFTRow], tokenizer, end_of_turn: int, max_len: int) -> tuple[list[TokenizedExample], int]:
    """Chat-framed prompt (the one decoding uses) -> response + end of turn; returns the examples and
    how many were dropped because the prompt alone fills max_len (long ones are right-truncated)."""
    from costeer_jax.models.chat import chat_prompt_ids

    out, dropped = [], 0
    for r in rows:
        example = TokenizedExample(tuple(chat_prompt_ids(tokenizer, r.prompt)),
                                   tuple(tokenizer.encode(r.response, add_special_tokens=False)) + (end_of_turn,))
        kept = truncate(example, max_len)
        if kept is None:
            dropped += 1
        else:
            out.append(kept)
    return out, dropped


def split_held_out(rows: Sequence[SFTRow], fraction: float, seed: int) -> tuple[list[SFTRow], list[SFTRow]]:
    """(train, held-out) rows for the loss curve: a seeded fraction held out (at least one row)."""
    n_eval = max(1, int(round(fraction * len(rows)))) if fraction > 0 and len(rows) > 1 else 0
    order = np.random.default_rng([seed, 1]).permutation(len(rows))
    held = set(order[:n_eval].tolist())
    return ([r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held])
