"""The papers' tables as data: which runs (method + flags), on which tasks, scored by which
metrics, with the paper's own numbers for the pair it reports. `experiments/reproduce.py` runs
what is missing and prints ours beside the paper's.

Paper numbers are the CoSteer paper's Qwen2.5-7B/1.5B rows and the SpecSteer paper's Qwen3-0.6B/32B
rows (Pair A): they are printed for reference, not expected from a small local pair.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

# The LongLaMP columns of both papers, in their order.
LONGLAMP_TASKS = ("longlamp_abstract", "longlamp_review", "longlamp_writing")
R1_RL_MET = ("rouge1", "rougeL", "meteor")
R1_RL = ("rouge1", "rougeL")
SPECSTEER_CONTEXT = ("--retrieval=bm25", "--retrieval_k=4")  # SpecSteer B.4: BM25, k = 4


@dataclasses.dataclass(frozen=True)
class Run:
    label: str  # the row, as the paper names it
    method: str
    flags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class TableSpec:
    name: str
    caption: str
    kind: str  # "runs": generate + evaluate; "flops" / "latency": analytic (plus runs for latency)
    runs: tuple[Run, ...] = ()
    tasks: tuple[str, ...] = LONGLAMP_TASKS
    columns: tuple[str, ...] = R1_RL_MET  # metric keys per task
    paper_pair: str = "Qwen2.5-7B/1.5B"
    paper: dict[str, tuple[float, ...]] = dataclasses.field(default_factory=dict)  # label -> task x column values
    needs: tuple[str, ...] = ()  # what must be supplied before the table can run at all
    extra_columns: tuple[str, ...] = ()  # run figures: tokens_per_s, acceptance
    common_flags: tuple[str, ...] = ()  # flags of every run

    @property
    def metrics(self) -> tuple[str, ...]:
        wanted = {"rouge1": "rouge", "rougeL": "rouge", "meteor": "meteor"}
        return tuple(dict.fromkeys(wanted[c] for c in self.columns if c in wanted))


def _costeer_baselines(*extra: str) -> tuple[Run, ...]:
    return tuple(Run(label, method, extra) for label, method in (
        ("SLM w/o", "slm_wo"), ("SLM w/", "slm_w"), ("LLM w/o", "llm_wo"), ("CoSteer", "costeer"), ("LLM w/", "llm_w")))


TABLES: dict[str, TableSpec] = {}
# The papers' printed values: table -> row label -> one value per (task, column), in order.
PAPER_NUMBERS = json.loads((Path(__file__).with_name("paper_numbers.json")).read_text(encoding="utf-8"))


def _register(spec: TableSpec) -> None:
    numbers = {label: tuple(values) for label, values in PAPER_NUMBERS.get(spec.name, {}).items()}
    TABLES[spec.name] = dataclasses.replace(spec, paper=numbers)


_register(TableSpec(
    "costeer_table1", "CoSteer Table 1 (LongLaMP columns): baselines and CoSteer", "runs",
    runs=_costeer_baselines(),
    needs=("the CoGenesis columns need an LLM judge (evaluate.py --metrics=judge --judge_url=...) and the "
           "preference columns a reward model (--metrics=reward); this table runs the LongLaMP columns",)))
_register(TableSpec(
    "costeer_table2", "CoSteer Table 2: alternatives and ablations", "runs",
    runs=(Run("LA/CS", "cs"), Run("CoSteer", "costeer"), Run("w/o alpha", "costeer", ("--alpha=0",)),
          Run("w/o KL", "costeer", ("--lam=0",))),
    needs=("the SFT and proxy-tuning rows need a fine-tuned SLM (--slm_sft; LoRA training is not built yet)",)))
_register(TableSpec(
    "costeer_table9", "CoSteer Table 9: a weaker retriever (BM25 over the whole profile)", "runs",
    runs=_costeer_baselines(), common_flags=("--retrieval=bm25",)))
_register(TableSpec(
    "costeer_table10", "CoSteer Table 10: irrelevant context from another task", "runs",
    runs=_costeer_baselines(), common_flags=("--noise=irrelevant",)))
_register(TableSpec(
    "costeer_table11", "CoSteer Table 11: cross-architecture (CoSteer_map, CoSteer_byte)", "runs",
    runs=(Run("SLM w/o", "slm_wo"), Run("SLM w/", "slm_w"), Run("LLM w/o", "llm_wo"),
          Run("CoSteer_map", "costeer_map"), Run("CoSteer_byte", "costeer_byte"), Run("LLM w/", "llm_w")),
    paper_pair="Llama-3.1-8B/Qwen2.5-1.5B",
    needs=("a pair of two tokenizers, e.g. --llm=qwen2.5-coder-1.5b-instruct --slm=smollm2-135m-instruct "
           "(the paper's: Llama-3.1-8B steered by Qwen2.5-1.5B)",)))
_register(TableSpec(
    "costeer_table12", "CoSteer Table 12: the variants", "runs",
    runs=(Run("AdaCoSteer", "ada_costeer"), Run("LightCoSteer", "light_costeer"), Run("CoSteer", "costeer")),
    extra_columns=("tokens_per_s",)))
_register(TableSpec("costeer_table13", "CoSteer Table 13: speed of the variants (latency model + measured)",
                    "latency", runs=(Run("Vanilla Gen.", "llm_wo"), Run("AdaCoSteer", "ada_costeer"),
                                     Run("LightCoSteer", "light_costeer"), Run("CoSteer", "costeer")),
                    columns=(), extra_columns=("tokens_per_s",)))
_register(TableSpec("costeer_table14", "CoSteer Table 14: TFLOPs against the context length", "flops", columns=()))
_register(TableSpec(
    "costeer_figure2", "CoSteer Figure 2: ROUGE-L against alpha, beta, eta, lambda, T (abstract)", "runs",
    runs=tuple(Run(f"{name}={value}", "costeer", (f"--{name}={value}",)) for name, values in
               (("alpha", (0, 1, 2, 4)), ("beta", (0.5, 1, 2, 4)), ("eta", (1, 10, 100)), ("lam", (0.5, 2, 8)),
                ("T", (1, 5, 20, 50))) for value in values),
    tasks=("longlamp_abstract",), columns=("rougeL",)))
_register(TableSpec(
    "specsteer_table2", "SpecSteer Table 2 (Pair A rows): SLM, SLM+, LLM, SpecSteer", "runs",
    runs=(Run("SLM", "slm_wo"), Run("SLM+", "slm_w"), Run("LLM", "llm_wo"), Run("SpecSteer", "specsteer")),
    common_flags=SPECSTEER_CONTEXT, columns=R1_RL, paper_pair="Qwen3-32B/0.6B",
    needs=("the paper's full LongLaMP sets come from the LongLaMP files (--task=longlamp_2/3/4 --data_dir=... "
           "--split); here the CoSteer release's rows with BM25 top-4 records stand in",)))
_register(TableSpec(
    "specsteer_table4", "SpecSteer Table 4: quality and speed of the collaborative methods", "latency",
    runs=(Run("Vanilla LLM", "llm_wo"), Run("CoSteer", "costeer"), Run("LightCoSteer", "fuse"),
          Run("Standard SD", "sd"), Run("SpecSteer (λ=0.5)", "specsteer", ("--spec_lambda=0.5",)),
          Run("SpecSteer (λ=0.1)", "specsteer", ("--spec_lambda=0.1",))),
    common_flags=SPECSTEER_CONTEXT, columns=R1_RL, paper_pair="Qwen3-32B/0.6B",
    extra_columns=("tokens_per_s", "acceptance")))
_register(TableSpec(
    "specsteer_table7", "SpecSteer Table 7: noisy specialists (appended noise, BM25, BGE)", "runs",
    runs=(Run("SLM+ (Noise)", "slm_w", SPECSTEER_CONTEXT + ("--noise=appended",)),
          Run("SLM+ (BM25)", "slm_w", SPECSTEER_CONTEXT), Run("SLM+ (BGE)", "slm_w", ("--retrieval_k=4",)),
          Run("SpecSteer (Noise)", "specsteer", SPECSTEER_CONTEXT + ("--noise=appended",)),
          Run("SpecSteer (BM25)", "specsteer", SPECSTEER_CONTEXT),
          Run("SpecSteer (BGE)", "specsteer", ("--retrieval_k=4",))),
    columns=R1_RL, paper_pair="Qwen3-32B/0.6B"))
_register(TableSpec(
    "specsteer_table9", "SpecSteer Table 9: steering strength beta", "runs",
    runs=tuple(Run(f"β = {b}", "specsteer", (f"--spec_beta={b}",)) for b in (0.5, 1.0, 1.5, 2.0, 2.5)),
    common_flags=SPECSTEER_CONTEXT, columns=R1_RL, paper_pair="Qwen3-32B/0.6B"))
_register(TableSpec(
    "specsteer_table10", "SpecSteer Table 10: verification threshold lambda", "runs",
    runs=tuple(Run(f"λ = {lam}", "specsteer", (f"--spec_lambda={lam}",)) for lam in (1.0, 0.5, 0.1, 0.01)),
    common_flags=SPECSTEER_CONTEXT, columns=R1_RL, paper_pair="Qwen3-32B/0.6B", extra_columns=("tokens_per_s", "acceptance")))
_register(TableSpec("specsteer_table11", "SpecSteer Table 11: total TFLOPs for 100 tokens", "flops", columns=(),
                    paper_pair="Qwen3-32B/0.6B"))


def table(name: str) -> TableSpec:
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; registered: {', '.join(TABLES)}")
    return TABLES[name]
