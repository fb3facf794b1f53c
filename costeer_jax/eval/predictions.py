"""Generation outputs (JSON lines from experiments/generate.py) and their join to references by id."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from costeer_jax.data.example import Example
from costeer_jax.data.jsonl import DataFormatError, iter_jsonl, require_text


@dataclasses.dataclass(frozen=True)
class PredictionFile:
    path: Path
    outputs: dict[str, str]  # example id -> decoded text, in file order
    method: str | None  # the generating method ("costeer", "llm_wo", ...) when rows name it
    config: dict[str, Any]  # decoding hyperparameters of a sweep point, when rows carry them
    task: str | None
    preference: str | None
    # Per id, when rows carry them: the generated token ids, and what the cloud received
    # (`cloud_view` ids and `cloud_view_text`, written with generate.py --record_cloud_view).
    token_ids: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    cloud_view: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    cloud_view_text: dict[str, str] = dataclasses.field(default_factory=dict)


def read_predictions(path: str | Path) -> PredictionFile:
    """Rows need "id" and "output" ("response", the CoSteer authors' key, is accepted too)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} not found")
    outputs: dict[str, str] = {}
    token_ids: dict[str, list[int]] = {}
    cloud_view: dict[str, list[int]] = {}
    cloud_view_text: dict[str, str] = {}
    first: dict[str, Any] | None = None
    for line_number, row in iter_jsonl(path):
        where = f"{path}:{line_number}"
        text_key = "output" if "output" in row else "response"
        if row.get("id") is None or row.get(text_key) is None:
            raise DataFormatError(
                f"{where}: a generation row needs 'id' and 'output' (present: {', '.join(sorted(row))})")
        example_id = require_text(row, "id", where)
        if example_id in outputs:
            raise DataFormatError(f"{where}: duplicate id {example_id!r}")
        outputs[example_id] = require_text(row, text_key, where)
        if isinstance(row.get("token_ids"), list):
            token_ids[example_id] = row["token_ids"]
        if isinstance(row.get("cloud_view"), list):
            cloud_view[example_id] = row["cloud_view"]
            cloud_view_text[example_id] = str(row.get("cloud_view_text", ""))
        first = first if first is not None else row
    if first is None:
        raise DataFormatError(f"{path}: no generation rows")
    config = first.get("config") if isinstance(first.get("config"), dict) else {}
    preference = first.get("preference", config.get("preference"))
    return PredictionFile(path=path, outputs=outputs, method=first.get("method"), config=dict(config),
                          task=first.get("task"), preference=preference, token_ids=token_ids,
                          cloud_view=cloud_view, cloud_view_text=cloud_view_text)


@dataclasses.dataclass(frozen=True)
class JoinedPredictions:
    examples: list[Example]
    outputs: list[str]
    missing_ids: list[str]  # references without a prediction
    unmatched_ids: list[str]  # predictions whose id is not in the task


def join_by_id(examples: Sequence[Example], predictions: PredictionFile) -> JoinedPredictions:
    known = {example.id for example in examples}
    matched = [example for example in examples if example.id in predictions.outputs]
    if not examples:
        raise DataFormatError(f"{predictions.path}: the task has no examples to join predictions to")
    if not matched:
        raise DataFormatError(
            f"{predictions.path}: none of its {len(predictions.outputs)} ids is an example id of the task "
            f"(prediction id {next(iter(predictions.outputs))!r}, example id {examples[0].id!r}); "
            "wrong --task or --data_dir?")
    return JoinedPredictions(
        examples=matched, outputs=[predictions.outputs[example.id] for example in matched],
        missing_ids=[example.id for example in examples if example.id not in predictions.outputs],
        unmatched_ids=[key for key in predictions.outputs if key not in known])
