"""Training checkpoints on Orbax `CheckpointManager`.

Each step directory holds five Orbax items:
  state/    params, optimiser state, step and RNG key (each process writes its shards)
  data/     the batch iterator's position (JSON), so a resume sees the same batches
  config/   experiment + model config (JSON): a mismatched resume fails before training
  loop/     loop counters (JSON), e.g. the running total of skipped non-finite updates
  metrics/  with a best_metric only: the step's logged metrics row (JSON), which
            keep-best needs after a restart

Atomicity. Orbax writes a step under `<step>.orbax-checkpoint-tmp-*` and renames it only
once complete (with `commit_success.txt` inside), so a half-written step is never listed;
stale tmp directories are deleted when a Manager opens. On top of that a Manager
  * sets aside a step directory lacking `commit_success.txt` (copied or damaged by hand),
  * falls back to the previous step, with a warning, when the newest one fails to
    restore (e.g. a truncated file), and sets the unreadable one aside,
so rerunning a job continues from the newest *readable* checkpoint. "Set aside" renames
`<step>` to `<step>.incomplete` / `<step>.unreadable` next to it; Orbax ignores those
names and nothing is deleted.

Restores take target shardings (ShapeDtypeStructs carrying NamedShardings): each device
reads only its own slice, so a run saved on one mesh resumes on another (or on a single
device) without the model ever being gathered on one host.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as cm

log = logging.getLogger(__name__)

COMMIT_MARKER = "commit_success.txt"  # Orbax writes it last, before the final rename
CHECKPOINTS_SUBDIR = "checkpoints"  # where a training workdir keeps its steps
_STEP_NAME = re.compile(r"^(0|[1-9]\d*)$")  # Orbax's default step directory names


class CheckpointMismatchError(ValueError):
  """The config asks for a model the checkpoint does not hold; not a corrupt checkpoint."""


class CheckpointError(RuntimeError):
  """No step in the directory could be restored."""


@dataclasses.dataclass
class Restored:
  """One restored step: train state on the target shardings plus its JSON side items."""
  step: int
  state: Any
  data: dict
  config: dict
  loop: dict


class Manager:
  """Saves and restores `(state, data_state, config, loop_state)` steps under `directory`.

  Keeps the newest `keep` steps plus, with `best_metric`, the best step by that logged
  metric (`best_mode` 'max' or 'min'); a step whose row lacks the metric, or has it
  non-finite, never counts as best. With `async_save`, `save` returns once the arrays
  are copied to host memory and the files are written in the background.
  """

  def __init__(self, directory: str, keep: int = 3, every: int = 100,
               best_metric: str | None = None, best_mode: str = "max",
               async_save: bool = True):
    if best_mode not in ("max", "min"):
      raise ValueError(f"config.checkpoint.best_mode: {best_mode!r} is not 'max' or 'min'")
    self.directory = orbax_path(directory)
    self.every = every
    self.best_metric = best_metric
    self.last_save_seconds = 0.0  # blocking time of the newest save
    self._set_aside_incomplete()
    policies = [cm.LatestN(n=keep)]
    best_fn = None
    if best_metric:
      best_fn = _metric_or_worst(best_metric, best_mode)
      policies.append(cm.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
                               keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=cm.AnyPreservationPolicy(policies),
        # best_fn also makes Orbax persist each step's metrics, so BestN still knows
        # the best step after a restart.
        best_fn=best_fn, best_mode=best_mode,
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
    self._mgr = ocp.CheckpointManager(self.directory, options=options)
    self._closed = False

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mgr.all_steps())

  def best_step(self) -> int | None:
    return self._mgr.best_step() if self.best_metric else None

  def should_save(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state: Any, data_state: Mapping[str, Any] | None,
           config: Mapping[str, Any], metrics: Mapping[str, float] | None = None,
           loop_state: Mapping[str, Any] | None = None) -> bool:
    """Starts saving `step` (False if it is already saved); call `wait` to block on it."""
    if step in self._mgr.all_steps():
      return False
    t0 = time.perf_counter()
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(gather_data_state(data_state)),
        config=ocp.args.JsonSave(_jsonable(config)),
        loop=ocp.args.JsonSave(_jsonable(loop_state or {})))
    saved = self._mgr.save(step, args=args, metrics=_jsonable(metrics or {}), force=True)
    self.last_save_seconds = time.perf_counter() - t0
    return saved

  def restore(self, abstract_state: Any, step: int | None = None,
              check_config: Callable[[dict], None] | None = None) -> Restored:
    """Restores onto the shardings carried by `abstract_state` (ShapeDtypeStructs).

    Without `step`, takes the newest readable step: a step that fails to read is
    skipped with a warning, and set aside once an older one restores. `check_config`
    sees each candidate's saved config before its arrays are read; a
    `CheckpointMismatchError` it raises propagates (a wrong config is not corruption).
    """
    candidates = [step] if step is not None else self.all_steps()[::-1]
    if not candidates:
      raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
    failed: list[tuple[int, Exception]] = []
    for s in candidates:
      try:
        config = self.restore_config(s)
        if check_config is not None:
          check_config(config)
        items = dict(state=ocp.args.StandardRestore(abstract_state),
                     data=ocp.args.JsonRestore())
        if (self._step_dir(s) / "loop").exists():  # absent in pre-`loop` checkpoints
          items["loop"] = ocp.args.JsonRestore()
        out = self._mgr.restore(s, args=ocp.args.Composite(**items))
      except CheckpointMismatchError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        if step is not None or jax.process_count() > 1:
          # Processes must agree on the step; a per-process fallback could diverge.
          raise CheckpointError(
              f"{self._step_dir(s)}: cannot restore ({type(e).__name__}: {e}); if the step "
              "is corrupt, move it out of the directory and rerun") from e
        log.warning("%s: step %d cannot be restored (%s: %s); trying the previous step",
                    self.directory, s, type(e).__name__, _short(e))
        failed.append((s, e))
        continue
      for bad, _ in failed:
        self._set_aside(bad, "unreadable")
      loop_state = dict(out["loop"] or {}) if "loop" in items else {}
      return Restored(s, out["state"], data_state_for_process(out["data"]), config,
                      loop_state)
    s, e = failed[0]
    raise CheckpointError(
        f"{self.directory}: none of steps {candidates} can be restored; the newest "
        f"(step {s}) fails with {type(e).__name__}: {_short(e)}") from e

  def restore_config(self, step: int | None = None) -> dict:
    return _saved_config(self._mgr, self.latest_step() if step is None else step)

  def wait(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    """Waits for in-flight saves, then releases Orbax's threads; safe to call twice."""
    if not self._closed:
      self._mgr.wait_until_finished()
      self._mgr.close()
      self._closed = True

  def _step_dir(self, step: int) -> epath.Path:
    return self.directory / str(step)

  def _set_aside_incomplete(self) -> None:
    """Renames step dirs without Orbax's commit marker, so no one lists them as steps."""
    if jax.process_index() == 0 and self.directory.exists():
      for path in self.directory.iterdir():
        if _STEP_NAME.match(path.name) and path.is_dir() and \
            not (path / COMMIT_MARKER).exists():
          log.warning("%s has no %s: an incomplete step, not restored", path, COMMIT_MARKER)
          self._rename_aside(path, "incomplete")
    _sync("act_jax_checkpoint_scan")

  def _set_aside(self, step: int, reason: str) -> None:
    if jax.process_index() == 0:
      self._rename_aside(self._step_dir(step), reason)
    _sync(f"act_jax_checkpoint_aside_{step}")
    self._mgr.reload()

  @staticmethod
  def _rename_aside(path: epath.Path, reason: str) -> None:
    target = path.parent / f"{path.name}.{reason}"
    if target.exists():
      target = path.parent / f"{path.name}.{reason}-{time.strftime('%Y%m%d-%H%M%S')}"
    path.rename(target)
    log.warning("moved %s to %s", path, target.name)


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs with target shardings: what `Manager.restore` fills in."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def orbax_path(path: str) -> epath.Path:
  """`path` as Orbax takes it: local paths made absolute (it refuses relative ones)."""
  return epath.Path(path) if "://" in path else epath.Path(path).absolute()


def checkpoints_dir(path: str) -> epath.Path:
  """`path` itself if it holds steps, else its `checkpoints/` (a training workdir)."""
  p = orbax_path(path)
  sub = p / CHECKPOINTS_SUBDIR
  return sub if sub.is_dir() else p


def complete_steps(directory: str | epath.Path) -> list[int]:
  """Steps in an Orbax directory that carry the commit marker, oldest first."""
  d = epath.Path(directory)
  if not d.is_dir():
    return []
  return sorted(int(p.name) for p in d.iterdir()
                if _STEP_NAME.match(p.name) and (p / COMMIT_MARKER).exists())


def step_candidates(path: str) -> tuple[epath.Path, list[int]]:
  """(Orbax directory, complete steps newest first) of a training workdir, its
  `checkpoints/` directory, or one step directory (then that step alone)."""
  directory = checkpoints_dir(path)
  if _STEP_NAME.match(directory.name) and (directory / COMMIT_MARKER).exists():
    return directory.parent, [int(directory.name)]
  return directory, complete_steps(directory)[::-1]


def is_training_dir(path: str) -> bool:
  """True for a training workdir, its checkpoints/ dir or a step dir holding a complete step."""
  return bool(step_candidates(path)[1])


def read_config(path: str) -> dict:
  """The experiment + model config saved with a training run's newest complete step."""
  mgr, steps = _read_only(path)
  with mgr:
    return _saved_config(mgr, steps[0])


def read_params(path: str, target: Callable[[dict], Any]) -> tuple[Any, dict]:
  """The params (only: no optimiser state is read) of a training run's newest step.

  `path` is what `step_candidates` accepts. `target(saved_config)` gives the restore
  target (ShapeDtypeStructs carrying shardings). Returns `(params, saved_config)`; an
  unreadable newest step falls back to the previous one with a warning (nothing is
  renamed: this is a read-only path).
  """
  mgr, steps = _read_only(path)
  with mgr:
    for s in steps:
      try:
        config = _saved_config(mgr, s)
        item = {"params": target(config)}
        restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), item)
        out = mgr.restore(s, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True)))
        return out["state"]["params"], config
      except Exception as e:  # pylint: disable=broad-except
        if s == steps[-1]:
          raise CheckpointError(f"{mgr.directory}: cannot read params of steps {steps}; "
                                f"step {s}: {type(e).__name__}: {_short(e)}") from e
        log.warning("%s: step %d cannot be read (%s: %s); trying the previous step",
                    mgr.directory, s, type(e).__name__, _short(e))
  raise AssertionError("unreachable")


def _read_only(path: str) -> tuple[ocp.CheckpointManager, list[int]]:
  """A read-only manager over `path`'s steps (to use in `with`) and the steps to try."""
  directory, steps = step_candidates(path)
  if not steps:
    raise FileNotFoundError(f"{path}: no complete training checkpoint "
                            f"(expected step directories under {directory})")
  # Saving off and no directory to create: what read_only implies, said so that Orbax
  # need not warn that it changed them.
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      read_only=True, save_interval_steps=0, create=False)), steps


def _saved_config(mgr: ocp.CheckpointManager, step: int) -> dict:
  return dict(mgr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])


# Key of a saved data state that differs between processes (a list, by process index).
PER_PROCESS_KEY = "act_jax_per_process"


def gather_data_state(data_state: Mapping[str, Any] | None) -> dict:
  """The data item to save: every process's iterator position, not only process 0's.

  Orbax writes JSON items from process 0 alone, yet each process iterates its own
  shard. All processes call this (it is a collective). Equal states, the usual case,
  are saved as one dict that resumes on any process count. Otherwise the dict is
  `{PER_PROCESS_KEY: [state of process 0, state of process 1, ...]}`.
  """
  state = dict(data_state or {})
  if jax.process_count() == 1:
    return state
  states = _allgather_json(state)
  return states[0] if all(s == states[0] for s in states) else {PER_PROCESS_KEY: states}


def data_state_for_process(saved: Mapping[str, Any] | None) -> dict:
  """This process's iterator position out of what `gather_data_state` saved."""
  saved = dict(saved or {})
  if PER_PROCESS_KEY not in saved:
    return saved
  states = saved[PER_PROCESS_KEY]
  if len(states) != jax.process_count():
    raise ValueError(
        f"the checkpoint's data positions differ between its {len(states)} processes; "
        f"resume on {len(states)} processes, not {jax.process_count()}")
  return dict(states[jax.process_index()])


def _allgather_json(obj: Any) -> list:
  """`obj` from every process, in process order (JSON bytes padded to one length)."""
  from jax.experimental import multihost_utils
  raw = np.frombuffer(json.dumps(obj, sort_keys=True).encode(), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.int32(raw.size))).reshape(-1)
  buf = np.zeros(int(sizes.max()), np.uint8)
  buf[:raw.size] = raw
  rows = np.asarray(multihost_utils.process_allgather(buf))
  return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes)]


def _metric_or_worst(name: str, mode: str) -> Callable[[Mapping[str, Any]], float]:
  """Orbax's ranking function: missing or non-finite values rank worst."""
  worst = -math.inf if mode == "max" else math.inf

  def get(metrics: Mapping[str, Any]) -> float:
    v = metrics.get(name) if metrics else None
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else worst

  return get


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def _short(e: Exception, n: int = 300) -> str:
  s = str(e).replace("\n", " ")
  return s if len(s) <= n else s[:n] + "..."


def _jsonable(config: Mapping[str, Any]) -> dict:
  return json.loads(json.dumps(config, default=str))
