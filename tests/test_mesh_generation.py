"""On 8 simulated CPU devices, --mesh=data:8 and --mesh=data:2,model:4 decode the same greedy
tokens as one device, for costeer and specsteer (the Generator path the CLI uses, and the CLI)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from conftest import REPO_ROOT

SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    import jax
    from costeer_jax import sharding
    from costeer_jax.data import Example
    from costeer_jax.decoding import methods
    from costeer_jax.decoding.runner import Generator
    from costeer_jax.models.loading import load_model
    assert jax.device_count() == 8
    llm, slm = load_model({llm!r}), load_model({slm!r})
    examples = [Example(f"e{{i}}", f"Name a fruit, number {{i}}.", f"I only eat red food. Name a fruit, number {{i}}.")
                for i in range(8)]
    out = {{}}
    for method in ("costeer", "specsteer"):
        for mesh_spec in (None, "data:8", "data:2,model:4"):
            mesh = sharding.make_mesh(mesh_spec) if mesh_spec else None
            models = {{}}
            for role, m in ((methods.LLM, llm), (methods.SLM, slm)):
                if mesh is not None:
                    m = type(m)(m.name, m.cfg, sharding.shard_params(m.params, sharding.param_shardings(m.params, m.cfg, mesh)),
                                m.tokenizer, m.generation_eos)
                models[role] = m
            gen = Generator(methods.get_method(method, max_T=3), models, max_new_tokens=6, batch_size=8,
                            hyper={{"T": 3}}, mesh=mesh)
            rows, _ = gen.run_batch(examples)
            out[f"{{method}}|{{mesh_spec}}"] = {{r["id"]: r["token_ids"] for r in rows}}
    print(json.dumps(out))
""")


def eight_devices_env():
    return dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")


def test_meshes_give_single_device_tokens(tiny_chat_models):
    script = SCRIPT.format(repo=str(REPO_ROOT), llm=str(tiny_chat_models["llm"]), slm=str(tiny_chat_models["slm"]))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900,
                       env=eight_devices_env())
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for method in ("costeer", "specsteer"):
        single = out[f"{method}|None"]
        assert all(len(v) > 0 for v in single.values())
        assert out[f"{method}|data:8"] == single
        assert out[f"{method}|data:2,model:4"] == single


def test_cli_mesh_flag(tiny_chat_models, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "input": f"Say a word {i}.",
                                           "personalized_input": f"I like cats. Say a word {i}."}) + "\n"
                               for i in range(4)))

    def generate(out, *extra):
        cmd = [sys.executable, str(REPO_ROOT / "experiments" / "generate.py"), "--method=costeer", "--T=2",
               f"--llm={tiny_chat_models['llm']}", f"--slm={tiny_chat_models['slm']}", f"--prompts_file={prompts}",
               f"--output={out}", "--batch_size=4", "--max_new_tokens=5", "--progress=false", *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=eight_devices_env())

    single, meshed = tmp_path / "single.jsonl", tmp_path / "mesh.jsonl"
    assert generate(single).returncode == 0
    r = generate(meshed, "--mesh=data:2,model:2")
    assert r.returncode == 1 or r.returncode == 2  # 4 devices named, 8 present: a clear error
    assert "8" in r.stderr and "mesh" in r.stderr.lower()
    r = generate(meshed, "--mesh=data:2,model:4")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["mesh"] == "data:2,model:4"
    key = lambda p: sorted((json.loads(l)["id"], json.loads(l)["token_ids"]) for l in p.read_text().splitlines())
    assert key(single) == key(meshed)
