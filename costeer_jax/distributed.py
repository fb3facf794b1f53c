"""Running one generation job on several hosts (a multi-host TPU slice, or several GPU machines).

The hosts do not decode in lockstep: each process takes its own deterministic shard of the
examples (`host_shard`), decodes it on its *local* devices (`sharding.make_mesh` defaults to
them) and appends to its own resumable file (`shard_output_path`). Nothing waits on another host,
a preempted host resumes alone, and `merge_shards` assembles the final jsonl once all are done.
`jax.distributed.initialize` is still called on multi-host slices, because that is how each
process learns its index and the process count (and TPU runtimes expect it).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from costeer_jax.atomic_files import write_text_atomic

log = logging.getLogger(__name__)

# Set by Cloud TPU VMs / GKE TPU pods (hostnames of every worker of the slice, this worker's id),
# or by hand / a scheduler (explicit coordinator). Any of them means "more than one process".
TPU_ENV = ("TPU_WORKER_HOSTNAMES", "CLOUD_TPU_TASK_ID", "TPU_WORKER_ID", "MEGASCALE_COORDINATOR_ADDRESS")
EXPLICIT_ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


class MergeError(RuntimeError):
    pass


def multihost_environment(environ: Mapping[str, str] = os.environ) -> str | None:
    """'explicit' (JAX_COORDINATOR_ADDRESS set), 'tpu' (a TPU slice with more than one worker),
    or None (a single process)."""
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return "explicit"
    hostnames = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(hostnames) > 1 or environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "tpu"
    return None


def maybe_initialize_distributed(multihost: bool | None = None, environ: Mapping[str, str] = os.environ,
                                 initialize=None) -> bool:
    """Calls `jax.distributed.initialize()` when running as one of several processes.

    multihost: True forces it (e.g. --multihost on a cluster jax detects: SLURM, Open MPI, GKE),
    False never calls it, None detects from the environment (`multihost_environment`). Must run
    before anything touches jax devices. Returns whether it initialised.
    """
    import jax

    initialize = initialize or jax.distributed.initialize
    kind = multihost_environment(environ)
    if multihost is False or (multihost is None and kind is None):
        return False
    if jax.distributed.is_initialized():
        return True
    if kind == "explicit":
        missing = [k for k in EXPLICIT_ENV[1:] if not environ.get(k)]
        if missing:
            raise RuntimeError(f"JAX_COORDINATOR_ADDRESS is set but {', '.join(missing)} is not; set "
                               "all of JAX_COORDINATOR_ADDRESS=host:port, JAX_NUM_PROCESSES=N and "
                               "JAX_PROCESS_ID=i (0..N-1) on every process")
        initialize(coordinator_address=environ["JAX_COORDINATOR_ADDRESS"],
                   num_processes=int(environ["JAX_NUM_PROCESSES"]),
                   process_id=int(environ["JAX_PROCESS_ID"]))
    else:
        initialize()  # jax's cluster auto-detection (TPU metadata, SLURM, Open MPI, ...)
    log.info("jax.distributed initialised (%s)", kind or "forced")
    return True


def process_coordinates() -> tuple[int, int]:
    """(process_index, process_count) of this process in the job."""
    import jax

    return jax.process_index(), jax.process_count()


def _sort_key(example_id: str) -> tuple:
    # Numeric ids sort numerically ("2" before "10"); others lexically, after the numeric ones.
    return (0, int(example_id), "") if re.fullmatch(r"-?\d+", example_id) else (1, 0, example_id)


def host_shard(examples: Sequence[Any], process_index: int, process_count: int) -> list:
    """This process's examples: every process_count-th one in sorted-id order, from process_index.

    Depends only on the ids, so every host computes the same partition independently (input
    order, files read in another order, or a resumed run do not move an example to another
    host). Strided rather than contiguous so that ids that correlate with prompt length (common
    in benchmark files) spread evenly over hosts. Ids must be unique.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is outside 0..{process_count - 1}")
    ids = [str(getattr(e, "id", None) if not isinstance(e, Mapping) else e["id"]) for e in examples]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise ValueError(f"duplicate example ids (e.g. {dupes}); host sharding and resuming need unique ids")
    order = sorted(range(len(examples)), key=lambda i: _sort_key(ids[i]))
    return [examples[i] for i in order[process_index::process_count]]


def shard_output_path(output: str | os.PathLike, process_index: int, process_count: int) -> Path:
    """out.jsonl -> out.host-01-of-04.jsonl; a single process keeps `output` itself."""
    output = Path(output)
    if process_count == 1:
        return output
    width = max(2, len(str(process_count - 1)))
    suffix = output.suffix or ".jsonl"
    stem = output.name[:-len(output.suffix)] if output.suffix else output.name
    return output.with_name(f"{stem}.host-{process_index:0{width}d}-of-{process_count:0{width}d}{suffix}")


def _read_rows(path: Path) -> list[dict]:
    """Rows of one shard; a torn last line (the host died mid-write) is dropped, a bad line
    anywhere else is an error."""
    rows = []
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            row["id"]
        except (json.JSONDecodeError, KeyError, TypeError):
            if n == len(lines):
                log.warning("%s: ignoring a torn last line", path)
                continue
            raise MergeError(f"{path}:{n} is not a JSON row with an 'id'; fix or delete that line")
        rows.append(row)
    return rows


@dataclasses.dataclass
class MergeReport:
    output: Path
    rows: int
    shards_read: list[Path]
    missing_shards: list[Path]
    duplicates: int  # rows dropped because their id was already taken (first shard wins)
    missing_ids: list[str]  # from `expected_ids`, when given

    def as_dict(self) -> dict:
        return {"output": str(self.output), "rows": self.rows, "shards_read": len(self.shards_read),
                "missing_shards": [str(p) for p in self.missing_shards], "duplicates": self.duplicates,
                "missing_ids": len(self.missing_ids)}


def merge_shards(output: str | os.PathLike, process_count: int, *, allow_partial: bool = False,
                 order_ids: Iterable[str] | None = None, expected_ids: Iterable[str] | None = None) -> MergeReport:
    """Merges out.host-*-of-N.jsonl into `output` (written atomically: temp file + os.replace).

    Rows are deduplicated by id (the first shard in host order wins) and ordered by
    `order_ids` (e.g. the input order; ids not listed go last, by id) or else by id. A missing
    shard is an error unless allow_partial. Shard files are left in place.
    """
    output = Path(output)
    if process_count < 1:
        raise ValueError("process_count must be >= 1")
    shards = [shard_output_path(output, i, process_count) for i in range(process_count)]
    missing = [p for p in shards if not p.exists()]
    if missing and not allow_partial:
        others = sorted(str(p.name) for p in output.parent.glob(f"{output.stem}.host-*"))
        raise MergeError(
            f"{len(missing)} of {process_count} shards missing (first: {missing[0]}); wait for those "
            f"hosts, or pass --allow_partial to merge what exists. Shard files present: {others or 'none'}")
    by_id: dict[str, dict] = {}
    duplicates = 0
    read = [p for p in shards if p.exists()]
    for path in read:
        for row in _read_rows(path):
            key = str(row["id"])
            if key in by_id:
                duplicates += 1
                continue
            by_id[key] = row
    rank = {str(i): n for n, i in enumerate(order_ids)} if order_ids is not None else {}
    ordered = sorted(by_id, key=lambda i: (rank.get(i, len(rank)), _sort_key(i)))
    output.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(output, "".join(json.dumps(by_id[key], ensure_ascii=False) + "\n" for key in ordered))
    missing_ids = [] if expected_ids is None else [str(i) for i in expected_ids if str(i) not in by_id]
    if duplicates:
        log.warning("%d duplicate ids across shards dropped (first shard kept)", duplicates)
    return MergeReport(output, len(ordered), read, missing, duplicates, missing_ids)
