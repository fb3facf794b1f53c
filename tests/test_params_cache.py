"""The converted-params cache: exact round trips, no conversion on a hit, bad entries rebuilt."""
from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest

from costeer_jax.models import loading, params_cache


def _bitwise_equal(a, b) -> bool:
    leaves_a, tree_a = jax.tree.flatten(a)
    leaves_b, tree_b = jax.tree.flatten(b)
    if tree_a != tree_b:
        return False
    return all(x.dtype == y.dtype and x.shape == y.shape
               and np.array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8))
               for x, y in zip(leaves_a, leaves_b))


@pytest.fixture
def checkpoint(tiny_checkpoints, tmp_path):
    """A private copy: tests touch its files, and the cache key includes their mtimes."""
    return shutil.copytree(tiny_checkpoints["qwen3"], tmp_path / "qwen3")


@pytest.fixture
def count_conversions(monkeypatch):
    calls = []
    real = loading.load_safetensors_params

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "load_safetensors_params", counting)
    return calls


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_save_load_round_trip_is_exact(checkpoint, tmp_path, dtype):
    fresh = loading.load_model(str(checkpoint), dtype)
    entry = params_cache.save_params(fresh.params, fresh.cfg, tmp_path / "entry")
    params, cfg = params_cache.load_params(entry, fresh.cfg)
    assert cfg == fresh.cfg
    assert _bitwise_equal(params, fresh.params)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # temp dir renamed away


def test_second_load_restores_without_converting(checkpoint, tmp_path, count_conversions, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = params_cache.load_model_cached(str(checkpoint), "float32", cache_dir)
    assert len(count_conversions) == 1
    assert len(list(cache_dir.iterdir())) == 1

    def no_conversion(*args, **kwargs):
        raise AssertionError("a cache hit must not convert the checkpoint")

    monkeypatch.setattr(loading, "load_safetensors_params", no_conversion)
    second = params_cache.load_model_cached(str(checkpoint), "float32", cache_dir)
    fresh_cfg = first.cfg
    assert second.cfg == fresh_cfg and second.name == first.name
    assert second.generation_eos == first.generation_eos and second.tokenizer is None
    assert _bitwise_equal(second.params, first.params)


def test_key_changes_with_dtype_and_with_the_checkpoint_files(checkpoint):
    source = loading.resolve_model(str(checkpoint))
    key = params_cache.cache_key(source, "float32")
    assert key.startswith("qwen3-float32-")
    assert params_cache.cache_key(source, "float32") == key
    assert params_cache.cache_key(source, "bfloat16") != key
    weights = checkpoint / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert params_cache.cache_key(source, "float32") != key


def _entry(cache_dir):
    (entry,) = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    return entry


def _break_meta(entry):
    (entry / params_cache.META_FILE).unlink()


def _garble_meta(entry):
    (entry / params_cache.META_FILE).write_text('{"format_version": 1, "cfg": {')


def _truncate_array_data(entry):
    # A half-copied entry: the params file replaced by its first half. (Replaced, not cut in
    # place: the first load still maps the old file, and pages cut from under a live mapping
    # would fault, which is why the cache itself only ever renames finished files into place.)
    data = entry / params_cache.PARAMS_FILE
    half = entry / "half.bin"
    half.write_bytes(data.read_bytes()[:data.stat().st_size // 2])
    os.replace(half, data)


@pytest.mark.parametrize("damage", [_break_meta, _garble_meta, _truncate_array_data])
def test_damaged_entry_is_ignored_and_rebuilt(checkpoint, tmp_path, count_conversions, damage):
    cache_dir = tmp_path / "cache"
    first = params_cache.load_model_cached(str(checkpoint), "float32", cache_dir)
    damage(_entry(cache_dir))
    again = params_cache.load_model_cached(str(checkpoint), "float32", cache_dir)
    assert len(count_conversions) == 2  # converted again
    assert _bitwise_equal(again.params, first.params)
    params, _ = params_cache.load_params(_entry(cache_dir), first.cfg)  # the rebuilt entry is sound
    assert _bitwise_equal(params, first.params)
    assert not [p for p in cache_dir.iterdir() if ".stale-" in p.name or ".tmp-" in p.name]


def test_leftover_temp_dir_from_a_killed_run_is_ignored(checkpoint, tmp_path, count_conversions):
    cache_dir = tmp_path / "cache"
    key = params_cache.cache_key(loading.resolve_model(str(checkpoint)), "float32")
    (cache_dir / f".{key}.tmp-deadbeef").mkdir(parents=True)
    (cache_dir / f".{key}.tmp-deadbeef" / params_cache.PARAMS_FILE).write_bytes(b"half")
    params_cache.load_model_cached(str(checkpoint), "float32", cache_dir)
    params_cache.load_model_cached(str(checkpoint), "float32", cache_dir)
    assert len(count_conversions) == 1
    assert (cache_dir / key / params_cache.META_FILE).exists()


def test_entry_for_another_architecture_is_refused(checkpoint, tmp_path, tiny_checkpoints):
    fresh = loading.load_model(str(checkpoint))
    entry = params_cache.save_params(fresh.params, fresh.cfg, tmp_path / "entry")
    other = loading.load_model(str(tiny_checkpoints["llama"])).cfg
    with pytest.raises(params_cache.ParamsCacheError, match="holds params for"):
        params_cache.load_params(entry, other)
    meta = json.loads((entry / params_cache.META_FILE).read_text())
    meta["format_version"] = params_cache.CACHE_FORMAT_VERSION + 1
    (entry / params_cache.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(params_cache.ParamsCacheError, match="format"):
        params_cache.load_params(entry, fresh.cfg)


def test_unwritable_cache_dir_does_not_fail_the_load(checkpoint, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache dir should be")
    loaded = params_cache.load_model_cached(str(checkpoint), "float32", blocker)
    assert _bitwise_equal(loaded.params, loading.load_model(str(checkpoint)).params)


def test_restore_onto_a_mesh_gives_named_shardings(checkpoint, tmp_path):
    from jax.sharding import NamedSharding

    from costeer_jax.sharding import make_mesh

    mesh = make_mesh("data:-1")
    cache_dir = tmp_path / "cache"
    converted = params_cache.load_model_cached(str(checkpoint), "float32", cache_dir, mesh=mesh)
    restored = params_cache.load_model_cached(str(checkpoint), "float32", cache_dir, mesh=mesh)
    for loaded in (converted, restored):
        assert all(isinstance(x.sharding, NamedSharding) and x.sharding.mesh == mesh
                   for x in jax.tree.leaves(loaded.params))
    assert _bitwise_equal(restored.params, converted.params)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cached_load_equals_in_memory_conversion(checkpoint, tmp_path, dtype):
    """The streamed, memory-mapped conversion is bitwise the in-memory one, cast included."""
    cached = params_cache.load_model_cached(str(checkpoint), dtype, tmp_path / "cache")
    fresh = loading.load_model(str(checkpoint), dtype)
    assert cached.cfg == fresh.cfg
    assert _bitwise_equal(cached.params, fresh.params)
    entry = _entry(tmp_path / "cache")
    meta = json.loads((entry / params_cache.META_FILE).read_text())
    assert all(leaf["offset"] % params_cache.ALIGNMENT == 0 for leaf in meta["leaves"].values())


def test_cache_off_converts_in_memory(checkpoint, tmp_path, count_conversions, monkeypatch):
    from costeer_jax import cache_dirs

    monkeypatch.setenv(cache_dirs.ROOT_ENV_VAR, str(tmp_path / "root"))
    monkeypatch.delenv(cache_dirs.PARAMS_ENV_VAR, raising=False)  # the suite's session folder
    params_cache.load_model_cached(str(checkpoint), "float32", "")
    params_cache.load_model_cached(str(checkpoint), "float32", "")
    assert len(count_conversions) == 2 and not (tmp_path / "root").exists()
    params_cache.load_model_cached(str(checkpoint), "float32")  # None: the default folder
    assert len(list((tmp_path / "root" / "params").iterdir())) == 1
    monkeypatch.setenv(cache_dirs.PARAMS_ENV_VAR, str(tmp_path / "elsewhere"))  # moves the params alone
    params_cache.load_model_cached(str(checkpoint), "float32")
    assert len(list((tmp_path / "elsewhere").iterdir())) == 1


@pytest.mark.slow
@pytest.mark.smoke
def test_gguf_cache_hit_parses_nothing_and_keeps_the_tokenizer(tmp_path, monkeypatch):
    """A repeat load of a GGUF model neither reads the GGUF file nor rebuilds its tokenizer, and
    gives the same params, config, EOS and tokenization as a fresh conversion."""
    from costeer_jax.models import gguf_file
    from costeer_jax.models.chat import chat_prompt_ids, eos_token_ids

    first = params_cache.load_model_cached(loading.SMOLLM2_ALIAS, "float32", tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("a cache hit must not parse the GGUF file")

    monkeypatch.setattr(gguf_file, "GGUFFile", refuse)
    monkeypatch.setattr(gguf_file.open_gguf, "__wrapped__", refuse)
    gguf_file.open_gguf.cache_clear()
    monkeypatch.setattr(loading, "gguf_tokenizer", refuse)
    monkeypatch.setattr(loading, "load_config", refuse)
    second = params_cache.load_model_cached(loading.SMOLLM2_ALIAS, "float32", tmp_path)
    assert second.cfg == first.cfg and _bitwise_equal(second.params, first.params)
    text = "Plan a quiet evening in Lyon, é ü 世界 <b>"
    assert chat_prompt_ids(second.tokenizer, text) == chat_prompt_ids(first.tokenizer, text)
    assert eos_token_ids(second.tokenizer) == eos_token_ids(first.tokenizer)
    assert second.tokenizer.get_vocab() == first.tokenizer.get_vocab()


def test_a_write_killed_midway_is_removed_and_rebuilt_on_the_next_start(tiny_checkpoints, tmp_path, caplog):
    """SIGKILL while a conversion is writing its entry: nothing appears under the real key, and the
    next start removes the abandoned temp folder with a one-line message and converts again."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import build_tiny_checkpoint

    # Large enough (~100 MB of params) that the write takes a while to catch midway.
    checkpoint = build_tiny_checkpoint("llama", tmp_path / "wide", vocab_size=24576, hidden_size=512,
                                       intermediate_size=512, num_attention_heads=8, num_key_value_heads=4)
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    script = ("import sys; from costeer_jax.models.params_cache import load_model_cached; "
              "load_model_cached(sys.argv[1], 'float32', sys.argv[2])")
    proc = subprocess.Popen([sys.executable, "-c", script, str(checkpoint), str(cache_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = []
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not partial:
        partial = [p for p in cache_dir.glob(".*.tmp-*") if (p / params_cache.PARAMS_FILE).exists()
                   and (p / params_cache.PARAMS_FILE).stat().st_size > 0]
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert partial and proc.returncode == -signal.SIGKILL, "the write was not caught midway"
    assert [p.name for p in cache_dir.iterdir()] == [partial[0].name]  # no entry under the real key

    with caplog.at_level("WARNING"):
        loaded = params_cache.load_model_cached(str(checkpoint), "float32", cache_dir)
    removed = [r.getMessage() for r in caplog.records if "left halfway" in r.getMessage()]
    assert len(removed) == 1 and partial[0].name in removed[0] and str(proc.pid) in removed[0]
    (entry,) = list(cache_dir.iterdir())  # the abandoned folder is gone, the entry is whole
    assert _bitwise_equal(loaded.params, loading.load_model(str(checkpoint), "float32").params)
    assert params_cache.read_meta(entry)["cfg"] == loaded.cfg
