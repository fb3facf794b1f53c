"""Reference-overlap metrics: ROUGE-1 / ROUGE-L F-measure and METEOR, all scaled x100.

ROUGE uses Google's rouge-score package with Porter stemming (its tokenizer lowercases and keeps
alphanumeric runs). METEOR is NLTK's meteor_score (alpha 0.9, beta 3, gamma 0.5) on
`word_tokenize(text, preserve_line=True)` tokens (no Punkt model needed) with WordNet 3.0 read
from the local folder `wordnet_setup` builds, never downloaded.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any, Sequence

from costeer_jax.eval.wordnet_setup import (DEFAULT_TARGET, WordNetMissingError, install_hint, is_wordnet_installed,
                                            wordnet_dir)

ROUGE_KEYS = ("rouge1", "rougeL")
METEOR_KEY = "meteor"


@functools.lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """{"rouge1", "rougeL"}: F-measure x100 of `prediction` against `reference`."""
    scores = _rouge_scorer().score(reference, prediction)  # rouge-score takes (target, prediction)
    return {key: 100.0 * scores[key].fmeasure for key in ROUGE_KEYS}


def meteor_tokens(text: str) -> list[str]:
    from nltk.tokenize import word_tokenize

    return word_tokenize(text, preserve_line=True)


@functools.lru_cache(maxsize=4)
def load_wordnet(nltk_data_dir: str | Path | None = None) -> Any:
    """NLTK's WordNet reader over nltk_data_dir (default <repo>/.nltk_data) with WordNet 3.0."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    data_dir = Path(nltk_data_dir) if nltk_data_dir is not None else DEFAULT_TARGET
    if not is_wordnet_installed(data_dir):
        raise WordNetMissingError(f"METEOR needs WordNet 3.0 in {wordnet_dir(data_dir)}: {install_hint()}")
    # NLTK only opens corpora under a registered data path, so register ours.
    if str(data_dir) not in nltk.data.path:
        nltk.data.path.insert(0, str(data_dir))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The multilingual functions are not available")
        return WordNetCorpusReader(str(wordnet_dir(data_dir)), None)  # None: no Open Multilingual WordNet


def meteor(prediction: str, reference: str, wordnet: Any = None) -> float:
    """METEOR x100 of `prediction` against one reference; 0 when either side has no tokens."""
    from nltk.translate.meteor_score import meteor_score

    hypothesis, target = meteor_tokens(prediction), meteor_tokens(reference)
    if not hypothesis or not target:
        return 0.0
    return 100.0 * meteor_score([target], hypothesis, wordnet=wordnet if wordnet is not None else load_wordnet())


def overlap_scores(predictions: Sequence[str], references: Sequence[str], metrics: Sequence[str],
                   nltk_data_dir: str | Path | None = None) -> list[dict[str, float]]:
    """Per-example scores for metrics among "rouge" (rouge1, rougeL) and "meteor"."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    unknown = set(metrics) - {"rouge", "meteor"}
    if unknown:
        raise ValueError(f"unknown overlap metric(s) {sorted(unknown)}; choose from rouge, meteor")
    wordnet = load_wordnet(nltk_data_dir) if "meteor" in metrics else None
    rows = []
    for prediction, reference in zip(predictions, references):
        row: dict[str, float] = {}
        if "rouge" in metrics:
            row.update(rouge(prediction, reference))
        if "meteor" in metrics:
            row[METEOR_KEY] = meteor(prediction, reference, wordnet)
        rows.append(row)
    return rows
