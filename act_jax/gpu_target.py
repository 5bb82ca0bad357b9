"""GPU compile targets: what XLA needs to compile for a GPU this host does not have.

jax's CUDA plugin (`jax-cuda12-plugin` + `jax-cuda12-pjrt`, unpacked onto PYTHONPATH
by `benchmarks/cuda_plugin.sh`; never a dependency of the project) describes a GPU
topology without a GPU when given a `GpuTargetConfigProto` in text form: the device's
limits and sizes, as `cudaGetDeviceProperties` would report them. We write that text
from the figures below, so a deviceless compile needs no file from elsewhere.
"""
from __future__ import annotations

import dataclasses
import importlib.util


@dataclasses.dataclass(frozen=True)
class GpuTarget:
  """One GPU model's device properties (the fields of XLA's `GpuDeviceInfoProto` that
  its compiler reads when no device is attached)."""
  name: str  # the device kind jax reports, a key of `act_jax.chips.CHIPS`
  compute_capability: tuple[int, int]
  core_count: int  # streaming multiprocessors
  fpus_per_core: int
  clock_rate_ghz: float
  memory_bandwidth: int  # bytes/s
  device_memory_size: int  # bytes
  l2_cache_size: int
  shared_memory_per_core: int
  shared_memory_per_block_optin: int
  registers_per_core_limit: int = 65536
  registers_per_block_limit: int = 65536
  shared_memory_per_block: int = 49152
  threads_per_block_limit: int = 1024
  threads_per_core_limit: int = 2048
  threads_per_warp: int = 32
  block_dim_limit_x: int = 2**31 - 1  # grid size limits (XLA divides by them)
  block_dim_limit_y: int = 65535
  block_dim_limit_z: int = 65535
  thread_dim_limit_x: int = 1024
  thread_dim_limit_y: int = 1024
  thread_dim_limit_z: int = 64
  cudnn_version: tuple[int, int, int] = (9, 10, 2)  # the plugin's minimum (jax 0.12.0.1)
  source: str = ""


# Keyed by the name `--topology` takes (h100:1x1x8).
TARGETS: dict[str, GpuTarget] = {
    "h100": GpuTarget(
        "NVIDIA H100 80GB HBM3", (9, 0), core_count=132, fpus_per_core=128,
        clock_rate_ghz=1.98, memory_bandwidth=3_352_320_000_000,
        device_memory_size=84_942_979_072, l2_cache_size=50 * 2**20,
        shared_memory_per_core=228 * 1024, shared_memory_per_block_optin=227 * 1024,
        source="H100 SXM5 80GB: NVIDIA H100 Tensor Core GPU Architecture whitepaper (132 "
               "SMs, 128 FP32 cores/SM, 50 MB L2, 228 KB shared memory/SM, 227 KB per "
               "block) and CUDA C++ Programming Guide, compute capability 9.0 limits; "
               "memory size, bandwidth and clock as XLA's h100_sxm.txtpb spec (openxla/xla "
               "xla/backends/gpu/target_config/specs) records them"),
}


def plugin_available() -> bool:
  """Whether jax can load its CUDA plugin (registered at jax's start, from PYTHONPATH)."""
  return (importlib.util.find_spec("jax_plugins") is not None
          and importlib.util.find_spec("jax_plugins.xla_cuda12") is not None)


def target(name: str) -> GpuTarget:
  if name not in TARGETS:
    raise ValueError(f"--topology: no GPU target {name!r}; known: {sorted(TARGETS)} (add "
                     "one to act_jax.gpu_target.TARGETS)")
  return TARGETS[name]


def target_config(t: GpuTarget) -> str:
  """The `GpuTargetConfigProto` text the CUDA plugin's topology factory parses."""
  info = {f.name: getattr(t, f.name) for f in dataclasses.fields(t)
          if f.name not in ("name", "compute_capability", "cudnn_version", "source")}
  major, minor = t.compute_capability
  fields = "".join(f"  {k}: {v}\n" for k, v in info.items())
  dnn = dict(zip(("major", "minor", "patch"), t.cudnn_version))
  return ("gpu_device_info {\n" + fields
          + f"  cuda_compute_capability {{\n    major: {major}\n    minor: {minor}\n  }}\n"
          + "}\n" + 'platform_name: "CUDA"\n'
          + "dnn_version_info {\n" + "".join(f"  {k}: {v}\n" for k, v in dnn.items()) + "}\n"
          + f'device_description_str: "{t.name}"\n')
