"""Logit parity with transformers (PyTorch, float32) on a fixed, left-padded batch."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from act_jax import params as params_lib
from act_jax.hf.config import hf_arch
from act_jax.hf.tokenizer import has_tokenizer, load_tokenizer
from act_jax.hf.weights import read_config
from act_jax.models import ModelConfig, Params, graphdef, merge, positions_from_mask

PROMPTS = ("The capital of France is Paris, and the capital of Germany is",
           "def fibonacci(n):")


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens [B, T] int32, mask [B, T] bool) with every row right-aligned."""
  width = max(len(r) for r in rows)
  tokens = np.full((len(rows), width), pad_id, np.int32)
  mask = np.zeros((len(rows), width), bool)
  for i, r in enumerate(rows):
    tokens[i, width - len(r):] = r
    mask[i, width - len(r):] = True
  return tokens, mask


def fixed_batch(cfg: ModelConfig, tokenizer: Any = None) -> tuple[np.ndarray, np.ndarray]:
  """Two prompts of different lengths, so the second row is left-padded."""
  if tokenizer is not None:
    rows = [tokenizer(p)["input_ids"] for p in PROMPTS]
  else:
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (12, 7)]
  pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
  return left_pad(rows, pad)


def jax_logits(params: Params, cfg: ModelConfig, tokens: np.ndarray,
               mask: np.ndarray) -> np.ndarray:
  """Full (cache-free) forward of our decoder -> float32 logits [B, T, V]."""
  gdef = graphdef(cfg)
  fwd = jax.jit(lambda p, t, m: merge(gdef, p)(t, positions_from_mask(m), m))
  return np.asarray(fwd(params, tokens, mask))


def torch_model(hf_dir: str | Path) -> Any:
  """The transformers model in float32; safetensors only, no remote code."""
  import torch
  from transformers import AutoModelForCausalLM
  hf_arch(read_config(hf_dir))  # refuse unsupported architectures before loading anything
  return AutoModelForCausalLM.from_pretrained(
      str(hf_dir), dtype=torch.float32, trust_remote_code=False, local_files_only=True,
      use_safetensors=True).eval()


def torch_logits(model: Any, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
  import torch
  ids, m = torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
  pos = torch.clamp(torch.cumsum(m, -1) - 1, min=0)
  with torch.no_grad():
    return model(input_ids=ids, attention_mask=m, position_ids=pos).logits.float().numpy()


def max_logit_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
  """Largest |a - b| over real (unpadded) positions."""
  return float(np.max(np.abs(a - b)[mask]))


def verify(hf_dir: str | Path) -> dict[str, Any]:
  """Loads `hf_dir` both ways in float32 and compares logits on the fixed batch."""
  params, cfg = params_lib.load(hf_dir, param_dtype="float32", dtype="float32")
  tok = load_tokenizer(hf_dir) if has_tokenizer(hf_dir) else None
  tokens, mask = fixed_batch(cfg, tok)
  ours = jax_logits(params, cfg, tokens, mask)
  theirs = torch_logits(torch_model(hf_dir), tokens, mask)
  argmax_agree = float(np.mean((ours.argmax(-1) == theirs.argmax(-1))[mask]))
  return {"arch": cfg.arch, "num_params": cfg.num_params(), "batch_shape": tokens.shape,
          "max_abs_logit_diff": max_logit_diff(ours, theirs, mask),
          "max_abs_logit": float(np.max(np.abs(theirs)[mask])), "argmax_agreement": argmax_agree}
