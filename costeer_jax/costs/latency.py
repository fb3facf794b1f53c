"""An edge-cloud latency model per generated token: LLM time L, transmission T, optimisation C
(CoSteer B.12.4, Table 13), plus the edge's own model time E, for every method of both papers.

One answer (batch 1), decode only (prefill and the request's first round trip are paid once per
answer, not per token). Compute times come from measurements or from a roofline (weights read
once per step over memory bandwidth, or FLOPs over peak, whichever is slower).

Per token:

* vanilla LLM (llm_wo): L. The cloud streams tokens; no per-token round trip.
* CoSteer family (costeer T=20, light_costeer T=1, fuse 1 pass): every token is one round trip.
  The cloud's LLM step and the edge's SLM step (both of its streams, one forward of two rows)
  run at the same time on the previous token (CoSteer Sec. 3.3), so compute is max(L, E); then
  the LLM's logits travel down (V fp32 values, or the top-k as id + value) and the chosen id
  travels up: T = RTT + bytes / bandwidth; the edge runs T FTRL passes over the vocabulary: C.
* AdaCoSteer: a share s of the tokens as CoSteer, the rest as vanilla (steering off for good).
* SpecSteer / SD (per iteration, then divided by the tokens an iteration commits): the edge drafts
  K tokens (E = K SLM+ steps), uplinks K ids, the cloud verifies K+1 positions with the LLM and,
  for SpecSteer, SLM- in parallel (SpecSteer App. D.2: L = max of the two), and answers one bit per
  decided position plus, on a rejection, the top-k of h_LLM - beta h_SLM- (SpecSteer) or one id
  (SD): T = RTT + bytes / bandwidth.
"""
from __future__ import annotations

import dataclasses
import math

from costeer_jax.costs import speculative
from costeer_jax.costs.flops import Shape, exact_decode_flops, projection_flops

FP32_BYTES = speculative.CLOUD_VALUE_BYTES
SPECSTEER_DOWNLINK_TOPK = speculative.ACCOUNTING_TOPK  # App. D's k for the recovery term h_LLM - beta h_SLM-


@dataclasses.dataclass(frozen=True)
class Network:
    rtt_s: float = 0.02
    downlink_bits_per_s: float = 100e6
    uplink_bits_per_s: float = 20e6

    def transfer_s(self, uplink_bytes: float, downlink_bytes: float) -> float:
        return 8 * uplink_bytes / self.uplink_bits_per_s + 8 * downlink_bytes / self.downlink_bits_per_s


@dataclasses.dataclass(frozen=True)
class Device:
    name: str
    bandwidth: float  # bytes/s of memory reads
    peak_flops: float  # FLOP/s at the weights' dtype
    weight_bytes: float = 2.0  # per parameter (bf16)
    op_overhead_s: float = 0.0  # fixed cost of one elementwise pass (kernel launch, eager framework)


# Stated, rounded spec-sheet figures; the model is as good as these.
DEVICES = {d.name: d for d in (
    Device("H100-SXM", 3.35e12, 989e12, op_overhead_s=1e-5),
    Device("A100-80GB", 2.0e12, 312e12, op_overhead_s=1e-5),
    Device("RTX-4090", 1.0e12, 165e12, op_overhead_s=1e-5),
    Device("laptop-M2", 100e9, 3.6e12, op_overhead_s=2e-5),
    # This project's 2-core CPU (BUILD_NOTES.md: ~30 GB/s reads, ~83 GFLOP/s), fp32 weights.
    Device("this-cpu", 30e9, 83e9, weight_bytes=4.0, op_overhead_s=5e-5),
)}


def weight_bytes(shape: Shape, device: Device) -> float:
    """Bytes a decode step reads: every projection and the output head, once."""
    return (projection_flops(shape) / 2 + shape.vocab * shape.hidden) * device.weight_bytes


def roofline_step_s(shape: Shape, device: Device, positions: int = 1, rows: int = 1, context: int = 0) -> float:
    """One forward of `rows` x `positions` new tokens after `context` cached ones: weights read
    once, FLOPs of every token; the slower of the two bounds."""
    flops = rows * exact_decode_flops(shape, context, positions)
    return max(weight_bytes(shape, device) / device.bandwidth, flops / device.peak_flops)


def ftrl_pass_s(vocab: int, device: Device) -> float:
    """One FTRL iteration over the vocabulary in fp32: read three V-vectors, write one."""
    return 4 * vocab * FP32_BYTES / device.bandwidth + device.op_overhead_s


@dataclasses.dataclass(frozen=True)
class StepTimes:
    """Seconds of one answer's steps (batch 1)."""

    llm_step: float  # cloud: one LLM token
    slm_step: float  # edge: one SLM token of one stream (SpecSteer's SLM+ drafting)
    slm_pair_step: float  # edge: both SLM streams (with and without context) as one two-row forward
    ftrl_pass: float  # edge: one FTRL iteration over the vocabulary
    llm_verify: float  # cloud: LLM over K+1 positions
    slm_verify: float  # cloud: SLM- over K+1 positions (SpecSteer)
    vocab: int

    @classmethod
    def roofline(cls, llm: Shape, slm: Shape, cloud: Device, edge: Device, num_draft: int = 4,
                 context: int = 512) -> "StepTimes":
        # Embedding rows beyond the tokenizer's (Qwen2.5-7B: 152064 vs 151936) are never sent.
        vocab = min(llm.vocab, slm.vocab)
        return cls(llm_step=roofline_step_s(llm, cloud, context=context),
                   slm_step=roofline_step_s(slm, edge, context=context),
                   slm_pair_step=roofline_step_s(slm, edge, rows=2, context=context),
                   ftrl_pass=ftrl_pass_s(vocab, edge),
                   llm_verify=roofline_step_s(llm, cloud, positions=num_draft + 1, context=context),
                   slm_verify=roofline_step_s(slm, cloud, positions=num_draft + 1, context=context),
                   vocab=vocab)


@dataclasses.dataclass(frozen=True)
class TokenLatency:
    """Seconds per generated token, by component; `total` is what a user waits."""

    llm: float  # L (for the token loop: the compute wait max(L, E) when E overlaps)
    transmission: float  # T
    optimisation: float  # C
    edge: float = 0.0  # E not hidden behind L (SpecSteer's drafting)

    @property
    def total(self) -> float:
        return self.llm + self.transmission + self.optimisation + self.edge

    @property
    def tokens_per_s(self) -> float:
        return 1.0 / self.total

    def as_dict(self) -> dict:
        return {"L": self.llm, "T": self.transmission, "C": self.optimisation, "E": self.edge, "total": self.total,
                "tokens_per_s": self.tokens_per_s}


TOKEN_LOOP_PASSES = {"costeer": None, "light_costeer": 1, "fuse": 1}  # None: the T hyperparameter


def token_latency(method: str, times: StepTimes, network: Network, *, T: int = 20, downlink_topk: int = 0,
                  steered_fraction: float = 1.0, acceptance: float = 0.5, num_draft: int = 4,
                  bonus: bool | None = None, spec_topk: int = SPECSTEER_DOWNLINK_TOPK) -> TokenLatency:
    """Per-token latency of `method` (see the module docstring). downlink_topk: CoSteer's logits
    sent as the top-k (0: all V values); steered_fraction: AdaCoSteer's share of steered tokens;
    acceptance, num_draft, bonus: SpecSteer/SD per-draft acceptance, K, bonus token."""
    if method in ("llm_wo", "vanilla"):
        return TokenLatency(times.llm_step, 0.0, 0.0)
    if method == "ada_costeer":
        if not 0.0 <= steered_fraction <= 1.0:
            raise ValueError(f"steered_fraction must be in [0, 1], got {steered_fraction}")
        steered = token_latency("costeer", times, network, T=T, downlink_topk=downlink_topk)
        s = steered_fraction
        return TokenLatency(s * steered.llm + (1 - s) * times.llm_step, s * steered.transmission,
                            s * steered.optimisation)
    if method in TOKEN_LOOP_PASSES:
        passes = TOKEN_LOOP_PASSES[method] or T
        id_bytes = speculative.token_id_bytes(times.vocab)
        down = downlink_topk * (id_bytes + FP32_BYTES) if downlink_topk else times.vocab * FP32_BYTES
        transmission = network.rtt_s + network.transfer_s(id_bytes, down)
        return TokenLatency(max(times.llm_step, times.slm_pair_step), transmission, passes * times.ftrl_pass)
    if method in ("specsteer", "sd"):
        if not 0.0 <= acceptance <= 1.0:
            raise ValueError(f"acceptance must be in [0, 1], got {acceptance}")
        bonus = (method == "sd") if bonus is None else bonus
        committed = speculative.expected_tokens_per_iteration(acceptance, num_draft, bonus)
        id_bytes = speculative.token_id_bytes(times.vocab)
        rejection = 1.0 - acceptance ** num_draft
        draws = rejection + (acceptance ** num_draft if bonus else 0.0)
        per_draw = spec_topk * (id_bytes + FP32_BYTES) if method == "specsteer" else id_bytes
        down = math.ceil(num_draft / 8) + draws * per_draw  # one bit per decided position, whole bytes
        verify = max(times.llm_verify, times.slm_verify) if method == "specsteer" else times.llm_verify
        transmission = network.rtt_s + network.transfer_s(num_draft * id_bytes, down)
        return TokenLatency(verify / committed, transmission / committed, 0.0,
                            edge=num_draft * times.slm_step / committed)
    raise ValueError(f"no latency model for {method!r}; known: llm_wo, costeer, light_costeer, ada_costeer, "
                     "fuse, specsteer, sd")


def speed_ratio(method: str, times: StepTimes, network: Network, **kw) -> float:
    """tokens/s of `method` over vanilla LLM decoding's."""
    return times.llm_step / token_latency(method, times, network, **kw).total


def rtt_at_speed_ratio(method: str, times: StepTimes, network: Network, ratio: float = 0.5, **kw) -> float | None:
    """The RTT (s) at which `method` runs at `ratio` x vanilla speed; None if it is slower even at
    RTT 0. Per-token latency is linear in the RTT (one round trip per token or per iteration)."""
    at = lambda rtt: token_latency(method, times, dataclasses.replace(network, rtt_s=rtt), **kw).total
    base, slope = at(0.0), at(1.0) - at(0.0)
    target = times.llm_step / ratio
    if base > target:
        return None
    return math.inf if slope <= 0 else (target - base) / slope


def breakeven_acceptance(method: str, times: StepTimes, network: Network, **kw) -> float | None:
    """The per-draft acceptance at which SpecSteer/SD match vanilla speed (bisection: per-token
    latency falls as acceptance rises); None if slower even at acceptance 1, 0.0 if faster at 0."""
    ratio = lambda a: speed_ratio(method, times, network, acceptance=a, **kw)
    if ratio(1.0) < 1.0:
        return None
    if ratio(0.0) >= 1.0:
        return 0.0
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if ratio(mid) < 1.0 else (low, mid)
    return high


NETWORKS = {
    # Two GPUs of one testbed, as the papers' speed tables most likely ran (they state no network).
    "lan": Network(rtt_s=0.001, downlink_bits_per_s=1e9, uplink_bits_per_s=1e9),
    # A phone or laptop on a home connection to a cloud region.
    "wan": Network(rtt_s=0.02, downlink_bits_per_s=100e6, uplink_bits_per_s=20e6),
}


@dataclasses.dataclass(frozen=True)
class PaperRow:
    label: str
    method: str
    tokens_per_s: float  # the paper's measured speed
    kwargs: tuple = ()  # what the row's setting means for the model (acceptance, steered share)


# CoSteer Table 13 (Qwen2.5-7B / 1.5B, the main pair): tok/s. AdaCoSteer's steered share is not
# reported; 0.3 is our assumption (ada rows of our own runs give `steered_fraction`).
COSTEER_TABLE13 = ("Qwen2.5-7B/1.5B", (
    PaperRow("Vanilla Gen.", "llm_wo", 23.88), PaperRow("AdaCoSteer", "ada_costeer", 20.65, (("steered_fraction", 0.3),)),
    PaperRow("LightCoSteer", "light_costeer", 13.73), PaperRow("CoSteer", "costeer", 9.44)))
# SpecSteer Table 4 (Qwen3-32B / 0.6B): tok/s; acceptance = the mean of the row's three task
# columns (a per-draft probability in the model; K = 4 assumed, the paper does not state it).
SPECSTEER_TABLE4 = ("Qwen3-32B/0.6B", (
    PaperRow("Vanilla LLM", "llm_wo", 22.58), PaperRow("CoSteer", "costeer", 9.71),
    PaperRow("LightCoSteer", "fuse", 16.03), PaperRow("Standard SD", "sd", 22.13, (("acceptance", 0.3473),)),
    PaperRow("SpecSteer (λ=0.5)", "specsteer", 39.29, (("acceptance", 0.5561),)),
    PaperRow("SpecSteer (λ=0.1)", "specsteer", 53.29, (("acceptance", 0.8047),))))


def paper_table(table, times: StepTimes, network: Network, **overrides) -> list[dict]:
    """Each row of a paper's speed table beside the model's prediction, both as ratios to the
    table's vanilla row (the model predicts *shape*: which variant is faster, and by how much)."""
    _, rows = table
    paper_vanilla = rows[0].tokens_per_s
    out = []
    for row in rows:
        kwargs = {**dict(row.kwargs), **overrides}
        latency = token_latency(row.method, times, network, **kwargs)
        out.append({"label": row.label, "method": row.method, **kwargs, "paper_tokens_per_s": row.tokens_per_s,
                    "paper_ratio": row.tokens_per_s / paper_vanilla,
                    "model_ratio": times.llm_step / latency.total, **{f"model_{k}_ms": 1e3 * v for k, v in
                                                                       latency.as_dict().items() if k in "LTCE"},
                    "model_tokens_per_s": latency.tokens_per_s})
    return out
