"""The config and the program the ahead-of-time compile tests share (TPU: test_aot.py,
GPU: test_aot_gpu.py)."""
import jax
import jax.numpy as jnp
import numpy as np

from configs import paper_qwen3_8b

CHAIN = dict(L=6, B=256, D=512)  # the scanned matmul chain's layers, rows and width


def scanned_chain(devices, mesh_shape):
  """(loss, (w, x), analytic FLOPs per chip) of a scanned chain of L matmuls, weights
  split over a 2-D mesh of `devices`: the gradient w.r.t. both arguments costs fwd + both
  grads in every iteration, 3 x 2 x B x D x D x L, which a loop-blind count misses."""
  L, B, D = CHAIN["L"], CHAIN["B"], CHAIN["D"]
  mesh = jax.sharding.Mesh(np.array(devices).reshape(mesh_shape), ("a", "b"))
  sh = lambda *spec: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
  w = jax.ShapeDtypeStruct((L, D, D), jnp.bfloat16, sharding=sh(None, "a", "b"))
  x = jax.ShapeDtypeStruct((B, D), jnp.bfloat16, sharding=sh("a", None))

  def loss(w, x):
    return jax.lax.scan(lambda h, wl: (jnp.tanh(h @ wl), None), x, w)[0].sum()

  return loss, (w, x), 3 * 2 * B * D * D * L / len(devices)


def tiny_config(**model):
  """The paper's pipeline (stages, GRPO sections, remat, bf16 compute) on a tiny model."""
  c = paper_qwen3_8b.get_config()
  c.pipeline.model_dir = ""
  c.model.update({**dict(arch="qwen3", vocab_size=256, hidden_size=128, intermediate_size=256,
                         num_layers=1, num_heads=4, num_kv_heads=2, head_dim=32, qk_norm=True,
                         tie_embeddings=False, eos_token_id=1, pad_token_id=0,
                         logits_chunk=4), **model})  # the losses' logits in chunks (vocab.py)
  c.mesh_preset = "auto"
  c.mesh = dict(data=1, fsdp=-1, tensor=1)
  c.data.max_state_tokens = 32
  for s in ("act", "rl"):
    c.stages[s].grpo.update(dict(max_new_tokens=8, eval_batch_size=8, group_size=2))
  for s in ("il", "act", "rl"):
    c.stages[s].batch_size = 8
  return c
