"""Training checkpoints on Orbax `CheckpointManager`.

A checkpoint holds the train state (params, optimiser state, step, RNG), the data
iterator's state and the config. Orbax writes each step into a temporary directory and
renames it when complete, so a half-written step is never restored. Restores take the
target shardings, so a run saved on one mesh resumes on another without a gather.
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as cm


class Manager:
  """Saves and restores `(state, data_state, config)` under `directory`."""

  def __init__(self, directory: str, keep: int = 3, every: int = 100,
               best_metric: str | None = None, best_mode: str = "max",
               async_save: bool = True):
    self.directory = os.path.abspath(directory) if "://" not in directory else directory
    self.every = every
    self.best_metric = best_metric
    policies = [cm.LatestN(n=keep)]
    if best_metric:
      policies.append(cm.BestN(get_metric_fn=lambda m: m[best_metric],
                               reverse=best_mode == "min", n=1))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=cm.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=True)
    self._mgr = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def should_save(self, step: int) -> bool:
    return step % self.every == 0

  def save(self, step: int, state: Any, data_state: Mapping[str, Any] | None,
           config: Mapping[str, Any], metrics: Mapping[str, float] | None = None,
           force: bool = False) -> bool:
    args = ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(gather_data_state(data_state)),
        config=ocp.args.JsonSave(_jsonable(config)))
    return self._mgr.save(step, args=args, metrics=dict(metrics or {}) or None, force=force)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, dict]:
    """Restores onto the shardings carried by `abstract_state` (ShapeDtypeStructs)."""
    step = self.latest_step() if step is None else step
    out = self._mgr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        data=ocp.args.JsonRestore(), config=ocp.args.JsonRestore()))
    return out["state"], data_state_for_process(out["data"]), dict(out["config"] or {})

  def restore_config(self, step: int | None = None) -> dict:
    step = self.latest_step() if step is None else step
    out = self._mgr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return dict(out["config"])

  def wait(self) -> None:
    self._mgr.wait_until_finished()

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()


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


def abstract_like(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs with target shardings: what `Manager.restore` fills in."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def _jsonable(config: Mapping[str, Any]) -> dict:
  return json.loads(json.dumps(config, default=str))
