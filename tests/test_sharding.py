"""Meshes and shardings: spec parsing and the sharding table in-process, and numerical parity on
8 simulated CPU devices in a subprocess.

XLA_FLAGS must be set before jax initialises, and pytest runs several test files in one process,
so the 8-device checks run this file as a script (`python tests/test_sharding.py worker ...`) with
the flag in its environment, and return their measurements as JSON for the asserts here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

THIS_FILE = Path(__file__).resolve()
MESHES = ("data:8", "data:2,model:4")
DECODE_MESHES = ("data:2,model:4",)  # both axes at once; each decode compile costs ~10-20 s here


# ---------------------------------------------------------------------------------------------
# In-process: no devices needed beyond the default one.

def test_parse_mesh_spec_fills_missing_axes_and_rejects_bad_values():
    from costeer_jax.sharding import MeshSpecError, parse_mesh_spec

    assert parse_mesh_spec("data:8") == {"data": 8, "model": 1}
    assert parse_mesh_spec(" model:4 , data:2 ") == {"data": 2, "model": 4}
    assert parse_mesh_spec("data:-1,model:2") == {"data": -1, "model": 2}
    for bad, needle in [("data", "AXIS:SIZE"), ("batch:2", "AXIS:SIZE"), ("data:2,data:4", "twice"),
                        ("data:x", "not an integer"), ("data:0", "positive"), ("", "empty"),
                        ("data:-1,model:-1", "at most one")]:
        with pytest.raises(MeshSpecError, match=needle):
            parse_mesh_spec(bad)


def test_make_mesh_checks_the_device_count_and_names_the_fix():
    import jax

    from costeer_jax.sharding import MeshSpecError, make_mesh

    n = len(jax.local_devices())
    mesh = make_mesh(f"data:{n}")
    assert dict(mesh.shape) == {"data": n, "model": 1}
    assert make_mesh("data:-1").shape["data"] == n
    with pytest.raises(MeshSpecError, match=f"uses {n * 4} devices but {n} are visible.*--mesh=data:{n}"):
        make_mesh(f"data:{n * 2},model:2")


def _abstract_params(cfg):
    import jax
    import jax.numpy as jnp

    L, D, H, K, hd, F, V = (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
                            cfg.head_dim, cfg.intermediate_size, cfg.vocab_size)
    s = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)
    layer = {"attn_norm": s(D), "qkv": s(D, (H + 2 * K) * hd), "qkv_bias": s((H + 2 * K) * hd),
             "o": s(H * hd, D), "mlp_norm": s(D), "gate_up": s(D, 2 * F), "down": s(D, F)}
    params = {"embed": s(V, D), "final_norm": s(D), "layers": [dict(layer) for _ in range(L)]}
    if not cfg.tie_word_embeddings:
        params["lm_head"] = s(V, D)
    return params


def _cfg(**overrides):
    from costeer_jax.models.config import DecoderConfig

    base = dict(arch="qwen2", vocab_size=1024, hidden_size=64, intermediate_size=96, num_layers=2,
                num_heads=8, num_kv_heads=4, head_dim=8, rms_norm_eps=1e-6, rope_theta=1e4,
                tie_word_embeddings=False, qkv_bias=True, qk_norm=False)
    return DecoderConfig(**{**base, **overrides})


def test_param_specs_follow_the_tensor_parallel_table():
    from jax.sharding import PartitionSpec as P

    from costeer_jax.sharding import param_partition_specs

    cfg = _cfg()
    specs, notes = param_partition_specs(_abstract_params(cfg), cfg, {"data": 2, "model": 4})
    assert notes == []
    assert len(specs["layers"]) == cfg.num_layers
    for layers in specs["layers"]:
        assert layers["qkv"] == P(None, "model")  # column split
        assert layers["qkv_bias"] == P("model")
        assert layers["gate_up"] == P(None, "model")
        assert layers["o"] == P("model", None)  # row split
        assert layers["down"] == P(None, "model")  # [D, F]: split along the mlp width
        assert layers["attn_norm"] == P(None)
    assert specs["lm_head"] == P("model", None)  # vocab split output head
    assert specs["embed"] == P(None, None)  # untied input table: gathered from, kept whole
    tied = _cfg(tie_word_embeddings=True)
    tied_specs, _ = param_partition_specs(_abstract_params(tied), tied, {"data": 2, "model": 4})
    assert tied_specs["embed"] == P("model", None)  # also the output head


def test_indivisible_units_fall_back_to_replication_with_a_note():
    from jax.sharding import PartitionSpec as P

    from costeer_jax.sharding import cache_partition_specs, param_partition_specs

    cfg = _cfg(num_heads=6, num_kv_heads=2, vocab_size=1000, intermediate_size=100)
    specs, notes = param_partition_specs(_abstract_params(cfg), cfg, {"data": 1, "model": 4})
    assert specs["layers"][1]["o"] == P(None, None)  # 6 heads on 4 shards
    assert specs["layers"][1]["qkv"] == P(None, "model")  # (6+4)*8=80 columns still split
    assert specs["lm_head"] == P("model", None)  # 1000 rows split in 4
    assert specs["layers"][1]["gate_up"] == P(None, "model")  # 100 columns split in 4
    text = "\n".join(notes)
    assert "'heads' replicated: 6 query heads" in text and "2, 3, 6" in text
    cache = cache_partition_specs(cfg, {"data": 2, "model": 4}, batch_size=8)
    assert cache.keys == P(None, "data", None, None, None)  # 2 kv heads do not split in 4
    assert cache.lengths == P("data")
    cache = cache_partition_specs(_cfg(), {"data": 2, "model": 4}, batch_size=8)
    assert cache.keys == P(None, "data", "model", None, None)


def test_batch_that_does_not_split_over_data_is_an_error_naming_the_fix():
    from costeer_jax.sharding import BatchShardingError, check_batch_divisible

    mesh = types.SimpleNamespace(shape={"data": 4, "model": 2})
    check_batch_divisible(8, mesh)
    with pytest.raises(BatchShardingError, match="multiple of 4 \\(e.g. 8\\)"):
        check_batch_divisible(6, mesh)


# ---------------------------------------------------------------------------------------------
# 8 simulated devices, in a subprocess.

@pytest.fixture(scope="module")
def eight_device_results(tiny_checkpoints, tmp_path_factory):
    from conftest import build_tiny_checkpoint

    # 8 query / 4 kv heads: every tensor-parallel split applies on model:4 (the stock tiny configs
    # have 2 or 1 kv heads, which exercise the replication fallback instead).
    wide = build_tiny_checkpoint("qwen2", tmp_path_factory.mktemp("wide") / "qwen2_8h",
                                 num_attention_heads=8, num_key_value_heads=4)
    paths = {"qwen2_8h": str(wide), "qwen3": str(tiny_checkpoints["qwen3"]),
             "llama": str(tiny_checkpoints["llama"])}
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, str(THIS_FILE), "worker", json.dumps(paths)], env=env,
                          capture_output=True, text=True, timeout=600, cwd=THIS_FILE.parents[1])
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_sharded_forward_logits_equal_single_device(eight_device_results):
    forward = eight_device_results["forward"]
    assert set(forward) == {"qwen2_8h", "qwen3"}
    for arch, by_mesh in forward.items():
        assert by_mesh["reference_logit_std"] > 0.05  # a real signal, not all-zero logits
        for mesh in set(by_mesh) - {"reference_logit_std"}:
            r = by_mesh[mesh]
            assert r["devices_used"] == 8
            assert r["max_abs_logit_diff"] < 1e-5, (arch, mesh, r)
            assert r["max_abs_cache_diff"] < 1e-5, (arch, mesh, r)
            assert r["lengths_equal"], (arch, mesh)


def test_shardings_really_split_the_arrays(eight_device_results):
    wide = eight_device_results["forward"]["qwen2_8h"]["data:2,model:4"]
    full_columns = (8 + 2 * 4) * 4
    assert wide["qkv_local_shape"][-1] == full_columns // 4  # each device holds a quarter
    assert wide["gate_up_local_shape"][-1] == 2 * 48 // 4
    assert wide["o_local_shape"][0] == 8 * 4 // 4
    assert wide["cache_keys_spec"] == [None, "data", "model", None, None]
    assert wide["cache_local_shape"] == [2, 8 // 2, 4 // 4, 16, 4]
    assert wide["notes"] == []
    data8 = eight_device_results["forward"]["qwen2_8h"]["data:8"]
    assert data8["cache_local_shape"][1] == 1  # one of 8 rows per device
    qwen3 = eight_device_results["forward"]["qwen3"]["data:2,model:4"]  # 1 kv head
    assert any("'kv_heads' replicated: 1 kv heads" in n for n in qwen3["notes"])
    assert qwen3["cache_keys_spec"] == [None, "data", None, None, None]


def test_sharded_greedy_decode_gives_identical_tokens(eight_device_results):
    decode = eight_device_results["decode"]
    reference = decode["single_device"]
    assert len(reference["tokens"]) == 8 and min(reference["num_tokens"]) > 0
    assert len({tuple(row) for row in reference["tokens"]}) > 1  # rows differ: a real batch
    for mesh in DECODE_MESHES:
        assert decode[mesh]["tokens"] == reference["tokens"], mesh
        assert decode[mesh]["num_tokens"] == reference["num_tokens"], mesh
        assert decode[mesh]["output_spec"] == ["data", None]


def test_constrain_cache_pins_a_cache_built_inside_jit(eight_device_results):
    pinned = eight_device_results["constrain_cache"]
    assert pinned["with_mesh"] == [None, "data", "model", None, None]
    assert pinned["without_mesh"] == "single-device"


# ---------------------------------------------------------------------------------------------
# The subprocess side.

def _worker(paths: dict) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from costeer_jax import sharding
    from costeer_jax.decoding import engine, runner
    from costeer_jax.decoding.methods import DEFAULT_HYPER, get_method, hyper_arrays
    from costeer_jax.models import decoder, loading
    from costeer_jax.models.cache import init_cache

    assert jax.device_count() == 8, "XLA_FLAGS did not reach the worker"

    def spec_of(array) -> list:  # one entry per dim (PartitionSpec drops trailing Nones)
        spec = tuple(array.sharding.spec)
        return list(spec) + [None] * (array.ndim - len(spec))
    models = {name: loading.load_model(path) for name, path in paths.items()}
    forward = jax.jit(decoder.forward, static_argnames=("cfg",))
    B, S, T = 8, 12, 16
    rng = np.random.default_rng(0)
    out: dict = {"forward": {}}

    forward_meshes = {"qwen2_8h": MESHES, "qwen3": ("data:2,model:4",)}  # llama: in the decode below
    for name, meshes in forward_meshes.items():
        m = models[name]
        tokens = jnp.asarray(rng.integers(0, m.cfg.vocab_size, (B, S)), jnp.int32)
        lengths = jnp.asarray(rng.integers(3, S + 1, (B,)), jnp.int32)
        valid = jnp.arange(S)[None] < lengths[:, None]
        positions = decoder.append_positions(init_cache(m.cfg, B, T), valid)
        ref_logits, ref_cache = forward(m.params, m.cfg, tokens, positions, valid, init_cache(m.cfg, B, T))
        res = {"reference_logit_std": float(jnp.std(ref_logits))}
        for spec in meshes:
            mesh = sharding.make_mesh(spec)
            params = sharding.shard_params(m.params, sharding.param_shardings(m.params, m.cfg, mesh))
            cache = jax.device_put(init_cache(m.cfg, B, T), sharding.cache_sharding(m.cfg, mesh, B))
            args = sharding.shard_batch((tokens, positions, valid), mesh, B)
            logits, new_cache = forward(params, m.cfg, *args, cache)
            res[spec] = {
                "devices_used": len(logits.sharding.device_set),
                "max_abs_logit_diff": float(jnp.max(jnp.abs(logits - ref_logits))),
                "max_abs_cache_diff": float(jnp.max(jnp.abs(new_cache.keys - ref_cache.keys))),
                "lengths_equal": bool(jnp.all(new_cache.lengths == ref_cache.lengths)),
                "qkv_local_shape": list(params["layers"][0]["qkv"].addressable_shards[0].data.shape),
                "gate_up_local_shape": list(params["layers"][0]["gate_up"].addressable_shards[0].data.shape),
                "o_local_shape": list(params["layers"][0]["o"].addressable_shards[0].data.shape),
                "cache_keys_spec": spec_of(cache.keys),
                "cache_local_shape": list(cache.keys.addressable_shards[0].data.shape),
                "notes": sharding.sharding_notes(m.params, m.cfg, mesh, B),
            }
        out["forward"][name] = res

    # Greedy CoSteer through the jitted token loop: two weight groups (LLM and SLM), FTRL policy.
    method = get_method("costeer", max_T=3)
    group_models = {"llm": models["llama"], "slm": models["qwen3"]}
    layout, in_groups = runner.build_layout(method, group_models)
    prompts = {}
    for stream in layout.streams:
        lengths = rng.integers(4, 17, (B,))
        tokens = rng.integers(1, 96, (B, 16))
        tokens[np.arange(16)[None] >= lengths[:, None]] = 0
        prompts[stream] = engine.Prompt(jnp.asarray(tokens, jnp.int32), jnp.asarray(lengths, jnp.int32))
    hyper = hyper_arrays(method, {**{k: DEFAULT_HYPER[k] for k in method.hyper_keys}, "T": 3}, B)
    row_keys = jnp.stack([runner.row_key(0, str(i)) for i in range(B)])
    static = dict(cfgs=tuple(m.cfg for m in in_groups), layout=layout, policy=method.policy, gate=None,
                  max_new_tokens=8, vocab_limit=96, greedy=True, cache_lens=(32,) * len(layout.groups))

    def run(params, batch):
        prompts_, hyper_, keys_ = batch
        return engine.decode(params, prompts_, method.init_state(B), hyper_, keys_,
                             jnp.asarray([95], jnp.int32), jnp.ones((B,)), jnp.ones((B,)), **static)

    reference = run(tuple(m.params for m in in_groups), (prompts, hyper, row_keys))
    out["decode"] = {"single_device": {"tokens": np.asarray(reference.tokens).tolist(),
                                       "num_tokens": np.asarray(reference.num_tokens).tolist()}}
    for spec in DECODE_MESHES:
        mesh = sharding.make_mesh(spec)
        params = tuple(sharding.shard_params(m.params, sharding.param_shardings(m.params, m.cfg, mesh))
                       for m in in_groups)
        batch = sharding.shard_batch((prompts, hyper, row_keys), mesh, B)
        with jax.set_mesh(mesh):
            result = run(params, batch)
        out["decode"][spec] = {"tokens": np.asarray(result.tokens).tolist(),
                               "num_tokens": np.asarray(result.num_tokens).tolist(),
                               "output_spec": spec_of(result.tokens)}

    # constrain_cache: a cache allocated inside a jitted program follows the ambient mesh.
    wide = models["qwen2_8h"]
    mesh = sharding.make_mesh("data:2,model:4")

    @jax.jit
    def prefill_fresh_cache(params, tokens, lengths):
        cache = sharding.constrain_cache(init_cache(wide.cfg, B, T), wide.cfg)
        return decoder.prefill_logits(params, wide.cfg, tokens, lengths, cache)[1]

    tokens, lengths = jnp.ones((B, S), jnp.int32), jnp.full((B,), S, jnp.int32)
    with jax.set_mesh(mesh):
        pinned = prefill_fresh_cache(wide.params, tokens, lengths)
    unpinned = prefill_fresh_cache(wide.params, tokens, lengths)
    out["constrain_cache"] = {
        "with_mesh": spec_of(pinned.keys),
        "without_mesh": "single-device" if len(unpinned.keys.sharding.device_set) == 1 else "sharded"}
    return out


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "worker":
    import time

    started = time.perf_counter()
    results = _worker(json.loads(sys.argv[2]))
    print(f"8-device worker took {time.perf_counter() - started:.1f}s", file=sys.stderr)
    print(json.dumps(results))
