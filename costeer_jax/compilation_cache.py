"""JAX's persistent compilation cache, on by default for every entry point.

A SmolLM2 decoding program takes 7-11 s to compile on a CPU and longer for big models on
accelerators; sweeps and repeated runs compile the same shapes again and again. With the cache
on, a later process with the same program, shapes and jax version loads the executable from disk
instead (measured: 7.9 s -> 2.1 s of `compile_seconds` for a SmolLM2 CoSteer batch, the rest
being tracing and lowering). Cached executables are keyed by jax on the full program and
compile options, so a hit returns the same program a fresh compile would.
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "JAX_COMPILATION_CACHE_DIR"  # jax's own variable; honoured when no directory is passed


def default_directory() -> str:
    from costeer_jax.cache_dirs import xla_dir

    return os.environ.get(ENV_VAR) or str(xla_dir())


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Turns the persistent cache on at `directory` (None: `default_directory()`; '' turns it
    off) and returns the directory in use. Call before the first compile."""
    import jax

    if directory is None:
        directory = default_directory()
    if not directory:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    path = Path(directory).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the compilation cache {path} ({e}); pass "
                      "--compilation_cache_dir=DIR on a writable disk, or --compilation_cache_dir= to turn it off") from e
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Every program, however small or quick to compile: the decoding programs are few and large.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return str(path)
