"""LoRA adapters: identity at init, merge/unmerge, parity with peft, gradients, packing."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from costeer_jax.models import lora
from costeer_jax.models.cache import init_cache
from costeer_jax.models.decoder import forward, packed_hidden
from costeer_jax.models.loading import load_model
from costeer_jax.training import packing
from costeer_jax.training.lora_trainer import TrainConfig, batch_nll


def full_logits(params, cfg, tokens, adapters=None):
    b, s = tokens.shape
    cache = init_cache(cfg, b, s + 8)
    positions = jnp.broadcast_to(jnp.arange(s), (b, s))
    logits, _ = forward(params, cfg, tokens, positions, jnp.ones((b, s), bool), cache, adapters=adapters)
    return logits


def random_adapter(cfg, config: lora.LoraConfig, seed: int, scale: float = 0.05):
    """An adapter with non-zero B (a trained one), so deltas are visible."""
    adapter = lora.init_adapter(jax.random.key(seed), cfg, config)
    leaves, tree = jax.tree.flatten(adapter)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def tiny_models(tiny_checkpoints):
    return {arch: load_model(str(path)) for arch, path in tiny_checkpoints.items()}


TOKENS = jnp.asarray(np.random.default_rng(0).integers(3, 90, size=(2, 11)), jnp.int32)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_fresh_adapter_is_the_base_model_and_merge_equals_unmerged(tiny_models, arch):
    m = tiny_models[arch]
    config = lora.LoraConfig(rank=4, alpha=8.0)
    fresh = lora.init_adapter(jax.random.key(0), m.cfg, config)
    base = full_logits(m.params, m.cfg, TOKENS)
    np.testing.assert_array_equal(np.asarray(full_logits(m.params, m.cfg, TOKENS, lora.single(fresh, config))),
                                  np.asarray(base))
    trained = random_adapter(m.cfg, config, 1)
    adapted = full_logits(m.params, m.cfg, TOKENS, lora.single(trained, config))
    assert float(jnp.max(jnp.abs(adapted - base))) > 1e-3  # the adapter does something
    merged = lora.merge(m.params, trained, config, m.cfg)
    np.testing.assert_allclose(np.asarray(full_logits(merged, m.cfg, TOKENS)), np.asarray(adapted), atol=1e-5)
    restored = lora.unmerge(merged, trained, config, m.cfg)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(m.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # The base params object is untouched by merging (never modified in place).
    np.testing.assert_array_equal(np.asarray(full_logits(m.params, m.cfg, TOKENS)), np.asarray(base))


@pytest.mark.parametrize("arch,targets", [("llama", lora.PEFT_MODULES), ("qwen2", ("q_proj", "v_proj", "down_proj"))])
def test_forward_equals_peft_lora(tiny_checkpoints, tiny_models, arch, targets, tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_checkpoints[arch], dtype=torch.float32)
    peft_model = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.05,
                                                          target_modules=list(targets)))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn_like(p))
    peft_model.eval()  # dropout off
    with torch.no_grad():
        want = peft_model(torch.tensor(np.asarray(TOKENS))).logits.numpy()
    m = tiny_models[arch]
    config = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.05, targets=tuple(targets))
    adapter = lora.from_peft_state(peft_model.state_dict(), m.cfg, config)
    got = np.asarray(full_logits(m.params, m.cfg, TOKENS, lora.single(adapter, config)))
    np.testing.assert_allclose(got, want, atol=2e-5)
    # Round trip through the adapter folder, which peft itself reads back.
    lora.save_adapter(tmp_path / "a", adapter, config, "tiny", m.cfg)
    again, again_config = lora.load_adapter(tmp_path / "a", m.cfg)
    assert again_config == config
    np.testing.assert_allclose(np.asarray(full_logits(m.params, m.cfg, TOKENS, lora.single(again, again_config))),
                               got, atol=1e-6)
    reloaded = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_checkpoints[arch]),
                                              tmp_path / "a").eval()
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(torch.tensor(np.asarray(TOKENS))).logits.numpy(), want, atol=2e-5)


def test_adapter_for_another_model_is_refused(tiny_models, tmp_path):
    llama, qwen3 = tiny_models["llama"], tiny_models["qwen3"]
    config = lora.LoraConfig(rank=2, alpha=4.0)
    lora.save_adapter(tmp_path / "a", lora.init_adapter(jax.random.key(0), llama.cfg, config), config, "x", llama.cfg)
    with pytest.raises(lora.AdapterError, match="trained for a base model"):
        lora.load_adapter(tmp_path / "a", qwen3.cfg)
    (tmp_path / "a" / lora.ADAPTER_WEIGHTS).write_bytes(b"garbage")
    with pytest.raises(lora.AdapterError, match="truncated or corrupt"):
        lora.load_adapter(tmp_path / "a", llama.cfg)
    with pytest.raises(lora.AdapterError, match="no adapter_config.json"):
        lora.load_adapter(tmp_path, llama.cfg)


def _examples():
    rng = np.random.default_rng(1)
    return [packing.TokenizedExample(tuple(rng.integers(3, 90, size=p).tolist()), tuple(rng.integers(3, 90, size=r).tolist()))
            for p, r in [(5, 4), (3, 7), (6, 2), (4, 4)]]


def test_packed_batch_loss_is_the_sum_of_the_examples_losses(tiny_models):
    m = tiny_models["qwen2"]
    config = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.0)
    adapter = random_adapter(m.cfg, config, 2)
    examples = _examples()
    rows = packing.pack_rows(examples, max_len=24)
    assert len(rows) == 2 and max(len(r) for r in rows) >= 2  # several examples share a row
    packed = packing.build_batch(rows, 24).as_dict()
    total, count = batch_nll(adapter, m.params, packed, model_cfg=m.cfg, lora_cfg=config)
    alone = [batch_nll(adapter, m.params, packing.build_batch([[e]], 24).as_dict(), model_cfg=m.cfg, lora_cfg=config)
             for e in examples]
    np.testing.assert_allclose(float(total), sum(float(t) for t, _ in alone), rtol=1e-5)
    assert float(count) == sum(len(e.response) for e in examples) == sum(float(c) for _, c in alone)
    # Hand check of one example's loss against the plain forward's log-softmax.
    e = examples[0]
    seq = jnp.asarray([e.prompt + e.response], jnp.int32)
    log_probs = jax.nn.log_softmax(full_logits(m.params, m.cfg, seq, lora.single(adapter, config))[0], axis=-1)
    want = -sum(float(log_probs[t, seq[0, t + 1]]) for t in range(len(e.prompt) - 1, seq.shape[1] - 1))
    np.testing.assert_allclose(float(alone[0][0]), want, rtol=1e-5)


def test_packed_hidden_matches_the_cached_forward(tiny_models):
    m = tiny_models["llama"]
    e = _examples()[1]
    batch = packing.build_batch([[_examples()[0], e]], 24)
    hidden = packed_hidden(m.params, m.cfg, jnp.asarray(batch.tokens), jnp.asarray(batch.positions),
                           jnp.asarray(batch.segment_ids))
    n0 = _examples()[0].length
    seq = jnp.asarray([e.prompt + e.response], jnp.int32)
    want = full_logits(m.params, m.cfg, seq)[0]
    got = jnp.einsum("sd,vd->sv", hidden[0, n0:n0 + e.length], m.params["lm_head"])
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)


def test_lora_gradients_match_finite_differences(tiny_models):
    from jax.test_util import check_grads

    m = tiny_models["qwen3"]
    config = lora.LoraConfig(rank=2, alpha=4.0, dropout=0.0, targets=("q_proj", "o_proj", "down_proj"))
    adapter = random_adapter(m.cfg, config, 4, scale=0.3)
    batch = packing.build_batch(packing.pack_rows(_examples()[:2], 24), 24).as_dict()
    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), m.params)
        adapter64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), adapter)
        loss = lambda a: batch_nll(a, params64, batch, model_cfg=m.cfg, lora_cfg=config)[0]
        check_grads(loss, (adapter64,), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)


def test_dropout_is_per_module_and_off_at_rate_zero(tiny_models):
    m = tiny_models["llama"]
    config = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.5)
    adapter = random_adapter(m.cfg, config, 5)
    batch = packing.build_batch([_examples()[:2]], 24).as_dict()
    no_drop = batch_nll(adapter, m.params, batch, model_cfg=m.cfg, lora_cfg=config)[0]
    k1 = batch_nll(adapter, m.params, batch, model_cfg=m.cfg, lora_cfg=config, dropout_key=jax.random.key(1))[0]
    k1_again = batch_nll(adapter, m.params, batch, model_cfg=m.cfg, lora_cfg=config, dropout_key=jax.random.key(1))[0]
    k2 = batch_nll(adapter, m.params, batch, model_cfg=m.cfg, lora_cfg=config, dropout_key=jax.random.key(2))[0]
    assert float(k1) == float(k1_again) and float(k1) != float(k2) and float(k1) != float(no_drop)
    off = dataclasses.replace(config, dropout=0.0)
    assert float(batch_nll(adapter, m.params, batch, model_cfg=m.cfg, lora_cfg=off,
                           dropout_key=jax.random.key(1))[0]) == float(no_drop)


def test_stacked_per_row_adapters_equal_each_rows_own_adapter(tiny_models):
    m = tiny_models["qwen2"]
    c1, c2 = lora.LoraConfig(rank=4, alpha=8.0), lora.LoraConfig(rank=2, alpha=2.0)
    a1, a2 = random_adapter(m.cfg, c1, 6), random_adapter(m.cfg, c2, 7)
    layers, scales = lora.stack([(a1, c1), (a2, c2)])
    tokens = jnp.concatenate([TOKENS, TOKENS[:1]])  # rows: base, adapter 1, adapter 0
    mixed = full_logits(m.params, m.cfg, tokens, lora.with_rows(layers, scales, [-1, 1, 0]))
    expected = [full_logits(m.params, m.cfg, TOKENS[:1]),
                full_logits(m.params, m.cfg, TOKENS[1:2], lora.single(a2, c2)),
                full_logits(m.params, m.cfg, TOKENS[:1], lora.single(a1, c1))]
    for row, want in enumerate(expected):
        np.testing.assert_allclose(np.asarray(mixed[row]), np.asarray(want[0]), atol=1e-5)
    # As many adapters as rows: each row gathers its own (the path above runs every adapter on every row).
    gathered = full_logits(m.params, m.cfg, TOKENS, lora.with_rows(layers, scales, [1, -1]))
    np.testing.assert_allclose(np.asarray(gathered[0]), np.asarray(full_logits(m.params, m.cfg, TOKENS[:1],
                                                                                 lora.single(a2, c2))[0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(gathered[1]), np.asarray(full_logits(m.params, m.cfg, TOKENS[1:2])[0]),
                               atol=1e-5)


def test_train_config_refuses_out_of_range_values():
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=0)
    with pytest.raises(lora.AdapterError, match="rank"):
        lora.LoraConfig(rank=0)
    with pytest.raises(lora.AdapterError, match="dropout"):
        lora.LoraConfig(dropout=1.0)
    with pytest.raises(lora.AdapterError, match="subset"):
        lora.LoraConfig(targets=("lm_head",))


@pytest.mark.parametrize("with_dropout", [False, True])
def test_adapter_deltas_backward_equals_autodiff_of_the_plain_math(with_dropout):
    """The hand-written backward of a fused projection's LoRA deltas (two modules: masks, scale,
    the A and B gradients), in fp32 and with bf16 matmul operands."""
    rng = np.random.default_rng(7)
    h, a, b0, b1 = (jnp.asarray(rng.normal(size=shape), jnp.float32) for shape in ((12, 8), (8, 6), (3, 5), (3, 4)))
    keep = jnp.asarray(rng.random((2, 12, 8)) > 0.3) if with_dropout else None
    scale = jnp.float32(0.5 / 0.7)
    probes = [jnp.asarray(rng.normal(size=(12, n)), jnp.float32) for n in (5, 4)]

    def plain(h, a, bs):
        total = 0.0
        for s, (b, probe) in enumerate(zip(bs, probes)):
            x = h * scale if keep is None else jnp.where(keep[s], h * scale, 0)
            total = total + jnp.sum((x @ a[:, 3 * s:3 * s + 3] @ b) * probe)
        return total

    def ours(dtype):
        return lambda h, a, bs: sum(jnp.sum(d * p) for d, p in zip(
            lora.adapter_deltas(jnp.dtype(dtype), h, a, bs, keep, scale), probes))

    want = jax.tree.leaves(jax.grad(plain, argnums=(0, 1, 2))(h, a, (b0, b1)))
    got = jax.tree.leaves(jax.grad(ours(jnp.float32), argnums=(0, 1, 2))(h, a, (b0, b1)))
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)
    low = jax.tree.leaves(jax.grad(ours(jnp.bfloat16), argnums=(0, 1, 2))(h, a, (b0, b1)))
    for g, w in zip(low, want):
        assert g.dtype == jnp.float32  # fp32 gradients for the fp32 adapter, bf16 only inside the matmuls
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=3e-2 * float(jnp.max(jnp.abs(w))))


def test_swiglu_backward_equals_autodiff_of_silu_gate_times_up():
    """The decoder's SwiGLU recomputes its sigmoid in the backward; its gradient must be
    autodiff's of silu(gate) * up, including large |gate| where the sigmoid saturates."""
    from costeer_jax.models.decoder import swiglu

    rng = np.random.default_rng(3)
    gate_up = jnp.asarray(rng.normal(size=(2, 5, 16)) * 4.0, jnp.float32)
    probe = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)

    def plain(x):
        gate, up = jnp.split(x, 2, axis=-1)
        return jnp.sum(jax.nn.silu(gate) * up * probe)

    np.testing.assert_array_equal(np.asarray(swiglu(gate_up)), np.asarray(
        jax.nn.silu(gate_up[..., :8]) * gate_up[..., 8:]))
    np.testing.assert_allclose(np.asarray(jax.grad(lambda x: jnp.sum(swiglu(x) * probe))(gate_up)),
                               np.asarray(jax.grad(plain)(gate_up)), rtol=1e-5, atol=1e-5)


def test_loss_at_target_positions_and_remat_change_nothing(tiny_models):
    """Projecting only the target positions (loss_index) and recomputing layers in the backward
    (remat_layers) give the full computation's loss and adapter gradients."""
    m = tiny_models["qwen2"]
    config = lora.LoraConfig(rank=4, alpha=8.0, dropout=0.0)
    adapter = random_adapter(m.cfg, config, 3)
    batch = packing.build_batch(packing.pack_rows(_examples(), 24), 24)
    capacity = packing.loss_capacity([batch], multiple=8)
    assert capacity < 24 and (packing.loss_positions(batch.weights, capacity) >= 0).sum() == batch.weights.sum()

    def loss(a, arrays, remat=False):
        return batch_nll(a, m.params, arrays, model_cfg=m.cfg, lora_cfg=config, remat_layers=remat)[0]

    full_loss, full_grad = jax.value_and_grad(loss)(adapter, batch.as_dict())
    for arrays, remat in ((batch.as_dict(capacity), False), (batch.as_dict(), True)):
        value, grad = jax.value_and_grad(loss)(adapter, arrays, remat)
        np.testing.assert_allclose(float(value), float(full_loss), rtol=1e-6)
        for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(full_grad)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="more than loss_capacity"):
        packing.loss_positions(batch.weights, 2)


def test_activation_estimate_and_automatic_remat():
    from costeer_jax.models.config import DecoderConfig
    from costeer_jax.training.lora_trainer import activation_bytes, choose_remat

    smol = DecoderConfig(arch="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                         num_heads=9, num_kv_heads=3, head_dim=64, rms_norm_eps=1e-5, rope_theta=1e5,
                         tie_word_embeddings=True, qkv_bias=False, qk_norm=False)
    # Within 15% of XLA's measured temporaries at 4 x 1024 tokens (6.33 GB; BUILD_NOTES.md).
    assert abs(activation_bytes(smol, 4, 1024) / 6.33e9 - 1) < 0.15
    assert choose_remat(TrainConfig(remat_layers=False, rows_per_batch=4096), smol) is False
    assert choose_remat(TrainConfig(rows_per_batch=4096), smol) is True  # ~9 TB of activations: recompute
    assert choose_remat(TrainConfig(rows_per_batch=1, max_len=64), smol) is False
