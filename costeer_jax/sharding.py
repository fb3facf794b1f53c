"""Device meshes and shardings for the decoder's params, KV cache and prompt batches.

One table (`LOGICAL_AXIS_RULES`) maps *logical* array axes (batch, vocab, heads, mlp, ...) to the
two mesh axes 'data' and 'model', as in jax-ml/jax-llm-examples; every param leaf and cache field
names its logical axes once (`PARAM_LOGICAL_AXES`, `CACHE_LOGICAL_AXES`). Changing the strategy
is editing the table, not the model.

Shardings only change where data lives: the jitted programs are the same functions, GSPMD inserts
the collectives, so a sharded run computes the same numbers up to float summation order (row-split
matmuls add partial sums across the 'model' axis).

Tensor parallelism over 'model': qkv and gate_up are split by output feature, o and down by input
feature (o's rows, down's [D, F] columns), the output head by vocabulary, the KV cache by kv head. A logical axis whose unit count
(query heads for o, kv heads for the cache, vocab rows, mlp width) does not divide the 'model'
axis is replicated instead, leaf by leaf, and `sharding_notes` says which and how to avoid it.

Known cost, left for the decoder to change: q/k/v (and gate/up) are fused into one matrix along
the column axis, so a contiguous column split does not cut at head boundaries; XLA moves the
small [batch, 1, (H+2K)*hd] activation between shards after the fused matmul. Weights stay split
(the memory point of tensor parallelism); storing q, k, v as separate leaves would remove those
activation transfers.

Meshes are built over this *process's* devices by default: the runner decodes independently on
every host (its own shard of examples, see `costeer_jax.distributed`), so a mesh never has to
span hosts and hosts never wait for each other.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from costeer_jax.models.cache import KVCache
from costeer_jax.models.config import DecoderConfig

DATA, MODEL = "data", "model"
MESH_AXES = (DATA, MODEL)


class MeshSpecError(ValueError):
    pass


class BatchShardingError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Meshes

def parse_mesh_spec(spec: str) -> dict[str, int]:
    """'data:2,model:4' -> {'data': 2, 'model': 4}; missing axes are 1, one size may be -1 (the rest)."""
    sizes: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, sep, size = part.partition(":")
        name = name.strip()
        if not sep or name not in MESH_AXES:
            raise MeshSpecError(
                f"bad --mesh entry {part!r} in {spec!r}: use comma-separated AXIS:SIZE with AXIS in "
                f"{MESH_AXES}, e.g. --mesh=data:8 or --mesh=data:2,model:4")
        if name in sizes:
            raise MeshSpecError(f"--mesh {spec!r} names axis {name!r} twice")
        try:
            value = int(size)
        except ValueError:
            raise MeshSpecError(f"--mesh {spec!r}: size {size!r} of axis {name!r} is not an integer") from None
        if value == 0 or value < -1:
            raise MeshSpecError(f"--mesh {spec!r}: axis {name!r} must have a positive size (or -1 for "
                                "'all remaining devices')")
        sizes[name] = value
    if not sizes:
        raise MeshSpecError(f"empty --mesh {spec!r}; e.g. --mesh=data:8 or --mesh=data:2,model:4")
    if list(sizes.values()).count(-1) > 1:
        raise MeshSpecError(f"--mesh {spec!r}: at most one axis may be -1")
    return {axis: sizes.get(axis, 1) for axis in MESH_AXES}


def make_mesh(spec: str, devices: Sequence[Any] | None = None) -> Mesh:
    """A ('data', 'model') mesh from a --mesh value, over `devices` (default: this process's).

    Axes are Auto (GSPMD propagation): the decoder's einsums are written without sharding
    annotations, so the compiler must be free to choose intermediate layouts.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    sizes = parse_mesh_spec(spec)
    if -1 in sizes.values():
        fixed = math.prod(v for v in sizes.values() if v != -1)
        if len(devices) % fixed:
            raise MeshSpecError(f"--mesh {spec!r}: {len(devices)} devices cannot be split into "
                                f"groups of {fixed}")
        sizes = {k: (len(devices) // fixed if v == -1 else v) for k, v in sizes.items()}
    used = math.prod(sizes.values())
    if used != len(devices):
        shown = ",".join(f"{k}:{v}" for k, v in sizes.items())
        raise MeshSpecError(
            f"--mesh {spec!r} ({shown}) uses {used} devices but {len(devices)} are visible "
            f"({devices[0].platform if devices else 'none'}); make the sizes multiply to "
            f"{len(devices)} (e.g. --mesh=data:{len(devices)} or data:-1,model:2), or limit the visible "
            "devices (CUDA_VISIBLE_DEVICES=..., or XLA_FLAGS=--xla_force_host_platform_device_count=N on CPU)")
    return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES,
                         axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


def mesh_axis_sizes(mesh: Mesh | Any) -> dict[str, int]:
    """Axis sizes of a concrete or abstract mesh; axes it lacks count as 1."""
    shape = dict(mesh.shape)
    return {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}


# ---------------------------------------------------------------------------------------------
# Logical axes

# Logical axis -> mesh axis (None: replicated). 'vocab' is the output head's vocabulary; the
# embedding table of an untied model is only gathered from, and is kept whole ('vocab_in').
LOGICAL_AXIS_RULES: dict[str, str | None] = {
    "batch": DATA,
    "vocab": MODEL,
    "vocab_in": None,
    "embed": None,
    "heads": MODEL,  # o's input rows: H * head_dim
    "qkv": MODEL,  # fused q|k|v output columns: (H + 2K) * head_dim
    "kv_heads": MODEL,
    "mlp": MODEL,  # gate_up's output columns, down's [D, F] input columns
    "layers": None,  # the KV cache's layer axis: every device runs every layer
    "head_dim": None,
    "cache_len": None,
    "prompt_len": None,
}

# Params leaf name -> logical axes of each dim. Per-layer leaves are named without their layer
# index ('layers/qkv' covers layers/0/qkv, layers/1/qkv, ...).
PARAM_LOGICAL_AXES: dict[str, tuple[str, ...]] = {
    "embed": ("vocab_in", "embed"),
    "lm_head": ("vocab", "embed"),
    "final_norm": ("embed",),
    "layers/attn_norm": ("embed",),
    "layers/qkv": ("embed", "qkv"),
    "layers/qkv_bias": ("qkv",),
    "layers/q_norm": ("head_dim",),
    "layers/k_norm": ("head_dim",),
    "layers/o": ("heads", "embed"),
    "layers/mlp_norm": ("embed",),
    "layers/gate_up": ("embed", "mlp"),
    "layers/down": ("embed", "mlp"),
}
TIED_EMBED_LOGICAL_AXES = ("vocab", "embed")  # a tied embedding is also the output head

CACHE_LOGICAL_AXES = KVCache(
    keys=("layers", "batch", "kv_heads", "cache_len", "head_dim"),
    values=("layers", "batch", "kv_heads", "cache_len", "head_dim"),
    lengths=("batch",),
)


def _unit_counts(cfg: DecoderConfig, batch_size: int | None) -> dict[str, tuple[int, str]]:
    """How many indivisible units each splittable logical axis has (a shard must hold whole units)."""
    counts = {
        "vocab": (cfg.vocab_size, "vocabulary rows"),
        "heads": (cfg.num_heads, "query heads"),
        # Fused q|k|v columns: a contiguous split cuts the fused axis, not heads, whatever the head
        # counts (see the module docstring), so only the column count has to divide.
        "qkv": ((cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim, "fused q|k|v columns"),
        "kv_heads": (cfg.num_kv_heads, "kv heads"),
        "mlp": (cfg.intermediate_size, "mlp columns"),
    }
    if batch_size is not None:
        counts["batch"] = (batch_size, "batch rows")
    return counts


def _divisors_up_to(n: int, limit: int) -> list[int]:
    return [d for d in range(1, limit + 1) if n % d == 0]


def effective_rules(cfg: DecoderConfig, axis_sizes: Mapping[str, int], batch_size: int | None = None,
                    rules: Mapping[str, str | None] = LOGICAL_AXIS_RULES) -> tuple[dict, list[str]]:
    """The rules table with every axis whose units do not divide its mesh axis set to None,
    plus one note per such fallback (what is replicated, and which sizes would split)."""
    out, notes = dict(rules), []
    for logical, (units, what) in _unit_counts(cfg, batch_size).items():
        mesh_axis = out.get(logical)
        size = axis_sizes.get(mesh_axis, 1) if mesh_axis else 1
        if size > 1 and units % size:
            out[logical] = None
            fits = [d for d in _divisors_up_to(units, max(size * 2, 8)) if d > 1]
            notes.append(
                f"{logical!r} replicated: {units} {what} do not divide the {mesh_axis!r} axis ({size}); "
                f"same results, more memory per device. {mesh_axis!r} sizes that split it: "
                f"{', '.join(map(str, fits)) or 'none'}")
    return out, notes


def logical_to_spec(logical_axes: Sequence[str], rules: Mapping[str, str | None]) -> P:
    mesh_axes = [rules.get(axis) for axis in logical_axes]
    used = [a for a in mesh_axes if a is not None]
    if len(used) != len(set(used)):
        raise ValueError(f"logical axes {tuple(logical_axes)} map two dims to one mesh axis: {mesh_axes}")
    return P(*mesh_axes)


def _leaf_path(path) -> str:
    """'/'-joined keys, list indices dropped: layers/3/qkv -> layers/qkv."""
    return jax.tree_util.keystr(tuple(k for k in path if not isinstance(k, jax.tree_util.SequenceKey)),
                                simple=True, separator="/")


def _checked_spec(spec: P, shape: Sequence[int], axis_sizes: Mapping[str, int], where: str,
                  notes: list[str]) -> P:
    """Safety net for arrays whose shape disagrees with the config: never split unevenly."""
    fixed = []
    for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axis is not None and dim % axis_sizes[axis]:
            notes.append(f"{where}: dim {dim} does not divide {axis!r} ({axis_sizes[axis]}); replicated")
            axis = None
        fixed.append(axis)
    return P(*fixed)


def param_partition_specs(params, cfg: DecoderConfig, axis_sizes: Mapping[str, int]) -> tuple[Any, list[str]]:
    """PartitionSpec per params leaf (params may be arrays or ShapeDtypeStructs), and the notes."""
    rules, notes = effective_rules(cfg, axis_sizes)

    def spec_for(path, leaf):
        name = _leaf_path(path)
        if name not in PARAM_LOGICAL_AXES:
            raise KeyError(f"param {name!r} has no entry in PARAM_LOGICAL_AXES; add its logical axes")
        logical = PARAM_LOGICAL_AXES[name]
        if name == "embed" and cfg.tie_word_embeddings:
            logical = TIED_EMBED_LOGICAL_AXES
        if len(logical) != len(leaf.shape):
            raise ValueError(f"param {name!r} has shape {leaf.shape} but logical axes {logical}")
        return _checked_spec(logical_to_spec(logical, rules), leaf.shape, axis_sizes, name, notes)

    return jax.tree_util.tree_map_with_path(spec_for, params), notes


def param_shardings(params, cfg: DecoderConfig, mesh: Mesh):
    """NamedSharding per leaf of the params pytree (see `sharding_notes` for fallbacks)."""
    specs, _ = param_partition_specs(params, cfg, mesh_axis_sizes(mesh))
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def sharding_notes(params, cfg: DecoderConfig, mesh: Mesh, batch_size: int | None = None) -> list[str]:
    """Human-readable list of what could not be split on this mesh (empty: everything splits)."""
    sizes = mesh_axis_sizes(mesh)
    _, notes = param_partition_specs(params, cfg, sizes)
    _, cache_notes = effective_rules(cfg, sizes, batch_size)
    return list(dict.fromkeys(notes + cache_notes))


def cache_partition_specs(cfg: DecoderConfig, axis_sizes: Mapping[str, int], batch_size: int) -> KVCache:
    rules, _ = effective_rules(cfg, axis_sizes, batch_size)
    return KVCache(*(logical_to_spec(axes, rules) for axes in
                     (CACHE_LOGICAL_AXES.keys, CACHE_LOGICAL_AXES.values, CACHE_LOGICAL_AXES.lengths)))


def cache_sharding(cfg: DecoderConfig, mesh: Mesh, batch_size: int) -> KVCache:
    """KVCache of NamedShardings: rows on 'data', kv heads on 'model' when they divide it."""
    specs = cache_partition_specs(cfg, mesh_axis_sizes(mesh), batch_size)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def constrain_cache(cache: KVCache, cfg: DecoderConfig) -> KVCache:
    """Inside jit: pins a cache allocated in the program to `cache_sharding` of the ambient mesh
    (`with jax.set_mesh(mesh):` around lowering); a no-op without one. GSPMD propagation from
    the sharded k/v projections already split the cache in every case measured (engine.decode
    compiled to the same per-device memory with and without this), so this turns a compiler
    choice into a guarantee: a replicated cache would be a full copy on every device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return cache
    specs = cache_partition_specs(cfg, mesh_axis_sizes(mesh), cache.batch_size)
    return jax.tree.map(jax.lax.with_sharding_constraint, cache, specs,
                        is_leaf=lambda x: isinstance(x, P))


# ---------------------------------------------------------------------------------------------
# Placing arrays

def _place(leaf, sharding: NamedSharding) -> jax.Array:
    if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
        return leaf
    # One leaf at a time through host memory; each device receives only its own slice, so no
    # device ever holds a full copy of a split leaf (and no host holds more than one leaf twice).
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index], dtype=host.dtype)


def shard_params(params, shardings):
    """Params placed by `shardings` (a matching pytree, e.g. from `param_shardings`).

    Drop every reference to the input afterwards (e.g. replace `LoadedModel.params`) so the
    unsharded copy is freed.
    """
    return jax.tree.map(_place, params, shardings)


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
    data = mesh_axis_sizes(mesh)[DATA]
    if batch_size % data:
        up = -(-batch_size // data) * data
        raise BatchShardingError(
            f"batch of {batch_size} rows does not split over the 'data' mesh axis ({data} devices); "
            f"pass --batch_size as a multiple of {data} (e.g. {up}), or use a smaller data axis "
            f"(--mesh=data:D,model:M with D dividing {batch_size})")


def shard_batch(tree, mesh: Mesh, batch_size: int):
    """Places per-row arrays on the mesh: leaves whose leading dim is `batch_size` are split on
    'data', every other leaf (e.g. the EOS id list) is replicated. Accepts any pytree (prompt
    dicts, per-row hyperparameters, PRNG key data)."""
    if getattr(mesh, "is_multi_process", False):
        raise BatchShardingError(
            "shard_batch places this process's rows only; build the mesh over jax.local_devices() "
            "(the default of make_mesh): hosts decode independently, each on its own examples")
    check_batch_divisible(batch_size, mesh)
    rows, whole = NamedSharding(mesh, P(DATA)), NamedSharding(mesh, P())

    def place(leaf):
        shape = np.shape(leaf)
        return jax.device_put(leaf, rows if shape and shape[0] == batch_size else whole)

    return jax.tree.map(place, tree)
