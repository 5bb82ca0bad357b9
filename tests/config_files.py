"""The one loader tests use for `configs/<name>.py` (configs are files, not a package)."""
import importlib.util
import pathlib

import ml_collections

ROOT = pathlib.Path(__file__).resolve().parent.parent


def load(name: str, *args) -> ml_collections.ConfigDict:
  """`get_config(*args)` of configs/<name>.py."""
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(*args)
