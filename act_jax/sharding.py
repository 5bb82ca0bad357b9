"""Mesh construction and logical-axis sharding.

Parameters name their dimensions logically (`embed`, `heads`, ...); a rules table from
the config maps those names onto mesh axes (`data`, `fsdp`, `tensor`); the params'
shardings come from `act_jax.params.shardings`. Changing the parallelism is therefore a
config change. Every train step uses `jit_step`: a pure
`(state, batch) -> (state, metrics)` compiled once with explicit shardings and the
state donated.
"""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = ("data", "fsdp")  # mesh axes the batch dimension is split over

# Logical name -> mesh axis (or tuple of axes, or None = replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
)

log = logging.getLogger(__name__)


def mesh_shape(axes: Mapping[str, int], n_devices: int) -> tuple[int, ...]:
  """Resolves a {data, fsdp, tensor} -> size mapping; one size of -1 fills the rest."""
  unknown = sorted(set(axes) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"config.mesh: unknown axis {unknown}; axes are {MESH_AXES}")
  sizes = [int(axes.get(a, 1)) for a in MESH_AXES]
  fills = [a for a, s in zip(MESH_AXES, sizes) if s == -1]
  if len(fills) > 1:
    raise ValueError(f"config.mesh: only one axis may be -1, got {fills}")
  for a, s in zip(MESH_AXES, sizes):
    if s == 0 or s < -1:
      raise ValueError(f"config.mesh.{a}: size must be positive or -1, got {s}")
  known = math.prod(s for s in sizes if s != -1)
  if fills:
    if n_devices % known:
      raise ValueError(f"config.mesh: {n_devices} devices are not divisible by the fixed "
                       f"axes' product {known} ({dict(zip(MESH_AXES, sizes))})")
    sizes[MESH_AXES.index(fills[0])] = n_devices // known
  if math.prod(sizes) != n_devices:
    raise ValueError(f"config.mesh: axes {dict(zip(MESH_AXES, sizes))} multiply to "
                     f"{math.prod(sizes)} but there are {n_devices} devices")
  return tuple(sizes)


def make_mesh(axes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh with GSPMD (Auto) axes over all (or the given) devices.

  All devices, or TPU devices (a slice, or an ahead-of-time compile's topology), are
  laid out by `jax.make_mesh`, which orders TPU chips by their ICI coordinates; a
  subset of other devices keeps the given order."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(axes, len(devices))
  if devices == list(jax.devices()) or devices[0].platform == "tpu":
    try:
      return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
    except NotImplementedError as e:  # an axis is no product of whole torus axes
      from jax.experimental import mesh_utils
      log.warning("mesh %s: %s; splitting physical axes", dict(zip(MESH_AXES, shape)), e)
      grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
      return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  return Mesh(np.asarray(devices).reshape(shape), MESH_AXES,
              axis_types=(AxisType.Auto,) * 3)


def check_model_fits(model_cfg, mesh: Mesh) -> None:
  """Fails early, naming the field, when heads cannot be split over the tensor axis."""
  t = mesh.shape["tensor"]
  for field in ("num_heads", "num_kv_heads"):
    n = getattr(model_cfg, field)
    if n % t:
      raise ValueError(f"config.model.{field}={n} is not divisible by the mesh's "
                       f"tensor axis ({t}); choose config.mesh.tensor dividing it")


def spec_for(logical: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
             rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> P:
  """Logical names -> PartitionSpec; a mesh axis is used once, uneven splits replicate."""
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name, dim in zip(logical, shape):
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used and mesh.shape[a] > 1)
    size = math.prod(mesh.shape[a] for a in axes)
    if axes and dim % size:
      log.warning("dimension %s of size %d is not divisible by mesh axes %s (%d): "
                  "replicated instead", name, dim, axes, size)
      axes = ()
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*out)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
  """Leading (batch) dimension over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(BATCH, *([None] * (ndim - 1))))


def batch_shard(mesh: Mesh, process_index: int | None = None) -> tuple[int, int]:
  """`(index, count)`: this process feeds block `index` of `count` equal row blocks.

  The batch is split over the data x fsdp slots of the mesh. A process feeds the rows
  of every slot that holds one of its devices, so `count` is the number of distinct
  slot groups. It is smaller than the process count when a slot spans hosts (tensor
  across hosts): those hosts feed the same rows. `make_array_from_process_local_data`
  puts a process's rows into its slots in slot order. On CPU and GPU meshes (devices
  ordered by process) block `index` lands at rows [index*B/count, (index+1)*B/count),
  so the global batch equals the 1-process batch. A topology-ordered TPU mesh may
  interleave hosts' slots. The global batch is then a row permutation of it: the same
  examples, with the loss equal up to summation order.
  """
  me = jax.process_index() if process_index is None else process_index
  groups = _slot_groups(mesh.devices, mesh.axis_names)
  mine = [g for g in groups if me in g[1]]
  if len(mine) != 1:
    raise ValueError(f"process {me} holds no device of the mesh")
  return groups.index(mine[0]), len(groups)


def _slot_groups(devices: np.ndarray, axis_names: Sequence[str]
                 ) -> list[tuple[tuple[int, ...], frozenset[int]]]:
  """A mesh's batch slots grouped by the processes that must feed them.

  Returns (slots, processes) pairs ordered by first slot. Fails when two processes
  share only some of their slots: no process-local layout can feed that mesh.
  Takes the device array (not a Mesh) so tests can pass stand-in devices.
  """
  names = list(axis_names)
  batch_axes = [names.index(a) for a in BATCH if a in names]
  devs = np.moveaxis(np.asarray(devices), batch_axes, list(range(len(batch_axes))))
  slots = devs.reshape(math.prod(devs.shape[:len(batch_axes)]), -1)
  procs = [frozenset(int(d.process_index) for d in row) for row in slots]
  by_proc: dict[int, list[int]] = {}
  for s, ps in enumerate(procs):
    for p in ps:
      by_proc.setdefault(p, []).append(s)
  groups: dict[tuple[int, ...], set[int]] = {}
  for p, ss in by_proc.items():
    groups.setdefault(tuple(ss), set()).add(p)
  seen: set[int] = set()
  for ss in groups:
    if seen & set(ss) or len(ss) != len(next(iter(groups))):
      raise ValueError(
          f"mesh {dict(zip(names, np.shape(devices)))}: processes hold overlapping or "
          f"unequal sets of batch slots (processes: slots "
          f"{ {tuple(sorted(p)): ss for ss, p in groups.items()} }); choose mesh sizes so "
          "that each host's devices fill whole data x fsdp slots")
    seen |= set(ss)
  return sorted(((ss, frozenset(p)) for ss, p in groups.items()), key=lambda g: g[0][0])


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Host arrays -> global arrays split over the batch axes.

  Each process passes only its own rows (block `batch_shard(mesh)` of the global
  batch); `make_array_from_process_local_data` assembles the global array, so the
  same code serves one host and a pod.
  """
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    out[k] = jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
  return out


def constrain_rows(x: jax.Array) -> jax.Array:
  """Activations [rows, ...] split over the batch mesh axes, when traced under a mesh
  (`with_mesh`); unchanged otherwise.

  Why: with parameters split on `embed` over fsdp and no constraint, XLA may keep the
  weights in place and all-reduce partial activations over fsdp instead of gathering
  the weights (FSDP): for Qwen3-8B at 4k tokens that is ~30x the collective bytes."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  axes = tuple(a for a in BATCH if a in mesh.axis_names and mesh.shape[a] > 1)
  if not axes or x.shape[0] % math.prod(mesh.shape[a] for a in axes):
    return x
  return jax.lax.with_sharding_constraint(x, P(axes, *([None] * (x.ndim - 1))))


def under_mesh(mesh: Mesh | None) -> contextlib.AbstractContextManager:
  """Traces under `mesh`'s abstract mesh (none: unchanged), so `constrain_rows` and
  per-chip kernels (`decoder._splash_attention`) can name its axes."""
  return (contextlib.nullcontext() if mesh is None
          else jax.sharding.use_abstract_mesh(mesh.abstract_mesh))


def with_mesh(fn: Callable, mesh: Mesh) -> Callable:
  """`fn` traced `under_mesh(mesh)`."""
  def traced(*args, **kwargs):
    with under_mesh(mesh):
      return fn(*args, **kwargs)
  return traced


def jit_step(step: Callable, state_shardings: Any, batch_shardings: Any,
             metrics_sharding: Any = None, donate: bool = True) -> Callable:
  """Compiles `step(state, batch) -> (state, metrics)` with explicit shardings."""
  mesh = jax.tree.leaves(batch_shardings)[0].mesh
  return jax.jit(with_mesh(step, mesh), in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, metrics_sharding),
                 donate_argnums=(0,) if donate else ())
