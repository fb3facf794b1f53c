"""A cost model of one Draft-Verify iteration (SpecSteer, speculative decoding).

One iteration per row: K single-token drafter steps (SLM+), one LLM forward over the K+1
positions [pending, draft_1..draft_K], for SpecSteer one SLM- forward over the same K+1
positions, then the accepted prefix plus (on a rejection) one recovered token is committed.
With step times t (measured on a machine, or from a roofline),

    iteration   = K t_draft + t_llm_verify(K+1) + t_slm_verify(K+1)
    speedup     = tokens_per_iteration * t_llm_step / iteration

against plain LLM decoding (one t_llm_step per token). On a memory-bound accelerator every
forward of a handful of positions reads its weights once, so t_llm_verify ~ t_llm_step and
t_draft ~ t_slm_verify ~ t_llm_step * (SLM bytes / LLM bytes); on this CPU a K+1-position verify
is partly compute-bound and costs several single steps (measured by benchmarks/bench_specsteer.py).
"""
from __future__ import annotations

import dataclasses
import math

# Appendix D's wire format, shared by the kernel's byte accounting and the latency model.
ACCOUNTING_TOPK = 32  # Appendix D's example k when no truncation is asked for
CLOUD_VALUE_BYTES = 4  # a top-k entry's value travels as the fp32 we compute with


def token_id_bytes(vocab_size: int) -> int:
    """Bytes of one token id on the wire: the fewest whole bytes that hold any id."""
    return max(1, math.ceil(math.ceil(math.log2(max(vocab_size, 2))) / 8))


@dataclasses.dataclass(frozen=True)
class StepTimes:
    """Seconds for one batch of rows (the same batch everywhere)."""

    llm_step: float  # one token through the LLM (plain decoding's cost per token)
    draft_step: float  # one token through the drafter
    llm_verify: float  # the LLM over K+1 positions
    slm_verify: float = 0.0  # SLM- over K+1 positions (SpecSteer; 0 for SD)


def iteration_seconds(times: StepTimes, num_draft: int) -> float:
    return num_draft * times.draft_step + times.llm_verify + times.slm_verify


def predicted_speedup(times: StepTimes, num_draft: int, tokens_per_iteration: float) -> float:
    """Speedup over plain LLM decoding at the same batch."""
    return tokens_per_iteration * times.llm_step / iteration_seconds(times, num_draft)


def expected_tokens_per_iteration(acceptance: float, num_draft: int, bonus: bool = False) -> float:
    """Tokens one iteration commits when each draft passes independently with probability
    `acceptance`: the accepted prefix, plus the recovered token after a rejection (or the bonus
    token after a full acceptance, when on)."""
    a, k = float(acceptance), int(num_draft)
    accepted = k if a >= 1.0 else a * (1.0 - a ** k) / (1.0 - a)
    return accepted + (1.0 - a ** k) + (a ** k if bonus else 0.0)


def memory_bound_times(llm_bytes: float, slm_bytes: float, bandwidth: float, specsteer: bool = True) -> StepTimes:
    """Step times of a memory-bound accelerator: each forward reads its model's weights once."""
    llm, slm = llm_bytes / bandwidth, slm_bytes / bandwidth
    return StepTimes(llm_step=llm, draft_step=slm, llm_verify=llm, slm_verify=slm if specsteer else 0.0)
