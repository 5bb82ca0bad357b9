"""Synthetic token streams for smoke runs: learnable, deterministic, resumable.

Each row is an arithmetic progression modulo the vocabulary (random start and stride),
so a tiny model can drive the loss well below log(vocab) in a few dozen steps. Row r
of batch i depends only on (seed, i, shard), which makes the iterator's state one int.
"""
from __future__ import annotations

import numpy as np


class SyntheticBatches:

  def __init__(self, vocab_size: int, batch_size: int, seq_len: int, seed: int = 0,
               shard_index: int = 0, shard_count: int = 1):
    if batch_size % shard_count:
      raise ValueError(f"config.train.batch_size={batch_size} is not divisible by the "
                       f"{shard_count} processes")
    self.vocab, self.rows, self.seq_len = vocab_size, batch_size // shard_count, seq_len
    self.seed, self.shard = seed, shard_index
    self.index = 0

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.index, self.shard])
    self.index += 1
    start = rng.integers(0, self.vocab, (self.rows, 1))
    stride = rng.integers(1, 4, (self.rows, 1))
    tokens = (start + stride * np.arange(self.seq_len)) % self.vocab
    return {"tokens": tokens.astype(np.int32), "mask": np.ones_like(tokens, bool)}

  def get_state(self) -> dict:
    return {"index": self.index}

  def set_state(self, state: dict) -> None:
    self.index = int(state["index"])
