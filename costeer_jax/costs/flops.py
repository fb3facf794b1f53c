"""Analytic FLOPs of the methods, split into cloud and edge, prefill and decode.

Two conventions, because the papers use them and a reproduction must say which it follows:

* `exact`: what our decoder computes (per token through a model: 2 FLOPs per multiply-add of
  every projection, q/k/v with GQA, o, gate/up/down at the real MLP width; attention scores and
  values over the positions a token attends to; the output head where logits are taken: the last
  prompt position in a prefill, every position in decode and verification).
* `narayanan`: the dense-transformer estimate of Narayanan et al. (2021) that CoSteer's Table 14
  uses: a forward over a sequence of s tokens costs 24 s l h^2 (1 + s / (6h)) (no vocabulary
  term, MLP assumed 4h, no GQA). With Qwen2.5-7B / Qwen2.5-1.5B and s = 100 + C tokens it gives
  Table 14 to the printed digits (`tests/test_costs.py`).
"""
from __future__ import annotations

import dataclasses

from costeer_jax.models.config import DecoderConfig


@dataclasses.dataclass(frozen=True)
class Shape:
    """What FLOPs depend on (a DecoderConfig carries it; presets give the papers' models)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_config(cls, cfg: DecoderConfig, name: str = "") -> "Shape":
        return cls(name or cfg.arch, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads,
                   cfg.head_dim, cfg.intermediate_size, cfg.vocab_size)


# The papers' models (config.json values of the Hugging Face releases).
PRESETS = {s.name: s for s in (
    Shape("Qwen2.5-1.5B", 28, 1536, 12, 2, 128, 8960, 151936),
    Shape("Qwen2.5-7B", 28, 3584, 28, 4, 128, 18944, 152064),
    Shape("Qwen2.5-32B", 64, 5120, 40, 8, 128, 27648, 152064),
    Shape("Llama-3.2-1B", 16, 2048, 32, 8, 64, 8192, 128256),
    Shape("Llama-3.1-8B", 32, 4096, 32, 8, 128, 14336, 128256),
    Shape("Qwen3-0.6B", 28, 1024, 16, 8, 128, 3072, 151936),
    Shape("Qwen3-8B", 36, 4096, 32, 8, 128, 12288, 151936),
    Shape("Qwen3-32B", 64, 5120, 64, 8, 128, 25600, 151936),
)}
# LLM / SLM pairs of the papers' tables.
PAPER_PAIRS = {"Qwen2.5-7B/1.5B": ("Qwen2.5-7B", "Qwen2.5-1.5B"), "Qwen2.5-32B/7B": ("Qwen2.5-32B", "Qwen2.5-7B"),
               "Llama-3.1-8B/3.2-1B": ("Llama-3.1-8B", "Llama-3.2-1B"), "Qwen3-8B/0.6B": ("Qwen3-8B", "Qwen3-0.6B"),
               "Qwen3-32B/0.6B": ("Qwen3-32B", "Qwen3-0.6B")}


def model_shape(spec: str, name: str | None = None) -> Shape:
    """The FLOPs shape of a preset name, a Hugging Face config.json, or any checkpoint --llm/--slm
    takes (alias, directory, .gguf file; only the header or config is read)."""
    if spec in PRESETS:
        return PRESETS[spec]
    if spec.endswith(".json"):
        import json
        from pathlib import Path

        return Shape.from_config(DecoderConfig.from_hf(json.loads(Path(spec).read_text())), name or spec)
    from costeer_jax.models.loading import load_config, resolve_model

    return Shape.from_config(load_config(resolve_model(spec)), name or spec)


def projection_flops(shape: Shape) -> int:
    """Matmul FLOPs of one token through every layer (no attention, no head)."""
    d, hd = shape.hidden, shape.head_dim
    qkv = d * (shape.heads + 2 * shape.kv_heads) * hd
    o = shape.heads * hd * d
    mlp = 3 * d * shape.intermediate
    return 2 * shape.layers * (qkv + o + mlp)


def attention_flops(shape: Shape, attended: int) -> int:
    """Scores and weighted values of one token attending to `attended` positions."""
    return 2 * 2 * shape.layers * shape.heads * shape.head_dim * attended


def head_flops(shape: Shape) -> int:
    return 2 * shape.hidden * shape.vocab


def exact_prefill_flops(shape: Shape, tokens: int) -> int:
    """A prompt of `tokens` (causal: token i attends to i + 1 positions), logits at the last one."""
    attended = tokens * (tokens + 1) // 2
    return tokens * projection_flops(shape) + attention_flops(shape, attended) + head_flops(shape)


def exact_decode_flops(shape: Shape, start: int, steps: int) -> int:
    """`steps` single-token steps after `start` cached positions, logits every step."""
    attended = steps * start + steps * (steps + 1) // 2
    return steps * (projection_flops(shape) + head_flops(shape)) + attention_flops(shape, attended)


def narayanan_forward_flops(shape: Shape, tokens: int) -> float:
    """Narayanan et al. (2021), forward pass: 24 s l h^2 (1 + s / (6h))."""
    l, h, s = shape.layers, shape.hidden, tokens
    return 24.0 * s * l * h * h * (1.0 + s / (6.0 * h))


@dataclasses.dataclass
class Account:
    """FLOPs of one generated answer, by where they run."""

    cloud_prefill: float = 0.0
    cloud_decode: float = 0.0
    edge_prefill: float = 0.0
    edge_decode: float = 0.0

    @property
    def cloud(self) -> float:
        return self.cloud_prefill + self.cloud_decode

    @property
    def edge(self) -> float:
        return self.edge_prefill + self.edge_decode

    @property
    def total(self) -> float:
        return self.cloud + self.edge

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "cloud": self.cloud, "edge": self.edge, "total": self.total}


# Which streams a method runs, and where: (model, text, side).
METHOD_STREAMS = {
    "llm_wo": (("llm", "query", "cloud"),),
    "llm_w": (("llm", "personalized", "cloud"),),
    "slm_wo": (("slm", "query", "edge"),),
    "slm_w": (("slm", "personalized", "edge"),),
    "cs": (("slm", "query", "edge"), ("slm", "personalized", "edge")),
}
# costeer_map/costeer_byte run CoSteer's three streams, each model in its own tokens; the
# gathers and the byte walk are vocabulary-sized, not weight-sized, and are not counted.
for _name in ("costeer", "light_costeer", "ada_costeer", "fuse", "costeer_map", "costeer_byte"):
    METHOD_STREAMS[_name] = (("llm", "query", "cloud"), ("slm", "query", "edge"), ("slm", "personalized", "edge"))


def token_loop_account(method: str, llm: Shape, slm: Shape, query_tokens: int, context_tokens: int,
                       new_tokens: int, convention: str = "exact") -> Account:
    """FLOPs of one answer of a one-token-per-step method: each stream prefills its prompt
    (query, or query + private context) and decodes `new_tokens` steps. AdaCoSteer is counted as
    CoSteer (an upper bound: its SLM stops once steering stops)."""
    if method not in METHOD_STREAMS:
        raise ValueError(f"no FLOPs accounting for {method!r}; known: {', '.join(METHOD_STREAMS)} "
                         "(specsteer/sd: speculative_account)")
    account = Account()
    for model, text, side in METHOD_STREAMS[method]:
        shape = llm if model == "llm" else slm
        prompt = query_tokens + (context_tokens if text == "personalized" else 0)
        if convention == "narayanan":
            prefill, decode = narayanan_forward_flops(shape, prompt + new_tokens), 0.0
        elif convention == "exact":
            prefill, decode = exact_prefill_flops(shape, prompt), exact_decode_flops(shape, prompt, new_tokens)
        else:
            raise ValueError(f"unknown FLOPs convention {convention!r} (exact, narayanan)")
        setattr(account, f"{side}_prefill", getattr(account, f"{side}_prefill") + prefill)
        setattr(account, f"{side}_decode", getattr(account, f"{side}_decode") + decode)
    return account


def verify_flops(shape: Shape, start: int, positions: int) -> int:
    """One forward of `positions` new tokens after `start` cached ones, logits at every position
    (a Draft-Verify verification, or a draft step when positions = 1): the same work as that many
    decode steps."""
    return exact_decode_flops(shape, start, positions)


def speculative_account(method: str, llm: Shape, slm: Shape, query_tokens: int, context_tokens: int,
                        new_tokens: int, iterations: float, drafted_tokens: float, num_draft: int) -> Account:
    """FLOPs of one SpecSteer / SD answer from its iteration counts (a run's `llm_calls` and
    `drafted_tokens` per row, or the expectation from an acceptance rate): the edge prefills
    SLM+ on query + context and runs one step per draft; the cloud prefills the LLM (and, for
    SpecSteer, SLM-) on the query and verifies K+1 positions per iteration (App. D: SLM- on the
    cloud). Attention lengths use the mean position of the answer (exact to first order)."""
    if method not in ("specsteer", "sd"):
        raise ValueError(f"speculative_account covers specsteer and sd, not {method!r}")
    middle = new_tokens // 2
    account = Account()
    account.edge_prefill = exact_prefill_flops(slm, query_tokens + context_tokens)
    account.edge_decode = drafted_tokens * verify_flops(slm, query_tokens + context_tokens + middle, 1)
    cloud_models = (llm, slm) if method == "specsteer" else (llm,)
    for shape in cloud_models:
        account.cloud_prefill += exact_prefill_flops(shape, query_tokens)
        account.cloud_decode += iterations * verify_flops(shape, query_tokens + middle, num_draft + 1)
    return account


def specsteer_table11_llm_rag(llm: Shape, new_tokens: int, context_tokens: int) -> float:
    """SpecSteer Table 11's LLM (RAG) row, reverse-engineered: 24 n l h^2 + 8 n l h c for n = 100
    generated tokens and c context tokens (Qwen3-32B: within 1% of all three printed values).
    No count of work done gives the table's SpecSteer rows (see BUILD_NOTES.md)."""
    l, h = llm.layers, llm.hidden
    return 24.0 * new_tokens * l * h * h + 8.0 * new_tokens * l * h * context_tokens
