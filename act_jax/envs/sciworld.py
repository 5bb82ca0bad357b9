"""ScienceWorld adapter: 30 science tasks behind `TextEnv` (55-210 ms/step).

The valid-action list is large, costs most of a step (~80 ms) and often lacks the
surface form of gold actions ("open door to kitchen", "0" for disambiguation), so it
is computed only when asked for and is marked incomplete: consumers treat
"admissible" as valid ∪ {expert action}. Named `sciworld` so it never shadows the
`scienceworld` package.
"""
from __future__ import annotations

from typing import Any

from act_jax.envs.base import EpisodeSpec, TextEnv, TimeStep, compose_observation, stop_gateway
from act_jax.envs.java import ensure_java

# task -> (variations, train count, dev count); folds are contiguous: train first, then
# dev, then test. Read from scienceworld==1.2.3 (tests check a few against the JVM).
SW_VARIATIONS = {
    "boil": (30, 14, 7),
    "change-the-state-of-matter-of": (30, 14, 7),
    "chemistry-mix": (32, 16, 8),
    "chemistry-mix-paint-secondary-color": (36, 18, 9),
    "chemistry-mix-paint-tertiary-color": (36, 18, 9),
    "find-animal": (300, 150, 75),
    "find-living-thing": (300, 150, 75),
    "find-non-living-thing": (300, 150, 75),
    "find-plant": (300, 150, 75),
    "freeze": (30, 14, 7),
    "grow-fruit": (126, 62, 31),
    "grow-plant": (126, 62, 31),
    "identify-life-stages-1": (14, 6, 3),
    "identify-life-stages-2": (10, 4, 2),
    "inclined-plane-determine-angle": (168, 84, 42),
    "inclined-plane-friction-named-surfaces": (1386, 692, 346),
    "inclined-plane-friction-unnamed-surfaces": (162, 80, 40),
    "lifespan-longest-lived": (125, 62, 31),
    "lifespan-longest-lived-then-shortest-lived": (125, 62, 31),
    "lifespan-shortest-lived": (125, 62, 31),
    "measure-melting-point-known-substance": (436, 218, 109),
    "measure-melting-point-unknown-substance": (300, 150, 75),
    "melt": (30, 14, 7),
    "mendelian-genetics-known-plant": (120, 60, 30),
    "mendelian-genetics-unknown-plant": (480, 240, 120),
    "power-component": (20, 10, 5),
    "power-component-renewable-vs-nonrenewable-energy": (20, 10, 5),
    "test-conductivity": (900, 450, 225),
    "test-conductivity-of-unknown-substances": (600, 300, 150),
    "use-thermometer": (540, 270, 135),
}
SW_TASKS = tuple(SW_VARIATIONS)
# The parser's reply to an action it cannot match: the one sure sign of an invalid action.
INVALID_REPLY = "No known action matches that input."


def sw_variations(task: str, split: str) -> range:
  """The variation indices of a task's fold."""
  total, n_train, n_dev = SW_VARIATIONS[task]
  return {"train": range(0, n_train), "dev": range(n_train, n_train + n_dev),
          "test": range(n_train + n_dev, total)}[split]


class SciWorldEnv(TextEnv):
  """One ScienceWorld JVM, reused across episodes.

  Args:
    observe_look_inventory: append the free `look` and `inventory` text to each
      observation.
    admissible: compute the valid-action list at every step (most of a step's cost;
      an oracle or generative policy can do without it).
  """

  name = "scienceworld"
  admissible_is_complete = False

  def __init__(self, observe_look_inventory: bool = True, admissible: bool = True):
    ensure_java()
    from scienceworld import ScienceWorldEnv  # pylint: disable=import-outside-toplevel
    self._env = ScienceWorldEnv("", envStepLimit=10**9)
    self.observe_look_inventory = observe_look_inventory
    self.with_admissible = admissible
    self._task = ""
    self._gold: list[str] | None = None
    self._closed = False

  @property
  def jvm_process(self) -> Any:
    return self._env._gateway.java_process  # pylint: disable=protected-access

  def _step(self, action: str) -> TimeStep:
    # The wrapper's step always builds the valid list; call the server directly instead.
    server = self._env.server
    obs = server.step(action)
    score = int(round(100 * server.getScore()))
    success = score >= 100
    done = bool(server.getCompleted()) or success or score < 0
    extras = ((server.freeActionLook(), server.freeActionInventory())
              if self.observe_look_inventory else ())
    admissible = (sorted(set(server.getValidActionObjectCombinations()))
                  if self.with_admissible else [])
    return TimeStep(
        observation=compose_observation(obs, *extras), task=self._task, admissible=admissible,
        done=done, success=success, score=score / 100.0,
        action_valid=not obs.strip().startswith(INVALID_REPLY), raw_observation=obs)

  def reset(self, spec: EpisodeSpec, gold: bool = False) -> TimeStep:
    if spec.game not in SW_VARIATIONS:
      raise ValueError(f"unknown ScienceWorld task {spec.game!r}")
    self._env.load(spec.game, spec.seed, spec.params, generateGoldPath=gold)
    self._env.server.reset()
    self._task = self._env.server.getTaskDescription()
    self._gold = list(self._env.get_gold_action_sequence()) if gold else None
    return self._step("look around")  # As the wrapper's reset does.

  def step(self, action: str) -> TimeStep:
    return self._step(action)

  def gold_actions(self) -> list[str]:
    if self._gold is None:
      raise RuntimeError("no gold path: reset(spec, gold=True) first")
    return list(self._gold)

  def seeds(self, game: str, split: str) -> range:
    return sw_variations(game, split)

  def fold_variations(self, task: str) -> dict[str, list[int]]:
    """The simulator's own fold lists for a task (to check `SW_VARIATIONS`)."""
    self._env.load(task, 0, "", generateGoldPath=False)
    return {"train": self._env.get_variations_train(), "dev": self._env.get_variations_dev(),
            "test": self._env.get_variations_test()}

  def close(self) -> None:
    if self._closed:
      return
    self._closed = True
    stop_gateway(self._env._gateway)  # pylint: disable=protected-access
    self._env.close = lambda: None  # The wrapper's __del__ would shut it down again.
