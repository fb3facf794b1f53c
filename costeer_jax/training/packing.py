"""Sequence packing for supervised fine-tuning: several (prompt, response) examples per row.

Each row of a packed batch holds examples back to back. `segment_ids` numbers them (1, 2, ...;
0 is padding) and `positions` restart at 0 for each, so with the decoder's per-segment attention
mask (models/decoder.packed_hidden) every example is computed exactly as if it ran alone: the
loss of a packed batch is the sum of its examples' losses. The loss is on response tokens only:
`weights[t]` is 1 where token t+1 of the same example is a response token.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class TokenizedExample:
    prompt: tuple[int, ...]
    response: tuple[int, ...]

    @property
    def length(self) -> int:
        return len(self.prompt) + len(self.response)


def truncate(example: TokenizedExample, max_len: int) -> TokenizedExample | None:
    """Right truncation to max_len tokens (as TRL's SFT trainer does); None where no response token
    survives (the example would carry no loss)."""
    if example.length <= max_len:
        return example
    if len(example.prompt) >= max_len:
        return None
    return TokenizedExample(example.prompt, example.response[:max_len - len(example.prompt)])


@dataclasses.dataclass
class PackedBatch:
    tokens: np.ndarray  # [R, L] int32
    positions: np.ndarray  # [R, L] int32, restarting per example
    segment_ids: np.ndarray  # [R, L] int32, 0 = padding
    targets: np.ndarray  # [R, L] int32: the next token of the same example (0 where none)
    weights: np.ndarray  # [R, L] float32: 1 where targets[t] is a response token

    def as_dict(self, loss_capacity: int | None = None) -> dict[str, np.ndarray]:
        """The arrays a train step takes; with loss_capacity, also `loss_index` (loss_positions)."""
        out = dataclasses.asdict(self)
        if loss_capacity is not None:
            out["loss_index"] = loss_positions(self.weights, loss_capacity)
        return out

    @property
    def max_row_targets(self) -> int:
        return int((self.weights > 0).sum(axis=1).max(initial=0))

    @property
    def num_target_tokens(self) -> int:
        return int(self.weights.sum())


def loss_positions(weights: np.ndarray, capacity: int) -> np.ndarray:
    """[R, capacity] int32: each row's positions that carry a target (weights > 0), in order, then
    -1. The loss projects only these positions to the vocabulary (the output head is ~20% of a
    small model's FLOPs, and prompts are most of an SFT row's tokens)."""
    rows, _ = weights.shape
    index = np.full((rows, capacity), -1, np.int32)
    for r in range(rows):
        where = np.flatnonzero(weights[r] > 0)
        if len(where) > capacity:
            raise ValueError(f"row {r} has {len(where)} target tokens, more than loss_capacity={capacity}")
        index[r, :len(where)] = where
    return index


def loss_capacity(batches: Sequence["PackedBatch"], multiple: int = 64) -> int:
    """One `loss_index` width for every batch of a run (one compiled step): the most target tokens
    of any row, rounded up to `multiple`, at most the row length."""
    most = max((b.max_row_targets for b in batches), default=1)
    length = batches[0].tokens.shape[1] if batches else multiple
    return int(min(length, max(multiple, -(-most // multiple) * multiple)))


def pack_rows(examples: Sequence[TokenizedExample], max_len: int) -> list[list[TokenizedExample]]:
    """Greedy first-fit in the given order: a new row starts when the next example does not fit."""
    rows: list[list[TokenizedExample]] = []
    used = 0
    for e in examples:
        if e.length > max_len:
            raise ValueError(f"example of {e.length} tokens exceeds max_len={max_len}; truncate it first")
        if not rows or used + e.length > max_len:
            rows.append([])
            used = 0
        rows[-1].append(e)
        used += e.length
    return rows


def build_batch(rows: Sequence[Sequence[TokenizedExample]], max_len: int, num_rows: int | None = None) -> PackedBatch:
    """Arrays of packed rows; num_rows pads with empty rows (no loss) to a static batch shape."""
    num_rows = len(rows) if num_rows is None else num_rows
    shape = (num_rows, max_len)
    tokens, positions, segments, targets = (np.zeros(shape, np.int32) for _ in range(4))
    weights = np.zeros(shape, np.float32)
    for r, row in enumerate(rows):
        start = 0
        for seg, e in enumerate(row, start=1):
            seq = np.asarray(e.prompt + e.response, np.int32)
            n = len(seq)
            sl = slice(start, start + n)
            tokens[r, sl] = seq
            positions[r, sl] = np.arange(n)
            segments[r, sl] = seg
            targets[r, start:start + n - 1] = seq[1:]
            # Target t+1 is a response token when t+1 >= len(prompt).
            weights[r, start + len(e.prompt) - 1:start + n - 1] = 1.0
            start += n
    return PackedBatch(tokens, positions, segments, targets, weights)


def epoch_batches(examples: Sequence[TokenizedExample], max_len: int, rows_per_batch: int,
                  seed: int, epoch: int) -> list[PackedBatch]:
    """One epoch: examples shuffled by (seed, epoch), packed, cut into batches of rows_per_batch rows
    (the last padded with empty rows). Deterministic, so a resumed run rebuilds the same batches."""
    order = np.random.default_rng([seed, epoch]).permutation(len(examples))
    rows = pack_rows([examples[i] for i in order], max_len)
    return [build_batch(rows[i:i + rows_per_batch], max_len, rows_per_batch)
            for i in range(0, len(rows), rows_per_batch)]
