"""Attention of packed training rows, with a hand-written backward pass.

Training rows hold several examples back to back (training/packing.py); `visible[b, s, t]` says
whether query s may attend to key t (same example, t <= s). This is the math of the decoder's
attention, softmax(q k^T / sqrt(hd) masked) v, arranged for a train step on a CPU
(BUILD_NOTES.md, LoRA training speed, has the measurements):

- GQA without copies: the G query heads of one kv head are rows of one matmul, scores laid out
  [B, K, S, G, T], the order in which XLA's dot_general returns them. Autodiff of the einsum in
  `decoder._attention` ("bkgst") made XLA transpose every score and probability matrix.
- Only the log-sum-exp is kept for the backward, not the probabilities (as flash attention
  does): the backward recomputes the scores and forms dS = P * (dP - rowsum(dO * O)) in one pass.
  Residuals are O(S) per layer, so a train step needs no rematerialization to fit.
- Causal blocks: queries go in blocks of QUERY_BLOCK positions and a block only meets the keys
  up to its own end, skipping the upper triangle that the mask would zero anyway (S = 512 in
  blocks of 128: 10/16 of the score entries; a SmolLM2 layer's attention forward + backward
  37 -> 21 ms). A padding position (no visible key) gets the mean of its block's keys' values
  where the plain math takes the mean over the row: no query attends to it and it carries no
  loss, so nothing a train step computes depends on it.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

QUERY_BLOCK = 128  # measured best of 64/128/256/512 at S = 512 and 1024 (SmolLM2 heads)
MAX_BLOCKS = 16  # longer rows use wider blocks, keeping the program's op count bounded


def _acc(dtype):
    return jnp.promote_types(dtype, jnp.float32)


def query_blocks(length: int) -> list[tuple[int, int]]:
    """[start, end) of each query block; a block's keys are [0, end)."""
    width = max(QUERY_BLOCK, -(-length // MAX_BLOCKS))
    return [(start, min(start + width, length)) for start in range(0, length, width)]


def _grouped(x, num_kv_heads: int):
    """[B, S, H, hd] -> [B, K, S, G, hd] (query heads of one kv head side by side)."""
    b, s, h, hd = x.shape
    return x.reshape(b, s, num_kv_heads, h // num_kv_heads, hd).transpose(0, 2, 1, 3, 4)


def _ungroup(out):
    b, kh, s, g, hd = out.shape
    return out.transpose(0, 2, 1, 3, 4).reshape(b, s, kh * g * hd)


def _dot(spec, a, b, dtype):
    """einsum with both operands in `dtype` (bf16 runs on the CPU's bf16 units), accumulated in fp32."""
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=_acc(dtype))


def _masked_scores(qg, k, visible, scale, dtype):
    """Scaled scores [B, K, S, G, T] in the accumulation dtype; invisible keys get the dtype's min,
    exactly as `decoder._attention` masks them (a row with no visible key is uniform, not NaN)."""
    acc = _acc(qg.dtype)
    scores = _dot("bksgd,btkd->bksgt", qg, k, dtype).astype(acc) * scale
    return jnp.where(visible[:, None, :, None, :], scores, jnp.finfo(acc).min)


def _forward(q, k, v, visible, dtype):
    qg = _grouped(q, k.shape[2])
    scale = q.shape[-1] ** -0.5
    outs, peaks, log_totals = [], [], []
    for start, end in query_blocks(q.shape[1]):
        scores = _masked_scores(qg[:, :, start:end], k[:, :end], visible[:, start:end, :end], scale, dtype)
        peak = jnp.max(scores, axis=-1, keepdims=True)
        weights = jnp.exp(scores - peak)
        total = jnp.sum(weights, axis=-1, keepdims=True)
        outs.append(_dot("bksgt,btkd->bksgd", weights / total, v[:, :end], dtype))
        # The log-sum-exp as (peak, log total): their sum would round to the peak in a row with no
        # visible key (peak = the dtype's min), whose probabilities are 1/T, not 1.
        peaks.append(peak)
        log_totals.append(jnp.log(total))
    stats = (jnp.concatenate(peaks, axis=2), jnp.concatenate(log_totals, axis=2))
    return jnp.concatenate(outs, axis=2).astype(q.dtype), stats  # out [B, K, S, G, hd]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def segment_attention(q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array, matmul_dtype=None) -> jax.Array:
    """q [B, S, H, hd]; k, v [B, S, K, hd]; visible [B, S, S] bool, causal (no query sees a later
    key: the blocks rely on it) -> [B, S, H*hd] in q's dtype. matmul_dtype (default q's dtype):
    the matmuls' operand dtype, e.g. bf16 for fp32 activations of a bf16 model; the softmax and
    the residuals stay in q's dtype."""
    return _ungroup(_forward(q, k, v, visible, matmul_dtype or q.dtype)[0])


def _fwd(q, k, v, visible, matmul_dtype):
    out, stats = _forward(q, k, v, visible, matmul_dtype or q.dtype)
    return _ungroup(out), (q, k, v, visible, out, stats)


def _bwd(matmul_dtype, residuals, d_out):
    q, k, v, visible, out, (peak, log_total) = residuals
    b, s, h, hd = q.shape
    kh = k.shape[2]
    acc = _acc(q.dtype)
    dtype = matmul_dtype or q.dtype
    scale = hd ** -0.5
    qg = _grouped(q, kh)
    d_out = _grouped(d_out.reshape(b, s, h, hd), kh)
    row_dot = jnp.sum(d_out.astype(acc) * out.astype(acc), axis=-1, keepdims=True)
    d_qs, d_k, d_v = [], jnp.zeros(k.shape, acc), jnp.zeros(v.shape, acc)
    for start, end in query_blocks(s):
        block_visible = visible[:, start:end, :end]
        probs = jnp.exp(_masked_scores(qg[:, :, start:end], k[:, :end], block_visible, scale, dtype)
                        - peak[:, :, start:end] - log_total[:, :, start:end])
        d_probs = _dot("bksgd,btkd->bksgt", d_out[:, :, start:end], v[:, :end], dtype).astype(acc)
        # Softmax backward. The scores of invisible keys are constants (jnp.where), so no gradient
        # flows through them; that matters in rows with no visible key (padding), where P is 1/T.
        d_scores = jnp.where(block_visible[:, None, :, None, :], probs * (d_probs - row_dot[:, :, start:end]),
                             0)
        d_qs.append(_dot("bksgt,btkd->bksgd", d_scores, k[:, :end], dtype) * scale)
        d_k = d_k.at[:, :end].add(_dot("bksgt,bksgd->btkd", d_scores, qg[:, :, start:end], dtype) * scale)
        d_v = d_v.at[:, :end].add(_dot("bksgt,bksgd->btkd", probs, d_out[:, :, start:end], dtype))
    d_q = _ungroup(jnp.concatenate(d_qs, axis=2)).reshape(q.shape)
    return (d_q.astype(q.dtype), d_k.astype(k.dtype), d_v.astype(v.dtype),
            np.zeros(visible.shape, jax.dtypes.float0))


segment_attention.defvjp(_fwd, _bwd)


def segment_visibility(segment_ids: jax.Array) -> jax.Array:
    """visible [B, S, S]: same example (segment id > 0) and causal."""
    s = segment_ids.shape[1]
    causal = jnp.arange(s)[None, :, None] >= jnp.arange(s)[None, None, :]
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
    return causal & same
