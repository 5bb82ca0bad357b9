"""The fixed Qwen3 shapes both benchmarks measure, as benchmarks/tunix_baseline.py's."""
from act_jax.models import ModelConfig

SHAPES = {  # as tunix_baseline.SHAPES
    "tiny": dict(vocab=1024, hidden=128, layers=2, heads=4, kv_heads=2, head_dim=32,
                 intermediate=384),
    "small": dict(vocab=32000, hidden=512, layers=8, heads=8, kv_heads=4, head_dim=64,
                  intermediate=1536),
}


def matmul_weights(s: dict) -> tuple[int, int]:
  """(the layers' matmul weights, the lm_head's): each does 2 FLOPs per weight per row."""
  D, L, H, K, Dh, F, V = (s["hidden"], s["layers"], s["heads"], s["kv_heads"], s["head_dim"],
                          s["intermediate"], s["vocab"])
  return L * (D * (2 * H * Dh + 2 * K * Dh) + 3 * D * F), D * V


def model_config(s: dict, scan_layers: bool = False) -> ModelConfig:
  """Tunix's Qwen3 at shape s: untied lm_head, float32 weights and compute."""
  return ModelConfig(
      arch="qwen3", vocab_size=s["vocab"], hidden_size=s["hidden"], num_layers=s["layers"],
      num_heads=s["heads"], num_kv_heads=s["kv_heads"], head_dim=s["head_dim"],
      intermediate_size=s["intermediate"], qk_norm=True, tie_embeddings=False,
      rope_theta=1e6, rms_norm_eps=1e-6, param_dtype="float32", dtype="float32",
      scan_layers=scan_layers)
