"""Cost models: FLOPs by hand on a tiny shape, CoSteer Table 14 reproduced, the Draft-Verify
iteration model's arithmetic."""
from __future__ import annotations

import pytest

from costeer_jax.costs import flops
from costeer_jax.costs import speculative as spec

TINY = flops.Shape("tiny", layers=2, hidden=4, heads=2, kv_heads=1, head_dim=2, intermediate=6, vocab=10)


def test_exact_flops_equal_a_hand_count():
    # per layer per token: qkv 4*(2+2)*2=32, o 2*2*4=16, mlp 3*4*6=72 -> 120 MACs -> x2 layers x2 FLOPs
    assert flops.projection_flops(TINY) == 480
    assert flops.head_flops(TINY) == 80
    assert flops.attention_flops(TINY, 5) == 2 * 2 * 2 * 2 * 2 * 5
    # prefill of 3 tokens: 3 x 480 + attention over 1+2+3 positions + one head
    assert flops.exact_prefill_flops(TINY, 3) == 1440 + flops.attention_flops(TINY, 6) + 80
    # 2 decode steps after 3 cached: attend 4 then 5 positions, a head each
    assert flops.exact_decode_flops(TINY, 3, 2) == 2 * (480 + 80) + flops.attention_flops(TINY, 9)


def test_costeer_table14_is_narayanan_on_qwen25_7b_15b_with_100_tokens():
    """CoSteer Table 14 (TFLOPs vs context length C): LLM w/o, LLM w/, CoSteer. Assumptions that
    reproduce every printed digit: Qwen2.5-7B LLM / Qwen2.5-1.5B SLM, Narayanan et al.'s forward
    estimate over the whole sequence, 100 tokens of query + answer plus C context tokens."""
    llm, slm = flops.PRESETS["Qwen2.5-7B"], flops.PRESETS["Qwen2.5-1.5B"]
    table = {"llm_wo": (0.87, 0.87, 0.87), "llm_w": (0.96, 1.74, 9.98), "costeer": (1.21, 1.35, 2.98)}
    for method, printed in table.items():
        for context, value in zip((10, 100, 1000), printed):
            ours = flops.token_loop_account(method, llm, slm, query_tokens=20, context_tokens=context,
                                            new_tokens=80, convention="narayanan").total / 1e12
            assert ours == pytest.approx(value, abs=0.01), (method, context, ours)


def test_cloud_edge_split():
    llm, slm = flops.PRESETS["Qwen2.5-7B"], flops.PRESETS["Qwen2.5-1.5B"]
    costeer = flops.token_loop_account("costeer", llm, slm, 40, 1000, 128)
    llm_wo = flops.token_loop_account("llm_wo", llm, slm, 40, 1000, 128)
    llm_w = flops.token_loop_account("llm_w", llm, slm, 40, 1000, 128)
    assert costeer.cloud == llm_wo.cloud and llm_wo.edge == 0 and llm_w.edge == 0
    assert costeer.edge > 0 and llm_w.cloud_prefill > 20 * llm_wo.cloud_prefill  # the context moved to the cloud
    with pytest.raises(ValueError, match="no FLOPs accounting"):
        flops.token_loop_account("specsteer", llm, slm, 1, 1, 1)


def test_speculative_iteration_model():
    times = spec.StepTimes(llm_step=1.0, draft_step=0.1, llm_verify=1.0, slm_verify=0.1)
    assert spec.iteration_seconds(times, 4) == pytest.approx(1.5)
    assert spec.predicted_speedup(times, 4, 3.0) == pytest.approx(2.0)
    assert spec.expected_tokens_per_iteration(0.0, 4) == 1.0  # reject the first draft, recover one
    assert spec.expected_tokens_per_iteration(1.0, 4) == 4.0  # all pass, no bonus (Algorithm 1)
    assert spec.expected_tokens_per_iteration(1.0, 4, bonus=True) == 5.0
    a = 0.5  # E[accepted] = a + a^2 + a^3 + a^4, plus the recovery when some draft fails
    assert spec.expected_tokens_per_iteration(a, 4) == pytest.approx(a + a**2 + a**3 + a**4 + (1 - a**4))
    bound = spec.memory_bound_times(64e9, 1.2e9, 4e12)
    assert bound.llm_step == bound.llm_verify == pytest.approx(0.016) and bound.draft_step == bound.slm_verify
