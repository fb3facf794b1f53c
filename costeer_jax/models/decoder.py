"""One config-driven decoder for Llama-3.x, Qwen2/Qwen2.5 and Qwen3, as a pure function.

Parameters are a plain pytree: global tensors plus `layers`, a list of per-layer dicts, each leaf
its own buffer. The forward is a Python loop over that list (unrolled into the compiled program,
as jax-ml/jax-llm-examples does). A `lax.scan` over weights stacked on a layer axis compiles
smaller but on XLA:CPU copies each layer's weight slice out of the stack before its dots (a
dynamic-slice the matmul kernels do not fuse): measured with benchmarks/bench_step.py, that copying
made a SmolLM2 decode step ~1.4-1.6x slower at batch 1, 8 and 24 (BUILD_NOTES.md, Performance).
The q/k/v and gate/up projections are fused into single matmuls at load time: at decode time this
model is memory-bound, and fewer, larger dots keep XLA:CPU close to the weight-read bound.

Params layout (D hidden, H heads, K kv heads, hd head_dim, F mlp width, V vocab):
  embed [V, D]; final_norm [D]; lm_head [V, D] only for untied models (tied ones project with
  embed itself)
  layers[i]: attn_norm [D], qkv [D, (H+2K)*hd], qkv_bias [(H+2K)*hd] (Qwen2),
             q_norm/k_norm [hd] (Qwen3), o [H*hd, D], mlp_norm [D], gate_up [D, 2F], down [D, F]
Projections that read a small input into a wide output are stored [in, out]; `down` and the
output head, which contract a wide input or produce a huge output, keep HF's [out, in]: each
layout measured faster for its shape on XLA:CPU at batch 1 and 8 (BUILD_NOTES.md).
"""
from __future__ import annotations


from typing import Any

import functools

import jax
import jax.numpy as jnp
import numpy as np

from costeer_jax.models import lora
from costeer_jax.models.cache import KVCache
from costeer_jax.models.config import DecoderConfig
from costeer_jax.models.packed_attention import segment_attention, segment_visibility
from costeer_jax.models.rope import apply_rope, inverse_frequencies, rope_tables

Params = dict[str, Any]


def accumulation_dtype(dtype):
    """fp32 for fp32/bf16 models (norms, softmax, dot accumulation), fp64 when a gradient check
    runs the model in fp64."""
    return jnp.promote_types(dtype, jnp.float32)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    # As HF: normalise in fp32, cast back, then scale (the order matters for bf16 parity).
    xf = x.astype(accumulation_dtype(x.dtype))
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight * xf.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def frozen_einsum(spec: str, out_dtype, h: jax.Array, w: jax.Array) -> jax.Array:
    """einsum(spec, h, w) for a weight that is never trained: h is cast to w's dtype, the product
    accumulated in fp32 (fp64 for fp64 weights) and returned as out_dtype; the backward computes
    only h's gradient, the same way.

    Each part matters for bf16 weights on XLA:CPU: a bf16 x bf16 dot with a bf16 result runs as an
    fp32 dot (330 GFLOP/s here), one with an fp32 result on the CPU's bf16 units (1.9 TFLOP/s);
    a bf16 weight met by an fp32 input (autodiff's cotangent, or fp32 activations) is converted
    whole to fp32 at every use; and no gradient of the weight is ever formed.
    """
    return jnp.einsum(spec, h.astype(w.dtype), w, preferred_element_type=accumulation_dtype(w.dtype)).astype(out_dtype)


def _frozen_einsum_fwd(spec, out_dtype, h, w):
    return frozen_einsum(spec, out_dtype, h, w), (w, jnp.zeros((0,), h.dtype))


def _frozen_einsum_bwd(spec, out_dtype, residuals, d_out):
    w, h_dtype = residuals
    inputs, out = spec.split("->")
    h_spec, w_spec = inputs.split(",")
    d_h = jnp.einsum(f"{out},{w_spec}->{h_spec}", d_out.astype(w.dtype), w,
                     preferred_element_type=accumulation_dtype(w.dtype))
    return d_h.astype(h_dtype.dtype), jnp.zeros_like(w)  # the weight's cotangent is never used (XLA drops it)


frozen_einsum.defvjp(_frozen_einsum_fwd, _frozen_einsum_bwd)


@jax.custom_vjp
def swiglu(gate_up: jax.Array) -> jax.Array:
    """silu(gate) * up of the fused gate_up projection's output [..., 2F] -> [..., F].

    The backward recomputes the sigmoid from the saved gate_up: autodiff saved five [.., F]
    intermediates per layer, which a training scan stacks over the layers and writes to memory
    (~0.2 s of a SmolLM2 step at 1024 tokens on this CPU)."""
    gate, up = jnp.split(gate_up, 2, axis=-1)
    return jax.nn.silu(gate) * up


def _swiglu_fwd(gate_up):
    return swiglu(gate_up), gate_up


def _swiglu_bwd(gate_up, d_out):
    gate, up = jnp.split(gate_up, 2, axis=-1)
    sig = jax.nn.sigmoid(gate)
    d_gate = d_out * up * sig * (1 + gate * (1 - sig))  # d silu(g)/dg = sig(g) (1 + g (1 - sig(g)))
    return (jnp.concatenate([d_gate, d_out * gate * sig], axis=-1),)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def _attention(q, keys, values, positions, cfg: DecoderConfig):
    """q [B,S,H,hd]; keys/values [B,K,T,hd]; a query at position p sees slots t <= p."""
    b, s, _, hd = q.shape
    q = q.reshape(b, s, cfg.num_kv_heads, cfg.group_size, hd)
    acc = accumulation_dtype(q.dtype)
    scores = jnp.einsum("bskgd,bktd->bkgst", q, keys, preferred_element_type=acc)
    scores = scores * (hd ** -0.5)
    slots = jnp.arange(keys.shape[2], dtype=jnp.int32)
    visible = slots[None, None, :] <= positions[:, :, None]  # [B, S, T]
    scores = jnp.where(visible[:, None, None, :, :], scores, jnp.finfo(acc).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
    out = jnp.einsum("bkgst,bktd->bskgd", probs, values, preferred_element_type=acc)
    return out.reshape(b, s, cfg.num_heads * hd).astype(q.dtype)


def _layer(x, w, cfg: DecoderConfig, cos, sin, attend, state, lora_layer=None, adapters=None, dropout=None):
    """One transformer block. attend(q [B,S,H,hd], k, v [B,S,K,hd], state) -> (out [B,S,H*hd], state)
    is the attention of the caller (cached decode or packed training). With `lora_layer`, each
    adapted projection adds its low-rank delta (models/lora.py); dropout=(rate, key) in training."""
    b, s, _ = x.shape

    def project(name, h, spec):
        y = frozen_einsum(spec, h.dtype, h, w[name])
        if lora_layer is not None and name in lora_layer:
            drop = None if dropout is None else (dropout[0], jax.random.fold_in(dropout[1], _PROJ_INDEX[name]))
            y = y + lora.projection_delta(h, lora_layer[name], adapters, lora.fused_widths(cfg, name), drop,
                                          w[name].dtype)
        return y

    h_q, h_kv, hd = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.head_dim
    h = rms_norm(x, w["attn_norm"], cfg.rms_norm_eps)
    qkv = project("qkv", h, "bsd,de->bse")
    if cfg.qkv_bias:
        qkv = qkv + w["qkv_bias"]
    q = qkv[..., :h_q].reshape(b, s, cfg.num_heads, hd)
    k = qkv[..., h_q:h_q + h_kv].reshape(b, s, cfg.num_kv_heads, hd)
    v = qkv[..., h_q + h_kv:].reshape(b, s, cfg.num_kv_heads, hd)
    if cfg.qk_norm:
        q = rms_norm(q, w["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(k, w["k_norm"], cfg.rms_norm_eps)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    attn, state = attend(q, k, v, state)
    x = x + project("o", attn, "bse,ed->bsd")
    h = rms_norm(x, w["mlp_norm"], cfg.rms_norm_eps)
    return x + project("down", swiglu(project("gate_up", h, "bsd,df->bsf")), "bsf,df->bsd"), state


_PROJ_INDEX = {"qkv": 0, "o": 1, "gate_up": 2, "down": 3}


def output_head(params: Params) -> jax.Array:
    """The vocabulary projection [V, D]: lm_head, or the embedding of a tied model."""
    return params["lm_head"] if "lm_head" in params else params["embed"]


def _lora_layers(adapters, n_layers: int):
    return [None] * n_layers if adapters is None else adapters.layers


def _output_logits(params: Params, cfg: DecoderConfig, x: jax.Array) -> jax.Array:
    x = rms_norm(x, params["final_norm"], cfg.rms_norm_eps)
    return jnp.einsum("bsd,vd->bsv", x, output_head(params), preferred_element_type=accumulation_dtype(x.dtype))


def forward(params: Params, cfg: DecoderConfig, tokens: jax.Array, positions: jax.Array,
            valid: jax.Array, cache: KVCache, logits_index: jax.Array | None = None,
            adapters: "lora.RowAdapters | None" = None):
    """Runs `tokens` [B, S] at `positions` [B, S], writing their K/V into the cache.

    valid [B, S] marks real tokens; padding writes nothing (its slot is out of range and
    dropped). Real tokens of a row must occupy positions lengths[b], lengths[b]+1, ...
    logits_index [B] (optional) picks one position per row to project to the vocabulary, so
    prefill does not pay for [B, S, V] logits. `adapters` (optional) adds LoRA deltas, one
    adapter for all rows or one per row (models/lora.py). Returns (fp32 logits, new cache).
    """
    b, s = tokens.shape
    dtype = params["embed"].dtype
    x = params["embed"][tokens].astype(dtype)
    cos, sin = rope_tables(jnp.asarray(inverse_frequencies(cfg)), positions)
    write_slots = jnp.where(valid, positions, cache.max_len)  # out of range -> dropped
    rows, heads = jnp.arange(b)[:, None, None], jnp.arange(cfg.num_kv_heads)[None, :, None]
    slots = write_slots[:, None, :]
    keys, values = cache.keys, cache.values
    for i, (w, lora_layer) in enumerate(zip(params["layers"], _lora_layers(adapters, len(params["layers"])))):
        def attend(q, k, v, kv, i=i):
            keys, values = kv
            k, v = (t.transpose(0, 2, 1, 3).astype(keys.dtype) for t in (k, v))  # [B, K, S, hd]
            keys = keys.at[i, rows, heads, slots].set(k, mode="drop")
            values = values.at[i, rows, heads, slots].set(v, mode="drop")
            return _attention(q, keys[i], values[i], positions, cfg), (keys, values)

        x, (keys, values) = _layer(x, w, cfg, cos, sin, attend, (keys, values), lora_layer, adapters)
    if logits_index is not None:
        x = x[jnp.arange(b), logits_index][:, None, :]
    logits = _output_logits(params, cfg, x)
    if logits_index is not None:
        logits = logits[:, 0]
    ends = jnp.max(jnp.where(valid, positions + 1, 0), axis=1).astype(jnp.int32)
    new_cache = KVCache(keys=keys, values=values, lengths=jnp.maximum(cache.lengths, ends))
    return logits, new_cache


def packed_hidden(params: Params, cfg: DecoderConfig, tokens: jax.Array, positions: jax.Array,
                  segment_ids: jax.Array, adapters: "lora.RowAdapters | None" = None,
                  dropout: tuple[float, jax.Array] | None = None, remat_layers: bool = False) -> jax.Array:
    """Final hidden states [B, S, D] of packed training rows, no cache.

    Row b holds several examples back to back: segment_ids [B, S] numbers them (0 = padding) and
    positions [B, S] restart at 0 for each, so a token attends only to the earlier tokens of its
    own example, exactly as if that example ran alone. dropout=(rate, key): LoRA input dropout.
    remat_layers: the backward recomputes each layer's forward from its input instead of keeping
    its activations (memory for time: BUILD_NOTES.md, LoRA training speed).

    Activations are fp32 whatever the weights' dtype (as under torch's autocast): with bf16 weights
    only the matmuls read bf16 (frozen_einsum). bf16 activations made XLA:CPU convert the scan's
    whole stacked bf16 residual buffers to fp32 and back at every layer (1.1 s of a 3.7 s SmolLM2
    step), and cost precision for nothing, since the matmuls accumulate in fp32 anyway.
    """
    weights_dtype = jnp.dtype(params["embed"].dtype)
    x = params["embed"][tokens].astype(accumulation_dtype(weights_dtype))
    cos, sin = rope_tables(jnp.asarray(inverse_frequencies(cfg)), positions)
    visible = segment_visibility(segment_ids)

    def attend(q, k, v, state):
        return segment_attention(q, k, v, visible, weights_dtype), state

    # The layers run as one lax.scan over stacked weights (stack_layers; a train step gets them
    # stacked once by the trainer). Without rematerialization: segment_attention keeps O(S)
    # residuals, so the saved activations are the projections' inputs and outputs, ~0.2 GB per
    # layer at 4 x 1024 tokens on SmolLM2 (BUILD_NOTES.md, LoRA training speed).
    stacked = stack_layers(params)["layers"]
    n_layers = jax.tree.leaves(stacked)[0].shape[0]
    lora_stacked = None if adapters is None else jax.tree.map(lambda *a: jnp.stack(a), *adapters.layers)

    def layer(x, xs):
        w, lora_layer, i = xs
        drop = None if dropout is None else (dropout[0], jax.random.fold_in(dropout[1], i))
        return _layer(x, w, cfg, cos, sin, attend, None, lora_layer, adapters, drop)[0], None

    if remat_layers:
        layer = jax.checkpoint(layer)
    x, _ = jax.lax.scan(layer, x, (stacked, lora_stacked, jnp.arange(n_layers)))
    return rms_norm(x, params["final_norm"], cfg.rms_norm_eps)


def stack_layers(params: Params) -> Params:
    """params with `layers` as one pytree of [num_layers, ...] arrays (what a lax.scan over the
    layers reads); already stacked params are returned as they are."""
    if not isinstance(params["layers"], list):
        return params
    return {**params, "layers": jax.tree.map(lambda *a: jnp.stack(a), *params["layers"])}


def append_positions(cache: KVCache, valid: jax.Array) -> jax.Array:
    """Positions for appending the valid tokens of each row right after its current length."""
    return cache.lengths[:, None] + jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1


PREFILL_CHUNK = 512


def prefill_logits(params: Params, cfg: DecoderConfig, tokens: jax.Array, prompt_lengths: jax.Array,
                   cache: KVCache, chunk: int = PREFILL_CHUNK, adapters=None):
    """Right-padded prompts [B, S] with lengths [B] appended to the cache; next-token logits [B, V].

    Long prompts are processed in chunks (a `lax.scan`): each chunk attends to the cache written by
    the earlier ones, so the result is exact, while the [S, T] score matrices stay chunk-sized
    instead of quadratic in the prompt (a 3.6k-token LongLaMP prompt would need ~1 GB per layer).
    """
    b, s = tokens.shape
    n_chunks = -(-s // chunk)
    size = -(-s // n_chunks)
    size = -(-size // 8) * 8
    tokens = jnp.pad(tokens, ((0, 0), (0, n_chunks * size - s)))
    last = prompt_lengths - 1

    def one_chunk(carry, xs):
        cache, logits = carry
        chunk_tokens, start = xs
        valid = (start + jnp.arange(size))[None, :] < prompt_lengths[:, None]
        positions = append_positions(cache, valid)
        index = jnp.clip(last - start, 0, size - 1)
        chunk_logits, cache = forward(params, cfg, chunk_tokens, positions, valid, cache, logits_index=index,
                                      adapters=adapters)
        here = ((last >= start) & (last < start + size))[:, None]
        return (cache, jnp.where(here, chunk_logits, logits)), None

    init_logits = jnp.zeros((b, cfg.vocab_size), jnp.float32)
    xs = (tokens.reshape(b, n_chunks, size).transpose(1, 0, 2), jnp.arange(n_chunks) * size)
    (cache, logits), _ = jax.lax.scan(one_chunk, (cache, init_logits), xs)
    return logits, cache


def decode_step_logits(params: Params, cfg: DecoderConfig, tokens: jax.Array, cache: KVCache, adapters=None):
    """One token per row [B] at each row's own length; returns logits [B, V] and the new cache."""
    positions = cache.lengths[:, None]
    valid = jnp.ones_like(positions, dtype=bool)
    return forward(params, cfg, tokens[:, None], positions, valid, cache,
                   logits_index=jnp.zeros_like(cache.lengths), adapters=adapters)


# Standalone jitted entry points (kernels inline the unjitted functions into their own programs).
prefill = jax.jit(prefill_logits, static_argnames=("cfg",), donate_argnames=("cache",))
decode_step = jax.jit(decode_step_logits, static_argnames=("cfg",), donate_argnames=("cache",))


def cast_params(params: Params, dtype) -> Params:
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)


def param_count(params: Params) -> int:
    return int(sum(np.prod(a.shape) for a in jax.tree.leaves(params)))
