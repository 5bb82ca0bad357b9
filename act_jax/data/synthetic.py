"""Synthetic token streams for smoke runs: learnable, deterministic, resumable.

Each row is an arithmetic progression modulo the vocabulary (random start and stride),
so a tiny model can drive the loss well below log(vocab) in a few dozen steps. Row r
of global batch i depends only on (seed, i, r), never on how many processes share the
batch: process p of P yields rows [p*B/P, (p+1)*B/P) of the very batch a 1-process run
sees, and the iterator's state is one int.
"""
from __future__ import annotations

import numpy as np


class SyntheticBatches:
  """Global batches of `batch_size` rows; this process yields block `shard_index`."""

  def __init__(self, vocab_size: int, batch_size: int, seq_len: int, seed: int = 0,
               shard_index: int = 0, shard_count: int = 1):
    if batch_size % shard_count:
      raise ValueError(f"config.train.batch_size={batch_size} is not divisible by the "
                       f"{shard_count} process shards")
    if not 0 <= shard_index < shard_count:
      raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    self.vocab, self.batch_size, self.seq_len = vocab_size, batch_size, seq_len
    rows = batch_size // shard_count
    self.lo, self.hi = shard_index * rows, (shard_index + 1) * rows
    self.seed = seed
    self.index = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    # Draw the whole global batch's (start, stride) pairs, then keep this shard's rows:
    # 2 ints a row, so every process drawing all of them costs nothing.
    rng = np.random.default_rng([self.seed, self.index])
    self.index += 1
    start = rng.integers(0, self.vocab, (self.batch_size, 1))[self.lo:self.hi]
    stride = rng.integers(1, 4, (self.batch_size, 1))[self.lo:self.hi]
    tokens = (start + stride * np.arange(self.seq_len)) % self.vocab
    return {"tokens": tokens.astype(np.int32), "mask": np.ones_like(tokens, bool)}

  def get_state(self) -> dict:
    return {"index": self.index}

  def set_state(self, state: dict) -> None:
    self.index = int(state["index"])
