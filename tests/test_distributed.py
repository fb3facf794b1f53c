"""Multi-host helpers: environment detection, example sharding, shard paths and merging."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from costeer_jax.data.example import Example
from costeer_jax.distributed import (MergeError, host_shard, maybe_initialize_distributed, merge_shards,
                                     multihost_environment, shard_output_path)

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# jax.distributed.initialize

class RecordingInitialize:
    def __init__(self):
        self.calls = []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"TPU_WORKER_HOSTNAMES": "t1v-n-0"}, None),  # a single-host TPU VM
    ({"TPU_WORKER_HOSTNAMES": "t1v-n-0,t1v-n-1"}, "tpu"),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.2"}, "tpu"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"}, "explicit"),
])
def test_multihost_environment_detection(environ, expected):
    assert multihost_environment(environ) == expected


def test_initialize_is_called_only_when_multihost():
    init = RecordingInitialize()
    assert maybe_initialize_distributed(environ={}, initialize=init) is False
    assert maybe_initialize_distributed(environ={"TPU_WORKER_HOSTNAMES": "a"}, initialize=init) is False
    assert maybe_initialize_distributed(False, environ={"TPU_WORKER_HOSTNAMES": "a,b"}, initialize=init) is False
    assert init.calls == []
    assert maybe_initialize_distributed(environ={"TPU_WORKER_HOSTNAMES": "a,b"}, initialize=init) is True
    assert init.calls == [{}]  # TPU: jax reads the slice topology itself
    assert maybe_initialize_distributed(True, environ={}, initialize=init) is True  # --multihost
    assert init.calls == [{}, {}]


def test_explicit_coordinator_is_passed_through_and_checked():
    init = RecordingInitialize()
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert maybe_initialize_distributed(environ=env, initialize=init)
    assert init.calls == [{"coordinator_address": "10.0.0.2:1234", "num_processes": 4, "process_id": 3}]
    with pytest.raises(RuntimeError, match="JAX_NUM_PROCESSES, JAX_PROCESS_ID"):
        maybe_initialize_distributed(environ={"JAX_COORDINATOR_ADDRESS": "h:1"}, initialize=init)


# ---------------------------------------------------------------------------------------------
# Sharding the examples

def _examples(ids):
    return [Example(id=str(i), query=f"q{i}", personalized_query=f"p{i}") for i in ids]


@pytest.mark.parametrize("count", [1, 3, 4, 7])
def test_host_shards_partition_the_examples_evenly(count):
    examples = _examples(range(23))
    shards = [host_shard(examples, i, count) for i in range(count)]
    ids = [e.id for shard in shards for e in shard]
    assert sorted(ids) == sorted(e.id for e in examples)  # every example exactly once
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_host_shard_depends_only_on_ids_not_on_input_order():
    examples = _examples(range(40))
    shuffled = examples[:]
    random.Random(0).shuffle(shuffled)
    for i in range(4):
        assert [e.id for e in host_shard(shuffled, i, 4)] == [e.id for e in host_shard(examples, i, 4)]
    # numeric ids sort numerically: host 0 of 4 gets 0, 4, 8, ... (strided, not "0", "10", "11")
    assert [e.id for e in host_shard(shuffled, 0, 4)][:4] == ["0", "4", "8", "12"]
    assert [r["id"] for r in host_shard([{"id": "b"}, {"id": "a"}, {"id": "c"}], 0, 2)] == ["a", "c"]


def test_host_shard_rejects_duplicates_and_bad_indices():
    with pytest.raises(ValueError, match="duplicate example ids"):
        host_shard(_examples([1, 2, 1]), 0, 2)
    with pytest.raises(ValueError, match="outside 0..1"):
        host_shard(_examples([1, 2]), 2, 2)


def test_shard_output_path_names():
    assert shard_output_path("out/run.jsonl", 0, 1) == Path("out/run.jsonl")
    assert shard_output_path("out/run.jsonl", 1, 4) == Path("out/run.host-01-of-04.jsonl")
    assert shard_output_path("run.v2.jsonl", 3, 4) == Path("run.v2.host-03-of-04.jsonl")
    assert shard_output_path("run", 0, 2) == Path("run.host-00-of-02.jsonl")
    assert shard_output_path("run.jsonl", 7, 128) == Path("run.host-007-of-128.jsonl")


# ---------------------------------------------------------------------------------------------
# Merging

def _write(path: Path, rows, tail: str = ""):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def _read(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_simulated_multihost_run_merges_to_every_example_once(tmp_path):
    examples = _examples(range(11))
    output = tmp_path / "run.jsonl"
    for host in range(3):  # what each host's generate_to_file would append
        mine = host_shard(examples, host, 3)
        _write(shard_output_path(output, host, 3), [{"id": e.id, "output": f"o{e.id}", "host": host} for e in mine])
    report = merge_shards(output, 3)
    rows = _read(output)
    assert [r["id"] for r in rows] == [str(i) for i in range(11)]  # ordered by (numeric) id
    assert all(r["output"] == f"o{r['id']}" for r in rows)
    assert report.rows == 11 and report.duplicates == 0 and report.missing_shards == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["run.jsonl"] + [f"run.host-0{i}-of-03.jsonl" for i in range(3)])  # no temp files left


def test_merge_dedupes_drops_a_torn_tail_and_follows_the_input_order(tmp_path):
    output = tmp_path / "run.jsonl"
    _write(shard_output_path(output, 0, 2), [{"id": "a", "v": 0}, {"id": "b", "v": 0}])
    _write(shard_output_path(output, 1, 2), [{"id": "b", "v": 1}, {"id": "c", "v": 1}], tail='{"id": "d", "v')
    output.write_text("stale content from an earlier merge\n")
    report = merge_shards(output, 2, order_ids=["c", "a", "b", "z"], expected_ids=["c", "a", "b", "z"])
    assert _read(output) == [{"id": "c", "v": 1}, {"id": "a", "v": 0}, {"id": "b", "v": 0}]
    assert report.duplicates == 1 and report.missing_ids == ["z"]


def test_missing_shard_is_an_error_unless_partial_is_allowed(tmp_path):
    output = tmp_path / "run.jsonl"
    _write(shard_output_path(output, 0, 3), [{"id": "1"}])
    _write(shard_output_path(output, 2, 3), [{"id": "3"}])
    with pytest.raises(MergeError, match="1 of 3 shards missing.*run.host-01-of-03.jsonl.*--allow_partial"):
        merge_shards(output, 3)
    assert not output.exists()
    report = merge_shards(output, 3, allow_partial=True)
    assert [r["id"] for r in _read(output)] == ["1", "3"]
    assert [p.name for p in report.missing_shards] == ["run.host-01-of-03.jsonl"]


def test_a_bad_line_inside_a_shard_is_an_error(tmp_path):
    output = tmp_path / "run.jsonl"
    shard_output_path(output, 0, 1).write_text('{"id": "1"}\nnot json\n{"id": "2"}\n')
    with pytest.raises(MergeError, match="run.jsonl:2"):
        merge_shards(output, 1)


def _merge_cli(*args):
    return subprocess.run([sys.executable, str(REPO_ROOT / "experiments" / "merge_shards.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_merge_cli(tmp_path):
    output = tmp_path / "run.jsonl"
    _write(shard_output_path(output, 0, 2), [{"id": "2"}, {"id": "1"}])
    missing = _merge_cli(f"--output={output}", "--process_count=2")
    assert missing.returncode == 1 and "--allow_partial" in missing.stderr
    _write(shard_output_path(output, 1, 2), [{"id": "3"}])
    order = tmp_path / "prompts.jsonl"
    _write(order, [{"id": "3"}, {"id": "1"}, {"id": "2"}, {"id": "4"}])
    done = _merge_cli(f"--output={output}", "--process_count=2", f"--order_from={order}")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 3 and summary["missing_ids"] == 1
    assert [r["id"] for r in _read(output)] == ["3", "1", "2"]
    strict = _merge_cli(f"--output={output}", "--process_count=2", f"--order_from={order}", "--require_all_ids")
    assert strict.returncode == 1 and "have no output row" in strict.stderr
