"""The frozen prefix's activations, computed once and reused.

With `train.trainable = "top:K"` the embeddings and the layers below the top K do not
change, so on a fixed input (an imitation example, a critic prompt with its answer)
their output does not either. `attach` computes it once per record and serves it as
the record's `prefix` field ([tokens, D] float32, padded by `collate` like the
tokens); the train step then runs only the top layers (`act_jax.step`). Epochs,
stages and variants whose frozen weights are the same share one cache.

A cache is a directory `<cache_dir>/<key>/` (`hidden.npy`: the rows of every record
concatenated; `meta.json`), where the key hashes the frozen weights' bytes, the model
config (RoPE, norm epsilon, dtype: what the activations depend on beyond the weights),
the prefix depth, `VERSION` (of this computation) and every record's tokens, so a
change to any of them computes a new cache instead of reading a stale one. It is
written to a temporary directory and renamed, so a killed build leaves nothing that
looks complete. One process builds and reads it: multi-process runs are refused (the
frozen weights would have to be gathered to one host).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any, Sequence

import jax
import numpy as np

from act_jax.models import ModelConfig, decoder, positions_from_mask

Params = dict[str, Any]
VERSION = 1  # bump when what a cached row holds changes


def weights_digest(tree: Params) -> str:
  """sha1 over a parameter tree's paths, shapes, dtypes and bytes."""
  h = hashlib.sha1()
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    a = np.asarray(jax.device_get(leaf))
    h.update(f"{jax.tree_util.keystr(path)}{a.shape}{a.dtype}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def records_digest(token_rows: Sequence[np.ndarray]) -> str:
  h = hashlib.sha1()
  for row in token_rows:
    a = np.asarray(row, np.int32)
    h.update(len(a).to_bytes(4, "little"))
    h.update(a.tobytes())
  return h.hexdigest()


class CachedSource:
  """`source`'s records with their cached `prefix` added: [tokens, D], or with S
  suffixes [S, tokens + C, D] (row j: the record's tokens, then suffix j, zero-padded
  to the longest suffix's C)."""

  def __init__(self, source: Any, hidden: np.ndarray, offsets: np.ndarray, path: str,
               suffixes: Sequence[Sequence[int]] | None = None):
    # `uncached`: the records without activations, for passes that read only tokens.
    self.uncached, self.hidden, self.offsets, self.path = source, hidden, offsets, path
    self.suffixes = suffixes

  def __len__(self) -> int:
    return len(self.uncached)

  def __getitem__(self, i: int) -> dict[str, Any]:
    rec = dict(self.uncached[i])
    row = lambda k: np.asarray(self.hidden[self.offsets[k]:self.offsets[k + 1]])
    if self.suffixes is None:
      rec["prefix"] = row(i)
      return rec
    S, C = len(self.suffixes), max(len(x) for x in self.suffixes)
    rows = [row(i * S + j) for j in range(S)]
    n = len(rows[0]) - len(self.suffixes[0])  # the record's own tokens
    out = np.zeros((S, n + C, self.hidden.shape[1]), np.float32)
    for j, r in enumerate(rows):
      out[j, :len(r)] = r
    rec["prefix"] = out
    return rec

  def __getitems__(self, idx: Sequence[int]) -> list[dict[str, Any]]:
    return [self[i] for i in idx]


def attach(source: Any, field: str, frozen: Params, cfg: ModelConfig, cache_dir: str,
           suffixes: Sequence[Sequence[int]] | None = None, batch_size: int = 16,
           log: bool = True) -> CachedSource:
  """`source` with each record's frozen-prefix output for its `field` tokens, or for its
  tokens followed by each of `suffixes` (the critic's answer strings).

  `frozen`: the embeddings and the bottom layers (`Trainable.split(params)[1]`).
  Computes and stores the cache under `cache_dir` unless it is there already.
  """
  if jax.process_count() > 1:
    raise ValueError("data.prefix_cache: one process builds and reads the cache; with "
                     f"{jax.process_count()} processes set config.train.trainable='all'")
  tails = [np.asarray(x, np.int32) for x in suffixes] if suffixes is not None else [
      np.zeros(0, np.int32)]
  rows = [np.concatenate([np.asarray(source[i][field], np.int32), t])
          for i in range(len(source)) for t in tails]
  depth = jax.tree.leaves(frozen["layers"])[0].shape[0]
  key = hashlib.sha1(f"{weights_digest(frozen)}/{depth}/{records_digest(rows)}/"
                     f"{sorted(cfg.to_dict().items())}/{VERSION}".encode()).hexdigest()[:20]
  path = os.path.join(cache_dir, key)
  lengths = np.array([len(r) for r in rows], np.int64)
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  if not os.path.exists(os.path.join(path, "meta.json")):
    t0 = time.perf_counter()
    _build(rows, offsets, frozen, cfg, path, batch_size)
    if log:
      print(f"[prefix_cache] {len(rows)} records x {depth} frozen layers -> {path} "
            f"({time.perf_counter() - t0:.0f}s)", flush=True)
  hidden = np.load(os.path.join(path, "hidden.npy"), mmap_mode="r")
  if hidden.shape[0] != offsets[-1]:
    raise ValueError(f"{path}: holds {hidden.shape[0]} token rows, the records have "
                     f"{offsets[-1]}; delete the directory to rebuild it")
  return CachedSource(source, hidden, offsets, path,
                      None if suffixes is None else [list(t) for t in tails])


def _build(rows: list[np.ndarray], offsets: np.ndarray, frozen: Params, cfg: ModelConfig,
           path: str, batch_size: int) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  out = np.lib.format.open_memmap(os.path.join(tmp, "hidden.npy"), mode="w+",
                                  dtype=np.float32, shape=(int(offsets[-1]), cfg.hidden_size))
  run = jax.jit(lambda p, t, m: decoder.prefix(cfg, p, t, positions_from_mask(m), m))
  order = np.argsort([len(r) for r in rows], kind="stable")  # similar lengths batch together
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    length = -(-max(len(rows[i]) for i in idx) // 32) * 32
    tokens = np.zeros((batch_size, length), np.int32)  # right padding: causal, so
    mask = np.zeros((batch_size, length), bool)        # real tokens never see it
    for j, i in enumerate(idx):
      tokens[j, :len(rows[i])], mask[j, :len(rows[i])] = rows[i], True
    h = np.asarray(jax.device_get(run(frozen, tokens, mask)), np.float32)
    for j, i in enumerate(idx):
      out[offsets[i]:offsets[i + 1]] = h[j, :len(rows[i])]
  out.flush()
  del out
  with open(os.path.join(tmp, "meta.json"), "w") as f:
    json.dump({"records": len(rows), "tokens": int(offsets[-1]),
               "hidden_size": cfg.hidden_size}, f)
  try:
    os.rename(tmp, path)
  except OSError:  # built meanwhile by another run sharing the directory: keep theirs
    shutil.rmtree(tmp, ignore_errors=True)
    if not os.path.exists(os.path.join(path, "meta.json")):
      raise
