"""LoRA: training tokens/s against torch + peft on the same model and rows, and the cost of
(per-row) adapters in a decode step, all in one run.

  python benchmarks/bench_lora.py [--model smollm2-135m-instruct] [--rank 64] [--train_steps 6]
      [--train_dtypes float32,bfloat16] [--skip_decode] [--skip_torch]

Training: the same packed rows (--rows_per_batch x --max_len tokens of real CoGenesis-style
text: the SmolLM2 tokenization of the demo prompts, cycled) through our jitted optax step and a
torch loop over transformers' model of the same GGUF file wrapped by peft (AdamW, clipping,
response-only labels, dropout on), steady state after one warm-up step each; tokens/s counts
the non-padding tokens of a step. Each training loop runs in a fresh process of its own (the
same script, --only SIDE:DTYPE), so neither side runs on a heap or thread pool the other left
behind (in one process, our bf16 step ran 2.7 s first and 3.0 s after the torch fp32 loop).
Decode: ms per step of a jitted loop of decode steps at batch 1 and 8 for the base model, one adapter on every row, and per-row adapters (half the
rows base, the others split over two adapters), against the bound of reading the adapter's
bytes beside the base weights (adapter_params_share per adapter read).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import decode_step_seconds, machine_note


def decode_costs(model, rank: int, batch_sizes, steps: int, repeats: int) -> dict:
    import jax

    from costeer_jax.models import lora
    from costeer_jax.models.decoder import param_count

    config = lora.LoraConfig(rank=rank, alpha=2.0 * rank)
    adapters = [lora.init_adapter(jax.random.key(i), model.cfg, config) for i in range(2)]
    layers, scales = lora.stack([(a, config) for a in adapters])
    out = {"adapter_params_share": round(param_count(adapters[0]) / param_count(model.params), 4)}

    for batch in batch_sizes:
        variants = {"base": None, "one_adapter": lora.single(adapters[0], config)}
        if batch > 1:
            # SLM- and SLM+ rows of one user in one forward: half base, half one adapter.
            variants["per_row_base_and_one_adapter"] = lora.with_rows(
                *lora.stack([(adapters[0], config)]), [-1 if b < batch // 2 else 0 for b in range(batch)])
        variants["per_row_two_adapters"] = lora.with_rows(
            layers, scales, [-1 if b < batch // 2 else b % 2 for b in range(batch)] if batch > 1 else [1])
        figures = {name: round(decode_step_seconds(model, batch, 128, 40, steps, repeats, adapter)[0] * 1e3, 2)
                   for name, adapter in variants.items()}
        for name in list(figures):
            if name != "base":
                figures[f"{name}_overhead"] = round(figures[name] / figures["base"] - 1, 3)
        out[f"batch_{batch}_ms_per_step"] = figures
    return out


def training_rows(tokenizer, end_of_turn: int, rows_per_batch: int, max_len: int, steps: int):
    from common import bench_examples

    from costeer_jax.training import packing
    from costeer_jax.training.sft_data import SFTRow, tokenize_rows

    rows = [SFTRow(e.id, e.personalized_query, e.query * 3) for e in bench_examples(400)]
    examples, _ = tokenize_rows(rows, tokenizer, end_of_turn, max_len)
    batches = packing.epoch_batches(examples, max_len, rows_per_batch, seed=0, epoch=0)
    if len(batches) < steps + 1:
        raise SystemExit(f"only {len(batches)} batches; lower --train_steps")
    return batches[:steps + 1]


def ours_training(model, batches, rank: int) -> dict:
    import jax

    from costeer_jax.models import lora
    from costeer_jax.models.decoder import stack_layers
    from costeer_jax.training.lora_trainer import (TrainConfig, init_state, make_optimizer, place_state,
                                                   train_step)
    from costeer_jax.training.packing import loss_capacity

    config = TrainConfig(lora=lora.LoraConfig(rank=rank, alpha=rank / 2.0, dropout=0.05))
    optimizer = make_optimizer(config, 100)
    state = place_state(init_state(model.cfg, config, optimizer))
    kw = dict(model_cfg=model.cfg, lora_cfg=config.lora, optimizer=optimizer)
    key = jax.random.key(0)
    # As lora_trainer.train does: layers stacked once, one loss_index width for the run.
    params, capacity = stack_layers(model.params), loss_capacity(batches)
    t0 = time.perf_counter()
    state, m = train_step(state, params, batches[0].as_dict(capacity), key, **kw)
    jax.block_until_ready(m)
    compile_and_first = time.perf_counter() - t0
    tokens, t0 = 0, time.perf_counter()
    losses = []
    for batch in batches[1:]:
        state, m = train_step(state, params, batch.as_dict(capacity), key, **kw)
        losses.append(float(m["loss"]))
        tokens += int((batch.segment_ids > 0).sum())
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": round(tokens / seconds, 1), "seconds_per_step": round(seconds / len(batches[1:]), 3),
            "first_step_seconds_with_compile": round(compile_and_first, 2), "losses": [round(x, 3) for x in losses]}


def torch_peft_training(gguf: str, batches, rank: int, dtype: str = "float32") -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pathlib import Path

    path = Path(gguf)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    # bfloat16: the base in bf16 with peft's default fp32 adapters (autocast_adapter_dtype), the
    # usual peft bf16 setup; AdamW over the fp32 adapter either way.
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=getattr(torch, dtype))
    model = get_peft_model(hf, LoraConfig(r=rank, lora_alpha=rank / 2.0, lora_dropout=0.05, task_type="CAUSAL_LM",
                                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"]))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.05)

    def step(batch):
        ids = torch.tensor(batch.tokens, dtype=torch.long)
        # Same tokens, same response-only targets (labels are the next tokens; -100 elsewhere).
        labels = torch.where(torch.tensor(batch.weights) > 0, torch.tensor(batch.targets, dtype=torch.long), -100)
        logits = model(input_ids=ids, position_ids=torch.tensor(batch.positions, dtype=torch.long)).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                                 ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad()
        return float(loss)

    t0 = time.perf_counter()
    step(batches[0])
    first = time.perf_counter() - t0
    tokens, t0 = 0, time.perf_counter()
    losses = []
    for batch in batches[1:]:
        losses.append(step(batch))
        tokens += int((batch.segment_ids > 0).sum())
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": round(tokens / seconds, 1), "seconds_per_step": round(seconds / len(batches[1:]), 3),
            "first_step_seconds": round(first, 2), "losses": [round(x, 3) for x in losses],
            "torch_threads": torch.get_num_threads(), "note": "causal attention over the whole packed row "
            "(HF has no per-segment mask without flash-attn), so its loss differs from ours; logits at every "
            "position, as HF computes them (ours: only at the target positions)"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--batch_sizes", default="1,8")
    ap.add_argument("--steps", type=int, default=32, help="decode steps per timed loop")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train_steps", type=int, default=6)
    ap.add_argument("--rows_per_batch", type=int, default=2)
    ap.add_argument("--max_len", type=int, default=512)
    ap.add_argument("--skip_torch", action="store_true")
    ap.add_argument("--skip_decode", action="store_true")
    ap.add_argument("--train_dtypes", default="float32,bfloat16",
                    help="one training comparison per dtype: both sides load the base in it (bf16: the "
                         "papers' recipe; our adapter masters and peft's default adapters stay fp32)")
    ap.add_argument("--only", default=None, help="SIDE:DTYPE (ours or torch_peft): run that one training loop "
                                                 "and print its figures (what the full run starts per loop)")
    a = ap.parse_args()
    from common import gguf_path

    from costeer_jax.models.chat import eos_token_ids
    from costeer_jax.models.params_cache import load_model_cached

    def rows_for(model):
        return training_rows(model.tokenizer, eos_token_ids(model.tokenizer, model.generation_eos)[0],
                             a.rows_per_batch, a.max_len, a.train_steps)

    if a.only:
        side, dtype = a.only.split(":")
        model = load_model_cached(a.model, dtype)
        batches = rows_for(model)
        figures = (ours_training(model, batches, a.rank) if side == "ours"
                   else torch_peft_training(gguf_path(a.model), batches, a.rank, dtype))
        print(json.dumps(figures))
        return
    model = load_model_cached(a.model)
    results = {"model": model.name, "rank": a.rank, "machine": machine_note()}
    if not a.skip_decode:
        results["decode"] = decode_costs(model, a.rank, [int(b) for b in a.batch_sizes.split(",")], a.steps,
                                         a.repeats)
    batches = rows_for(model)
    results["train_tokens_per_step"] = int((batches[1].segment_ids > 0).sum())
    results["train_target_tokens_per_step"] = int(batches[1].weights.sum())
    passed = ["--model", a.model, "--rank", str(a.rank), "--train_steps", str(a.train_steps),
              "--rows_per_batch", str(a.rows_per_batch), "--max_len", str(a.max_len)]

    def one_loop(side: str, dtype: str) -> dict:
        run = subprocess.run([sys.executable, __file__, *passed, "--only", f"{side}:{dtype}"],
                             stdout=subprocess.PIPE, text=True, check=True)
        return json.loads(run.stdout.strip().splitlines()[-1])

    for dtype in a.train_dtypes.split(","):
        ours = one_loop("ours", dtype)
        figures = results[f"training_{dtype}"] = {"ours": ours}
        if not a.skip_torch:
            figures["torch_peft"] = one_loop("torch_peft", dtype)
            figures["speedup"] = round(ours["tokens_per_s"] / figures["torch_peft"]["tokens_per_s"], 2)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    from costeer_jax.process_env import ensure_hugepage_malloc

    ensure_hugepage_malloc()  # the loops' processes inherit it, so both sides get it (COSTEER_JAX_NO_REEXEC=1: neither)
    main()
