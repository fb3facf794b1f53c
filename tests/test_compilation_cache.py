"""The persistent compilation cache never trusts a torn entry: entries are written whole and
checksummed; one cut short (a killed writer) is removed with a one-line message and rebuilt by the
compile that follows; temporaries of killed writers are cleared at start-up."""
from __future__ import annotations

import os
import subprocess
import sys

from costeer_jax import compilation_cache
from costeer_jax.atomic_files import remove_abandoned_temps

# One jitted program compiled with the cache at argv[1]; prints whether jax's cache object is ours.
SCRIPT = """
import sys, jax, jax.numpy as jnp
from costeer_jax.compilation_cache import ChecksummedFileCache, active_cache, enable_compilation_cache
import logging; logging.basicConfig(level=logging.WARNING, format="%(message)s")
enable_compilation_cache(sys.argv[1])
print("ours", isinstance(active_cache(), ChecksummedFileCache))
print(float(jax.jit(lambda x: jnp.tanh(x).sum() * 3.0)(jnp.arange(8.0))))
"""


def run(cache):
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(cache)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def entries(cache):
    return sorted(p for p in cache.iterdir() if p.name.endswith(compilation_cache.ENTRY_SUFFIX))


def test_a_torn_entry_is_removed_and_rebuilt_with_one_message(tmp_path):
    cache = tmp_path / "xla"
    first = run(cache)
    assert "ours True" in first.stdout and "damaged" not in first.stderr
    written = entries(cache)
    assert written and all(p.read_bytes().startswith(compilation_cache.ENTRY_MAGIC) for p in written)
    whole = {p: p.read_bytes() for p in written}
    victim = written[-1]
    victim.write_bytes(whole[victim][:len(whole[victim]) // 2])  # as a writer killed midway leaves it

    second = run(cache)
    assert second.stdout.splitlines()[-1] == first.stdout.splitlines()[-1]
    warnings = [line for line in second.stderr.splitlines() if "damaged" in line]
    assert len(warnings) == 1 and victim.name in warnings[0], second.stderr[-3000:]
    assert victim.read_bytes() == whole[victim]  # rebuilt: the compile wrote it again, whole

    third = run(cache)
    assert "damaged" not in third.stderr  # a clean hit now


def test_get_refuses_short_foreign_and_flipped_entries(tmp_path):
    cache = compilation_cache.ChecksummedFileCache(tmp_path)
    cache.put("k", b"payload bytes")
    assert cache.get("k") == b"payload bytes" and cache.get("missing") is None
    path = cache.entry_path("k")
    good = path.read_bytes()
    for damaged in (good[:-1], b"x" + good[1:], good[:-1] + b"X", b"no header at all"):
        path.write_bytes(damaged)
        assert cache.get("k") is None and not path.exists()  # removed, so the next put rewrites it
        cache.put("k", b"payload bytes")
        assert path.read_bytes() == good


def test_temporaries_of_killed_writers_are_removed_and_live_ones_kept(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    abandoned = tmp_path / f".key-cache.tmp-{dead.pid}-0123abcd"
    live = tmp_path / f".key-cache.tmp-{os.getpid()}-89abcdef"
    unrelated = tmp_path / ".notes.txt"
    for path in (abandoned, live, unrelated):
        path.write_bytes(b"half")
    with caplog.at_level("WARNING"):
        assert remove_abandoned_temps(tmp_path, "compilation cache entry") == 1
    assert not abandoned.exists() and live.exists() and unrelated.exists()
    (message,) = [r.getMessage() for r in caplog.records]
    assert abandoned.name in message and str(dead.pid) in message
