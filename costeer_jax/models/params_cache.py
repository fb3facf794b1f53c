"""A disk cache of converted params, so repeated runs skip safetensors/GGUF conversion.

Converting a checkpoint (GGUF dequantisation, fusing q/k/v and gate/up, transposing, casting)
costs far more than reading the result back. `load_model_cached` keys each converted params
pytree by what it was converted from, stores it with orbax-checkpoint, and on later runs restores
it straight into the requested layout: with a mesh, every device receives only its own slices.

Layout of one entry, `cache_dir/<key>/`:
  params/     orbax StandardCheckpointer output
  meta.json   {"format_version", "cfg", "leaves": {path: [shape, dtype]}}, written last

Entries appear atomically (built in a hidden temp dir, then renamed), so a killed run leaves no
half entry under a real key; an entry that cannot be read anyway (disk trouble, manual edits) is
logged, moved aside and rebuilt.
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

from costeer_jax.models import loading
from costeer_jax.models.config import DecoderConfig

log = logging.getLogger(__name__)

# Bump whenever the params pytree that loading.py produces changes (names, fusion, layout): old
# entries then stop matching instead of restoring a stale layout.
CACHE_FORMAT_VERSION = 3  # 2: tied models carried an lm_head copy; 3: per-layer list, [out, in] down/head
META_FILE, PARAMS_DIR = "meta.json", "params"


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
    """`<readable name>-<dtype>-<hash>`: the hash covers the resolved source path, each source
    file's name, size and mtime, the dtype and the format version, so editing or replacing a
    checkpoint (or changing the converter's layout) never hits an old entry."""
    dtype = jnp.dtype(dtype).name
    files = [{"name": f.name, "size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}
             for f in source_files(source)]
    identity = {"version": CACHE_FORMAT_VERSION, "directory": str(source.directory.resolve()),
                "gguf_file": source.gguf_file, "files": files, "dtype": dtype}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    readable = Path(source.gguf_file).stem if source.gguf_file else source.directory.resolve().name
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", readable)[:60] or "model"
    return f"{readable}-{dtype}-{digest}"


# ---------------------------------------------------------------------------------------------
# Save / load

def _leaf_path(path) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/")  # e.g. layers/3/qkv


def _cfg_to_json(cfg: DecoderConfig) -> dict:
    return dataclasses.asdict(cfg)


def _cfg_from_json(data: dict) -> DecoderConfig:
    data = dict(data)
    if data.get("rope_scaling") is not None:  # json turned the tuple of pairs into lists
        data["rope_scaling"] = tuple((str(k), float(v)) for k, v in data["rope_scaling"])
    return DecoderConfig(**data)


def _checkpointer():
    import orbax.checkpoint as ocp

    if jax.process_count() > 1:
        # Hosts cache independently (each its own local disk, its own runs): no cross-host
        # barriers, this process is its own primary.
        me = jax.process_index()
        options = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
        return ocp.StandardCheckpointer(multiprocessing_options=options)
    return ocp.StandardCheckpointer()


def save_params(params, cfg: DecoderConfig, directory: str | os.PathLike) -> Path:
    """Writes params + config to `directory` atomically; returns it. If another process
    finished the same entry first, theirs is kept (identical content by construction)."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with _checkpointer() as ckptr:
            ckptr.save((tmp / PARAMS_DIR).absolute(), params)
            ckptr.wait_until_finished()
        leaves = {_leaf_path(p): [list(x.shape), jnp.dtype(x.dtype).name]
                  for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
        meta = {"format_version": CACHE_FORMAT_VERSION, "cfg": _cfg_to_json(cfg), "leaves": leaves}
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


def _same_architecture(a: DecoderConfig, b: DecoderConfig) -> bool:
    # vocab_size is not compared: load_model takes it from the embedding rows, which may differ
    # from config.json's value (padded vocabularies); the cached one is the real one.
    return dataclasses.replace(a, vocab_size=0) == dataclasses.replace(b, vocab_size=0)


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


def load_params(directory: str | os.PathLike, expected_cfg: DecoderConfig, mesh=None):
    """Restores (params, cfg) saved by `save_params`.

    Raises ParamsCacheError if the entry is incomplete or was saved for another architecture.
    With a mesh, leaves are restored directly split by `sharding.param_shardings`; otherwise
    onto this process's first device.
    """
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.exists():
        raise ParamsCacheError(f"{directory} has no {META_FILE}: an incomplete entry")
    try:
        meta = json.loads(meta_path.read_text())
        cfg = _cfg_from_json(meta["cfg"])
        leaves = meta["leaves"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ParamsCacheError(f"{meta_path} is unreadable ({type(e).__name__}: {e})") from e
    if meta.get("format_version") != CACHE_FORMAT_VERSION:
        raise ParamsCacheError(f"{directory} has format {meta.get('format_version')}, expected "
                               f"{CACHE_FORMAT_VERSION}")
    if not _same_architecture(cfg, expected_cfg):
        raise ParamsCacheError(f"{directory} holds params for {cfg}, not {expected_cfg}")
    abstract = _nest({p: jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))
                      for p, (shape, dtype) in leaves.items()})
    if mesh is not None:
        from costeer_jax.sharding import param_shardings

        shardings = param_shardings(abstract, cfg, mesh)
    else:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    try:
        with _checkpointer() as ckptr:
            params = ckptr.restore((directory / PARAMS_DIR).absolute(), target)
    except Exception as e:  # orbax/tensorstore raise many types for missing or damaged files
        raise ParamsCacheError(f"could not restore {directory / PARAMS_DIR} "
                               f"({type(e).__name__}: {e})") from e
    got = jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), params)
    want = jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), abstract)
    if got != want:
        raise ParamsCacheError(f"{directory}: restored params do not match {META_FILE}")
    return params, cfg


def _discard(entry: Path) -> None:
    """Moves a bad entry aside before deleting it, so no reader sees it half-deleted."""
    aside = entry.parent / f".{entry.name}.stale-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(entry, aside)
    except OSError:
        return
    shutil.rmtree(aside, ignore_errors=True)


def load_model_cached(spec: str, dtype: str | Any = "float32", cache_dir: str | os.PathLike | None = None,
                      mesh=None) -> loading.LoadedModel:
    """`loading.load_model`, with converted params restored from `cache_dir/<key>` when there.

    On a miss it converts with `loading.load_model` and saves the entry (a failed save, e.g. a
    read-only or full disk, is logged and the run goes on). With `mesh`, params come back
    sharded by `sharding.param_shardings` (on a hit without any full copy on one device).
    `cache_dir=None` is plain `load_model`.
    """
    if cache_dir is None:
        loaded = loading.load_model(spec, dtype)
        return _sharded(loaded, mesh)
    dtype = jnp.dtype(dtype)
    source = loading.resolve_model(spec)
    entry = Path(cache_dir).expanduser() / cache_key(source, dtype)
    if entry.exists():
        try:
            params, cfg = load_params(entry, loading.load_config(source), mesh)
        except ParamsCacheError as e:
            log.warning("ignoring params cache entry %s (%s); converting again", entry, e)
            _discard(entry)
        else:
            log.info("params restored from cache %s", entry)
            return loading.LoadedModel(source.name or str(spec), cfg, params,
                                       loading.load_tokenizer(source), loading.load_generation_eos(source))
    loaded = loading.load_model(spec, dtype)
    try:
        save_params(loaded.params, loaded.cfg, entry)
        log.info("params cached at %s", entry)
    except Exception as e:  # caching is an optimisation: never fail the run over it
        log.warning("could not write params cache %s (%s: %s)", entry, type(e).__name__, e)
    return _sharded(loaded, mesh)


def _sharded(loaded: loading.LoadedModel, mesh) -> loading.LoadedModel:
    if mesh is None:
        return loaded
    from costeer_jax.sharding import param_shardings, shard_params

    params = shard_params(loaded.params, param_shardings(loaded.params, loaded.cfg, mesh))
    return dataclasses.replace(loaded, params=params)
