"""Our XLA:CPU kernel for products with weight panels (`cpu_matmul.cc`), built on first use.

Decoding on CPU is bound by streaming the weights; on the benchmark shapes this
kernel made the decode step 1.6-1.7x faster than XLA's own dot on a few rows, and it
is compute-bound on a prefill's many (benchmarks/README.md). It is compiled once per
machine with the system C++ compiler (`-march=native`) against jaxlib's XLA FFI
headers, cached under `$ACT_JAX_CACHE` (default `~/.cache/act_jax`), and registered
as an XLA FFI target. Where it cannot be built (no compiler) `available()` says why
once, and callers keep XLA's dot.

Its 8x32 accumulator tile fills 16 512-bit registers: it was measured on AVX-512
only, and on AVX2 or NEON (half the registers' width) it would likely spill. So it is
on by default only where the CPU has AVX-512; `ACT_JAX_CPU_KERNEL=1` turns it on
elsewhere, `=0` off.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib

WIDTH = 32  # output columns per panel, as the kernel's kWidth
_SOURCE = Path(__file__).with_suffix(".cc")
_TARGET = "act_small_matmul"
_FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC"]
log = logging.getLogger(__name__)


def _cpu_features() -> bytes:
  """What -march=native compiles for, so a cache shared by machines keeps one build each."""
  try:
    with open("/proc/cpuinfo", "rb") as f:
      return next((l for l in f if l.startswith((b"flags", b"Features"))), b"")
  except OSError:
    return f"{platform.machine()} {platform.processor()}".encode()


def _library() -> Path:
  """Compiles the kernel unless this source, jaxlib, compiler and CPU already have a build."""
  cxx = shlex.split(os.environ.get("CXX", "")) or [shutil.which("c++") or shutil.which("g++")]
  if cxx[0] is None:
    raise RuntimeError("no C++ compiler found (set CXX)")
  version = subprocess.run([*cxx, "--version"], capture_output=True, timeout=60).stdout
  key = hashlib.sha256(b"\0".join([_SOURCE.read_bytes(), jaxlib.__version__.encode(),
                                   version, _cpu_features(), *map(str.encode, _FLAGS)])
                       ).hexdigest()[:16]
  cache = Path(os.environ.get("ACT_JAX_CACHE", Path.home() / ".cache" / "act_jax"))
  lib = cache / f"cpu_matmul-{key}.so"
  if not lib.exists():
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:  # rename: atomic for parallel builds
      out = Path(tmp) / lib.name
      cmd = [*cxx, *_FLAGS, f"-I{jax.ffi.include_dir()}", str(_SOURCE), "-o", str(out)]
      done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
      if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
      out.rename(lib)
  return lib


def avx512() -> bool:
  """Whether this CPU has AVX-512 (the vector width the kernel's tile is made for)."""
  return b"avx512f" in _cpu_features().split()


@functools.cache
def available() -> bool:
  """Whether the kernel is enabled (`ACT_JAX_CPU_KERNEL`, else AVX-512), built and
  registered (CPU backend only). The first call compiles it: make it outside `jax.jit`."""
  switch = os.environ.get("ACT_JAX_CPU_KERNEL", "")
  if jax.default_backend() != "cpu" or switch == "0" or (switch != "1" and not avx512()):
    return False
  try:
    handler = ctypes.cdll.LoadLibrary(str(_library())).ActSmallMatmul
    jax.ffi.register_ffi_target(_TARGET, jax.ffi.pycapsule(handler), platform="cpu")
  except (OSError, RuntimeError, AttributeError, subprocess.SubprocessError) as e:
    log.warning("act_jax CPU matmul kernel unavailable, decoding uses XLA's dot: %s", e)
    return False
  return True


def matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """x [M, K] @ panels w [P, K, WIDTH] -> [M, P * WIDTH], float32; needs `available()`."""
  (m, k), (p, k_w, width) = x.shape, w.shape
  if k != k_w or width != WIDTH or x.dtype != jnp.float32 or w.dtype != jnp.float32:
    raise ValueError(f"cpu_matmul: want float32 x [M, K] and w [P, K, {WIDTH}], got "
                     f"{x.dtype}{list(x.shape)} and {w.dtype}{list(w.shape)}")
  out = jax.ShapeDtypeStruct((m, p * WIDTH), jnp.float32)
  return jax.ffi.ffi_call(_TARGET, out)(x, w)
