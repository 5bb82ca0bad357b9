"""Where a run's files live: every read and write of a run goes through here, so a
workdir, a model dir or a data file may be a local path or `gs://bucket/dir` alike.

Why `etils.epath`: Orbax already addresses its checkpoints with it, so one path type
spans checkpoints and our own files; it is pathlib's API (no new vocabulary); without
TensorFlow its `gs://` backend is fsspec's `gcsfs`, which honours
`STORAGE_EMULATOR_HOST`; TensorBoard reads `gs://` logdirs through fsspec too. A bare gcsfs
or google-cloud-storage layer would leave Orbax on a second abstraction; `tf.io.gfile`
would pull in TensorFlow.

Emulator: with `STORAGE_EMULATOR_HOST=http://host:port` set before this module is
imported, tensorstore (Orbax's array writer) is pointed at the same endpoint with a
test token, so every `gs://` access of a run lands on the emulator.

Some readers need local files: safetensors and TFDS/array_record open OS files,
and the prefix cache is memory-mapped. `local_dir` mirrors a finished remote
directory into a per-process cache, and `staged` writes a directory locally and
uploads it whole once complete.
"""
from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
import time
from typing import Any, Iterator

# gcsfs >= 2025.10 defaults GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=true: `gcsfs.GCSFileSystem`
# is then `ExtendedGcsFileSystem`, which asks the Storage Control API over gRPC for a
# bucket's layout (zonal / hierarchical) before opening files in it. An emulator
# serves no gRPC control plane: with credentials the probe waits out its retries
# (about a minute); without them it fails, and since a failed probe is not cached it
# is retried, with a warning, on every open. Runs never need zonal-bucket appends,
# so we keep the plain HTTP GCSFileSystem. It must be set before gcsfs is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec  # noqa: E402
from etils import epath  # noqa: E402  (after the gcsfs setting above)

# gcsfs caches directory listings per process by default; another process (a pod's
# other workers, a resumed run, a reader) then sees a stale listing, e.g. misses the
# checkpoint steps written since. Runs list rarely: always ask the bucket.
fsspec.config.conf.setdefault("gcs", {})["use_listings_cache"] = False



def configure_emulator() -> None:
  """Points tensorstore at `STORAGE_EMULATOR_HOST` (gcsfs and google-cloud-storage
  read it themselves). Idempotent; runs on import."""
  host = os.environ.get("STORAGE_EMULATOR_HOST")
  if not host:
    return
  if "://" not in host:
    host = "http://" + host
  os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", host)
  os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # no credentials


configure_emulator()


def is_remote(p: str | os.PathLike) -> bool:
  return "://" in os.fspath(p)


def path(p: str | os.PathLike) -> epath.Path:
  """`p` as an epath (a local one made absolute: Orbax needs that)."""
  out = epath.Path(p)
  return out if is_remote(p) else out.absolute()


def exists(p: str | os.PathLike) -> bool:
  return epath.Path(p).exists()


def makedirs(p: str | os.PathLike) -> None:
  """A directory, locally; on a bucket, directories exist once a file is in them."""
  if not is_remote(p):
    os.makedirs(p, exist_ok=True)


def read_text(p: str | os.PathLike) -> str:
  return epath.Path(p).read_text()


def write_text(p: str | os.PathLike, text: str) -> None:
  """Atomic: readers see the old or the new content, never a part (one object upload
  on a bucket; write-then-rename locally)."""
  if is_remote(p):
    epath.Path(p).write_text(text)
    return
  os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
  tmp = f"{p}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, p)


def write_bytes(p: str | os.PathLike, data: bytes) -> None:
  """One object upload on a bucket (atomic); a plain write locally."""
  epath.Path(p).write_bytes(data)


def read_json(p: str | os.PathLike) -> Any:
  return json.loads(read_text(p))


def write_json(p: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
  write_text(p, json.dumps(obj, indent=indent))


def open(p: str | os.PathLike, mode: str = "r"):  # noqa: A001 (the storage layer's open)
  """A file object on a local or bucket path (a bucket file is written on close)."""
  if "w" in mode or "a" in mode:
    makedirs(os.path.dirname(os.fspath(p)) or ".")
  return epath.Path(p).open(mode)


def rmtree(p: str | os.PathLike) -> None:
  epath.Path(p).rmtree(missing_ok=True)


def move(src: str | os.PathLike, dst: str | os.PathLike) -> None:
  """Renames a directory (on a bucket: copies then deletes each object; gcsfs's `mv`
  would try the moveTo API first, which fake-gcs-server lacks)."""
  if is_remote(src):
    _fs().copy(os.fspath(src), os.fspath(dst), recursive=True)
    _fs().rm(os.fspath(src), recursive=True)
  else:
    os.replace(src, dst)


def _fs():
  return fsspec.filesystem("gcs")


def upload_dir(local: str, remote: str | os.PathLike) -> None:
  """Copies the tree `local` into `remote` (local or bucket)."""
  if not is_remote(remote):
    shutil.copytree(local, remote, dirs_exist_ok=True)
    return
  files = [os.path.join(r, f) for r, _, fs in os.walk(local) for f in fs]
  if files:
    _fs().put(files, [os.fspath(remote) + "/" + os.path.relpath(f, local) for f in files])


_CACHE: dict[str, str] = {}


def _cache_root() -> str:
  if "root" not in _CACHE:
    _CACHE["root"] = tempfile.mkdtemp(prefix="act_jax_mirror_")
    atexit.register(shutil.rmtree, _CACHE["root"], True)
  return _CACHE["root"]


def local_dir(p: str | os.PathLike) -> str:
  """A local directory holding `p`'s files: `p` itself when local; a bucket directory
  is downloaded once per process (call it on finished, unchanging directories)."""
  p = os.fspath(p)
  if not is_remote(p):
    return p
  if p not in _CACHE:
    dst = os.path.join(_cache_root(), p.split("://", 1)[1])
    if _fs().exists(p):
      _fs().get(p.rstrip("/") + "/", dst + "/", recursive=True)
    os.makedirs(dst, exist_ok=True)
    _CACHE[p] = dst
  return _CACHE[p]


@contextlib.contextmanager
def staged(p: str | os.PathLike) -> Iterator[str]:
  """A local directory to write `p` in: `p` itself when local; for a bucket, a fresh
  local directory uploaded to `p` when the block ends without an error."""
  p = os.fspath(p)
  if not is_remote(p):
    os.makedirs(p, exist_ok=True)
    yield p
    return
  tmp = tempfile.mkdtemp(prefix="act_jax_stage_")
  try:
    yield tmp
    upload_dir(tmp, p)
    _CACHE[p] = tmp  # what `local_dir(p)` would download
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


class Appender:
  """Appends lines to a file. Locally each line goes straight to the file; a bucket
  object cannot be appended to, so its lines are held and the whole object rewritten
  at most every `every_s` seconds, on `flush(force=True)` and on close."""

  def __init__(self, p: str, initial: str = "", every_s: float = 10.0):
    self.p, self.every_s = p, every_s
    self._remote = is_remote(p)
    if self._remote:
      self._text, self._last = initial, -float("inf")
    else:
      write_text(p, initial)
      self._f = open(p, "a")

  def write(self, line: str) -> None:
    if self._remote:
      self._text += line
      self.flush()
    else:
      self._f.write(line)
      self._f.flush()

  def flush(self, force: bool = False) -> None:
    if self._remote and (force or time.monotonic() - self._last >= self.every_s):
      write_text(self.p, self._text)
      self._last = time.monotonic()

  def close(self) -> None:
    if self._remote:
      self.flush(force=True)
    else:
      self._f.close()
