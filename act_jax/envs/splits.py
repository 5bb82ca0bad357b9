"""Declarative train / in-distribution / out-of-distribution splits.

A `SplitSpec` names a set of episodes (env, games, simulator fold, per-game params,
a seed window) without a JVM; `episodes()` expands it into `EpisodeSpec`s. Configs
hold `SplitSpec`s or their `to_dict()` form.

The default split sets:
  TextWorldExpress (`twx_splits`)
    train                train fold seeds [0, 800) of the training games, training params
    id                   train fold seeds [800, 1000): unseen episodes drawn exactly as
                         the training ones (in-distribution, the paper's "seen"). The dev
                         fold is not: several games (simonsays, peckingorder, ...) draw
                         its objects from another set, e.g. 90 of 140 dev gold actions
                         name objects absent from the train fold.
    ood_unseen_objects   twc test fold: objects never seen in train/dev
    ood_harder           test fold of cookingworld/coin with more locations,
                         ingredients and distractors
  ScienceWorld (`sciworld_splits`)
    train                train variations of the training tasks
    id                   dev variations of the training tasks
    ood_unseen_variations  test variations of the training tasks
    ood_heldout_tasks    test variations of task types never trained on
No (game, fold, seed) of `train` appears in any eval split.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import ml_collections

from act_jax.envs.base import SPLITS, EpisodeSpec
from act_jax.envs.pool import EnvPool
from act_jax.envs.sciworld import SW_TASKS, sw_variations
from act_jax.envs.twx import TWX_GAMES, TWX_SEEDS

# Small worlds for models trained from scratch; the instruction games keep defaults.
TWX_TRAIN_PARAMS = {
    "cookingworld": "numLocations=3,numIngredients=2,numDistractorItems=2,includeDoors=0",
    "coin": "numLocations=3,numDistractorItems=2,includeDoors=0",
    "twc": "numLocations=1,numItemsToPutAway=2,includeDoors=0",
    "mapreader": "numLocations=8,maxDistanceApart=3,maxDistractorItemsPerLocation=2",
}
# Out of distribution by size: more rooms, ingredients and distractors (and doors).
TWX_HARD_PARAMS = {
    "cookingworld": "numLocations=6,numIngredients=3,numDistractorItems=5,includeDoors=1",
    "coin": "numLocations=6,numDistractorItems=5,includeDoors=1",
    "mapreader": "numLocations=15,maxDistanceApart=6,maxDistractorItemsPerLocation=3",
}
TWX_TRAIN_GAMES = ("cookingworld", "twc", "coin")
# Train-fold seeds from here on are held out for the in-distribution split.
TWX_HELDOUT_START = 800

# Training task types and held-out siblings (same topics, different tasks).
SW_HELDOUT_TASKS = ("chemistry-mix-paint-tertiary-color", "find-plant", "grow-fruit",
                    "lifespan-shortest-lived", "test-conductivity-of-unknown-substances")
SW_TRAIN_TASKS = tuple(t for t in SW_TASKS if t not in SW_HELDOUT_TASKS)
SW_SIMPLIFICATION = "easy"


@dataclasses.dataclass(frozen=True)
class SplitSpec:
  """A named set of episodes.

  Attributes:
    name: e.g. "id" or "ood_harder".
    env: "twx" or "scienceworld".
    games: TWX games or ScienceWorld tasks.
    fold: the simulator fold the seeds come from ("train", "dev", "test").
    distribution: "train", "id" or "ood", for reports.
    params: per-game params (TWX); ScienceWorld uses `default_params` (simplifications).
    default_params: params for games absent from `params`.
    start: offset into each game's fold seeds.
    count: seeds per game (None = the rest of the fold).
  """
  name: str
  env: str
  games: tuple[str, ...]
  fold: str
  distribution: str = "id"
  params: Mapping[str, str] = dataclasses.field(default_factory=dict)
  default_params: str = ""
  start: int = 0
  count: int | None = None

  def __post_init__(self):
    if self.fold not in SPLITS:
      raise ValueError(f"fold must be one of {SPLITS}, got {self.fold!r}")
    object.__setattr__(self, "games", tuple(self.games))
    object.__setattr__(self, "params", dict(self.params))

  def params_for(self, game: str) -> str:
    return self.params.get(game, self.default_params)

  def seeds(self, game: str) -> range:
    """This split's seeds (TWX) or variations (ScienceWorld) of one game."""
    fold = TWX_SEEDS[self.fold] if self.env == "twx" else sw_variations(game, self.fold)
    stop = len(fold) if self.count is None else min(len(fold), self.start + self.count)
    return fold[self.start:stop]

  def episodes(self, n: int | None = None) -> list[EpisodeSpec]:
    """The first n episodes per game (all of the split if n is None), game-major."""
    out = []
    for game in self.games:
      seeds = self.seeds(game)
      for seed in seeds if n is None else seeds[:n]:
        out.append(EpisodeSpec(self.env, game, self.fold, seed, self.params_for(game)))
    return out

  def with_(self, **changes: Any) -> "SplitSpec":
    """A copy with some fields changed (e.g. a tiny test variant: count=2)."""
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["games"] = list(self.games)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "SplitSpec":
    return cls(**{**d, "games": tuple(d["games"])})


def twx_splits(games: Sequence[str] = TWX_TRAIN_GAMES,
               train_params: Mapping[str, str] = TWX_TRAIN_PARAMS,
               hard_params: Mapping[str, str] = TWX_HARD_PARAMS) -> dict[str, SplitSpec]:
  """Train / ID / OOD splits for TextWorldExpress games (see the module docstring)."""
  games = tuple(games)
  unknown = set(games) - set(TWX_GAMES)
  if unknown:
    raise ValueError(f"unknown TWX games {sorted(unknown)}")
  train_params = {g: train_params[g] for g in games if g in train_params}
  splits = {
      "train": SplitSpec("train", "twx", games, "train", "train", train_params,
                         count=TWX_HELDOUT_START),
      "id": SplitSpec("id", "twx", games, "train", "id", train_params,
                      start=TWX_HELDOUT_START),
  }
  if "twc" in games:
    splits["ood_unseen_objects"] = SplitSpec("ood_unseen_objects", "twx", ("twc",), "test", "ood",
                                             train_params)
  harder = tuple(g for g in games if g in hard_params and g != "twc")
  if harder:
    splits["ood_harder"] = SplitSpec("ood_harder", "twx", harder, "test", "ood",
                                     {g: hard_params[g] for g in harder})
  return splits


def sciworld_splits(train_tasks: Sequence[str] = SW_TRAIN_TASKS,
                    heldout_tasks: Sequence[str] = SW_HELDOUT_TASKS,
                    simplification: str = SW_SIMPLIFICATION) -> dict[str, SplitSpec]:
  """Train / ID / OOD splits for ScienceWorld tasks (see the module docstring)."""
  train_tasks, heldout_tasks = tuple(train_tasks), tuple(heldout_tasks)
  if set(train_tasks) & set(heldout_tasks):
    raise ValueError("a held-out task type is also a training task")
  unknown = (set(train_tasks) | set(heldout_tasks)) - set(SW_TASKS)
  if unknown:
    raise ValueError(f"unknown ScienceWorld tasks {sorted(unknown)}")
  def spec(name, tasks, fold, dist):
    return SplitSpec(name, "scienceworld", tasks, fold, dist, default_params=simplification)
  return {
      "train": spec("train", train_tasks, "train", "train"),
      "id": spec("id", train_tasks, "dev", "id"),
      "ood_unseen_variations": spec("ood_unseen_variations", train_tasks, "test", "ood"),
      "ood_heldout_tasks": spec("ood_heldout_tasks", heldout_tasks, "test", "ood"),
  }


DEFAULT_SPLITS: dict[str, dict[str, SplitSpec]] = {
    "twx": twx_splits(),
    "scienceworld": sciworld_splits(),
}


def eval_episodes(splits: Mapping[str, SplitSpec], n: int | None = None,
                  exclude: Sequence[str] = ("train",)) -> dict[str, list[EpisodeSpec]]:
  """{split name: episodes} for evaluation, n per game, leaving out the training split."""
  return {name: s.episodes(n) for name, s in splits.items() if name not in exclude}


# --- From the experiment config (`config.env`) -------------------------------------------


def env_splits(c: ml_collections.ConfigDict) -> dict[str, SplitSpec]:
  """The run's splits: `train` and the held-out ID / OOD splits of `config.env.games`."""
  e = c.env
  if e.name == "twx":
    params = {**TWX_TRAIN_PARAMS, **dict(e.get("train_params", {}))}
    out = twx_splits(tuple(e.games), params)
    if not any(name.startswith("ood") for name in out):
      # Games with no unseen-object or harder-size fold: their test-fold seeds.
      out["ood_test_fold"] = SplitSpec("ood_test_fold", "twx", tuple(e.games), "test", "ood",
                                       {g: params[g] for g in e.games if g in params})
    return out
  if e.name == "scienceworld":
    return sciworld_splits(tuple(e.games) or SW_TRAIN_TASKS)
  raise ValueError(f"config.env.name: unknown env {e.name!r}")


def validation_split(c: ml_collections.ConfigDict) -> SplitSpec | None:
  """`config.env.validation_per_game` episodes per game carved from the training fold,
  right after the `train_per_game` ones: states to choose settings on (a learning rate,
  a step budget) that neither training nor any evaluation split sees. None if unset."""
  n = int(c.env.get("validation_per_game", 0) or 0)
  if n <= 0:
    return None
  train = env_splits(c)["train"]
  start = train.start + c.env.train_per_game
  short = [g for g in train.games if len(train.seeds(g)) < c.env.train_per_game + n]
  if short:
    raise ValueError(f"config.env.validation_per_game={n}: the training fold of {short} has "
                     f"fewer than config.env.train_per_game={c.env.train_per_game} + {n} "
                     "episodes, so validation would overlap an evaluation split")
  return train.with_(name="validation", distribution="id", start=start, count=n)


def data_splits(c: ml_collections.ConfigDict) -> dict[str, SplitSpec]:
  """Every split the data steps build: `env_splits` and, if configured, validation
  (which evaluation never reads)."""
  val = validation_split(c)
  return {**env_splits(c), **({"validation": val} if val else {})}


def make_pool(c: ml_collections.ConfigDict) -> EnvPool:
  """`config.env.pool_size` envs (JVMs) of `config.env.name`, stepped together."""
  return EnvPool(c.env.name, c.env.pool_size, **c.env.get("env_kwargs", {}))
