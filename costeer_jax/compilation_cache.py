"""JAX's persistent compilation cache, on by default for every entry point.

A SmolLM2 decoding program takes 7-11 s to compile on a CPU and longer for big models on
accelerators; sweeps and repeated runs compile the same shapes again and again. With the cache
on, a later process with the same program, shapes and jax version loads the executable from disk
instead (measured: 7.9 s -> 2.1 s of `compile_seconds` for a SmolLM2 CoSteer batch, the rest
being tracing and lowering). Cached executables are keyed by jax on the full program and
compile options, so a hit returns the same program a fresh compile would.

jax's own file cache (jax 0.10 `lru_cache.LRUCache`) writes an entry in place, and once a file
exists under a key it is never rewritten. An entry cut short by a killed process therefore stays
damaged for good (every later run warns and compiles again), and a process reading an entry that
another is still writing sees half of it. `ChecksummedFileCache` replaces it: each entry is written to a temporary sibling
and renamed (`atomic_files`), and carries a sha256 of its payload, checked on every read; a
damaged or foreign entry is removed with a one-line message and rebuilt by the compile that
follows. Reading a half-written entry would not crash XLA (jax's decompression raises first and
jax falls back to compiling), so this is about never trusting a torn file, not about the
segfault of BUILD_NOTES' "Test suite faults".
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from costeer_jax.atomic_files import remove_abandoned_temps, write_bytes_atomic

log = logging.getLogger(__name__)

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
    install_checksummed_cache(path)
    return str(path)


ENTRY_MAGIC = b"costeer-jax-xla-entry-v1\n"
_DIGEST_BYTES = 32
ENTRY_SUFFIX = "-cache"  # jax's own suffix, so `ls` of the folder reads the same


class ChecksummedFileCache:
    """jax's persistent-cache interface (get/put of compressed executables by key) over one
    folder: entries written whole (temporary sibling + rename) as MAGIC + sha256(payload) +
    payload, verified on read. Entries are never evicted (jax's default: no size limit)."""

    def __init__(self, directory: str | os.PathLike):
        self._path = Path(directory)
        self._path.mkdir(parents=True, exist_ok=True)

    def entry_path(self, key: str) -> Path:
        if not key or "/" in key:
            raise ValueError(f"bad compilation cache key {key!r}")
        return self._path / f"{key}{ENTRY_SUFFIX}"

    def get(self, key: str) -> bytes | None:
        path = self.entry_path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        header = len(ENTRY_MAGIC) + _DIGEST_BYTES
        payload = data[header:]
        if (len(data) <= header or not data.startswith(ENTRY_MAGIC)
                or hashlib.sha256(payload).digest() != data[len(ENTRY_MAGIC):header]):
            log.warning("compilation cache entry %s is damaged or foreign (%d bytes, checksum mismatch); "
                        "removing it and compiling again", path, len(data))
            path.unlink(missing_ok=True)
            return None
        return payload

    def put(self, key: str, value: bytes) -> None:
        path = self.entry_path(key)
        if path.exists():
            return
        try:
            write_bytes_atomic(path, ENTRY_MAGIC + hashlib.sha256(value).digest() + value)
        except OSError as e:  # caching is an optimisation: never fail the run over it
            log.warning("could not write compilation cache entry %s (%s)", path, e)


def install_checksummed_cache(directory: str | os.PathLike) -> ChecksummedFileCache:
    """Makes jax use a ChecksummedFileCache at `directory` for every later compile of this
    process (jax has no public hook for its cache object, so this sets the module's private
    cache, as jax's own `initialize_cache` does)."""
    from jax._src import compilation_cache as jax_cache

    cache = ChecksummedFileCache(directory)
    remove_abandoned_temps(directory, "compilation cache entry")
    jax_cache.reset_cache()
    with jax_cache._cache_initialized_mutex:
        jax_cache._cache = cache
        jax_cache._cache_initialized = True
    return cache


def active_cache():
    """The cache object jax compiles against in this process (None when none is set up)."""
    from jax._src import compilation_cache as jax_cache

    return jax_cache._cache
