"""What every benchmark measures the same way: the machine's speeds and a timed call.

The matmul peak and the read bandwidth are printed beside each ratio because they
decide it: a training step is bound by the first, single-sequence decoding by the
second (it streams every weight once per token), and both move between machines
and with the load other jobs put on them.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable, TypeVar

import jax
import jax.numpy as jnp

from act_jax.sampling import CompileCounter


def time_call(fn: Callable, *args) -> tuple[float, Any]:
  """(seconds, output) of one call, ending when every output is ready."""
  t0 = time.perf_counter()
  out = jax.block_until_ready(fn(*args))
  return time.perf_counter() - t0, out


def _median_of(fn: Callable, *args, warmup: int, reps: int) -> tuple[float, list[float]]:
  for _ in range(warmup):
    time_call(fn, *args)
  ts = [time_call(fn, *args)[0] for _ in range(reps)]
  return statistics.median(ts), ts


def measure_matmul_peak(n: int = 2048, reps: int = 10) -> dict:
  """As tunix_baseline.measure_matmul_peak: median of 10 fp32 n^3 matmuls."""
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), jnp.float32)
  b = jax.random.normal(kb, (n, n), jnp.float32)
  t, ts = _median_of(jax.jit(jnp.matmul), a, b, warmup=3, reps=reps)
  return {"n": n, "median_s": t, "gflops": 2 * n**3 / t / 1e9,
          "gflops_best": 2 * n**3 / min(ts) / 1e9}


def measure_bandwidth(mib: int = 256, reps: int = 10) -> dict:
  """Memory read bandwidth: median of 10 jitted fp32 sums over `mib` MiB (far above L3)."""
  x = jnp.ones((mib * 2**20 // 4,), jnp.float32)
  t, ts = _median_of(jax.jit(jnp.sum), x, warmup=3, reps=reps)
  return {"mib": mib, "median_s": t, "read_gb_s": x.nbytes / t / 1e9,
          "read_gb_s_best": x.nbytes / min(ts) / 1e9}


def usable_cores() -> int:
  """The cores this process may run on: its affinity mask where the OS has one
  (Linux), else every core (macOS has no `sched_getaffinity`)."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def cpu() -> dict:
  """The processor's name, widest vector extension and the cores this process may use."""
  info = {"model": platform.processor() or platform.machine(), "vectors": "?",
          "cores": usable_cores()}
  try:
    lines = open("/proc/cpuinfo").read().splitlines()
  except OSError:
    return info
  field = lambda key: next((l.split(":", 1)[1].strip() for l in lines if l.startswith(key)), "")
  flags = set(field("flags").split())
  info["model"] = field("model name") or info["model"]
  info["vectors"] = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"),
                                                  ("avx", "AVX")) if flag in flags), "SSE")
  return info


def measure_machine() -> dict:
  return {"cpu": cpu(), "matmul_peak": measure_matmul_peak(), "bandwidth": measure_bandwidth()}


def describe(machine: dict) -> str:
  c = machine["cpu"]
  return (f"{c['model']} ({c['vectors']}, {c['cores']} core{'s' * (c['cores'] > 1)}): "
          f"fp32 2048^3 matmul peak "
          f"{machine['matmul_peak']['gflops']:.1f} GFLOP/s, "
          f"read bandwidth {machine['bandwidth']['read_gb_s']:.1f} GB/s")


T = TypeVar("T")
U = TypeVar("U")


def interleaved(ours: Callable[[str], T], theirs: Callable[[], U] | None,
                sandwich: bool = True) -> tuple[list[T], U | None]:
  """Ours, theirs, ours: (ours' passes, theirs' result).

  A shared machine's load drifts over the minutes one side takes, so ours is measured
  on both sides of the other implementation and a slow window cannot favour either;
  the caller combines the passes. `ours(label)` is called with "before" and "after",
  or once with "ours" when there is no other side or `sandwich` is off (then after it).
  """
  passes = [ours("before")] if sandwich and theirs is not None else []
  other = theirs() if theirs is not None else None
  passes.append(ours("after" if passes else "ours"))
  return passes, other


def timed_steps(step: Callable, state: Any, steps: int, max_warmup: int) -> tuple[dict, Any]:
  """Steps `step(state) -> (state, metrics)` until one compiles nothing (at most
  `max_warmup`), then `steps` timed steps; the median and what it rests on."""
  warm = []
  for _ in range(max_warmup):
    counter = CompileCounter()
    dt, (state, _) = time_call(step, state)
    warm.append({"s": dt, "compiles": counter.count})
    if counter.count == 0:
      break
  counter = CompileCounter()
  ts, losses = [], []
  for _ in range(steps):
    dt, (state, m) = time_call(step, state)
    ts.append(dt)
    losses.append(float(m["loss"]))
  return {"step_s_median": statistics.median(ts), "step_s_all": ts, "warmup": warm,
          "losses": losses, "compiles_in_timed_regions": counter.count}, state
