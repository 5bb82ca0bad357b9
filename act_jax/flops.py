"""Model FLOPs per token and MFU: one formula shared by the training logs and benchmarks.

The count is the PaLM-appendix one that benchmarks/tunix_baseline.py uses, so
our MFU and the Tunix baseline's are comparable:

  flops_per_token = 6 * N_matmul + 12 * L * H * Dh * T

6 FLOPs per matmul weight per token for forward + backward, plus attention scores and
AV for forward + backward counted non-causally (the full masked T x T matrices are
computed). N_matmul counts every weight used in a matmul: q/k/v/o and the MLP in each
layer, and the LM head once (tied or not). The input embedding (a gather), norm scales,
biases, softmax and the optimiser are not counted.
"""
from __future__ import annotations

from act_jax.models import ModelConfig


def matmul_params(cfg: ModelConfig) -> int:
  """Weights that take part in matmuls: L*(D*(2*H*Dh + 2*Hkv*Dh) + 3*D*F) + D*V."""
  d, h, kv, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  per_layer = d * (2 * h * hd + 2 * kv * hd) + 3 * d * cfg.intermediate_size
  return cfg.num_layers * per_layer + d * cfg.vocab_size


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
  """Training (forward + backward) FLOPs per token of a length-`seq_len` sequence."""
  attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
  return 6 * matmul_params(cfg) + attention


def mfu(flops: float, seconds: float, peak_tflops: float | None, n_devices: int
        ) -> float | None:
  """Achieved / peak FLOP rate, `peak_tflops` per device; None without a positive peak."""
  if peak_tflops is None or peak_tflops <= 0 or seconds <= 0:
    return None
  return flops / seconds / (peak_tflops * 1e12 * n_devices)
