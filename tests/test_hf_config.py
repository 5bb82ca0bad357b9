"""config.json <-> ModelConfig: published configs, round trips, refusals by field."""
import math

import jax
import pytest

from act_jax.hf import UnsupportedConfigError, hf_config_from_model, model_config_from_hf
from act_jax.models import ModelConfig, abstract_params
from hf_configs import HF_CONFIGS, PUBLISHED_PARAMS


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_published_configs_map_and_count(name):
  cfg = model_config_from_hf(HF_CONFIGS[name])
  assert cfg.num_params() == PUBLISHED_PARAMS[name]
  tree = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract_params(cfg)))
  assert tree == cfg.num_params()
  assert cfg.param_dtype == cfg.dtype == "bfloat16"


def test_qwen3_0_6b_fields():
  cfg = model_config_from_hf(HF_CONFIGS["Qwen3-0.6B"])
  assert (cfg.arch, cfg.head_dim, cfg.qk_norm, cfg.qkv_bias, cfg.tie_embeddings) == (
      "qwen3", 128, True, False, True)
  assert cfg.rope_theta == 1e6 and cfg.rope_scaling is None
  assert (cfg.bos_token_id, cfg.eos_token_id) == (151643, 151645)


def test_llama31_rope_and_qwen25_bias():
  llama = model_config_from_hf(HF_CONFIGS["Llama-3.1-8B"])
  assert dict(llama.rope_scaling) == {
      "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}
  assert llama.head_dim == 128 and llama.rms_norm_eps == 1e-5 and not llama.tie_embeddings
  qwen = model_config_from_hf(HF_CONFIGS["Qwen2.5-7B"])
  assert qwen.qkv_bias and not qwen.qk_norm and qwen.head_dim == 128


def test_transformers5_layout_and_overrides():
  hf = dict(HF_CONFIGS["Llama-3.1-8B"])
  hf["rope_parameters"] = {**hf.pop("rope_scaling"), "rope_theta": hf.pop("rope_theta")}
  hf["dtype"] = hf.pop("torch_dtype")
  assert model_config_from_hf(hf) == model_config_from_hf(HF_CONFIGS["Llama-3.1-8B"])
  cfg = model_config_from_hf(hf, param_dtype="float32")
  assert (cfg.param_dtype, cfg.dtype) == ("float32", "float32")
  hf["eos_token_id"] = [128001, 128009]
  assert model_config_from_hf(hf).eos_token_id == (128001, 128009)


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_hf_config_round_trip(name):
  cfg = model_config_from_hf(HF_CONFIGS[name])
  assert model_config_from_hf(hf_config_from_model(cfg)) == cfg


@pytest.mark.parametrize("field,value,base", [
    ("architectures", ["GemmaForCausalLM"], "Llama-3.1-8B"),
    ("model_type", "mistral", "Llama-3.1-8B"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}, "Qwen3-8B"),
    ("rope_scaling", {"type": "linear", "factor": 2.0}, "Llama-3.1-8B"),
    ("use_sliding_window", True, "Qwen2.5-7B"),
    ("layer_types", ["sliding_attention"] * 28, "Qwen2.5-7B"),
    ("mlp_bias", True, "Llama-3.1-8B"),
    ("attention_bias", True, "Llama-3.1-8B"),
    ("attention_bias", True, "Qwen3-0.6B"),
    ("hidden_act", "gelu", "Llama-3.1-8B"),
    ("quantization_config", {"quant_method": "gptq"}, "Qwen3-0.6B"),
])
def test_unsupported_fields_are_named(field, value, base):
  hf = {**HF_CONFIGS[base], field: value}
  with pytest.raises(UnsupportedConfigError, match=field):
    model_config_from_hf(hf)


def test_rope_parameters_field_named():
  hf = {**HF_CONFIGS["Qwen3-0.6B"], "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6}}
  with pytest.raises(UnsupportedConfigError, match=r"rope_parameters\.rope_type='yarn'"):
    model_config_from_hf(hf)


@pytest.mark.parametrize("arch,field", [("llama", "qkv_bias"), ("qwen2", "qkv_bias"),
                                        ("qwen3", "qk_norm")])
def test_unexportable_configs_are_refused(arch, field):
  cfg = ModelConfig(arch=arch, qkv_bias=arch == "llama", qk_norm=False)
  with pytest.raises(UnsupportedConfigError, match=field):
    hf_config_from_model(cfg)


@pytest.mark.parametrize("name", ["Qwen3-0.6B", "Qwen3-8B", "Qwen2.5-7B", "Llama-3.1-8B"])
def test_key_map_covers_every_param_once(name):
  from act_jax.hf import tensor_specs
  cfg = model_config_from_hf(HF_CONFIGS[name])
  specs = tensor_specs(cfg)  # raises if a parameter has no rule
  assert len({s.hf for s in specs}) == len(specs)
  n = sum(math.prod(s.shape) for s in specs)
  assert n == sum(math.prod(s.hf_shape) for s in specs) == cfg.num_params()
