"""Adapters for the eight evaluation files released by the CoSteer authors.

Prompt construction follows the authors' release: CoGenesis ships its personalized prompt
ready-made; for LongLaMP the five bge-reranker-retrieved history records (`top_5`) are listed
before the query; for the preference tasks the preference sentence is appended to the query.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from costeer_jax.data import context_options as ctx
from costeer_jax.data.context_options import ContextOptions
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


def longlamp_record_prompt(task: str, query: str, records: Sequence[dict[str, Any]], where: str = "",
                           limit: int | None = NUM_HISTORY_RECORDS, layout_task: str | None = None,
                           source: str = "top_5") -> str:
    """Lists the history records (the release: at most five) before the query. `layout_task`
    names the task whose fields the records carry (another task's for irrelevant noise)."""
    heading, ((first_label, first_key), (second_label, second_key)) = _LONGLAMP_RECORD_LAYOUT[layout_task or task]
    shown = records[:limit] if limit is not None else records
    if len(shown) != NUM_HISTORY_RECORDS:
        heading = heading.replace(" five ", " ")
    sections = [heading]
    for number, record in enumerate(shown, start=1):
        if not isinstance(record, dict):
            raise DataFormatError(f"{where}: {source} record {number} must be an object")
        require_fields(record, (first_key, second_key), f"{where} ({source} record {number})")
        sections.append(f"{first_label}[{number}]: {record[first_key]}\n"
                        f"{second_label}[{number}]: {record[second_key]}\n")
    sections += ["Now it's your turn\n", query]
    return "\n".join(sections)


def record_text(task: str, record: dict[str, Any]) -> str:
    """A history record's two shown fields, as retrieval and noise ranking read it."""
    _, ((_, first_key), (_, second_key)) = _LONGLAMP_RECORD_LAYOUT[task]
    return f"{record.get(first_key, '')} {record.get(second_key, '')}"


def longlamp_context(task: str, row: dict[str, Any], query: str, where: str, options: ContextOptions,
                     task_rows: Sequence[dict[str, Any]] = (),
                     source_rows: Sequence[dict[str, Any]] = ()) -> tuple[str, int]:
    """(personalized prompt, records shown) of a LongLaMP release row under `options` (see
    context_options.py). task_rows: every row of this task's file (appended noise draws from the
    other users); source_rows: the rows of IRRELEVANT_SOURCE[task] (irrelevant noise)."""
    if options.is_default:  # the release's own prompt, exactly
        records = row["top_5"]
        return longlamp_record_prompt(task, query, records, where), min(len(records), NUM_HISTORY_RECORDS)
    if options.noise == "irrelevant":
        records = ctx.irrelevant_records(row["id"], source_rows, options)
        layout = ctx.IRRELEVANT_SOURCE[task]
        return longlamp_record_prompt(task, query, records, where, None, layout, f"{layout} noise"), len(records)
    profile = row.get("profile") or row["top_5"]
    if not isinstance(profile, list):
        raise DataFormatError(f"{where}: field 'profile' must be a list of history records")
    chosen = ctx.ranked_records(query, profile, lambda r: record_text(task, r), options)
    records = [profile[i] for i in chosen]
    if options.noise == "appended":
        others = [other for other in task_rows if other.get("id") != row.get("id")]
        records += ctx.low_similarity_records(query, profile, others, lambda r: record_text(task, r), row["id"],
                                              options)
    return longlamp_record_prompt(task, query, records, where, None, source="context"), len(records)


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


def example_from_release_row(task: str, row: dict[str, Any], where: str, preference: str | None = None,
                             options: ContextOptions = ContextOptions(),
                             task_rows: Sequence[dict[str, Any]] = (),
                             source_rows: Sequence[dict[str, Any]] = ()) -> Example:
    """Turns one released row into an Example; `where` ("file:line") prefixes every error."""
    if not options.is_default and task not in LONGLAMP_RELEASE_TASKS:
        raise ValueError(f"--retrieval/--retrieval_k/--noise choose LongLaMP history records "
                         f"({', '.join(LONGLAMP_RELEASE_TASKS)}); task {task!r} ships its context ready-made")
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
        personalized, shown = longlamp_context(task, row, query, where, options, task_rows, source_rows)
        return Example(id=require_text(row, "id", where), query=query, personalized_query=personalized,
                       reference=require_text(row, "output", where), meta={"num_history_records": shown})
    if task in PREFERENCE_TASKS:
        require_fields(row, ("id", "input"), where)
        query = require_text(row, "input", where)
        return Example(id=require_text(row, "id", where), query=query,
                       personalized_query=preference_prompt(query, preference), reference=None,
                       meta={"preference": preference})
    raise ValueError(f"unknown CoSteer task {task!r}; valid: {', '.join(COSTEER_TASKS)}")


def release_file(task: str, data_dir: Path) -> Path:
    return Path(data_dir) / f"{task}.jsonl"


def _release_path(task: str, data_dir: Path, why: str = "") -> Path:
    path = release_file(task, data_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: task {task!r} reads {path.name} from --data_dir (currently {data_dir}){why}; "
            "point --data_dir at the folder holding the CoSteer release files")
    return path


def load_release_task(task: str, data_dir: Path, preference: str | None = None,
                      limit: int | None = None, options: ContextOptions = ContextOptions()) -> list[Example]:
    if task in PREFERENCE_TASKS:
        check_preference(preference)
    path = _release_path(task, data_dir)
    task_rows: list[dict] = []
    source_rows: list[dict] = []
    if options.noise == "appended":
        task_rows = [row for _, row in iter_jsonl(path)]
    if options.noise == "irrelevant" and task in LONGLAMP_RELEASE_TASKS:
        source = ctx.IRRELEVANT_SOURCE[task]
        source_rows = [row for _, row in iter_jsonl(_release_path(source, data_dir, f" (--noise=irrelevant "
                                                                                      f"draws {task} records from it)"))]
    examples = []
    for line_number, row in iter_jsonl(path):
        if limit is not None and len(examples) >= limit:
            break
        examples.append(example_from_release_row(task, row, f"{path}:{line_number}", preference, options,
                                                 task_rows, source_rows))
    return examples
