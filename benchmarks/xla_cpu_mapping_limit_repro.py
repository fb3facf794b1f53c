"""The smallest program that reproduces the test suite's segfault (BUILD_NOTES.md, "Test suite
faults"): XLA:CPU (jaxlib 0.10.2) crashes in `backend_compile_and_load` when the process has no
memory mapping left under vm.max_map_count.

Every compiled XLA:CPU executable that stays alive keeps a few anonymous mappings (its code,
constants and data); Linux caps a process at vm.max_map_count of them (65530 by default). This
script takes most of them with small filler mappings of alternating protection (the kernel cannot
merge those), then compiles distinct programs until one does not fit. Seen here: "LLVM
compilation error: Cannot allocate memory" from XLA, then SIGSEGV inside libgcc's unwinder while
jaxlib raises that error as a C++ exception, so Python never sees an exception.

  .venv/bin/python benchmarks/xla_cpu_mapping_limit_repro.py [--headroom=200]
"""
from __future__ import annotations

import argparse
import ctypes
import faulthandler


def mappings() -> int:
    with open("/proc/self/maps", "rb") as f:
        return f.read().count(b"\n")


def take_mappings(count: int) -> None:
    """`count` one-page anonymous mappings that stay until the process ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    prot_none, prot_read, map_private_anonymous = 0, 1, 0x02 | 0x20
    failed = ctypes.c_void_p(-1).value
    for n in range(count):
        if libc.mmap(None, 4096, prot_read if n % 2 else prot_none, map_private_anonymous, -1, 0) in (None, failed):
            raise OSError(ctypes.get_errno(), f"filler mapping {n} failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--headroom", type=int, default=200, help="mappings left free before compiling")
    args = parser.parse_args()
    faulthandler.enable()
    import jax
    import jax.numpy as jnp

    with open("/proc/sys/vm/max_map_count") as f:
        limit = int(f.read())
    before = mappings()
    kept = [jax.jit(lambda x, i=i: jnp.sin(x) * i + jnp.cumsum(x)) for i in range(20)]
    for f in kept:
        f(jnp.ones(8)).block_until_ready()
    print(f"vm.max_map_count {limit}; {(mappings() - before) / len(kept):.1f} mappings per live program", flush=True)
    take_mappings(limit - args.headroom - mappings())
    print(f"{mappings()} mappings held ({limit - mappings()} free); compiling until one does not fit", flush=True)
    for i in range(100_000):
        f = jax.jit(lambda x, i=i: jnp.tanh(x) * (i + 1) + jnp.cumsum(x))
        f(jnp.ones(8)).block_until_ready()  # a Python exception here would be the graceful outcome
        kept.append(f)
        if i % 10 == 0:
            print(f"program {i}: {mappings()} mappings", flush=True)


if __name__ == "__main__":
    main()
