"""A published model size with its real hyper-parameters, on a named mesh.

    --config configs/pretrained.py:qwen3-8b,tpu_v5p_64

Models: qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b, qwen2.5-7b, llama-3.1-8b,
smollm2-135m. Meshes: auto, tpu_v5e_8, tpu_v5p_64, tpu_v5p_64x2, gpu_8, gpu_8xN (see
act_jax/presets.py for which axis rides ICI/NVLink and which DCN).
"""
from act_jax import config_lib


def get_config(arg: str = "qwen3-0.6b,auto"):
  model, _, mesh = arg.partition(",")
  c = config_lib.base()
  c.model_preset = model
  c.mesh_preset = mesh or "auto"
  # fp32 master weights, bf16 matmuls, rematerialised layers: fits 8B on a v5p-64.
  c.model.update(dict(param_dtype="float32", dtype="bfloat16", remat=True))
  c.train.update(dict(batch_size=64, seq_len=2048))
  c.optim.update(dict(lr=1e-6, warmup_steps=20, weight_decay=0.0))
  return c
