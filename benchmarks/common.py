"""Shared benchmark plumbing: the reference loop measured in the same run, and steady-state
timing of our kernels (compile time measured and reported apart)."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from costeer_jax.data.demo_prompts import demo_examples  # noqa: E402
from costeer_jax.data.example import Example  # noqa: E402


def bench_examples(n: int) -> list[Example]:
    """n prompts: the built-in demo prompts, cycled with distinct ids."""
    base = demo_examples()
    return [Example(f"{base[i % len(base)].id}-{i}", base[i % len(base)].query,
                    base[i % len(base)].personalized_query) for i in range(n)]


def run_reference(method: str, examples: list[Example], max_new_tokens: int, T: int = 20) -> dict:
    """The PyTorch reference loop as a user runs it (one example at a time); its own figures."""
    with tempfile.TemporaryDirectory() as d:
        prompts = Path(d) / "p.jsonl"
        prompts.write_text("".join(json.dumps({"id": e.id, "input": e.query,
                                               "personalized_input": e.personalized_query}) + "\n"
                                   for e in examples))
        out = subprocess.run(
            [sys.executable, str(REPO_ROOT / "benchmarks" / "reference_loop.py"), "--prompts", str(prompts),
             "--out", str(Path(d) / "o.jsonl"), "--method", method, "--max-new-tokens", str(max_new_tokens),
             "--T", str(T)], check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])


def time_generator(generator, examples: list[Example], repeats: int = 2) -> dict:
    """Steady-state tokens/s over all examples in batches (first pass compiles; best of repeats)."""
    batches = [examples[i:i + generator.batch_size] for i in range(0, len(examples), generator.batch_size)]
    for b in batches[:1]:
        generator.run_batch(b)  # compile
    best = None
    for _ in range(repeats):
        t0, tokens = time.perf_counter(), 0
        for b in batches:
            rows, _ = generator.run_batch(b)
            tokens += sum(len(r["token_ids"]) for r in rows)
        seconds = time.perf_counter() - t0
        if best is None or seconds < best[1]:
            best = (tokens, seconds)
    tokens, seconds = best
    return {"tokens": tokens, "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 2),
            "compile_seconds": round(generator.compile_seconds, 2)}


def machine_note() -> dict:
    import os

    import jax

    return {"cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
            "jax": jax.__version__, "backend": jax.default_backend()}
