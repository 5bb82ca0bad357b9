"""The act_jax params checkpoint: what `import` writes and `export` reads.

Layout of a checkpoint directory:
  config.json   ModelConfig.to_dict()
  params/       Orbax StandardCheckpointer of the params pytree
  tokenizer/    tokenizer files (optional)

`export` finds its params through `resolve_params_source`: a params checkpoint, or
a training workdir / its checkpoints dir / one step dir (read by
`act_jax.checkpoint.load_params`); another kind of source is one more branch there.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from act_jax.hf.tokenizer import copy_tokenizer_files
from act_jax.hf.weights import param_shardings
from act_jax.models import ModelConfig, Params, abstract_params

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"


def save_params_checkpoint(ckpt_dir: str | Path, params: Params, cfg: ModelConfig,
                           tokenizer_dir: str | Path | None = None) -> Path:
  """Writes config, params (Orbax, sharded arrays saved in place) and tokenizer files."""
  ckpt_dir = Path(ckpt_dir).absolute()
  if jax.process_index() == 0:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    (ckpt_dir / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    if tokenizer_dir is not None:
      copy_tokenizer_files(tokenizer_dir, ckpt_dir / TOKENIZER_DIR)
  with ocp.StandardCheckpointer() as ckptr:  # every process writes its own shards
    ckptr.save(ckpt_dir / PARAMS_DIR, params, force=True)
    ckptr.wait_until_finished()
  return ckpt_dir


def load_config(ckpt_dir: str | Path) -> ModelConfig:
  return ModelConfig.from_dict(json.loads((Path(ckpt_dir) / CONFIG_FILE).read_text()))


def load_params_checkpoint(ckpt_dir: str | Path, mesh: Mesh | None = None,
                           ) -> tuple[Params, ModelConfig]:
  """Restores params straight into their shardings on `mesh` (device 0 without one)."""
  ckpt_dir = Path(ckpt_dir).absolute()
  cfg = load_config(ckpt_dir)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract_params(cfg), param_shardings(cfg, mesh))
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(ckpt_dir / PARAMS_DIR, target)
  return params, cfg


def is_params_checkpoint(path: str | Path) -> bool:
  path = Path(path)
  return (path / CONFIG_FILE).is_file() and (path / PARAMS_DIR).is_dir()


@dataclasses.dataclass(frozen=True)
class ParamsSource:
  """Somewhere `export` can get (params, config) and maybe a tokenizer from."""
  kind: str
  path: Path
  load: Callable[[Mesh | None], tuple[Params, ModelConfig]]
  tokenizer_dir: Path | None = None


def resolve_params_source(path: str | Path) -> ParamsSource:
  """Recognises what `path` holds; the one place new source kinds are added."""
  path = Path(path)
  if is_params_checkpoint(path):
    tok = path / TOKENIZER_DIR
    return ParamsSource("params_checkpoint", path,
                        lambda mesh: load_params_checkpoint(path, mesh),
                        tok if tok.is_dir() else None)
  from act_jax import checkpoint  # the training side; heavy, and only needed here
  if checkpoint.is_training_dir(str(path)) or (path.name.isdigit()
                                               and checkpoint.is_training_dir(str(path.parent))):
    def load(mesh):
      params, model_cfg = checkpoint.load_params(str(path), mesh)
      return params, ModelConfig.from_dict(model_cfg)
    return ParamsSource("training_checkpoint", path, load)
  raise FileNotFoundError(
      f"{path}: neither an act_jax params checkpoint (needs {CONFIG_FILE} and {PARAMS_DIR}/, "
      "as `python -m act_jax.hf import` writes) nor a training workdir with a complete step")
