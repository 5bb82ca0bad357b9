"""Tokenizer files travel with the weights; only data files, never code or pickles."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from etils import epath

# Files AutoTokenizer reads (plus the sampling defaults), all plain data.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model",
    "chat_template.jinja", "chat_template.json", "generation_config.json",
)


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> list[str]:
  """Copies the tokenizer files present in `src` to `dst`; returns their names."""
  src, dst = epath.Path(src), epath.Path(dst)  # either may be on a bucket
  names = [n for n in TOKENIZER_FILES if (src / n).is_file()]
  if names:
    dst.mkdir(parents=True, exist_ok=True)
  for n in names:
    (dst / n).write_bytes((src / n).read_bytes())
  return names


def has_tokenizer(path: str | Path) -> bool:
  path = epath.Path(path)
  return any((path / n).is_file() for n in TOKENIZER_FILES if n != "generation_config.json")


def load_tokenizer(path: str | Path) -> Any:
  """`AutoTokenizer` on a local dir: no hub access, no remote code."""
  from transformers import AutoTokenizer  # heavy; only when a tokenizer is wanted
  return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, local_files_only=True)
