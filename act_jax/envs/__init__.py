"""Text environments (TextWorldExpress, ScienceWorld) behind one small interface.

Simulators are imported lazily, when an env is built, so importing this package is cheap.
"""
from act_jax.envs.base import EpisodeSpec, TextEnv, TimeStep, make_env
from act_jax.envs.pool import EnvPool
from act_jax.envs.splits import DEFAULT_SPLITS, SplitSpec, sciworld_splits, twx_splits

__all__ = ["EpisodeSpec", "TextEnv", "TimeStep", "make_env", "EnvPool", "DEFAULT_SPLITS",
           "SplitSpec", "sciworld_splits", "twx_splits"]
