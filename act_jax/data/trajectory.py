"""The project's trajectory schema: what environments write and the data builders read.

One trajectory per JSON line. A step is the observation the agent saw, the action it
took (and optionally its thought and the admissible actions at that state), so the
state at step t is `instruction + task + steps[:t]` plus `steps[t].observation`.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterator


@dataclasses.dataclass
class Step:
  observation: str
  action: str
  thought: str | None = None
  admissible: list[str] | None = None


@dataclasses.dataclass
class Trajectory:
  task: str
  steps: list[Step]
  instruction: str = ""
  success: bool = True
  source: str = ""
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), ensure_ascii=False)

  @classmethod
  def from_dict(cls, d: dict[str, Any], where: str = "<dict>") -> "Trajectory":
    """Builds a trajectory, naming `where` (file:line) in any error."""
    try:
      steps = [Step(**s) for s in d["steps"]]
      rest = {k: v for k, v in d.items() if k != "steps"}
      return cls(steps=steps, **rest)
    except (KeyError, TypeError) as e:
      raise ValueError(f"{where}: not a trajectory in the act_jax schema: {e}") from e


def write_jsonl(path: str, trajectories: list[Trajectory]) -> None:
  with open(path, "w") as f:
    for t in trajectories:
      f.write(t.to_json() + "\n")


def read_jsonl(path: str) -> Iterator[Trajectory]:
  with open(path) as f:
    for i, line in enumerate(f, 1):
      if line.strip():
        try:
          d = json.loads(line)
        except json.JSONDecodeError as e:
          raise ValueError(f"{path}:{i}: bad JSON: {e}") from e
        yield Trajectory.from_dict(d, where=f"{path}:{i}")
