"""What a run prints: progress that suits the terminal or the log, and quiet libraries.

A pipeline step prints one `[name] ...` line when it ends (`act_jax.workflow`). Long
steps show progress: a tqdm bar on a terminal; in a log (stderr not a tty) a few lines
per step, never one per update. Libraries keep their warnings, less the informational
ones `quiet_libraries` names, so a warning on the console means something is wrong.
"""
from __future__ import annotations

import logging
import re
import sys
from typing import Any, Mapping, TextIO

import tqdm

LOG_LINES = 4  # progress lines per bar in a log: at 25, 50, 75 and 100%



class Progress:
  """Counts work done out of `total`, as a bar (tty) or as `LOG_LINES` lines (a log)."""

  def __init__(self, total: int, desc: str, initial: int = 0,
               stream: TextIO | None = None, lines: int = LOG_LINES):
    self.total, self.desc, self.n = total, desc, initial
    self._stream = stream if stream is not None else sys.stderr
    self._postfix: dict[str, str] = {}
    self._bar = None
    if self._stream.isatty():
      self._bar = tqdm.tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                            file=self._stream)
    # In a log: the next count at which to print a line.
    self._marks = sorted({-(-total * k // lines) for k in range(1, lines + 1)})

  def update(self, k: int = 1) -> None:
    self.update_to(self.n + k)

  def update_to(self, n: int, postfix: Mapping[str, Any] | None = None) -> None:
    if postfix is not None:
      self._postfix = {k: f"{v:.4g}" if isinstance(v, float) else str(v)
                       for k, v in postfix.items()}
    previous, self.n = self.n, n
    if self._bar is not None:
      self._bar.n = n
      self._bar.set_postfix(self._postfix, refresh=False)
      self._bar.refresh()
    elif any(previous < m <= n for m in self._marks):
      extra = " ".join(f"{k}={v}" for k, v in self._postfix.items())
      print(f"  [{self.desc}] {n}/{self.total} {extra}".rstrip(), file=self._stream,
            flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


class _DropMatching(logging.Filter):
  def __init__(self, pattern: str):
    super().__init__()
    self._pattern = re.compile(pattern)

  def filter(self, record: logging.LogRecord) -> bool:
    return not self._pattern.search(record.getMessage())


# Orbax warns on every read-only open of a checkpoint directory, which is how params
# are loaded for evaluation; the directory is read-only because we asked.
_ORBAX_READ_ONLY = _DropMatching(r"^Given directory is read only=")


def quiet_libraries() -> None:
  """Warnings only: absl at WARNING, without Orbax's read-only notice; no TFDS bars
  (our own progress counts the records)."""
  from absl import logging as absl_logging
  import tensorflow_datasets as tfds
  absl_logging.set_verbosity(absl_logging.WARNING)
  # Added once, however often this runs: addFilter skips a filter already there.
  logging.getLogger("absl").addFilter(_ORBAX_READ_ONLY)
  tfds.disable_progress_bar()
