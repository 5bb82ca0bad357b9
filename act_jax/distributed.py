"""Multi-host start-up: the one place that decides whether to call jax.distributed.

The decision reads flags and the environment only. Asking JAX for its backend or
devices would start XLA, and `jax.distributed.initialize` has to come first.

In order:

1. Explicit: `--coordinator_address/--num_processes/--process_id`, or the
   `ACT_COORDINATOR_ADDRESS / ACT_NUM_PROCESSES / ACT_PROCESS_ID` variables (a flag
   beats its variable). With more than one process all three are required, and
   JAX's cluster detection is switched off so that each process keeps every local
   device. Otherwise SLURM detection would give each task one GPU, while our
   `launch/slurm.sh` runs one process per node. `ACT_NUM_PROCESSES=1` means one
   process.
2. `ACT_DISTRIBUTED=off` skips auto-detection. `ACT_DISTRIBUTED=on` always calls
   `jax.distributed.initialize()` and lets JAX detect the cluster (Open MPI, k8s).
3. A Cloud TPU VM (TPU chips on the PCI bus, or TPU_WORKER_HOSTNAMES /
   TPU_PROCESS_ADDRESSES / MEGASCALE_COORDINATOR_ADDRESS set), unless JAX_PLATFORMS
   leaves TPUs out. JAX reads the workers from the TPU metadata, and a single-host
   VM becomes a 1-process job.
4. A SLURM job step with more than one task. JAX reads the SLURM variables. With
   one task per node, the process keeps all of its node's GPUs.
5. Otherwise a single process: no call.
"""
from __future__ import annotations

import dataclasses
import glob
import logging
import os
from typing import Any, Mapping

import jax
from absl import flags

_COORD = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Total number of processes.")
_PID = flags.DEFINE_integer("process_id", None, "This process's index.")

log = logging.getLogger(__name__)

# PCI ids of Cloud TPU chips (vendor 0x1ae0 is Google, which also makes gVNIC NICs).
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f",
                              "0x0076"})
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")


@dataclasses.dataclass(frozen=True)
class Plan:
  """What `initialize` will do: `how` names the rule, `kwargs` go to JAX."""
  how: str  # "single" | "explicit" | "tpu" | "slurm" | "auto"
  kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
  all_local_gpus: bool = False  # undo JAX's one-GPU-per-SLURM-task default

  @property
  def multi_process(self) -> bool:
    return self.how != "single"


def plan(env: Mapping[str, str], coordinator_address: str | None = None,
         num_processes: int | None = None, process_id: int | None = None,
         tpu_chips: int | None = None) -> Plan:
  """Decides from flag values and `env` alone. Pure, so tests can cover every rule."""
  coord = coordinator_address or env.get("ACT_COORDINATOR_ADDRESS") or None
  nproc = num_processes if num_processes is not None else _int(env, "ACT_NUM_PROCESSES")
  pid = process_id if process_id is not None else _int(env, "ACT_PROCESS_ID")
  if nproc == 1:
    return Plan("single")
  if coord or nproc or pid is not None:
    missing = [name for name, v in (("ACT_COORDINATOR_ADDRESS (--coordinator_address)", coord),
                                    ("ACT_NUM_PROCESSES (--num_processes)", nproc),
                                    ("ACT_PROCESS_ID (--process_id)", pid)) if v is None]
    if missing:
      raise ValueError(f"multi-process run: set all of coordinator address, process count "
                       f"and process id; missing {', '.join(missing)}")
    if not 0 <= pid < nproc:
      raise ValueError(f"ACT_PROCESS_ID={pid} is not in [0, ACT_NUM_PROCESSES={nproc})")
    return Plan("explicit", dict(coordinator_address=coord, num_processes=nproc,
                                 process_id=pid, cluster_detection_method="deactivate"))

  mode = env.get("ACT_DISTRIBUTED", "auto").strip().lower()
  if mode in ("off", "0", "false", "no"):
    return Plan("single")
  if mode in ("on", "1", "true", "yes"):
    return Plan("auto")
  if mode != "auto":
    raise ValueError(f"ACT_DISTRIBUTED={mode!r}: use auto, on or off")

  platforms = [p.strip() for p in env.get("JAX_PLATFORMS", "").lower().split(",") if p.strip()]
  tpu_allowed = not platforms or "tpu" in platforms
  tpu_env = any(env.get(k) for k in ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES",
                                     "MEGASCALE_COORDINATOR_ADDRESS"))
  if tpu_allowed and (tpu_env or (tpu_chips if tpu_chips is not None else _tpu_chips())):
    return Plan("tpu")
  if all(k in env for k in _SLURM_VARS) and (_int(env, "SLURM_NTASKS") or 1) > 1:
    tasks, nodes = _int(env, "SLURM_NTASKS"), _int(env, "SLURM_STEP_NUM_NODES")
    return Plan("slurm", all_local_gpus=nodes == tasks)
  return Plan("single")


def initialize() -> Plan:
  """Calls `jax.distributed.initialize` when this run spans several processes."""
  p = plan(os.environ, _COORD.value, _NPROC.value, _PID.value)
  if not p.multi_process:
    return p
  # Cross-process collectives on CPU arrays (the default in the pinned jax; stated so
  # that the CPU test path does not depend on it).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  log.info("jax.distributed.initialize (%s) %s", p.how,
           {k: v for k, v in p.kwargs.items() if k != "cluster_detection_method"})
  jax.distributed.initialize(**p.kwargs)
  if p.all_local_gpus:
    # JAX restricts each SLURM task to GPU SLURM_LOCALID; one task per node owns them all.
    jax.config.update("jax_cuda_visible_devices", "all")
    jax.config.update("jax_rocm_visible_devices", "all")
  return p


def _int(env: Mapping[str, str], name: str) -> int | None:
  v = env.get(name, "").strip()
  if not v:
    return None
  try:
    return int(v)
  except ValueError:
    raise ValueError(f"{name}={v!r} is not an integer") from None


def _tpu_chips() -> int:
  """TPU chips on this machine's PCI bus: a Cloud TPU VM, found without starting XLA."""
  n = 0
  for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor) as f:
        if f.read().strip() != _GOOGLE_PCI_VENDOR:
          continue
      with open(os.path.join(os.path.dirname(vendor), "device")) as f:
        n += f.read().strip() in _TPU_PCI_DEVICES
    except OSError:
      continue
  return n
