"""ACT critic GRPO on the synthetic critic task, from random init: a CPU learning check.

  python -m act_jax.train --config configs/act_critic_tiny.py --workdir /tmp/act_tiny

Held-out judgment accuracy (greedy) goes 0% (no parseable answer) -> 50% (format
learned, a constant letter) -> 100% (the judgment learned) by step ~175 of 300
(seeds 0-3), about a CPU minute. Paper-scale defaults live in
`config_lib.critic()`; this file changes only what a from-scratch 0.1M-parameter
model on a 15-word vocabulary needs:
  - lr 3e-4 (not 1e-6): random init has everything to learn, the format included.
    At 1e-3 the letter choice turns deterministic before it depends on the prompt,
    after which every group agrees and GRPO has no signal left.
  - 32 prompts a step (x G=8): more prompts per update, less drift of the letter bias.
  - beta 0: the random init is no reference worth staying near (no reference loaded).
  - max_new_tokens 3: "Answer: X <eos>"; a real model's reasoning is absent.
  - G, mu, clipping, aggregation, advantage, zero-variance filtering: the defaults.
"""
from act_jax import config_lib


def get_config(arg: str | None = None):
  del arg
  c = config_lib.critic()
  c.stage = "act"  # the critic stage (act_jax.stages) for `python -m act_jax.train`
  c.model_preset = None
  c.mesh_preset = "auto"
  num_objects = 8
  # The task's words (stages.synthetic_critic, which checks these): <pad> = 0, <eos> = 1,
  # five more, then one per object.
  c.model.update(dict(arch="qwen3", vocab_size=7 + num_objects, hidden_size=64,
                      intermediate_size=192, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=16, qk_norm=True, tie_embeddings=True,
                      max_position_embeddings=64, eos_token_id=1, pad_token_id=0))
  c.data = dict(kind="synthetic_critic", num_objects=num_objects, train_records=4096,
                eval_records=64)
  c.train.update(dict(steps=300, batch_size=32, eval_every=25))
  c.optim.update(dict(lr=3e-4, schedule="constant", warmup_steps=5, weight_decay=0.0))
  c.checkpoint.update(dict(every=100, keep=1, best_metric=None, async_save=False))
  c.grpo.update(dict(group_size=8, max_new_tokens=3, beta=0.0, eval_batch_size=64))
  return c
