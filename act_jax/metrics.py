"""Run logging: JSON lines + TensorBoard events + console progress (process 0 only).

A resumed run restarts from its checkpoint's step, so the rows and events a killed run
logged after that step would otherwise appear twice: `Writer(start_step=s)` drops them
from metrics.jsonl and has TensorBoard discard them (`purge_step`).
"""
from __future__ import annotations

import io
import json
import os
import time
from typing import Any, Mapping

import jax
import numpy as np

from act_jax import console, storage


_BAR_KEYS = ("loss", "reward", "accuracy", "tokens_per_s", "mfu", "nonfinite_total")


def _scalar(v: Any) -> float | int:
  a = np.asarray(v)
  return a.item() if a.size == 1 else float(a.mean())


class Writer:
  """Writes `DIR/metrics.jsonl` and TensorBoard events under `DIR/tb/`.

  Only process 0 writes, so a pod run produces one log; every process may call it.
  """

  def __init__(self, workdir: str, total_steps: int, desc: str = "train",
               start_step: int = 0, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = self._tb = self._bar = None
    if not self.enabled:
      return
    storage.makedirs(workdir)
    path = os.path.join(workdir, "metrics.jsonl")
    self._jsonl = storage.Appender(path, _rows_upto(path, start_step))
    from tensorboardX import SummaryWriter, record_writer  # lazy: only process 0 needs it
    record_writer.register_writer_factory("gs", _BucketEventsFactory())
    self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start_step + 1)
    self._bar = console.Progress(total_steps, desc, initial=start_step)

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
    row = {k: _scalar(v) for k, v in metrics.items()}
    if not self.enabled:
      return row
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **row}) + "\n")
    for k, v in row.items():
      self._tb.add_scalar(k, v, int(step))
    self._bar.update_to(int(step), {k: v for k, v in row.items() if k in _BAR_KEYS})
    return row

  def flush(self) -> None:
    """Writes out what a bucket file still holds back (the loop calls it on each
    checkpoint, so a resumed run finds every row up to its step)."""
    if self.enabled:
      self._jsonl.flush(force=True)
      self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._bar.close()
      self._tb.close()
      self._jsonl.close()


class _BucketEvents:
  """A gs:// TensorBoard events file written through `act_jax.storage` (tensorboardX's
  own goes through google-cloud-storage, and re-uploads from `__del__` at exit): an
  object cannot be appended to, so each flush rewrites it whole, and only if changed."""

  def __init__(self, path: str):
    self.path, self._buf, self._dirty = path, io.BytesIO(), False

  def write(self, data: bytes) -> None:
    self._buf.write(data)
    self._dirty = True

  def flush(self) -> None:
    if self._dirty:
      storage.write_bytes(self.path, self._buf.getvalue())
      self._dirty = False

  close = flush


class _BucketEventsFactory:
  open = staticmethod(_BucketEvents)

  def directory_check(self, path: str) -> None:
    del path  # a bucket has no directories to create


def _rows_upto(path: str, step: int) -> str:
  """The file's rows up to `step` (a resumed run rewrites it with these)."""
  if not storage.exists(path):
    return ""
  lines = [l for l in storage.read_text(path).splitlines(keepends=True) if l.strip()]
  return "".join(l if l.endswith("\n") else l + "\n" for l in lines if _row_step(l) <= step)


def _row_step(line: str) -> int:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):  # a line cut short by a kill
    return 1 << 62


def read_jsonl(path: str) -> list[dict[str, Any]]:
  return [json.loads(l) for l in storage.read_text(path).splitlines() if l.strip()]
