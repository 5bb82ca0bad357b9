"""`python -m act_jax.generate --model DIR --prompt TEXT [...]`: print completions.

DIR is a Hugging Face model directory (Llama / Qwen2 / Qwen3 safetensors) or an
act_jax checkpoint (`python -m act_jax.hf import` output, or a training workdir).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Sequence

from act_jax import cli
from act_jax.sampling import Sampler, SamplingConfig
from act_jax.sampling.text import TextSampler, load_model


def parser() -> argparse.ArgumentParser:
  p = cli.parser("generate", __doc__)
  p.add_argument("--model", required=True, help="HF model directory or act_jax checkpoint")
  p.add_argument("--prompt", required=True, action="append",
                 help="prompt text; repeat the flag to batch several prompts")
  p.add_argument("--chat", action="store_true", help="wrap each prompt in the chat template")
  p.add_argument("--system", default=None, help="system message (with --chat)")
  p.add_argument("--max-new-tokens", type=int, default=128, help="tokens per completion at most")
  p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
  p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass; 1 = off")
  p.add_argument("--top-k", type=int, default=0, help="0 = no top-k")
  p.add_argument("--n", type=int, default=1, help="samples per prompt")
  p.add_argument("--seed", type=int, default=0, help="sampling RNG seed")
  p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = parser().parse_args(argv)
  logging.basicConfig(level=logging.WARNING)
  params, cfg, tokenizer = load_model(args.model)
  if tokenizer is None:
    print(f"error: {args.model} has no tokenizer files", file=sys.stderr)
    return 2
  sampler = Sampler(cfg, pad_id=tokenizer.pad_token_id)
  ts = TextSampler(sampler, tokenizer, chat=args.chat)
  prompts = args.prompt
  if args.chat and args.system:
    prompts = [[{"role": "system", "content": args.system}, {"role": "user", "content": p}]
               for p in prompts]
  sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
  t0 = time.perf_counter()
  groups = ts.generate(params, prompts, sampling=sampling, max_new_tokens=args.max_new_tokens,
                       n=args.n, seed=args.seed, stop=args.stop)
  dt = time.perf_counter() - t0
  for i, group in enumerate(groups):
    for j, c in enumerate(group):
      print(f"=== prompt {i} sample {j}: finish={c.finish_reason} tokens={len(c.tokens)} "
            f"logp={float(c.model_logprobs.sum()):.3f}")
      print(c.text)
  n_tok = sum(len(c.tokens) for g in groups for c in g)
  print(f"--- {n_tok} tokens in {dt:.2f}s (first call includes compilation)", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
