"""grain input pipeline: seeded global shuffle, per-process shards, bucketed padding.

Batches are planned globally. The shuffled stream (reshuffled every epoch) is cut
into global batches of `batch_size * shard_count` records; process p takes the
p-th contiguous block, which is the layout `jax.make_array_from_process_local_data`
expects. Each global batch is padded to the smallest bucket that fits its longest
record, computed from a table of lengths that every process holds, so all
processes pick the same shape without talking to each other, and training
compiles one program per bucket.

The iterator is a grain `DatasetIterator`: `get_state()` is a small JSON-able dict
the training checkpoint stores; `set_state()` resumes at the next batch.
"""
from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Literal, Sequence

import grain
import numpy as np

Mode = Literal["supervised", "generation"]
# The token field each mode pads.
_TOKEN_FIELD = {"supervised": "input_ids", "generation": "prompt_ids"}


def power_of_two_buckets(max_len: int, min_len: int = 32) -> tuple[int, ...]:
  """min_len, 2*min_len, ... below max_len, then max_len itself."""
  buckets, b = [], min_len
  while b < max_len:
    buckets.append(b)
    b *= 2
  return tuple(buckets) + (max_len,)


def bucket_for(length: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if length <= b:
      return b
  raise ValueError(f"length {length} exceeds the largest bucket {buckets[-1]}")


def record_lengths(source: Any, field: str, chunk: int = 1024) -> np.ndarray:
  """Token counts of one field for every record (one pass over the source)."""
  n = len(source)
  out = np.empty(n, dtype=np.int64)
  batched = hasattr(source, "__getitems__")
  for c in range(0, n, chunk):
    idx = list(range(c, min(n, c + chunk)))
    recs = source.__getitems__(idx) if batched else [source[i] for i in idx]
    out[c:c + len(idx)] = [len(r[field]) for r in recs]
  return out


def as_text(v: Any) -> Any:
  """A record field as text: array_record gives bytes (and arrays of bytes)."""
  if isinstance(v, bytes):
    return v.decode("utf-8")
  if isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.dtype == object):
    return [as_text(x) for x in v]
  return v


def _pad(seqs: Sequence[np.ndarray], length: int, value: int,
         left: bool) -> np.ndarray:
  out = np.full((len(seqs), length), value, dtype=np.int32)
  for i, s in enumerate(seqs):
    if len(s):
      if left:
        out[i, length - len(s):] = s
      else:
        out[i, :len(s)] = s
  return out


def collate(records: Sequence[dict[str, Any]], length: int, pad_id: int,
            mode: Mode, meta: bool = False, target_width: int | None = None
            ) -> dict[str, Any]:
  """Pads each record's token field to `length`.

  supervised: `input_ids` right-padded as `tokens`, with `mask` (real tokens)
  and `loss_mask` (target tokens), the keys `act_jax.losses` reads, and
  `target_index` / `target_mask` [B, M]: the loss tokens' positions (M: `target_width`,
  default a power of two >= 8 holding the longest row's), so the loss projects only
  them to the vocabulary.
  generation: `prompt_ids` left-padded as `tokens` + `mask`, so generated tokens
  follow every prompt at the same position.
  prefix: records that carry their frozen-prefix activations (`data.prefix_cache`)
  give `prefix` [B, ..., length (+ C), D], padded on the same side as the tokens.
  meta: also `meta`, the records' other non-array fields (labels, actions, ids) as
  lists of str, for rewards; a stage strips it before the batch goes on device.
  """
  field, left = ("input_ids", False) if mode == "supervised" else ("prompt_ids", True)
  ids = [np.asarray(r[field]) for r in records]
  batch = {"tokens": _pad(ids, length, pad_id, left),
           "mask": _pad([np.ones(len(x), np.int32) for x in ids], length, 0,
                        left).astype(bool)}
  if mode == "supervised":
    batch["loss_mask"] = _pad([np.asarray(r["loss_mask"]) for r in records],
                              length, 0, left).astype(bool)
    batch.update(target_positions(batch["loss_mask"] & batch["mask"], target_width))
  if "prefix" in records[0]:
    batch["prefix"] = _pad_prefix([np.asarray(r["prefix"]) for r in records], ids, length,
                                  left)
  if meta:
    keys = [k for k, v in records[0].items()
            if not (isinstance(v, np.ndarray) and v.dtype != object)]
    batch["meta"] = {k: [as_text(r[k]) for r in records] for k in keys}
  return batch


def _pad_prefix(h: Sequence[np.ndarray], ids: Sequence[np.ndarray], length: int,
                left: bool) -> np.ndarray:
  """Prefix activations [..., n_i (+ C), D] padded like their tokens to `length`; a tail
  of C positions beyond the tokens (a critic record's answer slots) stays at the end."""
  extra = h[0].shape[-2] - len(ids[0])
  out = np.zeros((len(h),) + h[0].shape[:-2] + (length + extra, h[0].shape[-1]), np.float32)
  for i, x in enumerate(h):
    n = x.shape[-2]
    if left:
      out[i, ..., length + extra - n:, :] = x
    else:
      out[i, ..., :n, :] = x
  return out


def _pow2_width(n: int, min_width: int = 8) -> int:
  return max(min_width, 1 << max(n - 1, 0).bit_length())


def target_width(source: Any, chunk: int = 1024) -> int:
  """The `target_index` width that holds every record's loss tokens."""
  most = 0
  for i in range(0, len(source), chunk):
    idx = list(range(i, min(i + chunk, len(source))))
    recs = source.__getitems__(idx) if hasattr(source, "__getitems__") else [
        source[j] for j in idx]
    most = max([most] + [int(np.sum(np.asarray(r["loss_mask"])[1:])) for r in recs])
  return _pow2_width(most)


def target_positions(loss_mask: np.ndarray, width: int | None = None
                     ) -> dict[str, np.ndarray]:
  """`target_index` [B, M] (positions of loss tokens after the first position, 0-padded)
  and `target_mask` [B, M]; M = `width`, default a power of two >= 8."""
  rows = [np.flatnonzero(m[1:]) + 1 for m in loss_mask]
  longest = max(len(r) for r in rows)
  width = width or _pow2_width(longest)
  if longest > width:
    raise ValueError(f"a record has {longest} loss tokens > target width {width}")
  index = np.zeros((len(rows), width), np.int32)
  valid = np.zeros((len(rows), width), bool)
  for i, r in enumerate(rows):
    index[i, :len(r)], valid[i, :len(r)] = r, True
  return {"target_index": index, "target_mask": valid}


class _ShuffledOrder:
  """Record index at each position of the endless stream; a new permutation per
  epoch, derived from (seed, epoch) so any process can compute any position.

  With `lengths` and `window` (records, a multiple of the global batch), each window of
  the permutation is sorted by length and its batches are shuffled again: batches hold
  records of similar length, so they pad to smaller buckets, yet every record is still
  seen once per epoch in a random batch order.
  """

  def __init__(self, n: int, seed: int, lengths: np.ndarray | None = None,
               window: int = 0, batch: int = 1):
    self._n, self._seed = n, seed
    self._lengths, self._window, self._batch = lengths, window, batch
    self._cache: dict[int, np.ndarray] = {}
    self._lock = threading.Lock()

  def _epoch(self, epoch: int) -> np.ndarray:
    with self._lock:
      if epoch not in self._cache:
        if len(self._cache) >= 2:
          self._cache.pop(min(self._cache))
        rng = np.random.default_rng([self._seed, epoch])
        perm = rng.permutation(self._n)
        if self._window:
          perm = self._group(perm, rng)
        self._cache[epoch] = perm
      return self._cache[epoch]

  def _group(self, perm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = []
    for start in range(0, len(perm), self._window):
      chunk = perm[start:start + self._window]
      chunk = chunk[np.argsort(self._lengths[chunk], kind="stable")]
      full = len(chunk) // self._batch * self._batch
      batches = chunk[:full].reshape(-1, self._batch)[rng.permutation(full // self._batch)]
      out.extend([batches.reshape(-1), chunk[full:]])
    return np.concatenate(out)

  def __getitem__(self, positions: slice) -> np.ndarray:
    pos = np.arange(positions.start, positions.stop)
    epochs, offsets = np.divmod(pos, self._n)
    out = np.empty(len(pos), dtype=np.int64)
    for e in np.unique(epochs):
      sel = epochs == e
      out[sel] = self._epoch(int(e))[offsets[sel]]
    return out


class _GroupedOrder:
  """`_ShuffledOrder` over groups of `k` consecutive records (records g*k .. g*k+k-1),
  each group kept together and in order inside one batch."""

  def __init__(self, n: int, k: int, seed: int, lengths: np.ndarray, window: int, batch: int):
    self._k = k
    group_lengths = lengths.reshape(-1, k).max(axis=1)
    self._groups = _ShuffledOrder(n // k, seed, group_lengths, window // k, batch // k)

  def __getitem__(self, positions: slice) -> np.ndarray:
    pos = np.arange(positions.start, positions.stop)
    first, last = int(pos[0] // self._k), int(pos[-1] // self._k) + 1
    groups = self._groups[slice(first, last)]
    return groups[pos // self._k - first] * self._k + pos % self._k


def num_batches(num_records: int, batch_size: int, shard_count: int,
                num_epochs: int | None) -> int:
  """Batches each process yields; None epochs = endless."""
  total = sys.maxsize if num_epochs is None else num_records * num_epochs
  return total // (batch_size * shard_count)


def make_batches(source: Any, *, batch_size: int, seed: int, pad_id: int,
                 mode: Mode = "supervised", shard_index: int | None = None,
                 shard_count: int | None = None,
                 bucket_lengths: Sequence[int] | None = None,
                 max_len: int | None = None, num_epochs: int | None = None,
                 lengths: Sequence[int] | None = None, meta: bool | None = None,
                 num_threads: int = 0, prefetch: int = 8,
                 group_by_length: int = 0, keep_together: int = 1) -> grain.DatasetIterator:
  """An iterator of fixed-shape numpy batches for this process.

  Args:
    source: random access records (`builders.load_source`, or a list of dicts).
    batch_size: records per batch *per process*.
    seed: shuffle seed; the same on every process.
    pad_id: token id for padding.
    mode: "supervised" (imitation loss) or "generation" (critic / RL prompts).
    shard_index, shard_count: this process's shard; None = jax process index/count.
    bucket_lengths: allowed padded lengths; default powers of two up to max_len.
    max_len: largest padded length; default the longest record, rounded up to a
      multiple of 32. Longer records are an error, not a silent truncation.
    num_epochs: None = endless. Finite: the last partial global batch is dropped
      (and logged), so every process yields the same number of batches.
    lengths: token lengths of the padded field per record (`builders.load_lengths`);
      None = one pass over the source.
    group_by_length: 0, or a window of that many global batches whose records are
      sorted by length before batching (less padding; see `_ShuffledOrder`).
    keep_together: k > 1 keeps each k consecutive records (0..k-1, k..2k-1, ...) in
      one global batch, in order (a critic pair's two answer orders).
    meta: add the records' text fields under "meta"; default: in generation mode.
    num_threads: grain read threads (0 = read in the calling thread).
  """
  if shard_index is None or shard_count is None:
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    shard_index, shard_count = shard.shard_index, shard.shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
  if mode not in _TOKEN_FIELD:
    raise ValueError(f"unknown mode {mode!r}")
  field = _TOKEN_FIELD[mode]
  n = len(source)
  if n == 0:
    raise ValueError("empty source")
  # Token-only passes read the records without cached activations (data.prefix_cache).
  plain = getattr(source, "uncached", source)
  lengths = np.asarray(lengths if lengths is not None
                       else record_lengths(plain, field))
  # One target width for the whole dataset: every batch, on every process, has the
  # same [B, M] target_index shape.
  width = target_width(plain) if mode == "supervised" else None
  if len(lengths) != n:
    raise ValueError(f"{len(lengths)} lengths for {n} records")
  longest = int(lengths.max())
  if bucket_lengths is None:
    # The longest record rounded up to 32, not to a power of two: up to 2x less padding.
    max_len = max_len or -(-longest // 32) * 32
    bucket_lengths = power_of_two_buckets(max_len, min(32, max_len))
  buckets = tuple(sorted(bucket_lengths))
  if longest > buckets[-1]:
    i = int(lengths.argmax())
    raise ValueError(f"record {i} ({as_text(source[i].get('state_id', ''))}) has "
                     f"{longest} tokens > max length {buckets[-1]}")

  meta = mode == "generation" if meta is None else meta
  global_bs = batch_size * shard_count
  steps = num_batches(n, batch_size, shard_count, num_epochs)
  if num_epochs is not None:
    left = n * num_epochs - steps * global_bs
    if left:
      logging.warning("make_batches: dropping the last %d of %d records "
                      "(a partial global batch)", left, n * num_epochs)
    if steps == 0:
      raise ValueError(f"{n * num_epochs} records make no global batch of "
                       f"{global_bs}")
  if group_by_length < 0:
    raise ValueError(f"group_by_length must be >= 0, got {group_by_length}")
  if keep_together > 1 and (n % keep_together or global_bs % keep_together):
    raise ValueError(f"keep_together={keep_together}: the {n} records and the global batch "
                     f"of {global_bs} must both be multiples of it")
  order = (_GroupedOrder(n, keep_together, seed, lengths, group_by_length * global_bs,
                         global_bs) if keep_together > 1
           else _ShuffledOrder(n, seed, lengths, group_by_length * global_bs, global_bs))
  read = (source.__getitems__ if hasattr(source, "__getitems__")
          else lambda idx: [source[i] for i in idx])

  def load(step: int) -> dict[str, Any]:
    everyone = order[step * global_bs:(step + 1) * global_bs]
    mine = everyone[shard_index * batch_size:(shard_index + 1) * batch_size]
    length = bucket_for(int(lengths[everyone].max()), buckets)
    return collate(read(mine.tolist()), length, pad_id, mode, meta, target_width=width)

  ds = grain.MapDataset.range(steps).map(load)
  options = grain.ReadOptions(num_threads=num_threads,
                              prefetch_buffer_size=prefetch if num_threads else 0)
  return iter(ds.to_iter_dataset(options))
