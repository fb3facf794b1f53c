"""Process-level settings and limits: what must be in place before the interpreter starts, and
the per-process memory-mapping limit that compiled programs count against.

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


# Each XLA:CPU executable alive in a process keeps its code, constants and data in memory mappings
# of their own (about 3 to 10 per program, measured in BUILD_NOTES.md "Test suite faults"), and
# Linux caps a process at vm.max_map_count of them (65530 by default). When LLVM cannot map a new
# program, XLA reports "LLVM compilation error: Cannot allocate memory" and jaxlib 0.10 segfaults
# while raising it (in libgcc's unwinder), killing the process with no Python error. Checking the
# headroom before a compile turns that into an error that says what to do.
MAP_COUNT_FILE = "/proc/sys/vm/max_map_count"
MAPPINGS_RESERVE = 2048  # mappings kept free for one more program plus malloc's own arenas


class MappingLimitError(RuntimeError):
    """The process is about to run out of memory mappings (vm.max_map_count)."""


def memory_mappings() -> tuple[int, int] | None:
    """(memory mappings this process holds, the per-process limit), or None where unknown."""
    try:
        with open(MAP_COUNT_FILE) as f:
            limit = int(f.read())
        with open("/proc/self/maps", "rb") as f:
            held = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    except (OSError, ValueError):
        return None
    return held, limit


def check_mapping_headroom(reserve: int = MAPPINGS_RESERVE) -> None:
    """Raises MappingLimitError when fewer than `reserve` memory mappings are left."""
    counts = memory_mappings()
    if counts is None:
        return
    held, limit = counts
    if held + reserve > limit:
        raise MappingLimitError(
            f"this process holds {held} of its {limit} memory mappings (vm.max_map_count); every compiled "
            "XLA:CPU program kept alive holds a few, and XLA:CPU crashes when it cannot map another: decode "
            "fewer prompt shapes per process (or drop Generators no longer used), or raise the limit with "
            "`sysctl -w vm.max_map_count=262144`")
