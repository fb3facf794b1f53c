"""A disk cache of converted params, memory-mapped on load: repeat runs skip GGUF parsing,
dequantization, fusion and layout changes, and do not even copy the weights.

Converting a checkpoint costs far more than reading the result back (Qwen2.5-Coder-1.5B: ~50 s
to dequantize and lay out on this 2-core machine). `load_model_cached` keys each converted model
by what it was converted from and the dtype, writes it once as one flat file of leaves at
page-aligned offsets, and on later runs maps that file: on a CPU backend `jax.device_put` of a
page-aligned, memory-mapped numpy view aliases it (no copy), so a repeat load costs the tokenizer
and the page faults of the first forward, and the weights live once in the page cache instead of
twice (page cache + process). With a mesh, every device receives only its own slices.

Layout of one entry, `cache_dir/<key>/`:
  params.bin   every leaf's bytes, each at a multiple of ALIGNMENT
  tokenizer/   the tokenizer as saved by transformers (GGUF sources: rebuilding it from GGUF
               metadata costs ~3 s for Qwen's vocabulary)
  meta.json    {"format_version", "cfg", "generation_eos", "leaves": {path: {shape, dtype,
               offset, nbytes}}}, written last

Entries appear atomically (built in a hidden temp dir, then renamed), so a killed run leaves no
half entry under a real key (its temp dir is removed, with a message, by the next conversion of
that key); an entry that cannot be read anyway (disk trouble, manual edits) is
logged, moved aside and rebuilt. Replacing or deleting an entry while a run maps it is safe (the
run keeps the old file); truncating params.bin in place is not (the kernel faults on the missing
pages), so nothing here ever writes into a finished entry. The cache is on by default (`cache_dirs.params_dir()`); pass
`cache_dir=""` for a plain in-memory conversion.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from costeer_jax.atomic_files import remove_abandoned_temps, temp_sibling
from costeer_jax.models import loading
from costeer_jax.models.config import DecoderConfig

log = logging.getLogger(__name__)

# Bump whenever the params pytree that loading.py produces changes (names, fusion, layout) or the
# entry format does: old entries then stop matching instead of restoring a stale layout.
CACHE_FORMAT_VERSION = 4  # 3: orbax per-layer list; 4: one memory-mapped file + tokenizer
META_FILE, PARAMS_FILE, TOKENIZER_DIR = "meta.json", "params.bin", "tokenizer"
ALIGNMENT = 4096  # page-aligned leaves: what lets the CPU backend alias the mapping


class ParamsCacheError(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------------
# Keys

def source_files(source: loading.ModelSource) -> list[Path]:
    """The files a conversion reads: the GGUF file, or config.json plus every safetensors shard."""
    if source.gguf_file:
        return [source.directory / source.gguf_file]
    return [source.directory / "config.json", *loading._safetensors_files(source.directory)]


def cache_key(source: loading.ModelSource, dtype) -> str:
    """`<readable name>-<dtype>-<hash>`. The hash covers the format version, the dtype and the
    source's identity: a registered model's sha256 (so reassembling it hits the same entry), else
    the resolved path and each source file's name, size and mtime (editing or replacing a
    checkpoint never hits an old entry)."""
    dtype = jnp.dtype(dtype).name
    if source.sha256:
        identity = {"version": CACHE_FORMAT_VERSION, "sha256": source.sha256, "dtype": dtype}
    else:
        files = [{"name": f.name, "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}
                 for f in source_files(source)]
        identity = {"version": CACHE_FORMAT_VERSION, "directory": str(source.directory.resolve()),
                    "gguf_file": source.gguf_file, "files": files, "dtype": dtype}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    readable = Path(source.gguf_file).stem if source.gguf_file else source.directory.resolve().name
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", readable)[:60] or "model"
    return f"{readable}-{dtype}-{digest}"


# ---------------------------------------------------------------------------------------------
# Writing

class _EntryWriter:
    """A params sink (see loading.ParamSink) appending each leaf to params.bin as it is converted
    (cast to `dtype`, or kept as it is for None); returns shape placeholders, the arrays come
    back by mapping the finished file. Writes run on a background thread, overlapping the disk
    with the next leaf's dequantization (one leaf queued at most)."""

    def __init__(self, directory: Path, dtype=None):
        from concurrent.futures import ThreadPoolExecutor

        self.dtype = None if dtype is None else jnp.dtype(dtype)
        self.file = open(directory / PARAMS_FILE, "wb")
        self.leaves: dict[str, dict] = {}
        self.end = 0
        self._io = ThreadPoolExecutor(1)
        self._pending = None

    def __call__(self, path: str, array) -> jax.ShapeDtypeStruct:
        a = np.asarray(array)
        a = np.ascontiguousarray(a if self.dtype is None else a.astype(self.dtype, copy=False))
        offset = -(-self.end // ALIGNMENT) * ALIGNMENT
        self.end = offset + a.nbytes
        self._wait()
        self._pending = self._io.submit(self._write, offset, a)
        self.leaves[path] = {"shape": list(a.shape), "dtype": a.dtype.name, "offset": offset,
                             "nbytes": a.nbytes}
        return jax.ShapeDtypeStruct(a.shape, a.dtype)

    def _write(self, offset: int, a: np.ndarray) -> None:
        self.file.seek(offset)
        self.file.write(memoryview(a.reshape(-1).view(np.uint8)))

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()  # re-raises a failed write (e.g. a full disk) here
            self._pending = None

    def close(self) -> None:
        try:
            self._wait()
            self.file.truncate(self.end)
            self.file.flush()
            os.fsync(self.file.fileno())
        finally:
            self._io.shutdown()
            self.file.close()


def _leaf_path(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")  # e.g. layers/3/qkv


def _cfg_from_json(data: dict) -> DecoderConfig:
    data = dict(data)
    if data.get("rope_scaling") is not None:  # json turned the tuple of pairs into lists
        data["rope_scaling"] = tuple((str(k), float(v)) for k, v in data["rope_scaling"])
    return DecoderConfig(**data)


def _write_entry(directory: Path, dtype, fill) -> Path:
    """Builds an entry in a temp dir: `fill(writer, tmp)` converts through the writer and returns
    (cfg, generation_eos); then meta.json, then the rename. If another process finished the same
    entry first, theirs is kept (identical content by construction)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_temps(directory.parent, "params cache entry", directory.name)
    tmp = temp_sibling(directory)
    tmp.mkdir()
    try:
        writer = _EntryWriter(tmp, dtype)
        try:
            cfg, generation_eos = fill(writer, tmp)
        finally:
            writer.close()
        meta = {"format_version": CACHE_FORMAT_VERSION, "cfg": dataclasses.asdict(cfg),
                "generation_eos": generation_eos, "leaves": writer.leaves}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, directory)
        except OSError:
            if not (directory / META_FILE).exists():
                raise
            log.info("params cache entry %s appeared concurrently; keeping it", directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def save_params(params, cfg: DecoderConfig, directory: str | os.PathLike, tokenizer=None,
                generation_eos=None) -> Path:
    """Writes an in-memory params pytree (+ config, optional tokenizer) as an entry; returns it."""
    def fill(writer, tmp):
        for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
            writer(_leaf_path(path), jax.device_get(x))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
        return cfg, generation_eos

    return _write_entry(Path(directory), None, fill)


def convert_to_entry(spec: str, source: loading.ModelSource, dtype, directory: Path) -> Path:
    """Converts the checkpoint straight into a cache entry, one leaf at a time."""
    def fill(writer, tmp):
        cfg = loading.load_config(source)
        shapes = loading.convert_params(source, cfg, writer)
        if shapes["embed"].shape[0] != cfg.vocab_size:  # padded vocabularies: the rows are the truth
            cfg = dataclasses.replace(cfg, vocab_size=int(shapes["embed"].shape[0]))
        if source.gguf_file:
            loading.load_tokenizer(source).save_pretrained(tmp / TOKENIZER_DIR)
        return cfg, loading.load_generation_eos(source)

    return _write_entry(directory, dtype, fill)


# ---------------------------------------------------------------------------------------------
# Reading

def _nest(flat: dict[str, Any]) -> dict:
    out: dict = {}
    for path, value in flat.items():
        *parents, leaf = path.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return _lists_back(out)


def _lists_back(node):
    """Paths flatten a list's items to '0', '1', ...: turn such dicts back into lists."""
    if not isinstance(node, dict):
        return node
    node = {k: _lists_back(v) for k, v in node.items()}
    if node and all(k.isdigit() for k in node):
        return [node[str(i)] for i in range(len(node))]
    return node


def _same_architecture(a: DecoderConfig, b: DecoderConfig) -> bool:
    # vocab_size is not compared: the embedding's row count may differ from the source config's
    # value (padded vocabularies); the cached one is the real one.
    return dataclasses.replace(a, vocab_size=0) == dataclasses.replace(b, vocab_size=0)


def read_meta(directory: Path) -> dict:
    meta_path = directory / META_FILE
    if not meta_path.exists():
        raise ParamsCacheError(f"{directory} has no {META_FILE}: an incomplete entry")
    try:
        meta = json.loads(meta_path.read_text())
        meta["cfg"] = _cfg_from_json(meta["cfg"])
        meta["leaves"] = {p: (tuple(v["shape"]), jnp.dtype(v["dtype"]), int(v["offset"]), int(v["nbytes"]))
                          for p, v in meta["leaves"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ParamsCacheError(f"{meta_path} is unreadable ({type(e).__name__}: {e})") from e
    if meta.get("format_version") != CACHE_FORMAT_VERSION:
        raise ParamsCacheError(f"{directory} has format {meta.get('format_version')}, expected "
                               f"{CACHE_FORMAT_VERSION}")
    return meta


def load_params(directory: str | os.PathLike, expected_cfg: DecoderConfig | None = None, mesh=None):
    """Maps (params, cfg) of an entry.

    Raises ParamsCacheError if the entry is incomplete, its file is short, or it was saved for
    another architecture than `expected_cfg`. Without a mesh, leaves are aliased from the mapping
    on this process's first device (copied where the backend cannot alias host memory); with a
    mesh, each device gets its slices per `sharding.param_shardings`.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    cfg = meta["cfg"]
    if expected_cfg is not None and not _same_architecture(cfg, expected_cfg):
        raise ParamsCacheError(f"{directory} holds params for {cfg}, not {expected_cfg}")
    leaves = meta["leaves"]
    data_path = directory / PARAMS_FILE
    need = max((offset + nbytes for _, _, offset, nbytes in leaves.values()), default=0)
    size = data_path.stat().st_size if data_path.exists() else -1
    if size < need:
        raise ParamsCacheError(f"{data_path} has {size} bytes, the entry needs {need}: truncated")
    mapping = np.memmap(data_path, np.uint8, "r")
    views = {p: mapping[offset:offset + nbytes].view(dtype).reshape(shape)
             for p, (shape, dtype, offset, nbytes) in leaves.items()}
    if mesh is not None:
        from costeer_jax.sharding import param_shardings

        abstract = _nest({p: jax.ShapeDtypeStruct(v.shape, v.dtype) for p, v in views.items()})
        shardings = {_leaf_path(p): s for p, s in jax.tree_util.tree_flatten_with_path(
            param_shardings(abstract, cfg, mesh))[0]}
        placed = {p: jax.make_array_from_callback(v.shape, shardings[p], lambda index, v=v: v[index])
                  for p, v in views.items()}
    else:
        device = jax.local_devices()[0]
        placed = {p: jax.device_put(v, device) for p, v in views.items()}
    return _nest(placed), cfg


def _discard(entry: Path) -> None:
    """Moves a bad entry aside before deleting it, so no reader sees it half-deleted."""
    aside = entry.parent / f".{entry.name}.stale-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(entry, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def _loaded_from_entry(spec: str, source: loading.ModelSource, entry: Path, mesh) -> loading.LoadedModel:
    """The key already identifies the source, so nothing of the source is parsed again (a GGUF
    header with a 150k-token vocabulary costs ~0.3-1 s); the saved tokenizer loads through
    PreTrainedTokenizerFast, whose import (unlike AutoTokenizer's) does not pull in torch."""
    params, cfg = load_params(entry, None, mesh)
    meta = read_meta(entry)
    tokenizer_dir = entry / TOKENIZER_DIR
    if tokenizer_dir.exists():
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    else:
        tokenizer = loading.load_tokenizer(source)
    return loading.LoadedModel(source.name or str(spec), loading.checked_config(spec, cfg, params), params,
                               tokenizer, meta.get("generation_eos"))


def load_model_cached(spec: str, dtype: str | Any = "float32", cache_dir: str | os.PathLike | None = None,
                      mesh=None) -> loading.LoadedModel:
    """`loading.load_model`, converting once into `cache_dir/<key>` and mapping that entry.

    `cache_dir=None` is the default folder (`cache_dirs.params_dir()`); `cache_dir=""` turns the
    cache off (plain in-memory conversion). A failed write (read-only or full disk) is logged and
    the run goes on with an in-memory conversion. With `mesh`, params come back sharded by
    `sharding.param_shardings`.
    """
    if cache_dir is not None and str(cache_dir) == "":
        return _sharded(loading.load_model(spec, dtype), mesh)
    if cache_dir is None:
        from costeer_jax.cache_dirs import params_dir

        cache_dir = params_dir()
    dtype = jnp.dtype(dtype)
    source = loading.resolve_model(spec)
    entry = Path(cache_dir).expanduser() / cache_key(source, dtype)
    if entry.exists():
        try:
            loaded = _loaded_from_entry(spec, source, entry, mesh)
        except (ParamsCacheError, OSError, ValueError) as e:
            log.warning("ignoring params cache entry %s (%s); converting again", entry, e)
            _discard(entry)
        else:
            log.info("params mapped from cache %s", entry)
            return loaded
    try:
        convert_to_entry(spec, source, dtype, entry)
    except (loading.ModelLoadError, ValueError):
        raise  # the checkpoint itself is bad: an in-memory conversion would fail the same way
    except Exception as e:  # caching is an optimisation: never fail the run over it
        log.warning("could not write params cache %s (%s: %s); converting in memory",
                    entry, type(e).__name__, e)
        return _sharded(loading.load_model(spec, dtype), mesh)
    log.info("params cached at %s", entry)
    return _loaded_from_entry(spec, source, entry, mesh)


def _sharded(loaded: loading.LoadedModel, mesh) -> loading.LoadedModel:
    if mesh is None:
        return loaded
    from costeer_jax.sharding import param_shardings, shard_params

    params = shard_params(loaded.params, param_shardings(loaded.params, loaded.cfg, mesh))
    return dataclasses.replace(loaded, params=params)
