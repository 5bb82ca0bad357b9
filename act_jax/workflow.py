"""Resumable pipeline steps: each step's output directory records what it was built from.

A step writes `DIR/done.json` = {"id": <fresh id>, "deps": {dep name: dep id, "config":
fingerprint}, "config": the settings themselves} when it finishes. A *reproducible* step
(data built from seeded games, an imported checkpoint: a pure function of its inputs)
takes the fingerprint of its inputs as its id instead, so that, rebuilt on another
machine, it is the same step: a run directory restored from its small files (every
`done.json` and result, without the large ones) rebuilds its data and keeps every
finished stage built on them. On a rerun a step is
skipped when its `done.json` names the same inputs. A step interrupted half-way resumes
in place (training stages continue from their last checkpoint) unless its inputs
changed since it started, in which case its unfinished directory is cleared first.

A *finished* step is never deleted (on a pod it may be a day of compute):
  * one whose dependency was redone is redone, its old result moved aside to
    `DIR@<old id>`;
  * one whose own settings changed stops the run with `StaleStepError`, naming the
    changed fields and the flag that allows the redo (`--redo=<step>` of
    `act_jax.main`), which moves it aside too.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from typing import Any, Callable, Collection, Mapping

from act_jax import storage

log = logging.getLogger(__name__)


class StaleStepError(ValueError):
  """A finished step's settings changed and no redo of it was asked for."""


class Step:
  """One finished (or to-be-run) unit of the pipeline."""

  def __init__(self, name: str, directory: str):
    self.name, self.dir = name, directory

  @property
  def done_path(self) -> str:
    return os.path.join(self.dir, "done.json")

  def record(self) -> dict[str, Any] | None:
    try:
      return storage.read_json(self.done_path)
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


def _flat(x: Any, prefix: str = "") -> dict[str, Any]:
  """Nested dicts/lists -> {"a.b[1]": leaf}, for naming what changed."""
  if isinstance(x, Mapping):
    items = ((f"{prefix}.{k}" if prefix else str(k), v) for k, v in x.items())
  elif isinstance(x, (list, tuple)):
    items = ((f"{prefix}[{i}]", v) for i, v in enumerate(x))
  else:
    return {prefix: x}
  return {k: v for key, v0 in items for k, v in _flat(v0, key).items()}


def changed_fields(old: Any, new: Any) -> list[str]:
  """'field: old -> new' for each leaf that differs between two settings trees."""
  a, b = _flat(json.loads(json.dumps(old, default=str))), _flat(
      json.loads(json.dumps(new, default=str)))
  return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}"
          for k in sorted(set(a) | set(b)) if a.get(k, "<unset>") != b.get(k, "<unset>")]


def run_step(name: str, directory: str, deps: Mapping[str, Step],
             fn: Callable[[str], Any], summary: Callable[[Any], str] | None = None,
             config: Any = None, redo: Collection[str] = (), staged: bool = False,
             reproducible: bool = False) -> Step:
  """Runs `fn(directory)` unless a result built from the same inputs is already there.

  `config`: the settings the step reads; changing them redoes the step (and, through
  its new id, everything downstream) only when `redo` names the step, else raises
  StaleStepError.
  `staged`: `fn` writes a local directory, uploaded once complete (a bucket workdir;
  for steps whose writers need OS files).
  `reproducible`: `fn`'s output is a pure function of `deps` and `config`; the step's
  id is their fingerprint, not a fresh one (see the module docstring).
  """
  step = Step(name, directory)
  config = json.loads(json.dumps(config, default=str))  # as done.json will hold it
  want = {k: d.id for k, d in deps.items()}
  if config is not None:
    want["config"] = fingerprint(config)
  rec = step.record()
  if rec is not None and rec.get("deps") == want:
    log.info("[%s] up to date, skipped", name)
    print(f"[{name}] skipped (up to date)", flush=True)
    return step
  started = os.path.join(directory, "started.json")
  if rec is not None:
    _set_aside(step, rec, want, config, name in redo)
  elif storage.exists(directory):
    try:
      begun_with = storage.read_json(started).get("deps")
    except (FileNotFoundError, json.JSONDecodeError):
      begun_with = None
    if begun_with != want:
      storage.rmtree(directory)  # unfinished, begun from other inputs
  storage.makedirs(directory)
  storage.write_json(started, {"deps": want})
  t0 = time.time()
  if staged:
    with storage.staged(directory) as local:
      out = fn(local)
  else:
    out = fn(directory)
  seconds = time.time() - t0
  sid = fingerprint(name, want) if reproducible else uuid.uuid4().hex
  storage.write_json(step.done_path, {"id": sid, "deps": want, "config": config,
                                      "seconds": seconds})
  line = summary(out) if summary else ""
  print(f"[{name}] done in {seconds:.1f}s {line}".rstrip(), flush=True)
  return step


def _set_aside(step: Step, rec: dict[str, Any], want: dict[str, str], config: Any,
               redo: bool) -> None:
  """Moves a finished step built from other inputs to `DIR@<old id>`, or refuses."""
  own_change = rec["deps"].get("config") != want.get("config")
  if own_change and not redo:
    fields = (changed_fields(rec["config"], config) if "config" in rec
              else ["its settings (recorded before settings were stored)"])
    raise StaleStepError(
        f"step {step.name} ({step.dir}) finished with other settings: {'; '.join(fields)}. "
        f"Rerun with --redo={step.name} to redo it (the finished one is "
        "kept, moved aside), or restore the settings")
  aside = f"{step.dir.rstrip('/')}@{rec['id'][:12]}"
  redone = sorted(k for k in set(rec["deps"]) | set(want)
                  if k != "config" and rec["deps"].get(k) != want.get(k))
  why = "its settings changed" if own_change else f"{', '.join(redone)} redone"
  print(f"[{step.name}] {why}: redoing it; the finished one is kept as {aside}", flush=True)
  storage.move(step.dir, aside)
