"""The ACT pipeline on ScienceWorld (one of the paper's benchmarks) from SmolLM2-135M-Instruct.

ScienceWorld's metric in the paper is next-action accuracy on held-out expert states;
episode success is reported too. Its valid-action lists miss gold surface forms, so the
expert action is added to the admissible set (see act_jax/envs/sciworld.py); ranking that
set would favour the expert action, so policies are evaluated in generate mode only.
    python -m act_jax.main --config configs/smollm2_scienceworld.py:cpu --workdir runs/sw
"""
import importlib.util
import os


def get_config(arg: str = "gpu"):
  spec = importlib.util.spec_from_file_location(
      "smollm2_twx", os.path.join(os.path.dirname(__file__), "smollm2_twx.py"))
  twx = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(twx)
  c = twx.get_config(arg)
  small = arg == "cpu"
  c.env.update(dict(name="scienceworld", games=[], train_per_game=1 if small else 10,
                    heldout_per_game=1 if small else 3, max_steps=40,
                    env_kwargs=dict()))
  c.data.max_state_tokens = 1024
  c.eval.modes = ("generate",)
  return c
