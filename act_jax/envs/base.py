"""The small environment interface every text environment adapter implements.

An episode is named by an `EpisodeSpec` (env, game, fold, seed, params) so it can be
replayed exactly; `reset` and `step` return a `TimeStep` with everything a policy or
a trajectory writer needs. Adapters own one JVM each, reused across episodes.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any

SPLITS = ("train", "dev", "test")


@dataclasses.dataclass(frozen=True)
class EpisodeSpec:
  """One reproducible episode.

  Attributes:
    env: "twx" (TextWorldExpress) or "scienceworld".
    game: TWX game name or ScienceWorld task name.
    split: the simulator's fold, "train", "dev" or "test".
    seed: TWX seed or ScienceWorld variation index.
    params: TWX game params ("numLocations=3,includeDoors=0") or the ScienceWorld
      simplification string ("easy").
  """
  env: str
  game: str
  split: str
  seed: int
  params: str = ""

  @property
  def key(self) -> str:
    """A stable string id, e.g. for looking up gold paths or seeding per-episode RNGs."""
    return f"{self.env}/{self.game}/{self.split}/{self.seed}/{self.params}"

  def to_meta(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_meta(cls, meta: dict[str, Any]) -> "EpisodeSpec":
    return cls(env=meta["env"], game=meta["game"], split=meta["split"],
               seed=int(meta["seed"]), params=meta.get("params", ""))


@dataclasses.dataclass
class TimeStep:
  """What an env returns after reset or a step.

  Attributes:
    observation: what the policy sees: the env's response, plus the look / inventory
      text when the adapter adds them (so the policy has a memory of the state).
    task: the task description.
    admissible: actions the env lists as valid here (sorted). For ScienceWorld this
      list is incomplete; see `TextEnv.admissible_is_complete`.
    done: the episode ended (success or failure); step limits are the caller's job.
    success: the task was solved.
    score: progress in [0, 1] (ScienceWorld's 0..100 rescaled; negative = failed).
    action_valid: whether the env accepted the action that led here.
    raw_observation: the env's response alone.
  """
  observation: str
  task: str
  admissible: list[str]
  done: bool = False
  success: bool = False
  score: float = 0.0
  action_valid: bool = True
  raw_observation: str = ""


def compose_observation(raw: str, *extras: str) -> str:
  """Appends look / inventory text to an observation, skipping empty or repeated parts."""
  parts = [raw.strip()]
  for extra in extras:
    e = extra.strip()
    if e and e not in raw:
      parts.append(e)
  return "\n\n".join(p for p in parts if p)


class TextEnv(abc.ABC):
  """A text environment: reset to an `EpisodeSpec`, step with action strings."""

  name: str = ""
  # True when `admissible` lists every action the env accepts (TWX); False when gold
  # actions may be missing from it (ScienceWorld), so consumers add the expert action.
  admissible_is_complete: bool = True

  @abc.abstractmethod
  def reset(self, spec: EpisodeSpec, gold: bool = False) -> TimeStep:
    """Starts `spec`; with gold=True the gold action sequence is generated too."""

  @abc.abstractmethod
  def step(self, action: str) -> TimeStep:
    """Takes one action in the current episode."""

  @abc.abstractmethod
  def gold_actions(self) -> list[str]:
    """The gold path from the initial state of the episode last reset with gold=True."""

  @abc.abstractmethod
  def seeds(self, game: str, split: str) -> range:
    """The seeds (TWX) or variations (ScienceWorld) of a fold."""

  @abc.abstractmethod
  def close(self) -> None:
    """Stops the JVM; safe to call twice."""

  def __enter__(self) -> "TextEnv":
    return self

  def __exit__(self, *exc: Any) -> None:
    self.close()


def make_env(name: str, **kwargs: Any) -> TextEnv:
  """Builds an adapter by name ("twx" or "scienceworld"); imports the simulator lazily."""
  if name == "twx":
    from act_jax.envs.twx import TWXEnv  # pylint: disable=import-outside-toplevel
    return TWXEnv(**kwargs)
  if name in ("scienceworld", "sciworld"):
    from act_jax.envs.sciworld import SciWorldEnv  # pylint: disable=import-outside-toplevel
    return SciWorldEnv(**kwargs)
  raise ValueError(f"unknown env {name!r}; expected 'twx' or 'scienceworld'")


def stop_gateway(gateway: Any, timeout: float = 10.0) -> None:
  """Shuts a py4j gateway and waits for its JVM to exit (kills it if it will not)."""
  proc = getattr(gateway, "java_process", None)
  try:
    gateway.shutdown()
  except Exception:  # pylint: disable=broad-except
    pass  # The JVM may already be gone; the process check below still runs.
  if proc is None:
    return
  if proc.poll() is None and proc.stdin is not None:
    try:
      proc.stdin.write(b"\n")  # py4j's documented way to make the JVM exit.
      proc.stdin.flush()
    except (OSError, ValueError):
      pass
  try:
    proc.wait(timeout=timeout)
  except Exception:  # pylint: disable=broad-except
    proc.kill()
    proc.wait(timeout=timeout)
