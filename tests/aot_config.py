"""The config the ahead-of-time compile tests share (TPU: test_aot.py, GPU:
test_aot_gpu.py)."""
from configs import paper_qwen3_8b


def tiny_config(**model):
  """The paper's pipeline (stages, GRPO sections, remat, bf16 compute) on a tiny model."""
  c = paper_qwen3_8b.get_config()
  c.pipeline.model_dir = ""
  c.model.update({**dict(arch="qwen3", vocab_size=256, hidden_size=128, intermediate_size=256,
                         num_layers=1, num_heads=4, num_kv_heads=2, head_dim=32, qk_norm=True,
                         tie_embeddings=False, eos_token_id=1, pad_token_id=0), **model})
  c.mesh_preset = "auto"
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.data.max_state_tokens = 32
  for s in ("act", "rl"):
    c.stages[s].grpo.update(dict(max_new_tokens=8, eval_batch_size=8, group_size=2))
  for s in ("il", "act", "rl"):
    c.stages[s].batch_size = 8
  return c
