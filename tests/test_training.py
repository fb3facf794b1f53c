"""The LoRA training loop: loss falls, kill-and-resume ends with the same adapter, data builders,
and the train_lora -> generate --method=sft path through the CLIs."""
from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from costeer_jax.data import Example
from costeer_jax.models import lora
from costeer_jax.models.loading import load_model
from costeer_jax.training import packing, sft_data
from costeer_jax.training.lora_trainer import TrainConfig, train

from conftest import REPO_ROOT, SHARED


def synthetic_examples(n, seed):
    """A learnable task: every prompt gets the same answer."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        prompt = tuple(rng.integers(3, 90, size=int(rng.integers(4, 9))).tolist())
        out.append(packing.TokenizedExample(prompt, (7, 8, 9, 10, 11)))
    return out


CONFIG = TrainConfig(lora=lora.LoraConfig(rank=4, alpha=8.0, dropout=0.1), learning_rate=3e-2, epochs=3,
                     rows_per_batch=2, max_len=32, save_every=2, eval_every=3, warmup_ratio=0.1)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoints):
    return load_model(str(tiny_checkpoints["qwen2"]))


def test_kill_and_resume_gives_the_uninterrupted_adapter(tiny, tmp_path):
    train_set, eval_set = synthetic_examples(24, 0), synthetic_examples(6, 1)
    whole = train(tiny.params, tiny.cfg, train_set, eval_set, CONFIG, tmp_path / "whole", base_model_name="tiny",
                  progress=False)
    assert whole.steps > 5 and whole.final_eval_loss < whole.first_eval_loss - 0.2  # it learns
    killed = train(tiny.params, tiny.cfg, train_set, eval_set, CONFIG, tmp_path / "killed", base_model_name="tiny",
                   progress=False, stop_after=5)  # a kill after step 5 (step 4's checkpoint is not the last)
    assert killed.steps == 5 and not (tmp_path / "killed" / "adapter").exists()
    resumed = train(tiny.params, tiny.cfg, train_set, eval_set, CONFIG, tmp_path / "killed", base_model_name="tiny",
                    progress=False)
    assert resumed.resumed_from == 5 and resumed.steps == whole.steps
    for a, b in zip(jax.tree.leaves(whole.adapter), jax.tree.leaves(resumed.adapter)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=0)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, whole.steps + 1))  # no step logged twice or lost
    saved, saved_config = lora.load_adapter(tmp_path / "killed" / "adapter", tiny.cfg)
    assert saved_config == CONFIG.lora
    for a, b in zip(jax.tree.leaves(saved), jax.tree.leaves(resumed.adapter)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7)
    assert (tmp_path / "killed" / "loss_curve.png").stat().st_size > 1000
    assert json.loads((tmp_path / "killed" / "training_config.json").read_text())["train"]["lora"]["rank"] == 4
    assert (tmp_path / "killed" / "adapter" / "training_config.json").exists()


def test_data_parallel_training_equals_one_device(tiny_chat_models, tmp_path):
    import os

    prompts = tmp_path / "rows.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "input": f"Q{i}?", "personalized_input": f"I like {i}. Q{i}?",
                                           "output": f"Answer {i}."}) + "\n" for i in range(12)))
    adapters = []
    for name, mesh in (("one", []), ("two", ["--mesh=data:2"])):
        cmd = [sys.executable, str(REPO_ROOT / "experiments" / "train_lora.py"), f"--model={tiny_chat_models['slm']}",
               f"--prompts_file={prompts}", "--exclude_first=0", "--num_samples=12", "--held_out_fraction=0",
               "--epochs=1", "--rank=2", "--alpha=4", "--dropout=0", "--rows_per_batch=2", "--max_len=64",
               "--learning_rate=1e-2", f"--output_dir={tmp_path / name}", "--progress=false", *mesh]
        env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        adapters.append(lora.load_adapter(tmp_path / name / "adapter", load_model(str(tiny_chat_models["slm"])).cfg)[0])
    for a, b in zip(jax.tree.leaves(adapters[0]), jax.tree.leaves(adapters[1])):
        assert float(np.max(np.abs(np.asarray(a)))) > 0
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_bf16_compute_trains_with_fp32_adapter_masters(tiny, tmp_path):
    from costeer_jax.models.decoder import cast_params
    from costeer_jax.training.lora_trainer import batch_nll

    config = TrainConfig(lora=lora.LoraConfig(rank=4, alpha=8.0, dropout=0.0), learning_rate=3e-2, epochs=1,
                         rows_per_batch=2, max_len=32)
    bf16 = cast_params(tiny.params, "bfloat16")
    result = train(bf16, tiny.cfg, synthetic_examples(12, 3), synthetic_examples(4, 4), config, tmp_path,
                   base_model_name="t", progress=False)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(result.adapter))
    assert result.final_eval_loss < result.first_eval_loss
    batch = packing.build_batch([synthetic_examples(2, 5)], 32).as_dict()
    low = batch_nll(result.adapter, bf16, batch, model_cfg=tiny.cfg, lora_cfg=config.lora)[0]
    full = batch_nll(result.adapter, tiny.params, batch, model_cfg=tiny.cfg, lora_cfg=config.lora)[0]
    assert abs(float(low) - float(full)) < 0.03 * abs(float(full))


def test_packing_keeps_examples_whole_and_marks_only_response_targets():
    examples = [packing.TokenizedExample((5, 6, 7), (8, 9)), packing.TokenizedExample((10, 11), (12,))]
    batch = packing.build_batch(packing.pack_rows(examples, 16), 16)
    assert batch.tokens[0, :8].tolist() == [5, 6, 7, 8, 9, 10, 11, 12]
    assert batch.positions[0, :8].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert batch.segment_ids[0, :9].tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 0]
    # Position 2 (token 7) predicts 8, position 3 predicts 9; position 6 (token 11) predicts 12.
    assert np.nonzero(batch.weights[0])[0].tolist() == [2, 3, 6]
    assert batch.targets[0, [2, 3, 6]].tolist() == [8, 9, 12]
    assert packing.truncate(packing.TokenizedExample((1,) * 10, (2,) * 10), 12).response == (2, 2)
    assert packing.truncate(packing.TokenizedExample((1,) * 12, (2,)), 12) is None


def test_costeer_sample_excludes_evaluation_rows_and_is_seeded():
    examples = [Example(str(i), f"q{i}", f"ctx q{i}", reference=f"r{i}") for i in range(30)]
    rows = sft_data.costeer_sft_rows(examples, 10, seed=3, exclude_ids=[str(i) for i in range(24)])
    assert {r.id for r in rows} == {str(i) for i in range(24, 30)}  # capped by what is left
    a = sft_data.costeer_sft_rows(examples, 5, seed=1)
    assert a == sft_data.costeer_sft_rows(examples, 5, seed=1) != sft_data.costeer_sft_rows(examples, 5, seed=2)
    assert all(r.prompt == f"ctx q{r.id}" and r.response == f"r{r.id}" for r in a)
    with pytest.raises(ValueError, match="no rows with references"):
        sft_data.costeer_sft_rows([Example("x", "q", "p")], 3, 0)


@pytest.mark.skipif(not (SHARED / "data" / "costeer_release" / "longlamp_review.jsonl").exists(), reason="no data")
def test_history_rows_hold_out_ten_entries_per_user():
    data = SHARED / "data" / "costeer_release"
    rows = sft_data.specsteer_history_rows("longlamp_review", data)
    sizes = [len(json.loads(line)["profile"]) for line in (data / "longlamp_review.jsonl").read_text().splitlines()]
    assert len(rows) <= sum(max(0, s - 10) for s in sizes) and len(rows) > 0.9 * sum(max(0, s - 10) for s in sizes)
    assert rows[0].prompt.startswith("Generate the review text written by a reviewer")
    first = json.loads((data / "longlamp_review.jsonl").read_text().splitlines()[0])
    held_out = {e["reviewText"] for e in first["profile"][:10]} - {e["reviewText"] for e in first["profile"][10:]}
    assert held_out and not held_out & {r.response for r in rows}


def test_train_then_decode_through_the_clis(tiny_chat_models, tmp_path):
    prompts = tmp_path / "rows.jsonl"
    rows = [{"id": str(i), "input": f"Question {i}?", "personalized_input": f"I like {i}. Question {i}?",
             "output": f"Answer {i} with care."} for i in range(30)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    train_cmd = [sys.executable, str(REPO_ROOT / "experiments" / "train_lora.py"), f"--model={tiny_chat_models['slm']}",
                 f"--prompts_file={prompts}", "--num_samples=6", "--exclude_first=24", "--epochs=1", "--rank=2", "--alpha=4", "--rows_per_batch=2", "--max_len=128",
                 f"--output_dir={out}", "--progress=false"]
    result = subprocess.run(train_cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["train_examples"] + figures["eval_examples"] == 6 and figures["steps"] >= 1
    config = json.loads((out / "training_config.json").read_text())
    assert not set(config["train_ids"] + config["eval_ids"]) & {str(i) for i in range(24)}
    gen = [sys.executable, str(REPO_ROOT / "experiments" / "generate.py"), "--method=sft",
           f"--slm={tiny_chat_models['slm']}", f"--slm_sft={out / 'adapter'}", f"--prompts_file={prompts}",
           "--limit=2", "--batch_size=2", "--max_new_tokens=3", f"--output={tmp_path / 'sft.jsonl'}", "--progress=false"]
    result = subprocess.run(gen, capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    decoded = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert len(decoded) == 2 and all(r["adapter"] == str(out / "adapter") for r in decoded)
    assert decoded[0]["config"]["slm_sft"] == str(out / "adapter")
    bad = subprocess.run(gen[:3] + [f"--slm={tiny_chat_models['slm']}", f"--slm_sft={tmp_path}"] + gen[5:],
                         capture_output=True, text=True, cwd=REPO_ROOT)
    assert bad.returncode != 0
    assert "error:" in bad.stderr.splitlines()[-1]
