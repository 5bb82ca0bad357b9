"""TFDS builders writing the critic and imitation datasets as array_record.

array_record + `as_data_source()` gives random access for grain without
TensorFlow. Records are generated in memory by `examples` and handed to the
builder; the generation config goes into the dataset's metadata.json, so a
dataset directory says how it was made.
"""
from __future__ import annotations

import glob
import os
from typing import Any, Iterable

import numpy as np
import tensorflow_datasets as tfds

from act_jax.data import pipeline

SPLIT = "train"
_text = tfds.features.Text
_ids = lambda: tfds.features.Tensor(shape=(None,), dtype=np.int32)


class _RecordsBuilder(tfds.core.GeneratorBasedBuilder):
  """Writes given (key, record) pairs; subclasses declare the features."""
  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.0.0": "First release.",
                   "1.1.0": "Critic pairs keep their rendered state (re-ordered evaluation).",
                   "1.2.0": "The task line is rendered once, as the environment and importer give it."}
  FEATURES: dict[str, Any] = {}
  PADDED_FIELDS: tuple[str, ...] = ()  # What `pipeline.make_batches` pads.
  # No checksums or package resources to find. Setting this also avoids
  # `importlib_resources`, which only etils[epath] pulls in.
  code_path = None

  def __init__(self, *, records: Iterable[tuple[str, dict[str, Any]]] = (),
               metadata: dict[str, Any] | None = None, **kwargs):
    self._records = records
    self._metadata = metadata or {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=self.__doc__,
        features=tfds.features.FeaturesDict(
            {k: f() for k, f in self.FEATURES.items()}),
        metadata=tfds.core.MetadataDict(self._metadata))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {SPLIT: self._generate_examples()}

  def _generate_examples(self):
    yield from self._records

  # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... downloaded
  # and prepared to ..." to stdout for every build; these builders download nothing,
  # and the step that writes them reports what it wrote.
  def _log_download_bytes(self) -> None:
    pass

  def _log_download_done(self) -> None:
    pass


class CriticPairs(_RecordsBuilder):
  """ACT stage 2: which of two actions is better; label = the expert's letter."""
  FEATURES = {
      "state_id": _text, "source": _text, "state": _text, "alternative_source": _text,
      "prompt": _text, "prompt_ids": _ids, "label": _text,
      "expert_action": _text, "alternative_action": _text,
      "action_a": _text, "action_b": _text,
  }
  PADDED_FIELDS = ("prompt_ids",)


class ImitationPairs(_RecordsBuilder):
  """Stage 3: state → expert action (IL targets, and the RL prompts)."""
  FEATURES = {
      "state_id": _text, "source": _text, "prompt": _text, "target": _text,
      "expert_action": _text,
      "admissible": lambda: tfds.features.Sequence(_text()),
      "prompt_ids": _ids, "target_ids": _ids, "input_ids": _ids,
      "loss_mask": _ids,
  }
  PADDED_FIELDS = ("prompt_ids", "input_ids")


BUILDERS = {b.name: b for b in (CriticPairs, ImitationPairs)}


def write_dataset(builder_cls: type[_RecordsBuilder], out_dir: str,
                  records: Iterable[tuple[str, dict[str, Any]]],
                  metadata: dict[str, Any]) -> str:
  """Writes (regenerating if present) and returns the versioned directory."""
  builder = builder_cls(records=records, metadata=metadata, data_dir=out_dir,
                        file_format="array_record")
  for stale in glob.glob(os.path.join(str(builder.data_dir), "lengths-*.npy")):
    os.remove(stale)
  mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(download_mode=mode))
  return str(builder.data_dir)


VERSION = str(_RecordsBuilder.VERSION)  # part of the pipeline's datasets fingerprint


def dataset_dir(out_dir: str, name: str,
                version: str = str(_RecordsBuilder.VERSION)) -> str:
  return os.path.join(out_dir, name, version)


def load_source(out_dir: str, name: str, split: str = SPLIT,
                version: str = str(_RecordsBuilder.VERSION)) -> Any:
  """A random-access source (len, [i]) for grain; `name` in BUILDERS."""
  builder = tfds.builder_from_directory(dataset_dir(out_dir, name, version))
  return builder.as_data_source(split)


def load_metadata(out_dir: str, name: str,
                  version: str = str(_RecordsBuilder.VERSION)) -> dict[str, Any]:
  """The generation config recorded with a dataset."""
  builder = tfds.builder_from_directory(dataset_dir(out_dir, name, version))
  return dict(builder.info.metadata or {})


def load_lengths(out_dir: str, name: str, field: str, split: str = SPLIT,
                 version: str = str(_RecordsBuilder.VERSION)) -> np.ndarray:
  """Token lengths of `field` per record, for `pipeline.make_batches(lengths=)`.

  Computing them decodes every record (~1 ms each), so they are cached next to
  the dataset; `build` writes the cache, so training start-up reads a file.
  """
  path = os.path.join(dataset_dir(out_dir, name, version),
                      f"lengths-{split}-{field}.npy")
  if os.path.exists(path):
    return np.load(path)
  lengths = pipeline.record_lengths(load_source(out_dir, name, split, version), field)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    np.save(f, lengths)
  os.replace(tmp, path)  # Atomic: several processes may race to write it.
  return lengths
