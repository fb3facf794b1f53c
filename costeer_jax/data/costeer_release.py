"""Adapters for the eight evaluation files released by the CoSteer authors.

Prompt construction follows the authors' release: CoGenesis ships its personalized prompt
ready-made; for LongLaMP the five bge-reranker-retrieved history records (`top_5`) are listed
before the query; for the preference tasks the preference sentence is appended to the query.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from costeer_jax.data.example import Example
from costeer_jax.data.jsonl import DataFormatError, iter_jsonl, require_fields, require_text

PREFERENCES = ("concise", "creative", "uplifting", "verbose")

COGENESIS_TASK = "cogenesis"
LONGLAMP_RELEASE_TASKS = ("longlamp_abstract", "longlamp_review", "longlamp_writing")
PREFERENCE_TASKS = ("helpsteer", "personal_preference_eval", "truthfulqa", "ultrachat")
COSTEER_TASKS = (COGENESIS_TASK, *LONGLAMP_RELEASE_TASKS, *PREFERENCE_TASKS)

NUM_HISTORY_RECORDS = 5  # CoSteer Sec. 4.1: top-5 records by bge-reranker-v2-m3

# Per task: heading sentence, then the two (label, record key) pairs shown for each record.
_LONGLAMP_RECORD_LAYOUT = {
    "longlamp_abstract": ("The following are five titles with their abstracts.",
                          (("Title", "title"), ("Abstract", "abstract"))),
    "longlamp_review": ("The following are product descriptions with their user reviews.",
                        (("Product", "description"), ("Review", "reviewText"))),
    "longlamp_writing": ("The following are reddit post summaries with their content.",
                         (("Summary", "summary"), ("Content", "content"))),
}

_COGENESIS_PROFILE_HEADER = "## User Profile"
_COGENESIS_HISTORY_HEADER = "## User Writing History"
_COGENESIS_TASK_HEADER = "## Task"


def preference_prompt(query: str, preference: str) -> str:
    """The preference-aware prompt: query plus "Your answer should be as {preference} as possible"."""
    check_preference(preference)
    return f"{query}\nYour answer should be as {preference} as possible"


def check_preference(preference: str | None) -> str:
    if preference not in PREFERENCES:
        raise ValueError(
            f"preference tasks need --preference, one of {', '.join(PREFERENCES)} (got {preference!r}); "
            "each preference is a separate run")
    return preference


def longlamp_record_prompt(task: str, query: str, records: Sequence[dict[str, Any]], where: str = "") -> str:
    """Lists the retrieved history records (at most five) before the query."""
    heading, ((first_label, first_key), (second_label, second_key)) = _LONGLAMP_RECORD_LAYOUT[task]
    sections = [heading]
    for number, record in enumerate(records[:NUM_HISTORY_RECORDS], start=1):
        if not isinstance(record, dict):
            raise DataFormatError(f"{where}: top_5 record {number} must be an object")
        require_fields(record, (first_key, second_key), f"{where} (top_5 record {number})")
        sections.append(f"{first_label}[{number}]: {record[first_key]}\n"
                        f"{second_label}[{number}]: {record[second_key]}\n")
    sections += ["Now it's your turn\n", query]
    return "\n".join(sections)


def split_cogenesis_context(personalized_input: str) -> tuple[str, str]:
    """(user profile, writing history) sections of a CoGenesis personalized prompt.

    The LLM judge (CoSteer Fig. 6/7) shows these two blocks to the judge separately from the
    question. Returns ("", "") where the prompt does not have the released section headers.
    """
    profile_at = personalized_input.find(_COGENESIS_PROFILE_HEADER)
    history_at = personalized_input.find(_COGENESIS_HISTORY_HEADER)
    task_at = personalized_input.rfind(_COGENESIS_TASK_HEADER)
    if min(profile_at, history_at, task_at) < 0 or not profile_at < history_at < task_at:
        return "", ""
    profile = personalized_input[profile_at + len(_COGENESIS_PROFILE_HEADER):history_at].strip()
    history = personalized_input[history_at + len(_COGENESIS_HISTORY_HEADER):task_at].strip()
    return profile, history


def example_from_release_row(task: str, row: dict[str, Any], where: str,
                             preference: str | None = None) -> Example:
    """Turns one released row into an Example; `where` ("file:line") prefixes every error."""
    if task == COGENESIS_TASK:
        require_fields(row, ("id", "input", "personalized_input", "output"), where)
        personalized = require_text(row, "personalized_input", where)
        profile, history = split_cogenesis_context(personalized)
        return Example(id=require_text(row, "id", where), query=require_text(row, "input", where),
                       personalized_query=personalized, reference=require_text(row, "output", where),
                       meta={"profile": profile, "writing_history": history})
    if task in LONGLAMP_RELEASE_TASKS:
        require_fields(row, ("id", "input", "output", "top_5"), where)
        records = row["top_5"]
        if not isinstance(records, list) or not records:
            raise DataFormatError(f"{where}: field 'top_5' must be a non-empty list of history records")
        query = require_text(row, "input", where)
        return Example(id=require_text(row, "id", where), query=query,
                       personalized_query=longlamp_record_prompt(task, query, records, where),
                       reference=require_text(row, "output", where),
                       meta={"num_history_records": min(len(records), NUM_HISTORY_RECORDS)})
    if task in PREFERENCE_TASKS:
        require_fields(row, ("id", "input"), where)
        query = require_text(row, "input", where)
        return Example(id=require_text(row, "id", where), query=query,
                       personalized_query=preference_prompt(query, preference), reference=None,
                       meta={"preference": preference})
    raise ValueError(f"unknown CoSteer task {task!r}; valid: {', '.join(COSTEER_TASKS)}")


def release_file(task: str, data_dir: Path) -> Path:
    return Path(data_dir) / f"{task}.jsonl"


def load_release_task(task: str, data_dir: Path, preference: str | None = None,
                      limit: int | None = None) -> list[Example]:
    if task in PREFERENCE_TASKS:
        check_preference(preference)
    path = release_file(task, data_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: task {task!r} reads {path.name} from --data_dir "
            f"(currently {data_dir}); point --data_dir at the folder holding the CoSteer release files")
    examples = []
    for line_number, row in iter_jsonl(path):
        if limit is not None and len(examples) >= limit:
            break
        examples.append(example_from_release_row(task, row, f"{path}:{line_number}", preference))
    return examples
