"""Resumable pipeline steps: each step's output directory records what it was built from.

A step writes `DIR/done.json` = {"id": <fresh id>, "deps": {dep name: dep id}} when it
finishes. On a rerun a step is skipped when its `done.json` exists and names the same
dependency ids; a step whose dependency was redone (new id) is redone too, and a step
interrupted half-way resumes in place (training stages continue from their last
checkpoint) unless its dependencies changed since it started, in which case its
directory is cleared first.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)


class Step:
  """One finished (or to-be-run) unit of the pipeline."""

  def __init__(self, name: str, directory: str):
    self.name, self.dir = name, directory

  @property
  def done_path(self) -> str:
    return os.path.join(self.dir, "done.json")

  def record(self) -> dict[str, Any] | None:
    try:
      with open(self.done_path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None

  @property
  def id(self) -> str:
    rec = self.record()
    if rec is None:
      raise RuntimeError(f"step {self.name} has not finished ({self.done_path} missing)")
    return rec["id"]


def fingerprint(*parts: Any) -> str:
  """A short stable hash of the config pieces a step reads."""
  blob = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_step(name: str, directory: str, deps: Mapping[str, Step],
             fn: Callable[[str], Any], summary: Callable[[Any], str] | None = None,
             config: Any = None) -> Step:
  """Runs `fn(directory)` unless a result built from the same inputs is already there.

  `config`: the settings the step reads; changing them redoes the step (and, through
  its new id, everything downstream).
  """
  step = Step(name, directory)
  want = {k: d.id for k, d in deps.items()}
  if config is not None:
    want["config"] = fingerprint(config)
  rec = step.record()
  if rec is not None and rec.get("deps") == want:
    log.info("[%s] up to date, skipped", name)
    print(f"[{name}] skipped (up to date)", flush=True)
    return step
  started = os.path.join(directory, "started.json")
  if os.path.exists(directory):
    try:
      with open(started) as f:
        begun_with = json.load(f).get("deps")
    except (FileNotFoundError, json.JSONDecodeError):
      begun_with = None
    if rec is not None or begun_with != want:
      shutil.rmtree(directory)  # stale: built from other inputs
  os.makedirs(directory, exist_ok=True)
  with open(started, "w") as f:
    json.dump({"deps": want}, f)
  t0 = time.time()
  out = fn(directory)
  seconds = time.time() - t0
  with open(step.done_path + ".tmp", "w") as f:
    json.dump({"id": uuid.uuid4().hex, "deps": want, "seconds": seconds}, f)
  os.replace(step.done_path + ".tmp", step.done_path)
  line = summary(out) if summary else ""
  print(f"[{name}] done in {seconds:.1f}s {line}".rstrip(), flush=True)
  return step
