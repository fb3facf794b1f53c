"""Our decoder vs transformers' PyTorch models on tiny random checkpoints (fp32, 1e-4)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from costeer_jax.models import cache as kv
from costeer_jax.models import decoder, loading

torch = pytest.importorskip("torch")
ATOL = 1e-4
ARCHS = ["llama", "qwen2", "qwen3"]


def hf_model(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def prompts(vocab, lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=n).tolist() for n in lengths]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("padding", ["right", "left"])
def test_full_sequence_logits_padded_batch(tiny_checkpoints, arch, padding):
    m = loading.load_model(str(tiny_checkpoints[arch]))
    ref = hf_model(tiny_checkpoints[arch])
    rows = prompts(m.cfg.vocab_size, [7, 3, 11])
    width = 12
    tokens = np.zeros((len(rows), width), np.int32)
    valid = np.zeros((len(rows), width), bool)
    for b, r in enumerate(rows):
        sl = slice(0, len(r)) if padding == "right" else slice(width - len(r), width)
        tokens[b, sl], valid[b, sl] = r, True
    cache = kv.init_cache(m.cfg, len(rows), 16)
    positions = decoder.append_positions(cache, jnp.asarray(valid))
    logits, cache = decoder.forward(m.params, m.cfg, jnp.asarray(tokens), positions, jnp.asarray(valid), cache)
    logits = np.asarray(logits)
    np.testing.assert_array_equal(np.asarray(cache.lengths), [len(r) for r in rows])
    for b, r in enumerate(rows):
        expected = hf_logits(ref, r)
        np.testing.assert_allclose(logits[b][valid[b]], expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_cached_decode_matches_full_forward(tiny_checkpoints, arch):
    """Prefill rows of different lengths, then decode token by token at per-row positions."""
    m = loading.load_model(str(tiny_checkpoints[arch]))
    ref = hf_model(tiny_checkpoints[arch])
    rows = prompts(m.cfg.vocab_size, [5, 2, 9], seed=1)
    continuation = prompts(m.cfg.vocab_size, [6, 6, 6], seed=2)
    width = max(map(len, rows))
    tokens = np.zeros((len(rows), width), np.int32)
    for b, r in enumerate(rows):
        tokens[b, :len(r)] = r
    cache = kv.init_cache(m.cfg, len(rows), 32)
    logits, cache = decoder.prefill(m.params, m.cfg, jnp.asarray(tokens),
                                    jnp.asarray([len(r) for r in rows], jnp.int32), cache)
    steps = [np.asarray(logits)]
    for t in range(6):
        step_tokens = jnp.asarray([c[t] for c in continuation], jnp.int32)
        logits, cache = decoder.decode_step(m.params, m.cfg, step_tokens, cache)
        steps.append(np.asarray(logits))
    for b, r in enumerate(rows):
        full = hf_logits(ref, r + continuation[b])
        for t, step in enumerate(steps):
            np.testing.assert_allclose(step[b], full[len(r) - 1 + t], atol=ATOL, rtol=0)


def test_bf16_params_stay_close(tiny_checkpoints):
    m = loading.load_model(str(tiny_checkpoints["qwen2"]), dtype="bfloat16")
    assert m.params["layers"][0]["qkv"].dtype == jnp.bfloat16
    ref = hf_model(tiny_checkpoints["qwen2"])
    ids = prompts(m.cfg.vocab_size, [8])[0]
    cache = kv.init_cache(m.cfg, 1, 16, jnp.bfloat16)
    logits, _ = decoder.prefill(m.params, m.cfg, jnp.asarray([ids], jnp.int32), jnp.asarray([8], jnp.int32), cache)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(logits)[0], hf_logits(ref, ids)[-1], atol=0.1)


def test_sharded_safetensors_and_missing_tensor(tiny_checkpoints, tmp_path):
    """A checkpoint split over files with an index loads the same; a dropped tensor is named."""
    import json
    from safetensors.numpy import load_file, save_file

    src = tiny_checkpoints["qwen3"]
    tensors = load_file(str(src / "model.safetensors"))
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    out = tmp_path / "sharded"
    out.mkdir()
    (out / "config.json").write_text((src / "config.json").read_text())
    for f, keys in halves.items():
        save_file({k: tensors[k] for k in keys}, str(out / f))
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: f for f, keys in halves.items() for k in keys}}))
    for extra in src.glob("*.json"):
        if extra.name not in ("config.json",):
            (out / extra.name).write_text(extra.read_text())
    a = loading.load_safetensors_params(src, loading.load_config(loading.resolve_model(str(src))), loading.device_param(jnp.float32))
    b = loading.load_safetensors_params(out, loading.load_config(loading.resolve_model(str(out))), loading.device_param(jnp.float32))
    for x, y in zip(jax_leaves(a), jax_leaves(b)):
        np.testing.assert_array_equal(x, y)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((src / "config.json").read_text())
    save_file({k: v for k, v in tensors.items() if "layers.1.mlp.down_proj" not in k}, str(broken / "model.safetensors"))
    with pytest.raises(loading.ModelLoadError, match="layers.1.mlp.down_proj"):
        loading.load_safetensors_params(broken, loading.load_config(loading.resolve_model(str(broken))), loading.device_param(jnp.float32))


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_clear_errors(tmp_path):
    with pytest.raises(loading.ModelLoadError, match="does not exist"):
        loading.resolve_model(str(tmp_path / "nope"))
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    from costeer_jax.models.config import UnsupportedArchitectureError

    with pytest.raises(UnsupportedArchitectureError, match="gpt2"):
        loading.load_config(loading.resolve_model(str(tmp_path)))


def test_chunked_prefill_equals_one_pass(tiny_checkpoints):
    """Prompts longer than the chunk are prefilled chunk by chunk with the same logits and cache."""
    m = loading.load_model(str(tiny_checkpoints["qwen3"]))
    rows = prompts(m.cfg.vocab_size, [37, 5, 64], seed=3)
    tokens = np.zeros((3, 64), np.int32)
    for b, r in enumerate(rows):
        tokens[b, :len(r)] = r
    lengths = jnp.asarray([len(r) for r in rows], jnp.int32)
    results = []
    for chunk in (512, 16):
        cache = kv.init_cache(m.cfg, 3, 80)
        logits, cache = decoder.prefill_logits(m.params, m.cfg, jnp.asarray(tokens), lengths, cache, chunk=chunk)
        step, cache = decoder.decode_step_logits(m.params, m.cfg, jnp.asarray([1, 2, 3], jnp.int32), cache)
        results.append((np.asarray(logits), np.asarray(step), np.asarray(cache.lengths)))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-5)
    np.testing.assert_array_equal(results[0][2], [38, 6, 65])
    np.testing.assert_array_equal(results[1][2], [38, 6, 65])


# Measured max |difference| on the chat prompt below: 9.7e-5 (SmolLM2), 8.5e-5 (Qwen 0.5B), 7.6e-5
# (Qwen 1.5B) (BUILD_NOTES.md, "Real checkpoints"); the bounds leave ~3x headroom for BLAS
# summation order on other CPUs.
REAL_MODEL_ATOL = {"smollm2-135m-instruct": 3e-4, "qwen2.5-coder-0.5b-instruct": 3e-4,
                   "qwen2.5-coder-1.5b-instruct": 3e-4}


@pytest.mark.slow
@pytest.mark.parametrize("alias", [
    pytest.param("smollm2-135m-instruct", marks=pytest.mark.smoke),
    pytest.param("qwen2.5-coder-0.5b-instruct", marks=pytest.mark.smoke),
    "qwen2.5-coder-1.5b-instruct"])
def test_real_gguf_logits_match_transformers_gguf_load(alias):
    """A registered GGUF file, read by our torch-free loader (Llama q/k rows un-permuted) and
    mapped from the params cache, against transformers' own GGUF load of the same file: every
    position of a chat prompt."""
    from conftest import real_model_available

    if not real_model_available(alias):
        pytest.skip(f"{alias} not installed (make venv)")
    from transformers import AutoModelForCausalLM

    from costeer_jax.models.chat import chat_prompt_ids
    from costeer_jax.models.params_cache import load_model_cached

    m = load_model_cached(alias)
    gguf = loading.resolve_model(alias)
    ref = AutoModelForCausalLM.from_pretrained(gguf.directory, gguf_file=gguf.gguf_file, dtype=torch.float32).eval()
    ids = chat_prompt_ids(m.tokenizer, "Suggest a weekend plan for a student who loves rock climbing.")
    valid = jnp.ones((1, len(ids)), bool)
    cache = kv.init_cache(m.cfg, 1, len(ids))
    logits, _ = decoder.forward(m.params, m.cfg, jnp.asarray([ids], jnp.int32),
                                decoder.append_positions(cache, valid), valid, cache)
    ours = np.asarray(logits)[0, :, :ref.config.vocab_size]
    expected = hf_logits(ref, ids)
    del ref
    assert np.abs(expected).max() > 10  # real, peaked logits, not a degenerate model
    difference = float(np.abs(ours - expected).max())
    print(f"{alias}: {len(ids)} positions, max |ours - transformers| = {difference:.2e}")
    assert difference <= REAL_MODEL_ATOL[alias]
    np.testing.assert_array_equal(ours.argmax(-1), expected.argmax(-1))


@pytest.mark.parametrize("arch", ARCHS)
def test_random_params_have_the_loaders_layout(tiny_checkpoints, arch):
    """models/init.py (benchmarks at shapes no checkpoint has) builds the very pytree the loader
    does: same leaves, shapes and dtypes, and a forward that runs."""
    import jax

    from costeer_jax.models.init import random_params

    m = loading.load_model(str(tiny_checkpoints[arch]))
    params = random_params(m.cfg, jax.random.key(0), dtype=jnp.bfloat16)
    spec = lambda tree: jax.tree.map(lambda x: x.shape, tree)
    assert spec(params) == spec(m.params)
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
    valid = jnp.ones((1, 5), bool)
    cache = kv.init_cache(m.cfg, 1, 8, jnp.bfloat16)
    logits, _ = decoder.forward(params, m.cfg, jnp.arange(5)[None], decoder.append_positions(cache, valid), valid, cache)
    assert logits.shape == (1, 5, m.cfg.vocab_size) and bool(jnp.all(jnp.isfinite(logits)))
