"""Two tokenizers side by side: each token's exact bytes, the intersection by bytes, paired
end-of-turn tokens, and the byte tables of byte-level fusion (CoSteer B.11.1 / B.11.2).

Byte-level BPE vocabularies (GPT-2, Llama-3, Qwen, SmolLM2) spell a token's bytes with the
GPT-2 byte-to-unicode alphabet; SentencePiece vocabularies spell them with U+2581 for a space
and `<0xNN>` byte-fallback tokens. A token may hold part of a UTF-8 character, so tokens are
compared as bytes, never as decoded text.

The alignment (`VocabAlignment`) is computed once per pair and cached under
`cache_dirs.cache_root()/alignments`, keyed by a hash of both vocabularies and their EOS ids.
Shared index i pairs LLM token `llm_ids[i]` with SLM token `slm_ids[i]`: every normal token
whose bytes both vocabularies hold, then every special token both spell identically (so one
tokenizer on both sides gives the whole vocabulary), then the two end-of-turn tokens paired by
role when their spellings differ.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from costeer_jax import cache_dirs
from costeer_jax.atomic_files import remove_abandoned_temps, write_bytes_atomic

log = logging.getLogger(__name__)

# Token kinds in `TokenBytes.lengths`: >= 1 a normal token of that many bytes; END an end-of-turn
# token (it ends the text: no bytes); EXCLUDED any other special or control token, never emitted.
END, EXCLUDED = 0, -1
SENTENCEPIECE_SPACE = "\u2581"


@functools.lru_cache(maxsize=1)
def unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's byte-to-unicode alphabet: printable bytes spell themselves, the
    other 68 bytes are shifted to U+0100.. in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    chars, shifted = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + shifted)] = b
            shifted += 1
    return chars


def _is_sentencepiece(vocab: dict[str, int]) -> bool:
    return "<0x0A>" in vocab and any(s.startswith(SENTENCEPIECE_SPACE) for s in list(vocab)[:5000])


def token_string_bytes(spelling: str, sentencepiece: bool) -> bytes | None:
    """A normal token's bytes from its vocabulary spelling (None: not a byte-level spelling)."""
    if sentencepiece:
        if len(spelling) == 6 and spelling.startswith("<0x") and spelling.endswith(">"):
            return bytes([int(spelling[3:5], 16)])
        return spelling.replace(SENTENCEPIECE_SPACE, " ").encode("utf-8")
    table = unicode_to_byte()
    try:
        return bytes(table[c] for c in spelling)
    except KeyError:
        return None


@dataclasses.dataclass(frozen=True)
class TokenBytes:
    """One tokenizer's tokens as bytes, over `size` ids (the model's logits width, which may
    exceed the tokenizer: padded rows are EXCLUDED)."""

    table: np.ndarray  # [max_len, size] uint8: byte j of token v (0 past its end)
    lengths: np.ndarray  # [size] int32: byte count, END or EXCLUDED

    def bytes_of(self, token: int) -> bytes:
        n = int(self.lengths[token])
        return bytes(self.table[:max(n, 0), token].tolist())


def token_bytes(tokenizer, size: int | None = None, eos_ids: Sequence[int] = ()) -> TokenBytes:
    """Every token's exact bytes; specials are EXCLUDED except `eos_ids`, which are END.

    Refuses a vocabulary whose normal tokens have no byte spelling (neither byte-level BPE nor
    SentencePiece with byte fallback): the cross-tokenizer methods need exact bytes."""
    vocab = tokenizer.get_vocab()
    size = max(size or 0, len(tokenizer), max(vocab.values()) + 1)
    special = set(tokenizer.get_added_vocab()) | set(tokenizer.all_special_tokens)
    sentencepiece = _is_sentencepiece(vocab)
    spelled: dict[int, bytes] = {}
    unspelled = []
    for spelling, i in vocab.items():
        if spelling in special:
            continue
        b = token_string_bytes(spelling, sentencepiece)
        if b is None:
            unspelled.append(spelling)
        elif b:
            spelled[i] = b
    if len(unspelled) > len(vocab) // 100:
        raise ValueError(f"{len(unspelled)} of {len(vocab)} tokens (e.g. {unspelled[:3]}) have no byte spelling: "
                         "this tokenizer is neither byte-level BPE nor SentencePiece with byte fallback, so the "
                         "cross-tokenizer methods cannot align it; use costeer with a same-tokenizer pair")
    max_len = max(len(b) for b in spelled.values())
    table = np.zeros((max_len, size), np.uint8)
    lengths = np.full((size,), EXCLUDED, np.int32)
    for i, b in spelled.items():
        table[:len(b), i] = np.frombuffer(b, np.uint8)
        lengths[i] = len(b)
    for i in eos_ids:
        lengths[int(i)] = END
    return TokenBytes(table, lengths)


@dataclasses.dataclass(frozen=True)
class VocabAlignment:
    llm_ids: np.ndarray  # [N] int32: shared index -> LLM token
    slm_ids: np.ndarray  # [N] int32: shared index -> SLM token
    eos_shared: np.ndarray  # shared indices that end generation (either side's EOS)
    llm_bytes: TokenBytes
    slm_bytes: TokenBytes
    normal_shared: int  # how many of the N are normal tokens (the rest are specials)

    @property
    def size(self) -> int:
        return int(self.llm_ids.shape[0])

    def summary(self, llm_vocab: int, slm_vocab: int) -> dict:
        llm_normal = int(np.sum(self.llm_bytes.lengths > 0))
        slm_normal = int(np.sum(self.slm_bytes.lengths > 0))
        return {"shared_tokens": self.size, "shared_normal_tokens": self.normal_shared,
                "llm_normal_tokens": llm_normal, "slm_normal_tokens": slm_normal,
                "llm_vocab": llm_vocab, "slm_vocab": slm_vocab,
                "llm_share_kept": round(self.normal_shared / max(llm_normal, 1), 4),
                "slm_share_kept": round(self.normal_shared / max(slm_normal, 1), 4)}


def compute_alignment(llm_tokenizer, slm_tokenizer, llm_eos: Sequence[int], slm_eos: Sequence[int],
                      llm_size: int | None = None, slm_size: int | None = None) -> VocabAlignment:
    """The alignment of two tokenizers (uncached; see `align_vocabularies`). llm_eos/slm_eos:
    each model's ids that end a turn, the first being its main end-of-turn token."""
    llm_bytes = token_bytes(llm_tokenizer, llm_size, llm_eos)
    slm_bytes = token_bytes(slm_tokenizer, slm_size, slm_eos)
    slm_by_bytes = {slm_bytes.bytes_of(i): i for i in np.flatnonzero(slm_bytes.lengths > 0)}
    pairs = []
    for i in np.flatnonzero(llm_bytes.lengths > 0):
        j = slm_by_bytes.get(llm_bytes.bytes_of(i))
        if j is not None:
            pairs.append((int(i), int(j)))
    normal = len(pairs)
    llm_vocab, slm_vocab = llm_tokenizer.get_vocab(), slm_tokenizer.get_vocab()
    llm_special = set(llm_tokenizer.get_added_vocab()) | set(llm_tokenizer.all_special_tokens)
    slm_special = set(slm_tokenizer.get_added_vocab()) | set(slm_tokenizer.all_special_tokens)
    for spelling in sorted(llm_special & slm_special, key=lambda s: llm_vocab.get(s, 0)):
        if spelling in llm_vocab and spelling in slm_vocab:
            pairs.append((llm_vocab[spelling], slm_vocab[spelling]))
    main = (int(llm_eos[0]), int(slm_eos[0]))
    if main not in pairs:
        pairs.append(main)
    llm_ids = np.asarray([p[0] for p in pairs], np.int32)
    slm_ids = np.asarray([p[1] for p in pairs], np.int32)
    ends = np.flatnonzero(np.isin(llm_ids, list(llm_eos)) | np.isin(slm_ids, list(slm_eos))).astype(np.int32)
    return VocabAlignment(llm_ids, slm_ids, ends, llm_bytes, slm_bytes, normal)


def _vocab_digest(tokenizer, eos: Sequence[int], size: int | None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(sorted(tokenizer.get_vocab().items()), ensure_ascii=False).encode())
    h.update(json.dumps(sorted(tokenizer.get_added_vocab().items()), ensure_ascii=False).encode())
    h.update(json.dumps([list(map(int, eos)), size]).encode())
    return h.hexdigest()


def alignments_dir() -> Path:
    return cache_dirs.cache_root() / "alignments"


FORMAT_VERSION = 1


def align_vocabularies(llm_tokenizer, slm_tokenizer, llm_eos: Sequence[int], slm_eos: Sequence[int],
                       llm_size: int | None = None, slm_size: int | None = None,
                       cache: bool = True) -> VocabAlignment:
    """`compute_alignment`, cached on disk per pair (a corrupt cache file is recomputed)."""
    key = hashlib.sha256((f"v{FORMAT_VERSION}" + _vocab_digest(llm_tokenizer, llm_eos, llm_size)
                          + _vocab_digest(slm_tokenizer, slm_eos, slm_size)).encode()).hexdigest()[:24]
    path = alignments_dir() / f"{key}.npz"
    if cache and path.exists():
        try:
            with np.load(path) as f:
                return VocabAlignment(f["llm_ids"], f["slm_ids"], f["eos_shared"],
                                      TokenBytes(f["llm_table"], f["llm_lengths"]),
                                      TokenBytes(f["slm_table"], f["slm_lengths"]), int(f["normal"]))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:  # torn or foreign: recompute
            log.warning("vocabulary alignment cache %s is unreadable (%s: %s); computing it again",
                        path, type(e).__name__, e)
    alignment = compute_alignment(llm_tokenizer, slm_tokenizer, llm_eos, slm_eos, llm_size, slm_size)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_temps(path.parent, "vocabulary alignment", path.name)
        archive = io.BytesIO()
        np.savez(archive, llm_ids=alignment.llm_ids, slm_ids=alignment.slm_ids, eos_shared=alignment.eos_shared,
                 llm_table=alignment.llm_bytes.table, llm_lengths=alignment.llm_bytes.lengths,
                 slm_table=alignment.slm_bytes.table, slm_lengths=alignment.slm_bytes.lengths,
                 normal=np.int64(alignment.normal_shared))
        write_bytes_atomic(path, archive.getvalue())
    return alignment
