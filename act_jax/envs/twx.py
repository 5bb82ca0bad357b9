"""TextWorldExpress adapter: eight fast (~1 ms/step) text games behind `TextEnv`.

Games take params ("numLocations=3,includeDoors=0"); `GAME_PARAMS` lists which each
game accepts. Every game has 1000 seeds per fold (`TWX_SEEDS`); twc's test fold uses
objects unseen in train/dev.
"""
from __future__ import annotations

from typing import Any, Mapping

from act_jax.envs.base import EpisodeSpec, TextEnv, TimeStep, compose_observation, stop_gateway
from act_jax.envs.java import ensure_java

TWX_GAMES = ("cookingworld", "twc", "coin", "mapreader", "arithmetic", "sorting", "simonsays",
             "peckingorder")
TWX_SEEDS = {"train": range(0, 1000), "dev": range(10000, 11000), "test": range(20000, 21000)}
# The params each game accepts (from the simulator's own error messages).
GAME_PARAMS = {
    "cookingworld": ("numLocations", "numIngredients", "numDistractorItems", "includeDoors",
                     "limitInventorySize"),
    "coin": ("numLocations", "numDistractorItems", "includeDoors", "limitInventorySize"),
    "twc": ("numLocations", "numItemsToPutAway", "includeDoors", "limitInventorySize"),
    "mapreader": ("numLocations", "maxDistractorItemsPerLocation", "includeDoors",
                  "limitInventorySize", "maxDistanceApart"),
    "arithmetic": (),
    "sorting": (),
    "simonsays": ("gameLength", "numDistractors", "memorization", "verbose"),
    "peckingorder": (),
}


def format_params(params: str | Mapping[str, Any]) -> str:
  """{"numLocations": 3, "includeDoors": False} -> "numLocations=3,includeDoors=0"."""
  if isinstance(params, str):
    return params
  return ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in params.items())


def parse_params(params: str) -> dict[str, int]:
  """"numLocations=3, includeDoors=0" -> {"numLocations": 3, "includeDoors": 0}."""
  out = {}
  for item in params.split(","):
    if item.strip():
      k, v = item.split("=")
      out[k.strip()] = int(v)
  return out


class TWXEnv(TextEnv):
  """One TextWorldExpress JVM, reused across episodes.

  Args:
    observe_look_inventory: append the `look` and `inventory` text to each
      observation, so a policy sees the room and its items without spending actions.
  """

  name = "twx"
  admissible_is_complete = True

  def __init__(self, observe_look_inventory: bool = True):
    ensure_java()
    from textworld_express import TextWorldExpressEnv  # pylint: disable=import-outside-toplevel
    # Step limits belong to the caller; the wrapper's own limit is disabled.
    self._env = TextWorldExpressEnv(envStepLimit=10**9)
    self.observe_look_inventory = observe_look_inventory
    self._task = ""
    self._admissible: list[str] = []
    self._gold: list[str] | None = None
    self._closed = False

  @property
  def jvm_process(self) -> Any:
    return self._env._gateway.java_process  # pylint: disable=protected-access

  def _timestep(self, obs: str, info: dict[str, Any], action_valid: bool) -> TimeStep:
    self._admissible = sorted(set(info["validActions"]))
    extras = ((info.get("look", ""), info.get("inventory", ""))
              if self.observe_look_inventory else ())
    success = bool(info["tasksuccess"])
    return TimeStep(
        observation=compose_observation(obs, *extras), task=self._task,
        admissible=list(self._admissible), done=success or bool(info["taskfailure"]),
        success=success, score=float(info["score"]), action_valid=action_valid,
        raw_observation=obs)

  def reset(self, spec: EpisodeSpec, gold: bool = False) -> TimeStep:
    if spec.game not in GAME_PARAMS:
      raise ValueError(f"unknown TWX game {spec.game!r}; expected one of {TWX_GAMES}")
    obs, info = self._env.reset(seed=spec.seed, gameFold=spec.split, gameName=spec.game,
                                gameParams=spec.params, generateGoldPath=gold)
    self._task = info["taskDescription"]
    self._gold = list(self._env.getGoldActionSequence()) if gold else None
    return self._timestep(obs, info, action_valid=True)

  def step(self, action: str) -> TimeStep:
    valid = action in self._admissible
    obs, _, _, info = self._env.step(action)
    return self._timestep(obs, info, action_valid=valid)

  def gold_actions(self) -> list[str]:
    if self._gold is None:
      raise RuntimeError("no gold path: reset(spec, gold=True) first")
    return list(self._gold)

  def seeds(self, game: str, split: str) -> range:
    return TWX_SEEDS[split]

  def generation_properties(self) -> dict[str, Any]:
    """The params the current game was actually built with (defaults included)."""
    return dict(self._env.getGenerationProperties())

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    stop_gateway(self._env._gateway)  # pylint: disable=protected-access
    self._env.close = lambda: None  # The wrapper's __del__ would shut it down again.
