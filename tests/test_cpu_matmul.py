"""Our XLA:CPU panel kernel against NumPy float64 products."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from act_jax.models import ModelConfig
from act_jax.sampling import cpu_matmul, inference

needs_kernel = pytest.mark.skipif(not cpu_matmul.available(),
                                  reason="CPU kernel not built (no C++ compiler?)")


def _panels(w):
  k, n = w.shape
  return w.reshape(k, n // cpu_matmul.WIDTH, cpu_matmul.WIDTH).transpose(1, 0, 2)


# Every row count of a partial 8-row tile, several tiles and a prefill's many rows;
# matrices below and above the size at which the kernel splits panels over XLA's
# threads; odd K.
@needs_kernel
@pytest.mark.parametrize("m,k,n", [(m, 37, 64) for m in range(1, 9)] + [
    (1, 5, 32), (13, 48, 96), (8, 512, 8192), (70, 256, 4096), (512, 64, 256)])
def test_equals_float64_product(m, k, n):
  rng = np.random.default_rng(m * k + n)
  x = rng.standard_normal((m, k), np.float32)
  w = rng.standard_normal((k, n), np.float32)
  got = np.asarray(jax.jit(cpu_matmul.matmul)(x, _panels(w)))
  want = x.astype(np.float64) @ w.astype(np.float64)
  # float32 rounding of a length-k sum: a few ulps of sqrt(k)-sized terms
  np.testing.assert_allclose(got, want, atol=1e-5 * np.sqrt(k) * 4, rtol=1e-5)


@needs_kernel
def test_runs_inside_a_loop():
  """The decode loop calls it in a while body; each iteration must see fresh inputs."""
  rng = np.random.default_rng(0)
  w = rng.standard_normal((32, 64), np.float32) * 0.2
  x0 = rng.standard_normal((2, 32), np.float32)
  step = lambda x, _: (jnp.tanh(cpu_matmul.matmul(x, _panels(w))[:, :32]), None)
  got = jax.jit(lambda x: jax.lax.scan(step, x, None, length=5)[0])(x0)
  want = x0.astype(np.float64)
  for _ in range(5):
    want = np.tanh(want @ w[:, :32].astype(np.float64))
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


@needs_kernel
def test_bad_shapes_and_dtypes_are_named():
  x = jnp.zeros((2, 16))
  with pytest.raises(ValueError, match=r"float32\[2, 16\].*float32\[3, 8, 32\]"):
    cpu_matmul.matmul(x, jnp.zeros((3, 8, 32)))
  with pytest.raises(ValueError, match="bfloat16"):
    cpu_matmul.matmul(x, jnp.zeros((3, 16, 32), jnp.bfloat16))


CFG = ModelConfig(arch="qwen3", vocab_size=64, hidden_size=16, intermediate_size=32,
                  num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8)


@pytest.mark.parametrize("cxx", ["no-such-c++", "false"])  # missing; fails to compile
def test_without_a_build_decoding_keeps_xla_dots(cxx, monkeypatch, tmp_path, caplog):
  """No build, no crash: a warning says why once, and `prepare` picks XLA's layouts."""
  before = cpu_matmul.available()
  monkeypatch.setenv("ACT_JAX_CPU_KERNEL", "1")  # try the build on any CPU (AVX-512 or not)
  monkeypatch.setenv("CXX", str(tmp_path / cxx) if cxx == "no-such-c++" else cxx)
  monkeypatch.setenv("ACT_JAX_CACHE", str(tmp_path))
  cpu_matmul.available.cache_clear()
  try:
    assert not cpu_matmul.available()
    assert "unavailable" in caplog.text and cxx in caplog.text
    assert not inference.use_kernel(CFG, None)
    with pytest.raises(ValueError, match="cpu_matmul.available"):
      inference.prepare(CFG, None, kernel=True)
  finally:
    monkeypatch.undo()
    cpu_matmul.available.cache_clear()
  assert cpu_matmul.available() == before  # builds (cached) and registers again


def test_kernel_layout_refuses_bfloat16():
  cfg = dataclasses.replace(CFG, dtype="bfloat16")
  assert not inference.use_kernel(cfg, None)
  with pytest.raises(ValueError, match="'bfloat16'"):
    inference.prepare(cfg, None, kernel=True)
