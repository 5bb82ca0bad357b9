"""Multi-host start-up: the one place that decides whether to call jax.distributed.

Cloud TPU VMs are auto-detected by JAX; GPU clusters pass the coordinator through
flags or ACT_* environment variables (SLURM is auto-detected by JAX as well).
"""
from __future__ import annotations

import os

import jax
from absl import flags

_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Total number of processes.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index.")


def initialize() -> None:
  """Calls `jax.distributed.initialize` when this run spans several processes."""
  coord = _COORD.value or os.environ.get("ACT_COORDINATOR_ADDRESS")
  nproc = _NPROC.value or _int_env("ACT_NUM_PROCESSES")
  pid = _PID.value if _PID.value is not None else _int_env("ACT_PROCESS_ID")
  if coord or (nproc and nproc > 1):
    # Decided from the environment: asking JAX for its backend would start XLA, which
    # must not happen before jax.distributed.initialize.
    if os.environ.get("JAX_PLATFORMS", "") == "cpu":
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coord, num_processes=nproc,
                               process_id=pid)
  elif os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") or "SLURM_NTASKS" in os.environ \
      and int(os.environ["SLURM_NTASKS"]) > 1:
    jax.distributed.initialize()  # JAX detects the cluster itself


def _int_env(name: str) -> int | None:
  v = os.environ.get(name)
  return int(v) if v else None
