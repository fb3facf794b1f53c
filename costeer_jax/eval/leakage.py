"""How much of the private context a text copies: the leakage metric (words or token ids).

A text leaks what it copies verbatim from the private context that is not also in the query
(repeating the user's own question is not a leak). Two figures per text:

* `span`: the longest run of consecutive units (words, or token ids) of the text that occurs
  verbatim in the private context and does not occur in the query;
* `share_n`: the fraction of the text's n-grams (n = 4 and 8) that occur in the private context
  and not in the query.

Words are `\\w+` runs, lowercased: "Lyon," and "lyon" are the same word; a paraphrase matches
nothing (this measures copying, not semantic leakage). Token figures take id sequences (the
model's own tokenization: a row's token_ids, or the cloud's view) against the tokenized context.
"""
from __future__ import annotations

import re
from typing import Sequence

NGRAM_SIZES = (4, 8)
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def _ngrams(units: Sequence, n: int) -> set[tuple]:
    return {tuple(units[i:i + n]) for i in range(len(units) - n + 1)}


def _occurs_in(span: tuple, units: Sequence) -> bool:
    n = len(span)
    return any(tuple(units[i:i + n]) == span for i in range(len(units) - n + 1))


def longest_copied_span(text: Sequence, context: Sequence, query: Sequence = ()) -> int:
    """Length of the longest run text[i:i+L] that occurs in `context` and not in `query`.

    For each start i, the longest run from i found in the context (a dynamic program over the
    matching positions only) is the only candidate: if that run occurs in the query, so does every
    shorter run from i, and none of them counts."""
    positions: dict = {}
    for j, unit in enumerate(context):
        positions.setdefault(unit, []).append(j)
    runs = [0] * len(text)  # longest common run starting at text[i]
    following: dict[int, int] = {}  # j -> common run starting at text[i+1] / context[j]
    for i in range(len(text) - 1, -1, -1):  # only matching positions are visited (sparse DP)
        current = {j: following.get(j + 1, 0) + 1 for j in positions.get(text[i], ())}
        runs[i] = max(current.values(), default=0)
        following = current
    best = 0
    for i, length in enumerate(runs):
        if length > best and not _occurs_in(tuple(text[i:i + length]), query):
            best = length
    return best


def ngram_leak_share(text: Sequence, context: Sequence, query: Sequence, n: int) -> float | None:
    """Fraction of the text's n-grams found in the context but not in the query (None: the text
    has fewer than n units)."""
    grams = [tuple(text[i:i + n]) for i in range(len(text) - n + 1)]
    if not grams:
        return None
    leaked = _ngrams(context, n) - _ngrams(query, n)
    return sum(g in leaked for g in grams) / len(grams)


def leakage(text: Sequence, context: Sequence, query: Sequence = ()) -> dict[str, float | None]:
    """{"span": ..., "share_4": ..., "share_8": ...} for units already split (words or ids)."""
    out: dict[str, float | None] = {"span": float(longest_copied_span(text, context, query))}
    for n in NGRAM_SIZES:
        out[f"share_{n}"] = ngram_leak_share(text, context, query, n)
    return out


def word_leakage(text: str, private_context: str, query: str) -> dict[str, float | None]:
    return leakage(words(text), words(private_context), words(query))


def union_leakage(texts: Sequence[Sequence], context: Sequence, query: Sequence = ()) -> dict[str, float | None]:
    """Leakage of what a receiver holds as several texts (e.g. SpecSteer's cloud: the committed
    text and the uplinked draft stream): the longest copied span in any of them, and the share
    of the distinct n-grams of all of them together that are copied (an n-gram in both counts once).
    One text: `leakage` (its n-grams counted with repeats, as everywhere else)."""
    if len(texts) == 1:
        return leakage(texts[0], context, query)
    out: dict[str, float | None] = {"span": float(max((longest_copied_span(t, context, query) for t in texts),
                                                      default=0))}
    for n in NGRAM_SIZES:
        grams = set().union(*(_ngrams(t, n) for t in texts))
        leaked = _ngrams(context, n) - _ngrams(query, n)
        out[f"share_{n}"] = len(grams & leaked) / len(grams) if grams else None
    return out
