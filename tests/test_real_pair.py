"""The real LLM/SLM pair of one tokenizer, Qwen2.5-Coder-1.5B steered by Qwen2.5-Coder-0.5B: our
greedy tokens equal the PyTorch reference loop's (../shared/peers/costeer_torch_reference.py with
--llm/--slm GGUF paths), 32 new tokens, at batch 1 and batch 8. A differing row is reported with
the policy's top-2 margin at the first differing step (fp32 near-ties flip with batch shape)."""
from __future__ import annotations

import functools
import json
import subprocess
import sys

import pytest

from conftest import QWEN_PAIR, REFERENCE_LOOP, REPO_ROOT, qwen_pair_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REFERENCE_LOOP.exists(), reason="reference loop not in ../shared/peers"),
    pytest.mark.skipif(not qwen_pair_available(), reason="Qwen2.5-Coder packages not installed (make venv)"),
]
pytest.importorskip("torch")

MAX_NEW_TOKENS = 32


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    from costeer_jax.data.demo_prompts import demo_examples

    path = tmp_path_factory.mktemp("ref_qwen") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": e.id, "input": e.query, "personalized_input": e.personalized_query}) + "\n"
                            for e in demo_examples()))
    return path


@functools.lru_cache(maxsize=1)
def qwen_pair():
    from costeer_jax.decoding import methods
    from costeer_jax.models.params_cache import load_model_cached

    llm, slm = (load_model_cached(alias) for alias in QWEN_PAIR)
    return {methods.LLM: llm, methods.SLM: slm}


@functools.lru_cache(maxsize=None)
def reference_tokens(prompts_file, method: str) -> dict:
    from costeer_jax.models.loading import resolve_model

    llm, slm = (resolve_model(alias) for alias in QWEN_PAIR)
    out = prompts_file.parent / f"ref_{method}.jsonl"
    subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "reference_loop.py"), "--prompts", str(prompts_file),
                    "--out", str(out), "--method", method, "--max-new-tokens", str(MAX_NEW_TOKENS),
                    "--llm", str(llm.directory / llm.gguf_file), "--slm", str(slm.directory / slm.gguf_file)],
                   check=True, capture_output=True, timeout=1800)
    return {r["id"]: r["token_ids"] for r in map(json.loads, out.read_text().splitlines())}


def our_tokens(method: str, batch_size: int) -> dict:
    from costeer_jax.data.demo_prompts import demo_examples
    from costeer_jax.decoding import methods
    from costeer_jax.decoding.runner import Generator

    gen = Generator(methods.get_method(method), qwen_pair(), max_new_tokens=MAX_NEW_TOKENS, batch_size=batch_size)
    examples, rows = demo_examples(), []
    for i in range(0, len(examples), batch_size):
        rows += gen.run_batch(examples[i:i + batch_size])[0]
    return {r["id"]: r["token_ids"] for r in rows}


def near_tie_report(method: str, ours: dict, reference: dict) -> list[str]:
    """One line per differing row: the first differing step and the policy's top-2 margin there."""
    from costeer_jax.data.demo_prompts import demo_examples
    from costeer_jax.decoding import methods
    from costeer_jax.decoding.diagnostics import first_difference, policy_margins

    lines = []
    for example in demo_examples():
        step = first_difference(ours[example.id], reference[example.id])
        if step is None:
            continue
        margins, _ = policy_margins(methods.get_method(method), qwen_pair(), example,
                                    reference[example.id][:step + 1])
        lines.append(f"{example.id}: differs at step {step}, policy top-2 margin there {margins[step]:.2e}")
    return lines


@pytest.mark.parametrize("batch_size", [8, 1])
@pytest.mark.parametrize("method", ["llm_wo", "costeer"])
def test_qwen_pair_token_identical_to_reference(prompts_file, method, batch_size):
    ours, reference = our_tokens(method, batch_size), reference_tokens(prompts_file, method)
    assert set(ours) == set(reference)
    report = near_tie_report(method, ours, reference)
    print("\n".join([f"{method} batch {batch_size}: {len(ours) - len(report)}/{len(ours)} rows identical"] + report))
    assert not report, report
