"""Where a LoRA training step's time and memory go (the figures behind BUILD_NOTES.md, LoRA).

  python benchmarks/profile_lora_training.py [--model smollm2-135m-instruct] [--dtype float32]
      [--rows 2 --max_len 512] [--memory_layers 1,2,4 --memory_rows 4 --memory_len 1024]
      [--trace_dir DIR]

Timing: the jitted loss forward alone and forward + backward (gradient w.r.t. the adapter only),
without and with LoRA dropout, on one packed batch of real text, steady state after a compile
call. With --trace_dir, one more forward + backward (dropout on) runs under jax.profiler and
the XLA ops' time is summed per op kind (fusion names without their number; op time over both
threads, so it exceeds the wall time). Memory: XLA's temporary buffer size
(`compiled.memory_analysis()`) of the whole train step for the model cut to a few layers, so its
growth per layer can be read off without running it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

import bench_lora
from common import machine_note


def traced_op_times(fn, args, trace_dir: str, top: int = 20) -> dict:
    """{op kind: ms} of one call of fn under jax.profiler, from its perfetto JSON trace."""
    import collections
    import gzip
    import re
    from pathlib import Path

    import jax

    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    jax.block_until_ready(fn(*args))
    jax.profiler.stop_trace()
    newest = max(Path(trace_dir).glob("plugins/profile/*/perfetto_trace.json.gz"), key=lambda p: p.stat().st_mtime)
    trace = json.load(gzip.open(newest))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    kinds = collections.Counter()
    for e in events:  # runtime bookkeeping (executor, thread pool, Python frames) is not an op
        if e.get("ph") == "X" and not e["name"].startswith(("ThunkExecutor", "$", "SlinkyThreadPool")):
            kinds[re.sub(r"\.\d+$", "", e["name"])] += e.get("dur", 0) / 1e3
    return {"total": round(sum(kinds.values()), 1), **{k: round(v, 1) for k, v in kinds.most_common(top)}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--max_len", type=int, default=512)
    ap.add_argument("--memory_layers", default="1,2,4")
    ap.add_argument("--memory_rows", type=int, default=4)
    ap.add_argument("--memory_len", type=int, default=1024)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--trace_dir", default=None, help="write a profiler trace there and print op time per kind")
    a = ap.parse_args()
    import jax
    import numpy as np

    from costeer_jax.models import lora
    from costeer_jax.models.chat import eos_token_ids
    from costeer_jax.models.params_cache import load_model_cached
    from costeer_jax.models.decoder import stack_layers
    from costeer_jax.training.lora_trainer import TrainConfig, batch_nll, init_state, make_optimizer, train_step
    from costeer_jax.training.packing import loss_capacity

    m = load_model_cached(a.model, a.dtype)
    packed = bench_lora.training_rows(m.tokenizer, eos_token_ids(m.tokenizer, m.generation_eos)[0],
                                      a.rows, a.max_len, 1)[1]
    batch, stacked = packed.as_dict(loss_capacity([packed])), stack_layers(m.params)  # as the trainer runs it
    out = {"model": m.name, "dtype": a.dtype, "machine": machine_note(), "rows": a.rows, "max_len": a.max_len,
           "seconds": {}}
    key = jax.random.key(1)
    for rate in (0.0, 0.05):
        config = lora.LoraConfig(rank=a.rank, alpha=a.rank / 2.0, dropout=rate)
        adapter = lora.init_adapter(jax.random.key(0), m.cfg, config)
        loss = lambda ad, p, b, k: batch_nll(ad, p, b, model_cfg=m.cfg, lora_cfg=config, dropout_key=k)[0]
        for name, fn in (("forward", jax.jit(loss)), ("forward_backward", jax.jit(jax.grad(loss)))):
            jax.block_until_ready(fn(adapter, stacked, batch, key))
            t0 = time.perf_counter()
            jax.block_until_ready(fn(adapter, stacked, batch, key))
            out["seconds"][f"{name}_dropout_{rate}"] = round(time.perf_counter() - t0, 2)
        if a.trace_dir and rate > 0:
            out["op_ms_by_kind"] = traced_op_times(fn, (adapter, stacked, batch, key), a.trace_dir)
    out["train_step_temp_gb"] = {}
    shape = (a.memory_rows, a.memory_len)
    zeros = {k: np.zeros(shape, np.float32 if k == "weights" else np.int32)
             for k in ("tokens", "positions", "segment_ids", "targets", "weights")}
    zeros["loss_index"] = np.zeros((a.memory_rows, a.memory_len // 2), np.int32)
    for layers in map(int, a.memory_layers.split(",")):
        cfg = dataclasses.replace(m.cfg, num_layers=layers)
        params = stack_layers({**m.params, "layers": m.params["layers"][:layers]})
        config = TrainConfig(lora=lora.LoraConfig(rank=a.rank, alpha=a.rank / 2.0))
        optimizer = make_optimizer(config, 100)
        for remat in (False, True):
            compiled = train_step.lower(init_state(cfg, config, optimizer), params, zeros, key, model_cfg=cfg,
                                        lora_cfg=config.lora, optimizer=optimizer, remat_layers=remat).compile()
            out["train_step_temp_gb"][f"{layers}_layers{'_remat' if remat else ''}"] = round(
                compiled.memory_analysis().temp_size_in_bytes / 1e9, 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    from costeer_jax.process_env import ensure_hugepage_malloc

    ensure_hugepage_malloc()
    main()
