"""Hugging Face `config.json` <-> `ModelConfig`.

Anything in config.json that would change the forward pass but has no place in
`ModelConfig` (other RoPE types, sliding windows, extra biases, quantisation, ...)
is refused by field name: a silently wrong model is the worst outcome of an import.
Both the transformers 4.x layout (`rope_theta` + `rope_scaling`) and the 5.x one
(`rope_parameters`) are read; export writes the 4.x layout, which both accept.
"""
from __future__ import annotations

from typing import Any, Mapping

from act_jax.models.config import ModelConfig

HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
_ARCH_TO_HF = {arch: name for name, arch in HF_ARCHITECTURES.items()}
# HF dtype names -> ModelConfig.param_dtype (float16 widens exactly to float32).
_PARAM_DTYPE_OF = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float32"}
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings")


class UnsupportedConfigError(ValueError):
  """A config.json field asks for something this decoder does not implement."""


def _refuse(field: str, value: Any, why: str) -> None:
  raise UnsupportedConfigError(f"config.json: {field}={value!r} is not supported: {why}")


def hf_arch(hf: Mapping[str, Any]) -> str:
  """Our `arch` for an HF config, from `architectures` (or `model_type` if absent)."""
  archs = hf.get("architectures")
  if archs:
    if len(archs) != 1 or archs[0] not in HF_ARCHITECTURES:
      _refuse("architectures", archs, f"expected one of {sorted(HF_ARCHITECTURES)}")
    arch = HF_ARCHITECTURES[archs[0]]
    if hf.get("model_type", arch) != arch:
      _refuse("model_type", hf["model_type"], f"inconsistent with architectures={archs}")
    return arch
  model_type = hf.get("model_type")
  if model_type not in _ARCH_TO_HF:
    _refuse("model_type", model_type, f"expected one of {sorted(_ARCH_TO_HF)}")
  return model_type


def checkpoint_dtype(hf: Mapping[str, Any]) -> str | None:
  """The dtype the checkpoint's weights were saved in, as config.json states it."""
  return hf.get("dtype") or hf.get("torch_dtype")


def _rope(hf: Mapping[str, Any]) -> tuple[float, tuple[tuple[str, Any], ...] | None]:
  """(rope_theta, rope_scaling items) from either the 4.x or the 5.x layout."""
  field = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
  rope = dict(hf.get(field) or {})
  theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
  kind = rope.get("rope_type", rope.get("type", "default"))
  if rope.get("partial_rotary_factor", 1.0) != 1.0:
    _refuse(f"{field}.partial_rotary_factor", rope["partial_rotary_factor"],
            "only full rotary embeddings are implemented")
  if kind == "default":
    return theta, None
  if kind != "llama3":
    _refuse(f"{field}.rope_type", kind, "only the default and 'llama3' RoPE are implemented")
  missing = [k for k in _LLAMA3_KEYS if k not in rope]
  if missing:
    _refuse(field, rope, f"llama3 scaling needs {missing}")
  items = {k: rope[k] for k in _LLAMA3_KEYS}
  items["factor"] = float(items["factor"])
  items["low_freq_factor"] = float(items["low_freq_factor"])
  items["high_freq_factor"] = float(items["high_freq_factor"])
  items["original_max_position_embeddings"] = int(items["original_max_position_embeddings"])
  items["rope_type"] = "llama3"
  return theta, tuple(sorted(items.items()))


def _check_supported(hf: Mapping[str, Any], arch: str) -> None:
  act = hf.get("hidden_act", "silu")
  if act not in ("silu", "swish"):
    _refuse("hidden_act", act, "the MLP is SwiGLU (silu)")
  if hf.get("mlp_bias"):
    _refuse("mlp_bias", hf["mlp_bias"], "the MLP has no biases")
  if arch != "qwen2" and hf.get("attention_bias"):
    _refuse("attention_bias", hf["attention_bias"],
            f"{arch} then also has an o_proj bias, which this decoder lacks")
  if hf.get("quantization_config"):
    _refuse("quantization_config", hf["quantization_config"],
            "quantised checkpoints are not read; dequantise to a plain HF dir first")
  if hf.get("use_sliding_window"):
    _refuse("use_sliding_window", hf["use_sliding_window"], "attention is full, never windowed")
  layer_types = hf.get("layer_types")
  if layer_types and any(t != "full_attention" for t in layer_types):
    _refuse("layer_types", sorted(set(layer_types)), "only 'full_attention' layers exist here")
  for field in ("num_experts", "num_local_experts", "attn_logit_softcapping",
                "final_logit_softcapping"):
    if hf.get(field):
      _refuse(field, hf[field], "not part of the Llama/Qwen2/Qwen3 decoder")


def model_config_from_hf(hf: Mapping[str, Any], *, param_dtype: str | None = None,
                         dtype: str | None = None) -> ModelConfig:
  """Maps an HF config.json dict onto `ModelConfig`, refusing what it cannot honour.

  Args:
    hf: the parsed config.json.
    param_dtype: storage dtype of our params; default: the checkpoint's own
      (float16 checkpoints widen to float32).
    dtype: compute dtype; default: `param_dtype`.
  """
  arch = hf_arch(hf)
  _check_supported(hf, arch)
  hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
  head_dim = hf.get("head_dim")
  if head_dim is None:
    if hidden % heads:
      _refuse("head_dim", None, f"hidden_size={hidden} is not a multiple of "
              f"num_attention_heads={heads}; config.json must state head_dim")
    head_dim = hidden // heads
  theta, scaling = _rope(hf)
  if param_dtype is None:
    param_dtype = _PARAM_DTYPE_OF.get(checkpoint_dtype(hf) or "float32", "float32")
  eos = hf.get("eos_token_id")
  return ModelConfig(
      arch=arch,
      vocab_size=int(hf["vocab_size"]),
      hidden_size=hidden,
      intermediate_size=int(hf["intermediate_size"]),
      num_layers=int(hf["num_hidden_layers"]),
      num_heads=heads,
      num_kv_heads=int(hf.get("num_key_value_heads") or heads),
      head_dim=int(head_dim),
      rope_theta=theta,
      rope_scaling=scaling,
      rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      qkv_bias=arch == "qwen2",
      qk_norm=arch == "qwen3",
      max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
      param_dtype=param_dtype,
      dtype=dtype or param_dtype,
      bos_token_id=hf.get("bos_token_id"),
      eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
      pad_token_id=hf.get("pad_token_id"),
  )


def hf_config_from_model(cfg: ModelConfig, *, torch_dtype: str | None = None) -> dict[str, Any]:
  """The config.json transformers needs to rebuild `cfg` (refuses unrepresentable ones)."""
  wants_bias, wants_norm = cfg.arch == "qwen2", cfg.arch == "qwen3"
  if cfg.qkv_bias != wants_bias:
    raise UnsupportedConfigError(
        f"config.model.qkv_bias={cfg.qkv_bias} cannot be exported as {_ARCH_TO_HF[cfg.arch]} "
        f"(which has q/k/v biases {'always' if wants_bias else 'never'})")
  if cfg.qk_norm != wants_norm:
    raise UnsupportedConfigError(
        f"config.model.qk_norm={cfg.qk_norm} cannot be exported as {_ARCH_TO_HF[cfg.arch]} "
        f"(which has q/k norms {'always' if wants_norm else 'never'})")
  d: dict[str, Any] = {
      "architectures": [_ARCH_TO_HF[cfg.arch]],
      "model_type": cfg.arch,
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "intermediate_size": cfg.intermediate_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads,
      "head_dim": cfg.head_dim,
      "hidden_act": "silu",
      "max_position_embeddings": cfg.max_position_embeddings,
      "rms_norm_eps": cfg.rms_norm_eps,
      "rope_theta": cfg.rope_theta,
      "rope_scaling": dict(cfg.rope_scaling) if cfg.rope_scaling else None,
      "tie_word_embeddings": cfg.tie_embeddings,
      "attention_dropout": 0.0,
      "initializer_range": 0.02,
      "use_cache": True,
      "bos_token_id": cfg.bos_token_id,
      "eos_token_id": list(cfg.eos_token_id) if isinstance(cfg.eos_token_id, tuple)
                      else cfg.eos_token_id,
      "pad_token_id": cfg.pad_token_id,
      "torch_dtype": torch_dtype or cfg.param_dtype,
  }
  if cfg.arch in ("llama", "qwen3"):
    d["attention_bias"] = False
  if cfg.arch == "llama":
    d["mlp_bias"] = False
  else:
    d.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
  return d


def generation_config(cfg: ModelConfig, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """generation_config.json: the source's sampling defaults, with our special ids."""
  d = dict(base or {})
  for key in ("transformers_version", "_from_model_config"):
    d.pop(key, None)
  for key, value in (("bos_token_id", cfg.bos_token_id), ("pad_token_id", cfg.pad_token_id),
                     ("eos_token_id", list(cfg.eos_ids) if isinstance(cfg.eos_token_id, tuple)
                      else cfg.eos_token_id)):
    if value is not None:
      d[key] = value
  return d
