"""Run logging: JSON lines + TensorBoard events + console progress (process 0 only).

A resumed run restarts from its checkpoint's step, so the rows and events a killed run
logged after that step would otherwise appear twice: `Writer(start_step=s)` drops them
from metrics.jsonl and has TensorBoard discard them (`purge_step`).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping

import jax
import numpy as np

from act_jax import console


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
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    _truncate_after(path, start_step)
    self._jsonl = open(path, "a")
    from tensorboardX import SummaryWriter  # lazy: only process 0 needs it
    self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start_step + 1)
    self._bar = console.Progress(total_steps, desc, initial=start_step)

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict[str, float]:
    row = {k: _scalar(v) for k, v in metrics.items()}
    if not self.enabled:
      return row
    self._jsonl.write(json.dumps({"step": int(step), "time": time.time(), **row}) + "\n")
    self._jsonl.flush()
    for k, v in row.items():
      self._tb.add_scalar(k, v, int(step))
    self._bar.update_to(int(step), {k: v for k, v in row.items() if k in _BAR_KEYS})
    return row

  def close(self) -> None:
    if self.enabled:
      self._bar.close()
      self._tb.close()
      self._jsonl.close()


def _truncate_after(path: str, step: int) -> None:
  """Keeps rows up to `step` (atomically: a kill mid-way leaves the old file)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [l for l in f if l.strip()]
  keep = [l if l.endswith("\n") else l + "\n" for l in lines if _row_step(l) <= step]
  if keep == lines:
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(keep)
  os.replace(tmp, path)


def _row_step(line: str) -> int:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):  # a line cut short by a kill
    return 1 << 62


def read_jsonl(path: str) -> list[dict[str, Any]]:
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]
