"""ACT critic GRPO on the synthetic critic task, from random init: a CPU learning check.

  python -m act_jax.stages --config configs/act_critic_tiny.py --workdir /tmp/act_tiny

Held-out judgment accuracy (greedy) goes 0% (no parseable answer) -> 50% (format
learned, a constant letter) -> 100% (the judgment learned) by step ~175 of 300
(seeds 0-3), about a CPU minute. Paper-scale defaults live in
`act_jax.stages.critic.default_config()`; this file changes only what a
from-scratch 0.1M-parameter model on a 15-word vocabulary needs:
  - lr 3e-4 (not 1e-6): random init has everything to learn, the format included.
    At 1e-3 the letter choice turns deterministic before it depends on the prompt,
    after which every group agrees and GRPO has no signal left.
  - 32 prompts a step (x G=8): more prompts per update, less drift of the letter bias.
  - beta 0: the random init is no reference worth staying near (no reference loaded).
  - max_new_tokens 3: "Answer: X <eos>"; a real model's reasoning is absent.
  - G, mu, clipping, aggregation, advantage, zero-variance filtering: the defaults.
"""
from act_jax.stages import critic, synthetic_critic


def get_config(arg: str | None = None):
  del arg
  c = critic.default_config()
  c.model_preset = ""
  c.mesh_preset = "auto"
  num_objects = 8
  c.model.update(dict(arch="qwen3", vocab_size=len(synthetic_critic.vocab(num_objects)),
                      hidden_size=64, intermediate_size=192, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=16, qk_norm=True, tie_embeddings=True,
                      max_position_embeddings=64, eos_token_id=synthetic_critic.EOS,
                      pad_token_id=synthetic_critic.PAD))
  c.data = dict(kind="synthetic_critic", num_objects=num_objects, train_records=4096,
                eval_records=64)
  c.train.update(dict(steps=300, batch_size=32, eval_every=25))
  c.optim.update(dict(lr=3e-4, schedule="constant", warmup_steps=5, weight_decay=0.0))
  c.checkpoint.update(dict(every=100, keep=1, best_metric="", async_save=False))
  c.grpo.update(dict(group_size=8, max_new_tokens=3, beta=0.0, eval_batch_size=64))
  return c
