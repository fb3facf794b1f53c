"""LoRA adapters over the decoder's fused projections, as a separate params pytree.

The base weights are never copied or changed: an adapter is its own pytree of small matrices,
and the forward adds each projection's low-rank delta to the frozen projection's output,
exactly as `peft`'s LoRA layer does for separate q/k/v/o/gate/up/down modules:

    y = x W  +  (alpha / r) * dropout(x) A B          (per module; peft: lora_B(lora_A(drop(x))))

Our q/k/v and gate/up projections are fused into one matmul each (models/decoder.py), so an
adapter on a fused projection holds one `a` [in, S*r] (the S modules' A matrices side by side:
one dot reads the input once for all of them) and S separate `b` matrices [r, out_s], one per
module: a block-diagonal B would triple the qkv delta's FLOPs with zeros. Modules that are not
targeted contribute zero columns.

Layout of one adapter (r rank, S targeted modules of a fused projection):
  {"layers": [ {proj: {"a": [in, S*r], "b": [[r, out_q] | None, [r, out_k] | None, ...]}}, ... ]}
with proj in qkv (modules q, k, v), o, gate_up (gate, up), down. `b` has one entry per module of
the fused projection, None where that module is not targeted (a static part of the pytree's
structure, so the forward knows which columns get a delta); `a` holds only the targeted ones.

Per-row adapters (`RowAdapters`): adapters of one shape stacked on a leading axis [n, ...] and a
row index [B] (-1: the base model), so one forward reads the base weights once for rows with
different adapters (S-LoRA/Punica's batching), each row adding its own delta.

Why our own code and not `qwix`: qwix's `LoraProvider` adds adapters by intercepting the
dot_generals that nnx/linen *modules* issue, keyed by module path; our decoder is one pure
function over a dict of fused weights, so there is no module to intercept, its adapters would be
one per fused matmul (not peft's per-module semantics), and it has no per-row adapter batching.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from costeer_jax.models.config import DecoderConfig

PEFT_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# fused projection -> the peft modules it holds, in output-column order
FUSED = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",), "gate_up": ("gate_proj", "up_proj"),
         "down": ("down_proj",)}
_PEFT_PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
                "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}

Adapter = dict[str, Any]


class AdapterError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """peft's LoraConfig fields that change the math (SpecSteer B.5: r=64, alpha=32, dropout 0.05
    on all seven linear modules)."""

    rank: int = 64
    alpha: float = 32.0
    dropout: float = 0.05
    targets: tuple[str, ...] = PEFT_MODULES

    def __post_init__(self):
        if self.rank < 1:
            raise AdapterError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise AdapterError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        unknown = set(self.targets) - set(PEFT_MODULES)
        if unknown or not self.targets:
            raise AdapterError(f"LoRA targets must be a non-empty subset of {', '.join(PEFT_MODULES)}; "
                               f"got {', '.join(self.targets) or 'none'}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def segments(self, proj: str) -> tuple[str, ...]:
        return tuple(m for m in FUSED[proj] if m in self.targets)


def module_shapes(cfg: DecoderConfig) -> dict[str, tuple[int, int]]:
    """(in, out) of each peft module of one layer."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
            "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d)}


def init_adapter(key: jax.Array, cfg: DecoderConfig, lora: LoraConfig, dtype=jnp.float32) -> Adapter:
    """peft's init: A Kaiming-uniform (a=sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))), B zero, so the
    adapted model starts equal to the base."""
    shapes = module_shapes(cfg)
    layers = []
    for layer_key in jax.random.split(key, cfg.num_layers):
        layer = {}
        for p_i, proj in enumerate(FUSED):
            segs = lora.segments(proj)
            if not segs:
                continue
            fan_in = shapes[segs[0]][0]
            bound = 1.0 / np.sqrt(fan_in)
            a = jax.random.uniform(jax.random.fold_in(layer_key, p_i), (fan_in, len(segs) * lora.rank),
                                   dtype, -bound, bound)
            layer[proj] = {"a": a, "b": [jnp.zeros((lora.rank, shapes[m][1]), dtype) if m in segs else None
                                         for m in FUSED[proj]]}
        layers.append(layer)
    return {"layers": layers}


def adapter_rank(adapter: Adapter) -> int:
    first = next(iter(adapter["layers"][0].values()))
    return int(next(b for b in first["b"] if b is not None).shape[-2])


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class RowAdapters:
    """Adapters for the rows of one forward.

    row_index None: `layers` is one adapter, applied to every row with `scale` (a scalar).
    Otherwise `layers` holds n stacked adapters ([n, ...] leaves), `scale` is [n] and row b adds
    adapter row_index[b]'s delta, or none where row_index[b] < 0.
    """

    layers: list
    scale: jax.Array
    row_index: jax.Array | None = None


def single(adapter: Adapter, lora: LoraConfig) -> RowAdapters:
    return RowAdapters(adapter["layers"], jnp.float32(lora.scale))


def stack(adapters: Sequence[tuple[Adapter, LoraConfig]]) -> tuple[list, jax.Array]:
    """n adapters of one base model as stacked layers and scales [n]; ranks may differ (smaller
    ones are zero-padded, which adds exactly nothing) but the targeted modules must agree."""
    if not adapters:
        raise AdapterError("no adapters to stack")
    structures = {jax.tree.structure(a["layers"]) for a, _ in adapters}
    if len(structures) > 1:
        raise AdapterError("adapters in one batch must target the same modules")
    rank = max(adapter_rank(a) for a, _ in adapters)

    def pad(a: Adapter) -> list:
        r = adapter_rank(a)
        out = []
        for layer in a["layers"]:
            new = {}
            for proj, m in layer.items():
                segs = m["a"].shape[1] // r
                blocks = jnp.split(m["a"], segs, axis=1)
                new[proj] = {"a": jnp.concatenate([jnp.pad(x, ((0, 0), (0, rank - r))) for x in blocks], axis=1),
                             "b": [None if b is None else jnp.pad(b, ((0, rank - r), (0, 0))) for b in m["b"]]}
            out.append(new)
        return out

    padded = [pad(a) for a, _ in adapters]
    layers = jax.tree.map(lambda *xs: jnp.stack(xs), *padded)
    return layers, jnp.asarray([lora.scale for _, lora in adapters], jnp.float32)


def with_rows(layers: list, scales: jax.Array, row_index) -> RowAdapters:
    return RowAdapters(layers, scales, jnp.asarray(row_index, jnp.int32))


def projection_delta(h: jax.Array, proj: dict, adapters: RowAdapters, out_widths: Sequence[int],
                     dropout: tuple[float, jax.Array] | None = None, matmul_dtype=None) -> jax.Array:
    """(alpha/r) * drop(h) A B for one fused projection: h [B, S, in] -> [B, S, sum(out_widths)].

    Modules without an adapter (b None) add zero columns. dropout=(rate, key) applies peft's input
    dropout, one mask per module as peft has one dropout layer per module (training only).
    matmul_dtype: the base weights' dtype; with bf16 a single adapter's matmuls read bf16 operands
    (fp32 accumulation, fp32 adapter weights and gradients).
    """
    a, bs = proj["a"], [b for b in proj["b"] if b is not None]
    rank = bs[0].shape[-2]
    if adapters.row_index is not None and a.shape[0] < h.shape[0]:
        return _few_adapters_delta(h, a, adapters, out_widths, proj["b"], rank)
    if adapters.row_index is None:
        # One adapter for every row: 2-D matmuls over the flattened tokens. Contracting over
        # (batch, seq) for the gradients of A and B made XLA:CPU transpose each module's slice of
        # the output gradient first (2x the LoRA backward on SmolLM2; BUILD_NOTES.md, LoRA).
        # Activations and adapter weights in fp32 (fp64 in gradient checks) whatever the base's
        # dtype, as peft keeps adapters of a bf16 base in fp32; only the matmul operands are bf16.
        acc = jnp.promote_types(h.dtype, jnp.float32)
        flat = h.reshape(-1, h.shape[-1]).astype(acc)
        delta = _delta_2d(flat, a, bs, proj["b"], out_widths, adapters.scale.astype(acc), rank, dropout,
                          jnp.dtype(matmul_dtype or acc))
        return delta.reshape(h.shape[:-1] + (delta.shape[-1],)).astype(h.dtype)
    index = jnp.maximum(adapters.row_index, 0)
    a = a[index]  # [B, in, S*r]: each row's own A
    bs = [b[index] for b in bs]
    scale = (adapters.scale[index] * (adapters.row_index >= 0))[:, None, None].astype(h.dtype)
    u = jnp.einsum("bsi,bir->bsr", h, a.astype(h.dtype)) * scale
    return _module_columns(proj["b"], out_widths,
                           lambda s, _: jnp.einsum("bsr,bro->bso", u[..., s * rank:(s + 1) * rank],
                                                   bs[s].astype(h.dtype)),
                           lambda width: jnp.zeros(h.shape[:2] + (width,), h.dtype))


def _delta_2d(h, a, bs, module_bs, out_widths, scale, rank, dropout, matmul_dtype):
    """h [N, in] -> [N, out] for one adapter."""
    if dropout is None or dropout[0] == 0.0:
        keep, input_scale = None, scale
    else:
        keep, inverse_keep = dropout_keep_masks(dropout[1], h.shape, dropout[0], len(bs))
        input_scale = scale * inverse_keep
    deltas = adapter_deltas(matmul_dtype, h, a, tuple(bs), keep, input_scale)
    return _module_columns(module_bs, out_widths, lambda s, _: deltas[s],
                           lambda width: jnp.zeros((h.shape[0], width), h.dtype))


def _dot(a, b, dtype, contract=((1,), (0,))):
    """a . b with operands in `dtype`, accumulated in fp32 (fp64 for fp64)."""
    return jax.lax.dot_general(a.astype(dtype), b.astype(dtype), (contract, ((), ())),
                               preferred_element_type=jnp.promote_types(dtype, jnp.float32))


def _dropped(h, keep, input_scale):
    """peft's dropout(h) with the adapter scale folded in: keep * h * scale / (1 - p)."""
    scaled = h * input_scale.astype(h.dtype)
    return scaled if keep is None else jnp.where(keep, scaled, 0)


def _low_rank(matmul_dtype, h, a, keep, input_scale, rank):
    """U [N, S*r] = (scale * dropout_s(h)) A_s side by side: one matmul for all S modules without
    dropout (they read the same input), one per module with their own masks."""
    if keep is None:
        return _dot(_dropped(h, None, input_scale), a, matmul_dtype)
    return jnp.concatenate([_dot(_dropped(h, keep[s], input_scale), a[:, s * rank:(s + 1) * rank], matmul_dtype)
                            for s in range(keep.shape[0])], axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def adapter_deltas(matmul_dtype, h, a, bs, keep, input_scale):
    """The S targeted modules' deltas of one fused projection, (scale * dropout_s(h)) A_s B_s, for
    h [N, in], a [in, S*r] (the modules' A side by side), bs = S matrices [r, out_s], keep None or
    S masks [S, N, in]. Returns a tuple of S [N, out_s] in h's dtype.

    Its backward is written out so every matmul keeps matmul_dtype operands: autodiff would
    multiply the fp32 cotangent by bf16 operands, which XLA:CPU does as fp32 matmuls after
    converting the operands. The gradients of A and B come out in their own dtype (fp32 masters).
    """
    return _adapter_deltas_fwd(matmul_dtype, h, a, bs, keep, input_scale)[0]


def _adapter_deltas_fwd(matmul_dtype, h, a, bs, keep, input_scale):
    rank = bs[0].shape[0]
    u = _low_rank(matmul_dtype, h, a, keep, input_scale, rank)
    deltas = tuple(_dot(u[:, s * rank:(s + 1) * rank], b, matmul_dtype).astype(h.dtype) for s, b in enumerate(bs))
    return deltas, (h, a, bs, keep, input_scale, u)


def _adapter_deltas_bwd(matmul_dtype, residuals, d_deltas):
    h, a, bs, keep, input_scale, u = residuals
    rank = bs[0].shape[0]
    u_s = [u[:, s * rank:(s + 1) * rank] for s in range(len(bs))]
    d_bs = tuple(_dot(us, d, matmul_dtype, ((0,), (0,))).astype(b.dtype)  # U_s^T dY_s
                 for us, d, b in zip(u_s, d_deltas, bs))
    d_u = [_dot(d, b, matmul_dtype, ((1,), (1,))) for d, b in zip(d_deltas, bs)]  # dY_s B_s^T
    if keep is None:
        d_u = jnp.concatenate(d_u, axis=1)
        d_a = _dot(_dropped(h, None, input_scale), d_u, matmul_dtype, ((0,), (0,)))  # (scale h)^T dU
        d_h = _dropped(_dot(d_u, a, matmul_dtype, ((1,), (1,))), None, input_scale)  # scale dU A^T
    else:  # per module: dropout_s(h)^T dU_s, and dropout_s(dU_s A_s^T) (the map is linear in h)
        d_a = jnp.concatenate([_dot(_dropped(h, keep[s], input_scale), d, matmul_dtype, ((0,), (0,)))
                               for s, d in enumerate(d_u)], axis=1)
        d_h = sum(_dropped(_dot(d, a[:, s * rank:(s + 1) * rank], matmul_dtype, ((1,), (1,))), keep[s], input_scale)
                  for s, d in enumerate(d_u))
    d_keep = None if keep is None else np.zeros(keep.shape, jax.dtypes.float0)
    return (d_h.astype(h.dtype), d_a.astype(a.dtype), d_bs, d_keep,
            jnp.zeros_like(input_scale))  # the scale is a constant of the config, never trained


adapter_deltas.defvjp(_adapter_deltas_fwd, _adapter_deltas_bwd)


DROPOUT_BITS = 16


def dropout_keep_masks(key: jax.Array, shape: tuple[int, ...], rate: float, count: int):
    """`count` independent keep masks [count, *shape] and the inverted-dropout scale 1/(1-p).

    Each element is dropped with probability p = round(rate * 2^16) / 2^16 (rate 0.05 -> 0.0500031)
    from 16 random bits, two masks' worth per 32-bit threefry word: jax.random's cost is per 32-bit
    word (a [1024, 576] bernoulli takes 4.1 ms on this CPU, 32 raw bits 2.6 ms), and LoRA dropout
    draws one mask per module input, ~5k values per token per layer. peft scales by 1/(1-rate);
    1/(1-p) keeps E[dropout(x)] = x exactly.
    """
    levels = 1 << DROPOUT_BITS
    threshold = int(round(rate * levels))
    n = count * int(np.prod(shape))
    words = jax.random.bits(key, (-(-n // 2),), jnp.uint32)
    halves = jnp.concatenate([words & (levels - 1), words >> DROPOUT_BITS])[:n]
    keep = (halves >= threshold).reshape((count,) + tuple(shape))
    return keep, levels / (levels - threshold)


def _module_columns(module_bs, widths, targeted, untargeted) -> jax.Array:
    """The blocks of a fused projection's output columns, one per module in order, concatenated:
    targeted(s, b) for the s-th targeted module (b its B), untargeted(width) for the others."""
    parts, s = [], 0
    for width, b in zip(widths, module_bs):
        if b is None:
            parts.append(untargeted(width))
        else:
            parts.append(targeted(s, b))
            s += 1
    return parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)


def _few_adapters_delta(h, a, adapters: RowAdapters, out_widths, all_bs, rank: int) -> jax.Array:
    """Fewer adapters than rows (e.g. SLM+ and SLM- rows of one user): every row runs every
    adapter and a one-hot weight keeps its own, so each adapter's matrices are read once per step
    instead of once per row (gathering a [B, in, r] copy per row cost ~50% of a SmolLM2 decode
    step at batch 8; benchmarks/bench_lora.py)."""
    n = a.shape[0]
    pick = (adapters.row_index[:, None] == jnp.arange(n)[None, :]) * adapters.scale[None, :]  # [B, n]
    u = jnp.einsum("bsi,nir->bsnr", h, a.astype(h.dtype)) * pick[:, None, :, None].astype(h.dtype)
    return _module_columns(
        all_bs, out_widths,
        lambda s, b: jnp.einsum("bsnr,nro->bso", u[..., s * rank:(s + 1) * rank], b.astype(h.dtype)),
        lambda width: jnp.zeros(h.shape[:2] + (width,), h.dtype))


def fused_widths(cfg: DecoderConfig, proj: str) -> list[int]:
    shapes = module_shapes(cfg)
    return [shapes[m][1] for m in FUSED[proj]]


# -- merge / unmerge ------------------------------------------------------------------------

def _dense_delta(m: dict, lora: LoraConfig, proj: str, cfg: DecoderConfig) -> jax.Array:
    """The fused projection's full weight delta [in, out] (scale included)."""
    rank = next(b for b in m["b"] if b is not None).shape[0]
    a = m["a"].astype(jnp.float32)
    return _module_columns(m["b"], fused_widths(cfg, proj),
                           lambda s, b: a[:, s * rank:(s + 1) * rank] @ b.astype(jnp.float32),
                           lambda width: jnp.zeros((a.shape[0], width), jnp.float32)) * lora.scale


def _apply_delta(params: dict, adapter: Adapter, lora: LoraConfig, cfg: DecoderConfig, sign: float) -> dict:
    layers = []
    for w, layer in zip(params["layers"], adapter["layers"]):
        new = dict(w)
        for proj, m in layer.items():
            delta = _dense_delta(m, lora, proj, cfg)
            if proj == "down":  # stored [out, in] (decoder.py)
                delta = delta.T
            new[proj] = (w[proj].astype(jnp.float32) + sign * delta).astype(w[proj].dtype)
        layers.append(new)
    return {**params, "layers": layers}


def merge(params: dict, adapter: Adapter, lora: LoraConfig, cfg: DecoderConfig) -> dict:
    """A new params pytree with W + (alpha/r) A B folded in (the base is left as it was)."""
    return _apply_delta(params, adapter, lora, cfg, 1.0)


def unmerge(merged: dict, adapter: Adapter, lora: LoraConfig, cfg: DecoderConfig) -> dict:
    return _apply_delta(merged, adapter, lora, cfg, -1.0)


# -- peft's file format ---------------------------------------------------------------------

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
BASE_SHAPE = "costeer_jax_base.json"  # the base model's shape, checked when the adapter is loaded
BASE_SHAPE_FIELDS = ("arch", "num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads", "head_dim")


def peft_key(layer: int, module: str, which: str) -> str:
    return f"base_model.model.model.layers.{layer}.{_PEFT_PARENT[module]}.{module}.lora_{which}.weight"


def to_peft_state(adapter: Adapter, lora: LoraConfig) -> dict[str, np.ndarray]:
    """peft's names and shapes: lora_A [r, in], lora_B [out, r] per module."""
    out = {}
    for i, layer in enumerate(adapter["layers"]):
        for proj, m in layer.items():
            present = [(module, b) for module, b in zip(FUSED[proj], m["b"]) if b is not None]
            rank = present[0][1].shape[0]
            for s, (module, b) in enumerate(present):
                out[peft_key(i, module, "A")] = np.asarray(m["a"][:, s * rank:(s + 1) * rank], np.float32).T.copy()
                out[peft_key(i, module, "B")] = np.asarray(b, np.float32).T.copy()
    return out


def from_peft_state(state: dict[str, Any], cfg: DecoderConfig, lora: LoraConfig, dtype=jnp.float32) -> Adapter:
    """Our adapter from peft's state dict (arrays or torch tensors, names as peft saves them)."""
    def get(name: str) -> np.ndarray:
        for key in (name, name.replace(".weight", ".default.weight")):
            if key in state:
                value = state[key]
                return np.asarray(value.detach().float().numpy() if hasattr(value, "detach") else value, np.float32)
        raise AdapterError(f"adapter has no tensor {name}; it does not match a {cfg.num_layers}-layer "
                           f"{cfg.arch} model with targets {', '.join(lora.targets)}")

    layers = []
    for i in range(cfg.num_layers):
        layer = {}
        for proj in FUSED:
            segs = lora.segments(proj)
            if segs:
                layer[proj] = {"a": jnp.asarray(np.concatenate([get(peft_key(i, m, "A")).T for m in segs], 1), dtype),
                               "b": [jnp.asarray(get(peft_key(i, m, "B")).T, dtype) if m in segs else None
                                     for m in FUSED[proj]]}
        layers.append(layer)
    return {"layers": layers}


def save_adapter(directory: str | Path, adapter: Adapter, lora: LoraConfig, base_model: str,
                 cfg: DecoderConfig) -> Path:
    """peft's adapter folder (adapter_model.safetensors + adapter_config.json), so peft and our
    loader read the same files; written to a temp name and renamed (an interrupted save leaves the
    previous adapter intact)."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank, "lora_alpha": lora.alpha,
              "lora_dropout": lora.dropout, "target_modules": list(lora.targets), "bias": "none",
              "base_model_name_or_path": base_model, "fan_in_fan_out": False, "inference_mode": True}
    # Our own file beside peft's (peft warns about keys it does not know in its config).
    shape = {k: getattr(cfg, k) for k in BASE_SHAPE_FIELDS}
    (directory / BASE_SHAPE).write_text(json.dumps(shape, indent=2))
    tmp = directory / (ADAPTER_WEIGHTS + ".tmp")
    save_file(to_peft_state(adapter, lora), str(tmp))
    tmp.replace(directory / ADAPTER_WEIGHTS)
    tmp = directory / (ADAPTER_CONFIG + ".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    tmp.replace(directory / ADAPTER_CONFIG)
    return directory


def is_adapter_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / ADAPTER_CONFIG).exists()


def load_adapter(directory: str | Path, cfg: DecoderConfig, dtype=jnp.float32) -> tuple[Adapter, LoraConfig]:
    """An adapter folder (ours or peft's) for a base model of config `cfg`; a folder for another
    base is refused with both shapes named."""
    from safetensors.numpy import load_file

    directory = Path(directory)
    config_path, weights_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    if not config_path.exists():
        raise AdapterError(f"{directory}: no {ADAPTER_CONFIG}; pass the folder experiments/train_lora.py "
                           "wrote (or a peft adapter folder)")
    if not weights_path.exists():
        raise AdapterError(f"{directory}: no {ADAPTER_WEIGHTS}; the adapter was not saved completely, retrain "
                           "or resume its training run")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise AdapterError(f"{config_path} is not valid JSON ({e}); the adapter folder is corrupt") from e
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{directory}: peft_type {config.get('peft_type')!r} is not LORA")
    targets = config.get("target_modules") or list(PEFT_MODULES)
    if isinstance(targets, str):
        targets = [m for m in PEFT_MODULES if m in targets]
    lora = LoraConfig(rank=int(config["r"]), alpha=float(config["lora_alpha"]),
                      dropout=float(config.get("lora_dropout", 0.0)),
                      targets=tuple(m for m in PEFT_MODULES if m in targets))
    base = json.loads((directory / BASE_SHAPE).read_text()) if (directory / BASE_SHAPE).exists() else None
    if base is not None:
        ours = {k: getattr(cfg, k) for k in base}
        if ours != base:
            raise AdapterError(f"{directory} was trained for a base model with {base}; this model has {ours}. "
                               "Use the adapter with the model it was trained on")
    try:
        state = load_file(str(weights_path))
    except Exception as e:  # safetensors raises its own error types for truncated files
        raise AdapterError(f"{weights_path} cannot be read ({e}); the file is truncated or corrupt") from e
    adapter = from_peft_state(state, cfg, lora, dtype)
    shapes = module_shapes(cfg)
    for layer in adapter["layers"]:
        for proj, m in layer.items():
            want_in = shapes[FUSED[proj][0]][0]
            if m["a"].shape[0] != want_in:
                raise AdapterError(f"{weights_path}: {proj} adapter reads {m['a'].shape[0]} features, the model "
                                   f"{want_in}; the adapter belongs to another model")
    return adapter, lora
