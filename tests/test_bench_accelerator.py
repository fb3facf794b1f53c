"""benchmarks/bench_accelerator.py at tiny shapes on CPU: it runs end to end (so it cannot rot
before someone has an accelerator), its step timing isolates the steps, and its bounds are the
hand-computed bytes and FLOPs."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO_ROOT

MAX_NEW = 8


def test_tiny_pair_end_to_end_with_hand_computed_bounds():
    out = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_accelerator.py"), "--pairs=tiny", "--batch_sizes=2",
         "--prompt_len=32", f"--max_new_tokens={MAX_NEW}", "--dtype=float32", "--repeats=1", "--bandwidth_gb=0.05"],
        capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rows = {(r["method"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {(m, b) for m in ("llm_wo", "costeer", "light_costeer", "specsteer") for b in (2,)}
    assert not result["skipped"]
    for (method, batch), r in rows.items():
        # The short run is the prefill and one step (each row's first token is its EOS), so the
        # difference is exactly the remaining steps: MAX_NEW - 1 tokens, or the iterations after the first.
        assert r["short_run_steps"] == 1, r
        # Tiny steps can be shorter than the runs' jitter: then no figure (None), never a negative one.
        assert r["step_ms"] is None or r["step_ms"] > 0
        assert r["bandwidth_bound_ms"] > 0 and r["compute_bound_ms"] > 0
        if method != "specsteer":
            assert r["steps"] == MAX_NEW - 1
    spec = rows[("specsteer", 2)]
    assert spec["acceptance_rate"] == 1.0  # lambda 1e-30 accepts every draft: K tokens per iteration
    assert spec["steps"] == MAX_NEW // 4 - 1
    assert rows[("llm_wo", 2)].get("x_llm_wo_tokens_per_s", 1.0) == 1.0

    # llm_wo at batch 2, by hand (tiny-llm: V 512, D 64, F 128, 3 layers, 4 heads, 2 KV heads, hd 16,
    # untied, q/k/v bias; fp32): every weight but the gathered embedding, plus the cache it attends to.
    per_layer = 64 + 64 * 128 + 128 + 64 * 64 + 64 + 64 * 256 + 64 * 128
    weights = (512 * 64 + 64 + 3 * per_layer) * 4
    slots = 48  # bucket_width(32) + 8 new tokens, rounded up to 16
    kv = 3 * 2 * 2 * 16 * 4 * slots
    assert rows[("llm_wo", 2)]["bytes_per_step"] == weights + 2 * kv
    flops_per_token = 2 * (512 * 64 + 64 + 3 * per_layer) + slots * 4 * 3 * 4 * 16
    assert rows[("llm_wo", 2)]["flops_per_step"] == 2 * flops_per_token
