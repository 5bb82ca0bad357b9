"""Hugging Face interop: config.json mapping, streaming safetensors import/export,
and the act_jax params checkpoint that the `python -m act_jax.hf` CLI moves between.

transformers/torch are imported only by `verify` and `smollm2`, never here.
"""
from act_jax.hf.ckpt_io import (ParamsSource, load_params_checkpoint, resolve_params_source,
                                save_params_checkpoint)
from act_jax.hf.config import (HF_ARCHITECTURES, UnsupportedConfigError, hf_config_from_model,
                               model_config_from_hf)
from act_jax.hf.keymap import KEY_MAPS, tensor_specs
from act_jax.hf.weights import (CheckpointError, load_hf_params, load_pretrained,
                                save_pretrained)

__all__ = [
    "HF_ARCHITECTURES", "KEY_MAPS", "CheckpointError", "ParamsSource", "UnsupportedConfigError",
    "hf_config_from_model", "load_hf_params", "load_params_checkpoint", "load_pretrained",
    "model_config_from_hf", "resolve_params_source", "save_params_checkpoint",
    "save_pretrained", "tensor_specs",
]
