"""Test set-up: 8 simulated CPU devices, set before jax is imported anywhere."""
import os

import pytest

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def twx_pool():
  """Two TextWorldExpress JVMs, shared by a test module's env tests."""
  from act_jax.envs.pool import EnvPool
  with EnvPool("twx", 2) as pool:
    yield pool
