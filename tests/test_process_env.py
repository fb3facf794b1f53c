"""Entry points re-execute once with glibc's huge-page malloc tunable (costeer_jax/process_env.py)."""
from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = ("import os, sys; from costeer_jax.process_env import ensure_hugepage_malloc; "
          "print('before', flush=True); ensure_hugepage_malloc(); "
          "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")


def _run(extra_env):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "COSTEER_JAX_NO_REEXEC")}
    env.update(extra_env)
    out = subprocess.run([sys.executable, "-c", SCRIPT, "--flag=1"], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.splitlines()


def test_reexecs_once_with_the_tunable_and_the_same_arguments():
    lines = _run({})
    # "before" twice: the original process and the re-executed one; the second one keeps going.
    assert lines == ["before", "before", "glibc.malloc.hugetlb=1 ['--flag=1']"]


def test_a_users_own_tunables_or_the_opt_out_are_left_alone():
    assert _run({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == ["before", "glibc.malloc.arena_max=2 ['--flag=1']"]
    assert _run({"COSTEER_JAX_NO_REEXEC": "1"}) == ["before", "None ['--flag=1']"]


GUARD_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[2])
from xla_cpu_mapping_limit_repro import mappings, take_mappings
from costeer_jax.data import Example
from costeer_jax.decoding import methods
from costeer_jax.decoding.runner import Generator
from costeer_jax.models.loading import load_model
from costeer_jax.process_env import MAPPINGS_RESERVE, MappingLimitError, memory_mappings

gen = Generator(methods.get_method("llm_wo"), {methods.LLM: load_model(sys.argv[1])}, max_new_tokens=2, batch_size=1)
held, limit = memory_mappings()
take_mappings(limit - MAPPINGS_RESERVE // 2 - mappings())  # room for this compile, not for the reserve
try:
    gen.run_batch([Example("a", "Name a colour.", "I paint. Name a colour.")])
    print("compiled")
except MappingLimitError as e:
    print("refused:", e)
"""


def test_a_compile_near_the_mapping_limit_is_refused_with_the_fix(tiny_chat_models):
    """XLA:CPU segfaults when a compile finds no memory mapping left (benchmarks/
    xla_cpu_mapping_limit_repro.py); the runner checks the headroom first and says what to do."""
    from conftest import REPO_ROOT

    done = subprocess.run([sys.executable, "-c", GUARD_SCRIPT, str(tiny_chat_models["llm"]),
                           str(REPO_ROOT / "benchmarks")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = done.stdout.splitlines()
    assert line.startswith("refused: this process holds") and "sysctl -w vm.max_map_count" in line, line
