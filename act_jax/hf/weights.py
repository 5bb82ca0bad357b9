"""Streaming safetensors <-> sharded parameter pytree.

Import reads one HF tensor at a time (`safe_open` is lazy) and writes each into
the host buffers of the device shards that need it, so host memory holds one
parameter's shards at most, never the model twice; every parameter then lands
directly in its `NamedSharding`. Export pulls one (per-layer) tensor at a time off
the devices and fills safetensors shards of bounded size.
"""
from __future__ import annotations

import json
import logging
import math
import re
import struct
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterable

import jax
import ml_dtypes
import numpy as np
from etils import epath
from safetensors import safe_open

from act_jax import storage
from act_jax.hf import keymap
from act_jax.hf.config import generation_config, hf_config_from_model
from act_jax.hf.tokenizer import copy_tokenizer_files
from act_jax.models import ModelConfig, Params, abstract_params

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_ST_DTYPES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}  # safetensors names
_FLOAT_DTYPES = ("F32", "BF16", "F16")


class CheckpointError(ValueError):
  """A checkpoint file is missing, corrupt, truncated or does not fit the config."""


# ---------------------------------------------------------------------------- read


def read_config(hf_dir: str | Path) -> dict[str, Any]:
  path = epath.Path(hf_dir) / "config.json"  # a bucket dir too (act_jax.storage)
  if not path.is_file():
    raise CheckpointError(f"{path}: missing (not a Hugging Face model directory?)")
  return json.loads(path.read_text())


def weight_files(hf_dir: str | Path) -> dict[str, Path]:
  """Tensor name -> the safetensors file that should hold it, per the index if sharded."""
  hf_dir = Path(hf_dir)
  index = hf_dir / INDEX_FILE
  if index.is_file():
    weight_map = json.loads(index.read_text())["weight_map"]
    return {name: hf_dir / f for name, f in weight_map.items()}
  single = hf_dir / SINGLE_FILE
  if not single.is_file():
    if any(hf_dir.glob("*.bin")) or any(hf_dir.glob("*.pt")):
      raise CheckpointError(f"{hf_dir}: only pickled weights (*.bin/*.pt) found; they are "
                            "never loaded here. Convert to safetensors first.")
    raise CheckpointError(f"{hf_dir}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
  with ExitStack() as stack:
    return {name: single for name in _open(single, stack).keys()}


def _diagnose(path: Path, err: Exception) -> str:
  """Why safe_open refused a file, naming the first tensor a truncation cut off."""
  try:
    size = path.stat().st_size
    with open(path, "rb") as f:
      (n,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(n))
  except Exception:  # noqa: BLE001 - any failure here means the header is unreadable
    return f"{path}: corrupt safetensors file, header unreadable ({err})"
  have = size - 8 - n
  cut = sorted((v["data_offsets"][1], k) for k, v in header.items()
               if k != "__metadata__" and v["data_offsets"][1] > have)
  if cut:
    return (f"{path}: truncated: tensor {cut[0][1]!r} needs data bytes up to {cut[0][0]} but "
            f"the file holds {have} ({len(cut)} tensor(s) affected)")
  return f"{path}: corrupt safetensors file ({err})"


def _open(path: Path, stack: ExitStack):
  try:
    return stack.enter_context(safe_open(str(path), framework="numpy"))
  except Exception as e:  # noqa: BLE001 - safetensors raises its own types
    raise CheckpointError(_diagnose(path, e)) from e


class _Reader:
  """Lazy, validated access to the tensors of one HF directory."""

  def __init__(self, hf_dir: Path, stack: ExitStack):
    self.files = weight_files(hf_dir)
    for path in sorted(set(self.files.values())):
      if not path.is_file():
        names = sorted(n for n, p in self.files.items() if p == path)
        raise CheckpointError(f"{path}: missing shard; {INDEX_FILE} puts {len(names)} tensor(s) "
                              f"there, e.g. {names[0]!r}")
    self.handles = {p: _open(p, stack) for p in sorted(set(self.files.values()))}
    self.hf_dir = hf_dir

  def check(self, specs: list[keymap.TensorSpec], tie_embeddings: bool) -> None:
    """Every tensor present with the right shape and a float dtype; no stray weights."""
    present = {}
    for path, h in self.handles.items():
      for name in h.keys():
        present[name] = path
    for name, path in self.files.items():
      if name not in present or present[name] != path:
        raise CheckpointError(f"{path}: tensor {name!r} listed in {INDEX_FILE} is not in "
                              "this file")
    wanted = {s.hf for s in specs}
    for s in specs:
      if s.hf not in self.files:
        raise CheckpointError(f"{self.hf_dir}: tensor {s.hf!r} missing from the checkpoint")
      sl = self.handles[self.files[s.hf]].get_slice(s.hf)
      shape, dtype = tuple(sl.get_shape()), sl.get_dtype()
      if shape != s.hf_shape:
        raise CheckpointError(f"{self.files[s.hf]}: tensor {s.hf!r} has shape {shape}, "
                              f"config.json implies {s.hf_shape}")
      if dtype not in _FLOAT_DTYPES:
        raise CheckpointError(f"{self.files[s.hf]}: tensor {s.hf!r} has dtype {dtype}; "
                              f"expected one of {_FLOAT_DTYPES}")
    ignored = lambda n: (any(p.search(n) for p in keymap.IGNORED)
                         or (tie_embeddings and n == keymap.TIED_HEAD))
    stray = [n for n in present if n not in wanted and not ignored(n)]
    if tie_embeddings and keymap.TIED_HEAD in present:
      log.info("%s: ignoring the stored %s: embeddings are tied (as transformers does)",
               self.hf_dir, keymap.TIED_HEAD)
    if stray:
      raise CheckpointError(f"{self.hf_dir}: {len(stray)} tensor(s) this model has no place for, "
                            f"e.g. {stray[:3]} (in {present[stray[0]]})")

  def get(self, name: str) -> np.ndarray:
    path = self.files[name]
    try:
      return self.handles[path].get_tensor(name)
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"{path}: tensor {name!r} unreadable ({e})") from e


def _shard_key(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
  return tuple(s.indices(d)[:2] for s, d in zip(index, shape))


def _assemble(shape: tuple[int, ...], dtype: Any, sharding: jax.sharding.Sharding,
              read: Callable[[int | None], np.ndarray], stacked: bool) -> jax.Array:
  """Builds one global array from per-layer (or whole) host tensors, shard by shard.

  Each tensor is read once; only the slices this process's devices hold are kept.
  """
  index_map = sharding.addressable_devices_indices_map(shape)
  keys = {d: _shard_key(idx, shape) for d, idx in index_map.items()}
  bufs = {k: np.empty([b - a for a, b in k], dtype) for k in set(keys.values())}
  take = lambda x, k: x[tuple(slice(a, b) for a, b in k)]
  if stacked:
    layers = sorted({i for k in bufs for i in range(*k[0])})
    for i in layers:
      x = read(i)
      for k, buf in bufs.items():
        if k[0][0] <= i < k[0][1]:
          buf[i - k[0][0]] = take(x, k[1:])
  else:
    x = read(None)
    for k, buf in bufs.items():
      buf[...] = take(x, k)
    del x
  arrays = [jax.device_put(bufs[keys[d]], d) for d in index_map]
  return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def load_hf_params(hf_dir: str | Path, cfg: ModelConfig, shardings: Params) -> Params:
  """Streams an HF directory's safetensors into `cfg`'s param pytree, each array built
  in its sharding from `shardings` (act_jax.params.shardings)."""
  hf_dir = Path(hf_dir)
  specs = keymap.tensor_specs(cfg)
  shapes = abstract_params(cfg)
  dtype = NP_DTYPES[cfg.param_dtype]
  by_param: dict[tuple[str, ...], list[keymap.TensorSpec]] = {}
  for s in specs:
    by_param.setdefault(s.path, []).append(s)
  params: Params = {}
  with ExitStack() as stack:
    reader = _Reader(hf_dir, stack)
    reader.check(specs, cfg.tie_embeddings)
    for path, group in by_param.items():
      stacked = group[0].layer is not None
      lookup = {s.layer: s for s in group}

      def read(layer, lookup=lookup):
        s = lookup[layer]
        return s.transform.to_ours(reader.get(s.hf), s.shape).astype(dtype, copy=False)

      target = keymap.get_path(shapes, path)
      value = _assemble(tuple(target.shape), dtype, keymap.get_path(shardings, path), read,
                        stacked)
      node = params
      for k in path[:-1]:
        node = node.setdefault(k, {})
      node[path[-1]] = value
  return params


# --------------------------------------------------------------------------- write


def parse_size(size: int | str) -> int:
  """Bytes from an int or an HF-style size string ('5GB' = 5e9, '5GiB' = 5 * 2**30)."""
  if isinstance(size, int):
    return size
  m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*", size.upper().replace("IB", "iB"))
  if not m:
    raise ValueError(f"max_shard_size: cannot parse {size!r} (e.g. '5GB', '500MB', 1000000)")
  base = 1024 if m.group(3) else 1000
  return int(float(m.group(1)) * base ** "_KMGT".index(m.group(2) or "_"))


def plan_shards(specs: Iterable[keymap.TensorSpec], itemsize: int,
                max_bytes: int) -> list[list[keymap.TensorSpec]]:
  """Greedy split in order; a tensor larger than `max_bytes` gets a shard of its own."""
  shards: list[list[keymap.TensorSpec]] = [[]]
  size = 0
  for s in specs:
    n = int(np.prod(s.hf_shape)) * itemsize
    if shards[-1] and size + n > max_bytes:
      shards.append([])
      size = 0
    shards[-1].append(s)
    size += n
  return shards


def _to_host(x: jax.Array) -> np.ndarray:
  if x.is_fully_addressable:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils  # every process must take part
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _hf_tensor(params: Params, s: keymap.TensorSpec, np_dtype: Any) -> np.ndarray:
  """One HF tensor pulled off the devices (one layer's slice of a stacked param)."""
  x = keymap.get_path(params, s.path)
  x = x[s.layer] if s.layer is not None else x
  t = np.ascontiguousarray(s.transform.to_hf(_to_host(x)).astype(np_dtype, copy=False))
  if t.shape != s.hf_shape:
    raise ValueError(f"param {'/'.join(s.path)} gives {s.hf} of shape {t.shape}, "
                     f"expected {s.hf_shape}")
  return t


def _write_safetensors(path: Path, specs: list[keymap.TensorSpec], dtype: str,
                       tensors: Iterable[np.ndarray]) -> int:
  """Streams tensors into one safetensors file: the header is known from the shapes
  alone, so only one tensor is ever in host memory. Returns the data size."""
  itemsize = np.dtype(NP_DTYPES[dtype]).itemsize
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for s in specs:
    n = math.prod(s.hf_shape) * itemsize
    header[s.hf] = {"dtype": _ST_DTYPES[dtype], "shape": list(s.hf_shape),
                    "data_offsets": [offset, offset + n]}
    offset += n
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for t in tensors:
      f.write(t.tobytes())
  return offset


def save_hf_weights(out_dir: str | Path, params: Params, cfg: ModelConfig, *,
                    dtype: str | None = None, max_shard_size: int | str = "5GB") -> list[Path]:
  """Writes `params` as HF safetensors shards (+ index when more than one).

  Every process must call it (arrays spanning hosts are gathered); process 0 writes.
  """
  out_dir = Path(out_dir)
  dtype = dtype or cfg.param_dtype
  np_dtype = NP_DTYPES[dtype]
  specs = keymap.tensor_specs(cfg)
  shards = plan_shards(specs, np.dtype(np_dtype).itemsize, parse_size(max_shard_size))
  names = ([SINGLE_FILE] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  writer = jax.process_index() == 0
  total = 0
  for name, shard in zip(names, shards):
    tensors = (_hf_tensor(params, s, np_dtype) for s in shard)
    if writer:
      total += _write_safetensors(out_dir / name, shard, dtype, tensors)
    else:
      for _ in tensors:  # take part in the gathers
        pass
  if writer and len(shards) > 1:
    weight_map = {s.hf: name for name, shard in zip(names, shards) for s in shard}
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
  return [out_dir / n for n in names]


def save_pretrained(out_dir: str | Path, params: Params, cfg: ModelConfig, *,
                    tokenizer_dir: str | Path | None = None, dtype: str | None = None,
                    max_shard_size: int | str = "5GB", overwrite: bool = False) -> Path:
  """Exports an HF directory transformers loads as `<Arch>ForCausalLM`.

  Args:
    out_dir: created if needed; refused if it already holds weights, unless `overwrite`.
    params, cfg: the model.
    tokenizer_dir: tokenizer files to copy alongside (its generation_config.json, if
      any, supplies the sampling defaults).
    dtype: safetensors dtype (float32, bfloat16, float16); default: `cfg.param_dtype`.
    max_shard_size: bytes per safetensors file, or '5GB'-style.
  """
  dtype = dtype or cfg.param_dtype
  if dtype not in NP_DTYPES:
    raise ValueError(f"dtype: {dtype!r} is not one of {tuple(NP_DTYPES)}")
  hf_config = hf_config_from_model(cfg, torch_dtype=dtype)  # refuses before writing anything
  old = sorted(epath.Path(out_dir).glob("model*.safetensors*"))
  if old and not overwrite:
    raise FileExistsError(f"{out_dir}: already holds {old[0].name}; pass overwrite=True "
                          "(--overwrite) to replace it")
  if storage.is_remote(out_dir):  # safetensors writes OS files: write locally, upload
    with storage.staged(out_dir) as local:
      save_pretrained(local, params, cfg, tokenizer_dir=tokenizer_dir, dtype=dtype,
                      max_shard_size=max_shard_size, overwrite=True)
    return epath.Path(out_dir)
  out_dir = Path(out_dir)
  writer = jax.process_index() == 0
  if writer:
    out_dir.mkdir(parents=True, exist_ok=True)
    for p in old:
      p.unlink()
  t0 = time.perf_counter()
  files = save_hf_weights(out_dir, params, cfg, dtype=dtype, max_shard_size=max_shard_size)
  if writer:
    base = None
    if tokenizer_dir is not None:
      copy_tokenizer_files(tokenizer_dir, out_dir)
      gen = epath.Path(tokenizer_dir) / "generation_config.json"
      base = json.loads(gen.read_text()) if gen.is_file() else None
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    (out_dir / "generation_config.json").write_text(
        json.dumps(generation_config(cfg, base), indent=2) + "\n")
  log.info("exported %s to %s (%d file(s)) in %.1fs", cfg.arch, out_dir, len(files),
           time.perf_counter() - t0)
  return out_dir
