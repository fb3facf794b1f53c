"""BM25 retrieval of a user's profile entries (SpecSteer App. B.4: top-4 entries per query)."""
from __future__ import annotations

from typing import Sequence

import numpy as np


def bm25_top_k(query: str, documents: Sequence[str], k: int) -> list[int]:
    """Indices of the k documents that score highest for `query`, best first.

    Uses bm25s (Lucene BM25, English stopwords removed). Ties, including the all-zero case of a
    query sharing no term with the profile, keep profile order so retrieval is deterministic.
    """
    if k <= 0 or not documents:
        return []
    scores = bm25_scores(query, documents)
    return [int(i) for i in np.argsort(-scores, kind="stable")[:k]]


def bm25_scores(query: str, documents: Sequence[str]) -> np.ndarray:
    """BM25 score of every document for `query` (zeros when there is nothing to rank on)."""
    import bm25s  # imported here: only the LaMP/LongLaMP adapters need it

    if not documents:
        return np.zeros(0)
    document_tokens = bm25s.tokenize(list(documents), stopwords="en", return_ids=False, show_progress=False)
    query_tokens = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
    if not query_tokens or not any(document_tokens):
        return np.zeros(len(documents))  # bm25s cannot index an empty vocabulary
    retriever = bm25s.BM25()
    retriever.index(document_tokens, show_progress=False)
    return np.nan_to_num(np.asarray(retriever.get_scores(query_tokens), dtype=np.float64))
