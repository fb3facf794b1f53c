"""LaMP-4/5/7 and LongLaMP-2/3/4 adapters for SpecSteer.

Reads the official JSON layout (a `{split}_questions.json` list of rows with a `profile` list,
plus a `{split}_outputs.json` of `{"task", "golds": [{"id", "output"}]}`), rows that carry their
`output` inline (the Hugging Face LongLaMP/LongLaMP layout), or the hub dataset itself.
The personalized prompt is SpecSteer Table 13 over the top-4 BM25-retrieved profile entries.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

from costeer_jax.data.example import Example
from costeer_jax.data.jsonl import DataFormatError, read_json, require_fields, require_text
from costeer_jax.data.retrieval import bm25_top_k

NUM_RETRIEVED = 4  # SpecSteer App. B.4: k = 4
LONGLAMP_HUB_ID = "LongLaMP/LongLaMP"

Entry = dict[str, Any]


def _quoted(text: Any) -> str:
    return f'"{text}"'


def _after_instruction(text: str) -> str:
    """LaMP inputs read "<instruction>: <content>"; retrieval should match the content only."""
    _, separator, content = text.partition(": ")
    return content if separator else text


@dataclasses.dataclass(frozen=True)
class ProfileTaskSpec:
    name: str
    folder_names: tuple[str, ...]  # folder names the official downloads use for this task
    entry_fields: tuple[str, ...]  # profile fields the prompt and the retrieval read
    entry_prompt: Callable[[Entry], str]  # Table 13 "Per Profile Entry Prompt"
    aggregate_prompt: Callable[[list[str], str], str]  # Table 13 "Aggregated Input Prompt"
    retrieval_text: Callable[[Entry], str]  # what BM25 indexes for an entry
    retrieval_query: Callable[[str], str] = lambda text: text
    hub_config: str | None = None  # LongLaMP/LongLaMP config prefix


def _and_joined(entries: list[str]) -> str:
    return ", and ".join(entries)


PROFILE_TASK_SPECS: dict[str, ProfileTaskSpec] = {spec.name: spec for spec in (
    ProfileTaskSpec(
        name="lamp_4", folder_names=("LaMP_4", "LaMP-4", "lamp_4"), entry_fields=("title", "text"),
        entry_prompt=lambda p: f"{_quoted(p['title'])} is the title for {_quoted(p['text'])}",
        aggregate_prompt=lambda entries, task_input: f"{_and_joined(entries)}. {task_input}",
        retrieval_text=lambda p: f"{p['title']} {p['text']}", retrieval_query=_after_instruction),
    ProfileTaskSpec(
        name="lamp_5", folder_names=("LaMP_5", "LaMP-5", "lamp_5"), entry_fields=("title", "abstract"),
        entry_prompt=lambda p: f"{_quoted(p['title'])} is the title for {_quoted(p['abstract'])}",
        aggregate_prompt=lambda entries, task_input:
            f"{_and_joined(entries)}. Following the given patterns {task_input}",
        retrieval_text=lambda p: f"{p['title']} {p['abstract']}", retrieval_query=_after_instruction),
    ProfileTaskSpec(
        name="lamp_7", folder_names=("LaMP_7", "LaMP-7", "lamp_7"), entry_fields=("text",),
        entry_prompt=lambda p: _quoted(p["text"]),
        aggregate_prompt=lambda entries, task_input:
            f"{_and_joined(entries)} are written by a person. Following the given patterns {task_input}",
        retrieval_text=lambda p: str(p["text"]), retrieval_query=_after_instruction),
    ProfileTaskSpec(
        name="longlamp_2", folder_names=("LongLaMP_2", "LongLaMP-2", "longlamp_2", "abstract_generation"),
        entry_fields=("title", "abstract"),
        entry_prompt=lambda p: f"Title: {_quoted(p['title'])} Abstract: {_quoted(p['abstract'])}",
        aggregate_prompt=lambda entries, task_input:
            "Here are some examples of abstracts written by this author: "
            + "\n\n".join(entries) + f". Following these examples, {task_input}",
        retrieval_text=lambda p: f"{p['title']} {p['abstract']}", hub_config="abstract_generation"),
    ProfileTaskSpec(
        name="longlamp_3", folder_names=("LongLaMP_3", "LongLaMP-3", "longlamp_3", "product_review"),
        entry_fields=("description", "summary", "reviewText"),
        entry_prompt=lambda p: (f"Product: {_quoted(p['description'])} Summary: {_quoted(p['summary'])} "
                                f"Review: {_quoted(p['reviewText'])}"),
        aggregate_prompt=lambda entries, task_input:
            "Here are past reviews written by this user: "
            + "\n\n".join(entries) + f". Following their style, {task_input}",
        retrieval_text=lambda p: f"{p.get('overall', '')} {p['summary']} {p['description']} {p['reviewText']}",
        hub_config="product_review"),
    ProfileTaskSpec(
        name="longlamp_4", folder_names=("LongLaMP_4", "LongLaMP-4", "longlamp_4", "topic_writing"),
        entry_fields=("summary", "content"),
        entry_prompt=lambda p: f"Summary: {_quoted(p['summary'])} Content: {_quoted(p['content'])}",
        aggregate_prompt=lambda entries, task_input:
            "Here are past posts written by this author: "
            + "\n\n".join(entries) + f". Following their style, {task_input}",
        retrieval_text=lambda p: f"{p['summary']} {p['content']}", hub_config="topic_writing"),
)}
PROFILE_TASKS = tuple(PROFILE_TASK_SPECS)

_SPLIT_SYNONYMS = {"dev": ("dev", "val"), "val": ("val", "dev"), "train": ("train",), "test": ("test",)}


def personalized_profile_prompt(spec: ProfileTaskSpec, task_input: str, profile: Sequence[Entry],
                                where: str) -> tuple[str, list[int]]:
    """Table 13 prompt over the top-4 BM25 entries; also returns the chosen profile indices."""
    for number, entry in enumerate(profile):
        if not isinstance(entry, dict):
            raise DataFormatError(f"{where}: profile entry {number} must be an object")
        require_fields(entry, spec.entry_fields, f"{where} profile entry {number}")
    chosen = bm25_top_k(spec.retrieval_query(task_input), [spec.retrieval_text(p) for p in profile],
                        NUM_RETRIEVED)
    if not chosen:
        return task_input, []  # an empty profile leaves nothing to personalise with
    return spec.aggregate_prompt([spec.entry_prompt(profile[i]) for i in chosen], task_input), chosen


def example_from_profile_row(spec: ProfileTaskSpec, row: dict[str, Any], index: int, where: str,
                             gold_outputs: dict[str, str] | None) -> Example:
    require_fields(row, ("input", "profile"), where)
    if not isinstance(row["profile"], list):
        raise DataFormatError(f"{where}: field 'profile' must be a list of profile entries")
    example_id = require_text(row, "id", where) if row.get("id") is not None else str(index)
    task_input = require_text(row, "input", where)
    personalized, chosen = personalized_profile_prompt(spec, task_input, row["profile"], where)
    if row.get("output") is not None:
        reference = require_text(row, "output", where)
    elif gold_outputs is not None:
        reference = gold_outputs.get(example_id)
    else:
        reference = None
    profile_ids = [str(row["profile"][i].get("id", i)) for i in chosen]
    return Example(id=example_id, query=task_input, personalized_query=personalized, reference=reference,
                   meta={"retrieved_profile_ids": profile_ids, "profile_size": len(row["profile"])})


def _gold_outputs(path: Path) -> dict[str, str]:
    golds = read_json(path)
    if isinstance(golds, dict):
        golds = golds.get("golds")
    if not isinstance(golds, list):
        raise DataFormatError(f"{path}: expected {{\"task\": ..., \"golds\": [{{\"id\", \"output\"}}, ...]}}")
    outputs = {}
    for number, gold in enumerate(golds):
        where = f"{path} golds[{number}]"
        if not isinstance(gold, dict):
            raise DataFormatError(f"{where}: expected an object with 'id' and 'output'")
        require_fields(gold, ("id", "output"), where)
        outputs[require_text(gold, "id", where)] = require_text(gold, "output", where)
    return outputs


def _candidate_dirs(spec: ProfileTaskSpec, data_dir: Path, split_name: str) -> list[Path]:
    roots = [data_dir, *(data_dir / name for name in spec.folder_names)]
    return [directory for root in roots for directory in (root, root / split_name)]


def find_split_files(spec: ProfileTaskSpec, data_dir: Path, split: str) -> tuple[Path, Path | None]:
    """(questions file, outputs file or None) for `split` under data_dir, in any official layout."""
    tried = []
    for split_name in _SPLIT_SYNONYMS.get(split, (split,)):
        for directory in _candidate_dirs(spec, Path(data_dir), split_name):
            questions = directory / f"{split_name}_questions.json"
            tried.append(questions)
            if questions.is_file():
                outputs = directory / f"{split_name}_outputs.json"
                return questions, outputs if outputs.is_file() else None
    raise FileNotFoundError(
        f"no {split} questions file for task {spec.name!r} under --data_dir {data_dir}; looked for: "
        + ", ".join(str(p) for p in tried[:6]) + (" ..." if len(tried) > 6 else "")
        + ". Point --data_dir at the unpacked LaMP/LongLaMP download")


def most_active_users(examples: Sequence[Example], count: int) -> list[Example]:
    """The `count` users with the most profile entries (SpecSteer B.3: "the top-100 most active
    users (based on interaction frequency)"), kept in file order; ties go to the earlier row."""
    ranked = sorted(range(len(examples)), key=lambda i: (-examples[i].meta.get("profile_size", 0), i))
    return [examples[i] for i in sorted(ranked[:count])]


def examples_from_rows(spec: ProfileTaskSpec, rows: Sequence[dict[str, Any]], source: str,
                       gold_outputs: dict[str, str] | None, limit: int | None) -> list[Example]:
    examples = []
    for index, row in enumerate(rows):
        if limit is not None and len(examples) >= limit:
            break
        where = f"{source} row {index}"
        if not isinstance(row, dict):
            raise DataFormatError(f"{where}: expected a JSON object")
        examples.append(example_from_profile_row(spec, row, index, where, gold_outputs))
    return examples


def load_profile_task_files(name: str, data_dir: Path, split: str = "dev",
                            limit: int | None = None) -> list[Example]:
    spec = PROFILE_TASK_SPECS[name]
    questions_path, outputs_path = find_split_files(spec, Path(data_dir), split)
    rows = read_json(questions_path)
    if not isinstance(rows, list):
        raise DataFormatError(f"{questions_path}: expected a JSON list of question rows")
    golds = _gold_outputs(outputs_path) if outputs_path is not None else None
    return examples_from_rows(spec, rows, str(questions_path), golds, limit)


def load_longlamp_from_hub(name: str, split: str = "dev", setting: str = "user",
                           limit: int | None = None) -> list[Example]:
    """LongLaMP/LongLaMP from the Hugging Face hub (needs network or a warm datasets cache)."""
    spec = PROFILE_TASK_SPECS[name]
    if spec.hub_config is None:
        raise FileNotFoundError(f"task {name!r} has no hub copy; pass --data_dir with the LaMP JSON files")
    if setting not in ("user", "temporal"):
        raise ValueError(f"LongLaMP setting must be 'user' or 'temporal', got {setting!r}")
    hub_split = {"dev": "val"}.get(split, split)
    config = f"{spec.hub_config}_{setting}"
    try:
        import datasets

        rows = datasets.load_dataset(LONGLAMP_HUB_ID, config, split=hub_split)
    except Exception as error:  # offline, missing cache or hub errors all mean the same to a user
        raise FileNotFoundError(
            f"could not load {LONGLAMP_HUB_ID} ({config}, split {hub_split}) from the Hugging Face hub: "
            f"{error}. Go online once (the datasets cache then serves it) or pass --data_dir with "
            "LongLaMP JSON files") from error
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    return examples_from_rows(spec, list(rows), f"{LONGLAMP_HUB_ID}/{config}/{hub_split}", None, limit)
