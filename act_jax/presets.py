"""Named model sizes and mesh layouts that configs pick from.

Model values are the published Hugging Face `config.json` values. Mesh presets put the
bandwidth-hungry axes (fsdp all-gathers, tensor all-reduces) on the fast interconnect
(TPU ICI / NVLink) and only `data` (one gradient all-reduce per step) across the slow
one (DCN between slices, Ethernet/IB between GPU hosts).
"""
from __future__ import annotations

from typing import Any

_QWEN3 = dict(arch="qwen3", vocab_size=151936, head_dim=128, qk_norm=True,
              rope_theta=1_000_000.0, rms_norm_eps=1e-6, max_position_embeddings=40960,
              bos_token_id=None, eos_token_id=151645, pad_token_id=151643)

MODELS: dict[str, dict[str, Any]] = {
    # Published count: 596,049,920 (tied embeddings).
    "qwen3-0.6b": dict(_QWEN3, hidden_size=1024, intermediate_size=3072, num_layers=28,
                       num_heads=16, num_kv_heads=8, tie_embeddings=True),
    # 1,720,574,976 with tied embeddings (the Hub's 2.03B also counts a stored lm_head copy).
    "qwen3-1.7b": dict(_QWEN3, hidden_size=2048, intermediate_size=6144, num_layers=28,
                       num_heads=16, num_kv_heads=8, tie_embeddings=True),
    "qwen3-4b": dict(_QWEN3, hidden_size=2560, intermediate_size=9728, num_layers=36,
                     num_heads=32, num_kv_heads=8, tie_embeddings=True),
    "qwen3-8b": dict(_QWEN3, hidden_size=4096, intermediate_size=12288, num_layers=36,
                     num_heads=32, num_kv_heads=8, tie_embeddings=False),
    "qwen2.5-7b": dict(arch="qwen2", vocab_size=152064, hidden_size=3584,
                       intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
                       head_dim=128, qkv_bias=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                       max_position_embeddings=32768, tie_embeddings=False,
                       eos_token_id=151645, pad_token_id=151643),
    "llama-3.1-8b": dict(arch="llama", vocab_size=128256, hidden_size=4096,
                         intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                         head_dim=128, rope_theta=500_000.0, rms_norm_eps=1e-5,
                         max_position_embeddings=131072, tie_embeddings=False,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 8192},
                         bos_token_id=128000, eos_token_id=(128001, 128008, 128009)),
    # SmolLM2-135M-Instruct (Llama architecture), the real model we can run offline.
    "smollm2-135m": dict(arch="llama", vocab_size=49152, hidden_size=576,
                         intermediate_size=1536, num_layers=30, num_heads=9, num_kv_heads=3,
                         head_dim=64, rope_theta=100000.0, rms_norm_eps=1e-5,
                         max_position_embeddings=8192, tie_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2),
}

MESHES: dict[str, dict[str, int]] = {
    # Whatever devices there are, pure data parallel (CPU tests, one GPU).
    "auto": {"data": -1, "fsdp": 1, "tensor": 1},
    # One v5e-8 host: 8 chips on ICI; FSDP shards params + Adam state 8 ways.
    "tpu_v5e_8": {"data": 1, "fsdp": 8, "tensor": 1},
    # v5p-64 = 32 chips (8 hosts x 4) in one slice, all ICI: FSDP over 16, tensor over 2
    # keeps per-chip activations small for 8B models at long contexts.
    "tpu_v5p_64": {"data": 1, "fsdp": 16, "tensor": 2},
    # Two v5p-64 slices over DCN: only the data axis crosses slices.
    "tpu_v5p_64x2": {"data": 2, "fsdp": 16, "tensor": 2},
    # One 8-GPU host on NVLink.
    "gpu_8": {"data": 1, "fsdp": 8, "tensor": 1},
    # N 8-GPU hosts: fsdp inside a host (NVLink), data across hosts (IB/Ethernet).
    "gpu_8xN": {"data": -1, "fsdp": 8, "tensor": 1},
}


def model(name: str) -> dict[str, Any]:
  if name not in MODELS:
    raise ValueError(f"config.model_preset: unknown model {name!r}; known: {sorted(MODELS)}")
  return dict(MODELS[name])


def mesh(name: str) -> dict[str, int]:
  if name not in MESHES:
    raise ValueError(f"config.mesh_preset: unknown mesh {name!r}; known: {sorted(MESHES)}")
  return dict(MESHES[name])
