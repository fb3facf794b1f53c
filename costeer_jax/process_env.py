"""Process-level settings that must be in place before the interpreter starts.

XLA:CPU allocates a program's large temporary buffers afresh at every execution, and on this
kind of machine (a VM) touching fresh 4 KiB pages costs more than the writes themselves: a
SmolLM2 LoRA train step keeps ~8 GB of activations for its backward, and first-touch page faults
were ~10% of an fp32 step and ~15% of a bf16 one. glibc's `glibc.malloc.hugetlb=1` tunable
(glibc >= 2.35) makes malloc ask for transparent huge pages on its mmapped chunks, 512x fewer
faults (BUILD_NOTES.md, LoRA training speed). Tunables are read when the process starts, so an
entry point re-executes itself once with the variable set. Where glibc is older or THP is off the
variable does nothing; a user's own GLIBC_TUNABLES is left as it is.
"""
from __future__ import annotations

import os
import sys

HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"


def ensure_hugepage_malloc() -> None:
    """Re-executes the current command with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 unless the
    variable is already set (by us or the user) or COSTEER_JAX_NO_REEXEC is set."""
    if "GLIBC_TUNABLES" in os.environ or os.environ.get("COSTEER_JAX_NO_REEXEC") or not sys.platform.startswith("linux"):
        return
    os.environ["GLIBC_TUNABLES"] = HUGEPAGE_TUNABLE
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
