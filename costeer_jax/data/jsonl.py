"""Reading JSON / JSON-lines rows with errors that point at the offending file and line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence


class DataFormatError(ValueError):
    """A data file exists but a row in it is not what the adapter needs."""


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (1-based line number, row) for every non-blank line; rows must be JSON objects."""
    with Path(path).open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataFormatError(f"{path}:{line_number}: not valid JSON ({error.msg})") from error
            if not isinstance(row, dict):
                raise DataFormatError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
            yield line_number, row


def require_fields(row: dict[str, Any], fields: Sequence[str], where: str) -> None:
    """Raises DataFormatError naming `where` (file:line) and every missing or null field."""
    missing = [name for name in fields if row.get(name) is None]
    if missing:
        present = ", ".join(sorted(row)) or "none"
        raise DataFormatError(
            f"{where}: missing field(s) {', '.join(repr(m) for m in missing)} "
            f"(required: {', '.join(fields)}; present: {present})")


def require_text(row: dict[str, Any], field: str, where: str) -> str:
    """The field as a string; numbers are accepted (ids), anything else is an error."""
    value = row.get(field)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataFormatError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    return str(value)


def read_json(path: Path) -> Any:
    try:
        with Path(path).open("r", encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DataFormatError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from error
