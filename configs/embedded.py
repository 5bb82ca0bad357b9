"""The README's main job: the whole ACT pipeline on TextWorldExpress, from scratch, on CPU.

A ~0.5M-parameter Llama-style decoder with a byte-level BPE trained on the games' text.
Games: the instruction-following ones (simonsays, peckingorder), whose gold paths are
short and whose random-action success is ~0%, so any success is learnt. Critic
alternatives are valid non-expert actions (`admissible`): a model trained from
scratch has no initial policy worth sampling. Every variant gets the same expert data
and the same stage budgets (steps x batch).

Splits: `id` = held-out seeds of the training fold (new episodes, the same objects);
`ood_test_fold` = the test fold, whose objects (blueberry, pumpkin, ...) never occur in
training, so the from-scratch tokenizer and model have never seen their tokens.

  python -m act_jax.main --config configs/embedded.py --workdir runs/embedded
"""
import ml_collections

from act_jax import config_lib


def get_config():
  c = config_lib.base()
  c.pipeline = ml_collections.ConfigDict(dict(
      variants="prompt,il,rl,act,il_w_act,rl_w_act", seeds=1, first_seed=0, model_dir="",
      trajectories="",
      export=True))
  c.env = ml_collections.ConfigDict(dict(
      name="twx", games=["simonsays", "peckingorder"], train_params={},
      train_per_game=300, heldout_per_game=10, max_steps=12, pool_size=4,
      # These games state the next action in the observation; the room description
      # that `look` adds is noise that costs tokens.
      env_kwargs=dict(observe_look_inventory=False)))
  c.tokenizer = ml_collections.ConfigDict(dict(vocab_size=1024))
  c.data = ml_collections.ConfigDict(dict(alternatives="admissible", k=2,
                                          max_state_tokens=128))
  c.prompts = ml_collections.ConfigDict(dict(
      # Short prompts: the model is tiny and sees only the last turns anyway. Actions
      # start a line, as words quoted in observations do ("Simon says, 'smell grape'"),
      # so "smell" is one token in both places and copying it is an identity; after
      # "Action: " it would be " smell", a different token the model must map to.
      history_turn="Observation: {observation}\nAction:\n{action}\n",
      action_target="Action:\n{action}", action_user="{state}\nNext action?", critic_user=(
          "{state}\nWhich action is better?\n{letter_a}:\n{action_a}\n{letter_b}:\n{action_b}"),
      use_chat_template=True))
  c.model.update(dict(arch="llama", vocab_size=1024, hidden_size=128, intermediate_size=384,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                      tie_embeddings=True, max_position_embeddings=512, rope_theta=10000.0))
  c.reward = config_lib.judgment_reward()
  c.action_reward = config_lib.action_reward()
  # The critic (act) and next-action RL (rl) stages each have their own GRPO section.
  # Both answer without reasoning, so both take the exact expected reward over their
  # paid completions (`expected`: the two answer strings; the admissible actions)
  # instead of G = 4 samples, whose groups mostly agreed once the answer turned
  # deterministic (94% zero-variance groups by critic step 120: no signal left).
  g = dict(estimator="expected", group_size=4, max_new_tokens=10, beta=0.0,
           eval_batch_size=64)
  c.stages = ml_collections.ConfigDict(dict(
      base=config_lib.stage(steps=150, batch_size=16, lr=3e-3, warmup_steps=5,
                            rollouts_per_game=40, lm_loss=True),
      # 16 of θ0's random-play action records replayed in every critic step keep the
      # action format (without it IL after ACT starts at 3-8x θ0's loss and generate
      # mode is 100% unparsed); they carry no expert information.
      act=config_lib.stage(steps=250, batch_size=16, lr=5e-4, warmup_steps=5, eval_every=0,
                           replay_batch_size=16, replay_weight=1.0,
                           grpo=config_lib.grpo(**g)),
      # 400 steps (~1.5 epochs): at 200 IL had not converged in 2 seeds of 3 (ID success
      # 0 and 5%); the budget is fixed, not chosen by evaluation.
      il=config_lib.stage(steps=400, batch_size=16, lr=3e-3, warmup_steps=5),
      rl=config_lib.stage(steps=100, batch_size=16, lr=5e-4, warmup_steps=5, eval_every=0,
                          grpo=config_lib.grpo(**g))))
  c.eval = ml_collections.ConfigDict(dict(modes=("rank", "generate"), episodes_per_game=10,
                                          reflection_max_new_tokens=256,
                                          heldout_states=140, critic_pairs=400))
  c.checkpoint.async_save = False
  return c
