"""Entries chosen by name from a config field: losses, advantage estimators, rewards, stages.

Each kind keeps one `Registry`, so an unknown name fails the same way everywhere: the
error names the config field that chose it and the names it could have been.
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Entries of one `kind`, chosen by the config field `field` (e.g. "config.grpo.advantage")."""

  def __init__(self, kind: str, field: str):
    self.kind, self.field = kind, field
    self._entries: dict[str, T] = {}

  def register(self, *names: str) -> Callable[[T], T]:
    """A decorator that files its target under each of `names` and returns it unchanged."""
    def deco(entry: T) -> T:
      for name in names:
        self._entries[name] = entry
      return entry
    return deco

  def names(self) -> tuple[str, ...]:
    """The registered names, sorted: what a config may choose."""
    return tuple(sorted(self._entries))

  def get(self, name: str) -> T:
    if name not in self._entries:
      raise ValueError(f"{self.field}: unknown {self.kind} {name!r}; "
                       f"known: {sorted(self._entries)}")
    return self._entries[name]
