"""Counting what the data pipeline drops, so nothing disappears silently."""
from __future__ import annotations

import collections

_MAX_EXAMPLES = 3


class DropLog:
  """Counts dropped items by reason and remembers where the first few were.

  Reasons are `unit/why` strings (`candidate/duplicate`, `state/no_alternatives`,
  `trajectory/empty`) so a summary says what kind of thing was dropped.
  """

  def __init__(self):
    self.counts: collections.Counter[str] = collections.Counter()
    self.examples: dict[str, list[str]] = collections.defaultdict(list)

  def drop(self, reason: str, where: str = "", n: int = 1) -> None:
    if n <= 0:
      return
    self.counts[reason] += n
    if where and len(self.examples[reason]) < _MAX_EXAMPLES:
      self.examples[reason].append(where)

  @property
  def total(self) -> int:
    return sum(self.counts.values())

  def to_dict(self) -> dict[str, int]:
    return dict(sorted(self.counts.items()))

  def summary(self) -> str:
    """One line per reason, with a few example locations."""
    lines = []
    for reason, n in sorted(self.counts.items()):
      where = ", ".join(self.examples.get(reason, []))
      lines.append(f"  {reason}: {n}" + (f"  (e.g. {where})" if where else ""))
    return "\n".join(lines) if lines else "  (nothing dropped)"
