"""Launch scripts: the TPU launcher's dry run, the GPU recipe, the sweep example. No gcloud or GPU."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = REPO_ROOT / "launch" / "launch_tpu.py"


def _build_commands():
    """launch/ is scripts, not a package: load the launcher module from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("launch_tpu", LAUNCHER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_commands


def _launch(*args):
    return subprocess.run([sys.executable, str(LAUNCHER), *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)


def test_tpu_dry_run_prints_the_exact_commands():
    done = _launch("--tpu=my-v4-16", "--zone=us-central2-b", "--project=my-proj", "--num_workers=2",
                   "--output=outputs/hs.jsonl", "--dry_run", "--",
                   "--method=costeer", "--task=helpsteer", "--mesh=data:4", "--batch_size=32")
    assert done.returncode == 0, done.stderr
    ssh = "gcloud compute tpus tpu-vm ssh my-v4-16 --zone=us-central2-b --project=my-proj --worker=all"
    scp = "gcloud compute tpus tpu-vm scp --zone=us-central2-b --project=my-proj"
    assert done.stdout.splitlines() == [
        "# run",
        f"{ssh} '--command=cd costeer-jax && .venv/bin/python experiments/generate.py --multihost "
        "--output=outputs/hs.jsonl --method=costeer --task=helpsteer --mesh=data:4 --batch_size=32'",
        "# fetch",
        "mkdir -p outputs",
        "# fetch",
        f"{scp} --worker=0 my-v4-16:costeer-jax/outputs/hs.host-00-of-02.jsonl outputs/hs.host-00-of-02.jsonl",
        "# fetch",
        f"{scp} --worker=1 my-v4-16:costeer-jax/outputs/hs.host-01-of-02.jsonl outputs/hs.host-01-of-02.jsonl",
        "# merge",
        f"{shlex.quote(sys.executable)} experiments/merge_shards.py --output=outputs/hs.jsonl --process_count=2",
    ]


def test_remote_command_survives_shell_quoting():
    """Arguments with spaces and quotes reach generate.py unchanged through both shells (the local
    one running gcloud, the worker's one running --command)."""
    build_commands = _build_commands()
    tricky = ["--prompts_file=data/my prompts.jsonl", "--llm=it's/a model", "--alpha=2.0"]
    (_, run), = build_commands(tpu="t", zone="z", project=None, num_workers=2, output="o.jsonl",
                               generate_args=tricky, steps=["run"])
    printed = shlex.join(run)
    local_argv = shlex.split(printed)  # what the local shell gives gcloud
    command = next(a for a in local_argv if a.startswith("--command="))[len("--command="):]
    remote_argv = shlex.split(command.split(" && ", 1)[1])  # what the worker's shell runs
    assert remote_argv == [".venv/bin/python", "experiments/generate.py", "--multihost", "--output=o.jsonl", *tricky]


def test_setup_step_and_argument_errors():
    build_commands = _build_commands()
    common = dict(tpu="t", zone="z", project=None, num_workers=2, output="o.jsonl", generate_args=[])
    (step, argv), = build_commands(**common, steps=["setup"], setup_command="git pull && make venv")
    assert step == "setup" and argv[-2:] == ["--worker=all", "--command=cd costeer-jax && git pull && make venv"]
    (_, single), = build_commands(**{**common, "num_workers": 1}, steps=["run"])
    assert "--multihost" not in single[-1]  # one worker is a plain single-host run
    with pytest.raises(ValueError, match="needs --setup_command"):
        build_commands(**common, steps=["setup"])
    with pytest.raises(ValueError, match="unknown steps"):
        build_commands(**common, steps=["deploy"])
    with pytest.raises(ValueError, match="without '~'"):
        build_commands(**common, remote_dir="~/costeer-jax")
    with pytest.raises(ValueError, match="pass --output to the launcher"):
        build_commands(**{**common, "generate_args": ["--output=x.jsonl"]})


def test_missing_flags_are_a_usage_error():
    done = _launch("--tpu=t", "--dry_run")
    assert done.returncode != 0 and "missing --zone, --num_workers, --output" in done.stderr


@pytest.mark.parametrize("layout, nproc, expected", [
    ("data", "4", ["--mesh=data:4", "--output=out.jsonl", "--batch_size=32", "--method=costeer"]),
    ("model", "2", ["--mesh=model:2", "--output=out.jsonl", "--method=costeer"]),
])
def test_gpu_recipe_builds_the_generate_command(layout, nproc, expected):
    env = dict(os.environ, PYTHON="echo", NUM_GPUS=nproc)
    done = subprocess.run(["bash", str(REPO_ROOT / "launch" / "gpu_single_host.sh"), layout, "out.jsonl",
                           "--method=costeer"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["experiments/generate.py", *expected]


def test_gpu_recipe_rejects_an_unknown_layout():
    env = dict(os.environ, PYTHON="echo", NUM_GPUS="2")
    done = subprocess.run(["bash", str(REPO_ROOT / "launch" / "gpu_single_host.sh"), "pipeline", "o.jsonl"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "layout must be data, model or custom" in done.stderr


def test_sweep_example_names_real_hyperparameters_and_flags():
    from costeer_jax.decoding.methods import get_method

    sweep = json.loads((REPO_ROOT / "launch" / "sweeps" / "alpha_beta_2x2.json").read_text())
    method = get_method(sweep["method"])
    assert set(sweep["grid"]) == {"alpha", "beta"} and set(sweep["grid"]) <= set(method.hyper_keys)
    assert all(len(v) == 2 for v in sweep["grid"].values())
    # Ask the sweep entry point itself which flags it registers (shared flags live in run_setup),
    # in a child so absl's global flag registry of this test process stays untouched.
    probe = ("import sys, json; sys.argv = ['sweep']; import experiments.sweep as s; from absl import flags; "
             "print(json.dumps({'flags': sorted(flags.FLAGS), 'run_options': list(s.RUN_OPTIONS)}))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert done.returncode == 0, done.stderr
    registered = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(registered["run_options"]) <= set(registered["flags"])
    fixed_run_options = set(sweep["fixed"]) - set(method.hyper_keys)
    assert fixed_run_options <= set(registered["run_options"]), fixed_run_options - set(registered["run_options"])


def test_real_pair_table_end_to_end_on_tiny_models(tiny_chat_models, tmp_path):
    """The real-pair table's launcher on tiny models: every (task, method) generated, scored and
    tabulated with speculative acceptance; a rerun resumes (decodes nothing, keeps the figures)."""
    args = [sys.executable, str(REPO_ROOT / "launch" / "real_pair_table.py"), f"--output_dir={tmp_path}",
            f"--llm={tiny_chat_models['llm']}", f"--slm={tiny_chat_models['slm']}", "--tasks=cogenesis:2",
            "--methods=llm_wo,specsteer_lam0=specsteer+--spec_lambda=0+--copy_guard=2",
            "--max_new_tokens=6", "--batch_size=2",
            f"--extra=--params_cache={tmp_path / 'params'},--progress=false,--record_cloud_view"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert first.returncode == 0, first.stderr[-3000:]
    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[0].startswith("| run | cogenesis R-1 | R-L | METEOR | tok/s | acceptance")
    rows = {line.split(" | ")[0].strip("| "): line for line in table[2:4]}
    assert set(rows) == {"llm_wo", "specsteer_lam0"}
    assert "Leakage" in table[5] and table[7].startswith("| run | cogenesis out span | out 4-gram | cloud span")
    data = json.loads((tmp_path / "table.json").read_text())
    assert data["cogenesis/llm_wo"]["tokens_per_s"] > 0 and "acceptance" not in data["cogenesis/llm_wo"]
    assert data["cogenesis/specsteer_lam0"]["acceptance"] == 1.0  # the variant's own flags reached its run
    assert data["cogenesis/specsteer_lam0"]["cloud_leak_span"] is not None
    assert (tmp_path / "table_leakage_cogenesis.png").stat().st_size > 0  # 6 words: 4-gram shares exist
    figures = (tmp_path / "cogenesis" / "specsteer_lam0.figures.json").read_text()
    again = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "cogenesis" / "specsteer_lam0.figures.json").read_text() == figures
    assert len((tmp_path / "cogenesis" / "llm_wo.jsonl").read_text().splitlines()) == 2
