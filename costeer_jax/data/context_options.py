"""Which private context a LongLaMP row carries: the retriever, how many records, and the papers'
noise settings. One place for the robustness protocols of both papers:

- retrieval "bge" (default): the release's ranking (`profile` sorted by bge-reranker score;
  `top_5` is its head), CoSteer's main setting; "bm25": BM25 over the row's whole profile
  against the query (CoSteer B.10.1 / Table 9, SpecSteer A.3 "BM25"). `k` records either way.
- noise "irrelevant" (CoSteer B.10.2 / Table 10): the records are replaced by k records of
  another task (a review history for a writing query), drawn with a seed from that task's file.
- noise "appended" (SpecSteer A.3 "Noise" / Table 7): after the retrieved records, k_noise
  records of *other users* of the same task that score lowest under BM25 against the query
  (ties broken by the seed) are appended.

Draws are seeded per row (seed and row id), so a row's context does not depend on --limit or
on which other rows are loaded; noise never reuses the row's own profile.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, Callable, Sequence

import numpy as np

RETRIEVERS = ("bge", "bm25")
NOISE_SETTINGS = ("none", "irrelevant", "appended")

# CoSteer B.10.2's example pairs an Abstract query with Review records; the other two tasks
# borrow from each other (the abstract file is not shipped here, so nothing borrows from it).
IRRELEVANT_SOURCE = {"longlamp_abstract": "longlamp_review", "longlamp_review": "longlamp_writing",
                     "longlamp_writing": "longlamp_review"}


@dataclasses.dataclass(frozen=True)
class ContextOptions:
    retrieval: str = "bge"
    k: int = 5
    noise: str = "none"
    noise_k: int | None = None  # appended records (default: k)
    noise_seed: int = 0

    def __post_init__(self):
        if self.retrieval not in RETRIEVERS:
            raise ValueError(f"--retrieval must be one of {', '.join(RETRIEVERS)}, got {self.retrieval!r}")
        if self.noise not in NOISE_SETTINGS:
            raise ValueError(f"--noise must be one of {', '.join(NOISE_SETTINGS)}, got {self.noise!r}")
        if self.k < 1:
            raise ValueError(f"--retrieval_k must be >= 1 (records in the private context), got {self.k}")
        if self.noise_k is not None and self.noise_k < 1:
            raise ValueError(f"--noise_k must be >= 1, got {self.noise_k}")

    @property
    def is_default(self) -> bool:
        return self == ContextOptions()

    @property
    def appended_k(self) -> int:
        return self.noise_k if self.noise_k is not None else self.k

    def as_config(self) -> dict[str, Any]:
        """What a generation row records (evaluation rebuilds the same context from it)."""
        config = {"retrieval": self.retrieval, "retrieval_k": self.k, "noise": self.noise}
        if self.noise != "none":
            config["noise_seed"] = self.noise_seed
        if self.noise == "appended":
            config["noise_k"] = self.appended_k
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> "ContextOptions":
        """From a row's config (the keys of as_config among the hyperparameters); default when absent."""
        if not config or "retrieval" not in config:
            return cls()
        return cls(retrieval=config.get("retrieval", "bge"), k=int(config.get("retrieval_k", 5)),
                   noise=config.get("noise", "none"), noise_k=config.get("noise_k"),
                   noise_seed=int(config.get("noise_seed", 0)))


def row_rng(seed: int, row_id: Any, purpose: str) -> np.random.Generator:
    """A generator of its own per (seed, row, purpose): stable across processes and --limit."""
    digest = hashlib.sha256(f"{seed}/{row_id}/{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def ranked_records(query: str, profile: Sequence[dict], text_of: Callable[[dict], str],
                   options: ContextOptions) -> list[int]:
    """Indices into `profile` of the k records the row's context lists, best first.

    bge: the release's order (the profile is sorted by bge score, highest first); bm25: BM25 of
    each record's text against the query over the whole profile."""
    from costeer_jax.data.retrieval import bm25_top_k

    if options.retrieval == "bm25":
        return bm25_top_k(query, [text_of(record) for record in profile], options.k)
    return list(range(min(options.k, len(profile))))


def irrelevant_records(row_id: Any, source_rows: Sequence[dict], options: ContextOptions) -> list[dict]:
    """k records of one randomly drawn row of another task (CoSteer B.10.2), in drawn order."""
    rng = row_rng(options.noise_seed, row_id, "irrelevant")
    candidates = [row for row in source_rows if row.get("profile")]
    if not candidates:
        raise ValueError("--noise=irrelevant: the source task's file has no row with a profile")
    donor = candidates[int(rng.integers(len(candidates)))]
    chosen = rng.permutation(len(donor["profile"]))[:options.k]
    return [donor["profile"][int(i)] for i in chosen]


def low_similarity_records(query: str, own_profile: Sequence[dict], other_rows: Sequence[dict],
                           text_of: Callable[[dict], str], row_id: Any, options: ContextOptions) -> list[dict]:
    """The appended_k records of other users that BM25 scores lowest against the query (SpecSteer
    A.3 "Noise"); ties (often all-zero scores) are broken by the seeded order. Records whose text
    also occurs in the row's own profile are skipped: noise never reuses the row's own history."""
    from costeer_jax.data.retrieval import bm25_scores

    own_texts = {text_of(record) for record in own_profile}
    pool = [record for row in other_rows for record in row.get("profile") or []
            if text_of(record) not in own_texts]
    if not pool:
        raise ValueError("--noise=appended needs other rows with profiles in the task file (only one user here)")
    order = row_rng(options.noise_seed, row_id, "appended").permutation(len(pool))
    scores = bm25_scores(query, [text_of(pool[int(i)]) for i in order])
    lowest = np.argsort(scores, kind="stable")[:options.appended_k]
    return [pool[int(order[int(i)])] for i in lowest]
