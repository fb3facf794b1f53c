"""The packed-training attention's hand-written backward against autodiff of the plain math."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from costeer_jax.models import packed_attention
from costeer_jax.models.packed_attention import query_blocks, segment_attention, segment_visibility


def reference_attention(q, k, v, visible):
    """softmax(q k^T / sqrt(hd), masked) v per head, the kv heads repeated for GQA."""
    b, s, h, hd = q.shape
    group = h // k.shape[2]
    k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum("bshd,bthd->bhst", q, k) * hd ** -0.5
    scores = jnp.where(visible[:, None], scores, jnp.finfo(scores.dtype).min)
    out = jnp.einsum("bhst,bthd->bshd", jax.nn.softmax(scores, axis=-1), v)
    return out.reshape(b, s, h * hd)


def _inputs(dtype, heads=6, kv_heads=2, s=13, hd=8, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(2, s, n, hd)), dtype) for n in (heads, kv_heads, kv_heads))
    # Row 0: two examples and padding; row 1: one example over the whole row.
    segments = jnp.asarray([[1] * 5 + [2] * (s - 7) + [0] * 2, [1] * s], jnp.int32)
    return q, k, v, segment_visibility(segments)


def test_visibility_is_causal_within_each_example():
    visible = np.asarray(segment_visibility(jnp.asarray([[1, 1, 2, 2, 0]])))[0]
    want = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(visible, want)


def test_query_blocks_cover_the_row_in_order():
    assert query_blocks(512) == [(0, 128), (128, 256), (256, 384), (384, 512)]
    assert query_blocks(300) == [(0, 128), (128, 256), (256, 300)]
    assert query_blocks(40) == [(0, 40)]
    assert len(query_blocks(8192)) == 16 and query_blocks(8192)[-1] == (7680, 8192)


@pytest.mark.parametrize("heads,kv_heads,block", [(6, 2, 128), (4, 4, 4), (3, 1, 5)])
def test_values_and_gradients_equal_autodiff_of_the_plain_math(heads, kv_heads, block, monkeypatch):
    # block 4 and 5 split the 13 positions into causal query blocks (4+4+4+1, 5+5+3).
    monkeypatch.setattr(packed_attention, "QUERY_BLOCK", block)
    q, k, v, visible = _inputs(jnp.float32, heads, kv_heads)
    # Padding rows (no visible key) average the values of their query block's keys, not of the
    # whole row: no query attends to them and they carry no loss, so they are compared as zeros.
    real = jnp.any(visible, axis=-1)[..., None]
    out = segment_attention(q, k, v, visible)
    np.testing.assert_allclose(np.asarray(out * real), np.asarray(reference_attention(q, k, v, visible) * real),
                               atol=2e-6)
    probe = jnp.asarray(np.random.default_rng(3).normal(size=out.shape), jnp.float32) * real
    ours = jax.grad(lambda *a: jnp.sum(segment_attention(*a, visible) * probe), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(lambda *a: jnp.sum(reference_attention(*a, visible) * probe), argnums=(0, 1, 2))(q, k, v)
    for name, a, b in zip("qkv", ours, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, err_msg=f"d{name}")
        assert float(jnp.max(jnp.abs(b))) > 1e-2  # the check sees real gradients


def test_gradients_match_finite_differences_in_fp64(monkeypatch):
    from jax.test_util import check_grads

    monkeypatch.setattr(packed_attention, "QUERY_BLOCK", 3)
    with jax.enable_x64(True):
        q, k, v, visible = _inputs(jnp.float64, s=7)
        real = jnp.any(visible, axis=-1)[..., None]
        check_grads(lambda *a: segment_attention(*a, visible) * real, (q, k, v), order=1, modes=["rev"],
                    eps=1e-6, atol=1e-6, rtol=1e-6)


def test_bf16_inputs_give_bf16_outputs_close_to_fp32():
    q, k, v, visible = _inputs(jnp.float32)
    low = segment_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)), visible)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), np.asarray(segment_attention(q, k, v, visible)),
                               atol=3e-2)
