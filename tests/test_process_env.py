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
