"""A tiny decoder (~0.3M parameters) trained on synthetic text: seconds on a 2-core CPU."""
from act_jax import config_lib


def get_config():
  c = config_lib.base()
  c.model.update(dict(arch="qwen3", vocab_size=128, hidden_size=64, intermediate_size=192,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, qk_norm=True,
                      tie_embeddings=True, max_position_embeddings=256))
  c.train.update(dict(steps=60, batch_size=16, seq_len=32))
  c.optim.update(dict(lr=3e-3, warmup_steps=5))
  c.checkpoint.every = 20
  c.data.update(dict(kind="synthetic"))
  return c
