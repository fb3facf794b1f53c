"""Runs experiments/generate.py on every worker of a Cloud TPU VM slice, then collects the output.

  python launch/launch_tpu.py --tpu=my-v4-16 --zone=us-central2-b --num_workers=2 \
      --output=outputs/helpsteer_costeer.jsonl --dry_run -- \
      --method=costeer --task=helpsteer --preference=concise --mesh=data:4 --batch_size=32

Everything after `--` is passed to generate.py unchanged. Steps (--steps, in this order):
  setup  run --setup_command on all workers (e.g. pull the code, build the venv)
  run    generate.py --multihost on all workers at once; each worker decodes its own shard of the
         examples on its local chips and appends to <output stem>.host-II-of-NN.jsonl on its disk
  fetch  scp every worker's shard to the same relative path here
  merge  experiments/merge_shards.py here: one deduplicated, ordered jsonl at --output
--dry_run prints the exact commands instead of running them. A step that fails stops the
launcher; rerunning is safe (generation resumes per shard, merge rewrites atomically).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from absl import app, flags

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from costeer_jax.distributed import shard_output_path  # noqa: E402

STEPS = ("setup", "run", "fetch", "merge")

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defined only when run as a script, so importing build_commands registers no global flags."""
    flags.DEFINE_string("tpu", None, "TPU VM name (gcloud compute tpus tpu-vm list).")
    flags.DEFINE_string("zone", None, "Zone of the TPU VM.")
    flags.DEFINE_string("project", None, "GCP project (default: gcloud's configured one).")
    flags.DEFINE_integer("num_workers", None, "Hosts in the slice (v4-16: 2, v4-32: 4, v5e-16: 4 ...): "
                         "the number of output shards to fetch and merge.")
    flags.DEFINE_string("output", None, "Output jsonl, relative to --remote_dir on the workers and to "
                        "the current directory here.")
    flags.DEFINE_string("remote_dir", "costeer-jax", "Checkout on every worker, relative to the ssh "
                        "user's home (no '~': it would be quoted, not expanded).")
    flags.DEFINE_string("remote_python", ".venv/bin/python", "Python on the workers, relative to --remote_dir.")
    flags.DEFINE_string("setup_command", None, "Shell command run in --remote_dir on all workers by "
                        "the setup step, e.g. 'git pull && .venv/bin/pip install -e . jax[tpu]'.")
    flags.DEFINE_list("steps", ["run", "fetch", "merge"], f"Steps to run, from {STEPS}.")
    flags.DEFINE_bool("dry_run", False, "Print the commands, run nothing.")


def gcloud_ssh(tpu: str, zone: str, project: str | None, worker: str, command: str) -> list[str]:
    argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", tpu, f"--zone={zone}"]
    if project:
        argv.append(f"--project={project}")
    return argv + [f"--worker={worker}", f"--command={command}"]


def gcloud_scp(tpu: str, zone: str, project: str | None, worker: int, remote: str, local: str) -> list[str]:
    argv = ["gcloud", "compute", "tpus", "tpu-vm", "scp", f"--zone={zone}"]
    if project:
        argv.append(f"--project={project}")
    return argv + [f"--worker={worker}", f"{tpu}:{remote}", local]


def build_commands(*, tpu: str, zone: str, project: str | None, num_workers: int, output: str,
                   generate_args: list[str], remote_dir: str = "costeer-jax",
                   remote_python: str = ".venv/bin/python", setup_command: str | None = None,
                   steps=("run", "fetch", "merge"), local_python: str = sys.executable) -> list[tuple[str, list[str]]]:
    """(step, argv) pairs in execution order. Pure: the dry run and the real run share it."""
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown steps {unknown}; choose from {STEPS}")
    if any(a == "--output" or a.startswith("--output=") for a in generate_args):
        raise ValueError("pass --output to the launcher, not after `--`: it also names the shards to fetch")
    if num_workers < 1:
        raise ValueError("--num_workers must be >= 1")
    if remote_dir.startswith("~"):
        raise ValueError("--remote_dir must be relative to the home directory (ssh starts there), without '~'")
    cd = f"cd {shlex.quote(remote_dir)}"
    commands = []
    if "setup" in steps:
        if not setup_command:
            raise ValueError("the setup step needs --setup_command")
        commands.append(("setup", gcloud_ssh(tpu, zone, project, "all", f"{cd} && {setup_command}")))
    if "run" in steps:
        multihost = ["--multihost"] if num_workers > 1 else []  # one worker: a plain single-host run
        generate = [remote_python, "experiments/generate.py", *multihost, f"--output={output}", *generate_args]
        commands.append(("run", gcloud_ssh(tpu, zone, project, "all", f"{cd} && {shlex.join(generate)}")))
    if "fetch" in steps:
        commands.append(("fetch", ["mkdir", "-p", str(Path(output).parent)]))
        for i in range(num_workers):
            shard = str(shard_output_path(output, i, num_workers))
            remote = shard if Path(shard).is_absolute() else f"{remote_dir}/{shard}"
            commands.append(("fetch", gcloud_scp(tpu, zone, project, i, remote, shard)))
    if "merge" in steps:
        merge_script = os.path.relpath(REPO_ROOT / "experiments" / "merge_shards.py")
        commands.append(("merge", [local_python, merge_script, f"--output={output}",
                                   f"--process_count={num_workers}"]))
    return commands


def main(argv):
    generate_args = argv[1:]
    missing = [f"--{n}" for n in ("tpu", "zone", "num_workers", "output") if getattr(FLAGS, n) is None]
    if missing:
        raise app.UsageError(f"missing {', '.join(missing)}")
    try:
        commands = build_commands(
            tpu=FLAGS.tpu, zone=FLAGS.zone, project=FLAGS.project, num_workers=FLAGS.num_workers,
            output=FLAGS.output, generate_args=generate_args, remote_dir=FLAGS.remote_dir,
            remote_python=FLAGS.remote_python, setup_command=FLAGS.setup_command, steps=FLAGS.steps)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    for step, command in commands:
        line = shlex.join(command)
        if FLAGS.dry_run:
            print(f"# {step}\n{line}")
            continue
        print(f"[{step}] {line}", file=sys.stderr, flush=True)
        result = subprocess.run(command)
        if result.returncode:
            later = ",".join(s for s in STEPS if s in FLAGS.steps and STEPS.index(s) >= STEPS.index(step))
            print(f"[{step}] failed with exit code {result.returncode}; fix it and rerun with "
                  f"--steps={later}", file=sys.stderr)
            return result.returncode
    return 0


if __name__ == "__main__":
    define_flags()
    app.run(main)
