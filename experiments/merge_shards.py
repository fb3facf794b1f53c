"""Merges the per-host outputs of a multi-host generation run into one jsonl.

  python experiments/merge_shards.py --output=outputs/run.jsonl --process_count=4

reads outputs/run.host-00-of-04.jsonl ... run.host-03-of-04.jsonl and writes outputs/run.jsonl
atomically: rows deduplicated by id, ordered by id (or by the ids of --order_from, e.g. the
prompts file). A missing shard is an error unless --allow_partial. Prints one JSON summary line.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from absl import app, flags

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # runnable as a script from a checkout
    sys.path.insert(0, str(REPO_ROOT))

from costeer_jax.distributed import MergeError, merge_shards  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Final jsonl; shards are <stem>.host-II-of-NN<suffix> beside it.")
flags.DEFINE_integer("process_count", None, "Number of hosts (shards) the run used.")
flags.DEFINE_bool("allow_partial", False, "Merge the shards that exist instead of failing on missing ones.")
flags.DEFINE_string("order_from", None, "A jsonl whose rows' 'id' fields give the output order "
                    "(e.g. the --prompts_file); default: sorted by id.")
flags.DEFINE_bool("require_all_ids", False, "With --order_from: fail if any of its ids has no output row.")


def read_ids(path: str) -> list[str]:
    ids = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    ids.append(str(json.loads(line)["id"]))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise app.UsageError(f"{path}:{n} is not a JSON row with an 'id'") from None
    return ids


def main(argv):
    del argv
    if not FLAGS.output or not FLAGS.process_count:
        raise app.UsageError("--output and --process_count are required")
    order = read_ids(FLAGS.order_from) if FLAGS.order_from else None
    try:
        report = merge_shards(FLAGS.output, FLAGS.process_count, allow_partial=FLAGS.allow_partial,
                              order_ids=order, expected_ids=order)
    except MergeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_dict()))
    if FLAGS.require_all_ids and report.missing_ids:
        print(f"error: {len(report.missing_ids)} ids of {FLAGS.order_from} have no output row "
              f"(e.g. {report.missing_ids[:5]})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
