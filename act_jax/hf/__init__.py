"""Hugging Face format conversion: config.json <-> ModelConfig, one key map per family,
streaming safetensors import (into given shardings) and export.

Loading from any source, an HF dir included, is `act_jax.params.load`.
transformers/torch are imported only by `verify` and `smollm2`, never here.
"""
from act_jax.hf.config import (HF_ARCHITECTURES, UnsupportedConfigError, hf_config_from_model,
                               model_config_from_hf)
from act_jax.hf.keymap import KEY_MAPS, tensor_specs
from act_jax.hf.weights import CheckpointError, load_hf_params, read_config, save_pretrained

__all__ = [
    "HF_ARCHITECTURES", "KEY_MAPS", "CheckpointError", "UnsupportedConfigError",
    "hf_config_from_model", "load_hf_params", "model_config_from_hf", "read_config",
    "save_pretrained", "tensor_specs",
]
