"""Files that are either whole or absent: written beside their final name, then renamed.

A process killed mid-write (SIGKILL, OOM, a lost machine) must never leave a file that a later
run trusts. Every derived file of the project (params cache entries, assembled models,
vocabulary alignments, compilation cache entries, run figures, tables, merged shards) is written
to a temporary sibling and renamed over its final name, which POSIX makes atomic on one file
system. The temporary name carries the writer's pid, so the next start can tell a write that is
still going on (another live process) from one abandoned by a killed process, and remove the
latter with a one-line message instead of letting temporaries pile up.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path

log = logging.getLogger(__name__)

_TEMP = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)-[0-9a-f]{8}$")


def temp_sibling(path: str | os.PathLike) -> Path:
    """A fresh hidden name beside `path` for building it: `.NAME.tmp-PID-XXXXXXXX`."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_abandoned_temps(directory: str | os.PathLike, what: str, name: str | None = None) -> int:
    """Removes the temporaries in `directory` (of the final name `name`, or of any name) whose
    writer is no longer running, logging one line for each; returns how many. Temporaries of
    live writers are left alone."""
    removed = 0
    try:
        siblings = list(Path(directory).iterdir())
    except OSError:
        return 0
    for sibling in siblings:
        match = _TEMP.match(sibling.name)
        if not match or (name is not None and match["name"] != name) or _alive(int(match["pid"])):
            continue
        log.warning("removing %s: a %s write left halfway by process %s (killed?); it is rebuilt",
                    sibling, what, match["pid"])
        if sibling.is_dir():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        removed += 1
    return removed


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to `path` all at once or not at all (fsynced before the rename)."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))
