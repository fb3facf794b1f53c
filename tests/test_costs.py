"""Cost models: FLOPs by hand on a tiny shape, CoSteer Table 14 reproduced, the Draft-Verify
iteration model's arithmetic, and the edge-cloud latency model (hand counts, solvers, the papers'
speed-table shapes)."""
from __future__ import annotations

from pathlib import Path

import pytest

from costeer_jax.costs import flops
from costeer_jax.costs import latency
from costeer_jax.costs import speculative as spec
from costeer_jax.costs.flops import PAPER_PAIRS, PRESETS

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


# ---------------------------------------------------------------- edge-cloud latency model

HAND_TIMES = latency.StepTimes(llm_step=0.010, slm_step=0.002, slm_pair_step=0.003, ftrl_pass=0.0001,
                               llm_verify=0.012, slm_verify=0.004, vocab=256)  # 256 ids: 1 byte each
HAND_NET = latency.Network(rtt_s=0.005, downlink_bits_per_s=8e6, uplink_bits_per_s=8e6)  # 1 byte = 1 us


def test_latency_components_match_a_hand_count_and_add_up():
    costeer = latency.token_latency("costeer", HAND_TIMES, HAND_NET, T=20)
    # compute overlaps: max(LLM 10 ms, SLM pair 3 ms); down 256 fp32 logits + up 1 id = 1025 bytes
    assert costeer.llm == pytest.approx(0.010)
    assert costeer.transmission == pytest.approx(0.005 + 1025e-6)
    assert costeer.optimisation == pytest.approx(20 * 0.0001)
    light = latency.token_latency("light_costeer", HAND_TIMES, HAND_NET)
    assert light.optimisation == pytest.approx(0.0001) and light.transmission == costeer.transmission
    ada = latency.token_latency("ada_costeer", HAND_TIMES, HAND_NET, steered_fraction=0.25)
    assert ada.total == pytest.approx(0.25 * costeer.total + 0.75 * 0.010)
    topk = latency.token_latency("costeer", HAND_TIMES, HAND_NET, downlink_topk=8)
    assert topk.transmission == pytest.approx(0.005 + (1 + 8 * 5) * 1e-6)
    # SpecSteer, K=2, acceptance 0.5, no bonus: 0.75 accepted + 0.75 recovered = 1.5 tokens per
    # iteration; verify max(12, 4) ms in parallel; down 1 byte of bits + 0.75 x 32 x (1 + 4) bytes
    spec = latency.token_latency("specsteer", HAND_TIMES, HAND_NET, acceptance=0.5, num_draft=2)
    assert spec.llm == pytest.approx(0.012 / 1.5)
    assert spec.transmission == pytest.approx((0.005 + (2 + 1 + 0.75 * 160) * 1e-6) / 1.5)
    assert spec.edge == pytest.approx(2 * 0.002 / 1.5) and spec.optimisation == 0.0
    sd = latency.token_latency("sd", HAND_TIMES, HAND_NET, acceptance=0.5, num_draft=2)  # bonus on, LLM only
    assert sd.llm == pytest.approx(0.012 / 1.75)
    for method in ("llm_wo", "costeer", "light_costeer", "ada_costeer", "fuse", "specsteer", "sd"):
        t = latency.token_latency(method, HAND_TIMES, HAND_NET, acceptance=0.3, steered_fraction=0.5)
        assert t.total == pytest.approx(t.llm + t.transmission + t.optimisation + t.edge)
        assert t.tokens_per_s == pytest.approx(1 / t.total)
    with pytest.raises(ValueError, match="acceptance must be in"):
        latency.token_latency("specsteer", HAND_TIMES, HAND_NET, acceptance=1.5)


def test_half_speed_rtt_and_breakeven_acceptance_solve_their_equations():
    import dataclasses

    rtt = latency.rtt_at_speed_ratio("light_costeer", HAND_TIMES, HAND_NET, 0.5)
    at = dataclasses.replace(HAND_NET, rtt_s=rtt)
    assert latency.speed_ratio("light_costeer", HAND_TIMES, at) == pytest.approx(0.5)
    slow = dataclasses.replace(HAND_TIMES, ftrl_pass=1.0)  # C alone exceeds twice the LLM step
    assert latency.rtt_at_speed_ratio("costeer", slow, HAND_NET, 0.5) is None
    even = latency.breakeven_acceptance("specsteer", HAND_TIMES, HAND_NET, num_draft=4)
    assert 0 < even < 1
    assert latency.speed_ratio("specsteer", HAND_TIMES, HAND_NET, acceptance=even, num_draft=4) == pytest.approx(1.0)


def test_latency_model_reproduces_the_shape_of_costeer_table13_and_specsteer_table4():
    """At the stated LAN setting, H100 cloud and RTX-4090 edge (rooflines): the same order of
    variants as the papers' speed tables, SpecSteer above vanilla and the token loops below."""
    net = latency.NETWORKS["lan"]
    for table in (latency.COSTEER_TABLE13, latency.SPECSTEER_TABLE4):
        llm, slm = (PRESETS[n] for n in PAPER_PAIRS[table[0]])
        times = latency.StepTimes.roofline(llm, slm, latency.DEVICES["H100-SXM"], latency.DEVICES["RTX-4090"])
        rows = {r["label"]: r for r in latency.paper_table(table, times, net)}
        if table is latency.COSTEER_TABLE13:
            order = ["Vanilla Gen.", "AdaCoSteer", "LightCoSteer", "CoSteer"]
            assert [rows[k]["model_ratio"] for k in order] == sorted((rows[k]["model_ratio"] for k in order), reverse=True)
            assert rows["LightCoSteer"]["model_T_ms"] > 10 * rows["CoSteer"]["model_C_ms"]  # transmission dominates
        else:
            assert rows["SpecSteer (λ=0.1)"]["model_ratio"] > rows["SpecSteer (λ=0.5)"]["model_ratio"] > 1.0
            assert rows["CoSteer"]["model_ratio"] < 1.0 and rows["LightCoSteer"]["model_ratio"] < 1.0
            for r in rows.values():  # within a factor of two of the paper's ratio
                assert 0.5 < r["model_ratio"] / r["paper_ratio"] < 2.0, r


def test_latency_cli_prints_both_tables_and_writes_plots(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "experiments" / "latency.py"),
                           "--network=wan", f"--output_dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "costeer_table13" in done.stdout and "specsteer_table4" in done.stdout
    assert len(list(tmp_path.glob("*.png"))) == 4 and (tmp_path / "latency.json").is_file()
    bad = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "experiments" / "latency.py"),
                          "--rtt_ms=-1"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--rtt_ms must be >= 0" in bad.stderr


def test_speculative_account_counts_verify_positions_drafts_and_prefills():
    acc = flops.speculative_account("specsteer", TINY, TINY, query_tokens=3, context_tokens=4, new_tokens=4,
                                    iterations=2, drafted_tokens=3, num_draft=2)
    assert acc.edge_prefill == flops.exact_prefill_flops(TINY, 7)
    assert acc.edge_decode == 3 * flops.verify_flops(TINY, 7 + 2, 1)
    assert acc.cloud_prefill == 2 * flops.exact_prefill_flops(TINY, 3)  # LLM and SLM- on the query
    assert acc.cloud_decode == 2 * 2 * flops.verify_flops(TINY, 3 + 2, 3)
    sd = flops.speculative_account("sd", TINY, TINY, 3, 4, 4, 2, 3, 2)
    assert sd.cloud_decode == 2 * flops.verify_flops(TINY, 5, 3)  # no SLM- in SD
    # one position after s cached ones is a decode step
    assert flops.verify_flops(TINY, 5, 1) == flops.exact_decode_flops(TINY, 5, 1)


def test_specsteer_table11_llm_rag_row_is_reproduced_and_the_cli_prints_both_tables():
    import subprocess
    import sys

    for c, printed in zip((100, 1000, 10000), (4.01, 4.25, 6.64)):
        assert flops.specsteer_table11_llm_rag(PRESETS["Qwen3-32B"], 100, c) / 1e12 == pytest.approx(printed, rel=0.015)
    script = str(Path(__file__).resolve().parents[1] / "experiments" / "flops.py")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| llm_w | 0.96 / 0.95 | 1.74 / 1.74 | 9.98 / 9.98 |" in done.stdout
    assert "| LLM (RAG) | 4.01 / 4.05" in done.stdout
    pair = subprocess.run([sys.executable, script, "--pair=Qwen3-32B/0.6B", "--context=1000", "--methods=llm_w,sd"],
                          capture_output=True, text=True, timeout=300)
    assert pair.returncode == 0 and "| sd | 1000 |" in pair.stdout


def test_flops_cli_reads_model_shapes_from_a_config_json_and_an_alias(tmp_path):
    """--llm_config/--slm_config take a Hugging Face config.json or any checkpoint --llm takes."""
    import json
    import subprocess
    import sys

    config = {"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    shape = flops.model_shape(str(path), "tiny")
    assert (shape.layers, shape.hidden, shape.vocab) == (2, 64, 128)
    script = str(Path(__file__).resolve().parents[1] / "experiments" / "flops.py")
    done = subprocess.run([sys.executable, script, f"--llm_config={path}", "--slm_config=smollm2-135m-instruct",
                           "--methods=costeer", "--context=100"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| costeer | 100 |" in done.stdout
