"""One entry point, `load_task`, over every benchmark adapter."""
from __future__ import annotations

from pathlib import Path

from costeer_jax.data.context_options import ContextOptions
from costeer_jax.data.costeer_release import COSTEER_TASKS, PREFERENCE_TASKS, load_release_task
from costeer_jax.data.example import Example
from costeer_jax.data.jsonl import DataFormatError, iter_jsonl, require_fields, require_text
from costeer_jax.data.lamp import (PROFILE_TASK_SPECS, PROFILE_TASKS, load_longlamp_from_hub, load_profile_task_files,
                              most_active_users)

TASKS = (*COSTEER_TASKS, *PROFILE_TASKS)

_REPO_ROOT = Path(__file__).resolve().parents[2]
_RELEASE_SUBPATH = Path("..") / "shared" / "data" / "costeer_release"


def default_data_dir() -> Path | None:
    """The CoSteer release folder `../shared/data/costeer_release`, next to the repo or the cwd."""
    for base in (_REPO_ROOT, Path.cwd()):
        candidate = (base / _RELEASE_SUBPATH).resolve()
        if candidate.is_dir():
            return candidate
    return None


def is_preference_task(name: str) -> bool:
    return name in PREFERENCE_TASKS


def _check_unique_ids(examples: list[Example], source: str) -> list[Example]:
    seen: set[str] = set()
    for example in examples:
        if example.id in seen:
            raise DataFormatError(f"{source}: duplicate id {example.id!r}; predictions are joined by id")
        seen.add(example.id)
    return examples


def load_task(name: str, data_dir: str | Path | None = None, preference: str | None = None,
              limit: int | None = None, *, split: str = "dev", setting: str = "user",
              context: ContextOptions = ContextOptions(), top_users: int | None = None) -> list[Example]:
    """The examples of one benchmark task, in file order.

    CoSteer tasks read `{name}.jsonl` from data_dir (default: `default_data_dir()`); preference
    tasks need `preference`. LaMP/LongLaMP tasks read the official JSON layout from data_dir
    (`split` picks train/dev/test); without data_dir the LongLaMP ones come from the hub
    (`setting`: user or temporal). `top_users=N` keeps the N users with the longest profiles
    (SpecSteer B.3's 100 most active users), before `limit`.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    if limit is not None and limit < 0:
        raise ValueError(f"--limit must be >= 0, got {limit}")
    if preference is not None and not is_preference_task(name):
        raise ValueError(f"--preference applies only to {', '.join(PREFERENCE_TASKS)}, not {name!r}")
    if top_users is not None:
        if name not in PROFILE_TASKS:
            raise ValueError(f"--top_users selects LaMP/LongLaMP users ({', '.join(PROFILE_TASKS)}), not {name!r}")
        if top_users < 1:
            raise ValueError(f"--top_users must be >= 1, got {top_users}")
        chosen = most_active_users(load_task(name, data_dir, split=split, setting=setting), top_users)
        return chosen[:limit] if limit is not None else chosen
    if name in COSTEER_TASKS:
        directory = Path(data_dir) if data_dir is not None else default_data_dir()
        if directory is None:
            raise FileNotFoundError(
                f"no data folder for task {name!r}: pass --data_dir pointing at the CoSteer release "
                f"files ({name}.jsonl); ../shared/data/costeer_release was not found")
        return _check_unique_ids(load_release_task(name, directory, preference, limit, context), str(directory))
    if not context.is_default:
        raise ValueError(f"--retrieval/--noise apply to the CoSteer release's LongLaMP tasks; {name!r} always "
                         "lists its top-4 BM25 profile entries (SpecSteer B.4)")
    if data_dir is not None:
        return _check_unique_ids(load_profile_task_files(name, Path(data_dir), split, limit), str(data_dir))
    if PROFILE_TASK_SPECS[name].hub_config is None:
        raise FileNotFoundError(
            f"task {name!r} needs --data_dir pointing at the LaMP download ({split}_questions.json "
            f"and {split}_outputs.json)")
    return _check_unique_ids(load_longlamp_from_hub(name, split, setting, limit), name)


def load_prompts_file(path: str | Path) -> list[Example]:
    """Generic prompts: JSON lines `{"id", "input", "personalized_input"}` with optional "output" and
    "adapter" (a LoRA adapter folder this row's fine-tuned SLM uses, or "none" for the base SLM)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} not found")
    examples = []
    for line_number, row in iter_jsonl(path):
        where = f"{path}:{line_number}"
        require_fields(row, ("id", "input", "personalized_input"), where)
        reference = require_text(row, "output", where) if row.get("output") is not None else None
        meta = {"adapter": require_text(row, "adapter", where)} if row.get("adapter") is not None else {}
        examples.append(Example(id=require_text(row, "id", where), query=require_text(row, "input", where),
                                personalized_query=require_text(row, "personalized_input", where),
                                reference=reference, meta=meta))
    return _check_unique_ids(examples, str(path))
